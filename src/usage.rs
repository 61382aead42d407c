//! Token usage from responses as they pass, without holding any of them: the engine's
//! `usage.prompt_tokens` / `usage.completion_tokens`, from a JSON body or from the events of an
//! SSE stream (the chunk that carries `usage`, last one wins). The body arrives in pieces of any
//! size, split anywhere (inside a key, a number, an escape); the scanner keeps a few dozen bytes
//! of state, whatever the body's size or shape, and never fails: a malformed or truncated body
//! yields what was seen. [`UsageChunkFilter`] removes the usage-only event from a stream whose
//! client did not ask for usage. No host calls: [`crate::accounting`] feeds it.

/// What a response said about its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Scans one response body, piece by piece.
#[derive(Debug, Clone)]
pub struct UsageScanner {
    sse: Option<SseLine>,
    json: JsonWalker,
    found: Usage,
    /// SSE `data:` events seen (a stream cut before its usage counts what it delivered).
    events: u64,
}

impl UsageScanner {
    /// For a `application/json` body.
    pub fn json() -> Self {
        UsageScanner {
            sse: None,
            json: JsonWalker::default(),
            found: Usage::default(),
            events: 0,
        }
    }

    /// For a `text/event-stream` body: each `data:` line is one JSON document.
    pub fn sse() -> Self {
        UsageScanner {
            sse: Some(SseLine::Start(0)),
            ..Self::json()
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            i += 1;
            // Inside a string value (most of a body: the generated text) nothing matters until
            // its closing quote, an escape, or (SSE) the end of the line.
            if self.json.in_plain_value() && self.sse.is_none_or(|l| l == SseLine::Data) {
                let rest = chunk.get(i - 1..).unwrap_or_default();
                let skip = rest
                    .iter()
                    .position(|c| matches!(c, b'"' | b'\\' | b'\n'))
                    .unwrap_or(rest.len());
                if skip > 0 {
                    i += skip - 1;
                    continue;
                }
            }
            match self.sse.as_mut() {
                None => self.json.step(b),
                Some(line) => match line.step(b) {
                    SseStep::Data => self.json.step(b),
                    SseStep::EventLine => {
                        self.events += 1;
                        self.take();
                        self.json = JsonWalker::default();
                    }
                    SseStep::EndOfData => self.take(),
                    SseStep::Skip => {}
                },
            }
        }
    }

    /// What was found so far (a document still being read counts, as the latest).
    pub fn usage(&self) -> Usage {
        let current = self.json.usage;
        if current.prompt_tokens.is_some() || current.completion_tokens.is_some() {
            current
        } else {
            self.found
        }
    }

    /// SSE `data:` events seen so far (`[DONE]` included).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Keeps what the current document said, when it said anything.
    fn take(&mut self) {
        let u = self.json.usage;
        if u.prompt_tokens.is_some() || u.completion_tokens.is_some() {
            self.found = u;
        }
    }
}

/// Where an SSE line stands: how much of `data:` matched, in the data, or in another line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SseLine {
    Start(u8),
    Data,
    Other,
}

enum SseStep {
    /// A byte of a `data:` line's payload.
    Data,
    /// `data:` just matched: a new document starts.
    EventLine,
    /// A `data:` line ended.
    EndOfData,
    Skip,
}

impl SseLine {
    fn step(&mut self, b: u8) -> SseStep {
        const PREFIX: &[u8] = b"data:";
        match *self {
            _ if b == b'\n' => {
                let was = *self;
                *self = SseLine::Start(0);
                if was == SseLine::Data {
                    SseStep::EndOfData
                } else {
                    SseStep::Skip
                }
            }
            SseLine::Start(n) => {
                if PREFIX.get(n as usize) == Some(&b) {
                    if n as usize + 1 == PREFIX.len() {
                        *self = SseLine::Data;
                        return SseStep::EventLine;
                    }
                    *self = SseLine::Start(n + 1);
                } else {
                    *self = SseLine::Other;
                }
                SseStep::Skip
            }
            SseLine::Data => SseStep::Data,
            SseLine::Other => SseStep::Skip,
        }
    }
}

/// The two fields of `usage` we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Prompt,
    Completion,
}

/// Longest key worth remembering (`completion_tokens` is 17 bytes).
const KEY_MAX: usize = 24;

/// A resumable walk over one JSON document that tracks only what `usage` needs: the depth,
/// whether a string is a key, the last top-level key and, inside the top-level `usage` object,
/// the numbers of `prompt_tokens` and `completion_tokens`.
#[derive(Debug, Clone, Default)]
struct JsonWalker {
    depth: u32,
    /// Containers at depth 1 and 2 (the only ones whose kind matters): true = object.
    object_at: [bool; 3],
    in_string: bool,
    escape: bool,
    /// In an object, the next string is a key.
    expect_key: bool,
    key: [u8; KEY_MAX],
    key_len: usize,
    /// The key being read overflowed `KEY_MAX` or held an escape: it matches nothing.
    key_other: bool,
    reading_key: bool,
    /// The current top-level member is `usage`.
    in_usage: bool,
    /// Inside `usage`: the member whose value comes next.
    field: Option<Field>,
    /// A number of `field` being read.
    number: Option<u64>,
    usage: Usage,
}

impl JsonWalker {
    /// Inside a string that is not a key, with no escape pending.
    fn in_plain_value(&self) -> bool {
        self.in_string && !self.reading_key && !self.escape
    }

    fn step(&mut self, b: u8) {
        if self.in_string {
            return self.string_byte(b);
        }
        if let Some(n) = self.number {
            if b.is_ascii_digit() {
                match n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                {
                    Some(n) => self.number = Some(n),
                    // Beyond u64 is not a token count (serde_json reads it as a float).
                    None => self.discard_number(),
                }
                return;
            }
            if matches!(b, b'.' | b'e' | b'E') {
                // A fraction or an exponent is not a token count.
                self.discard_number();
                return;
            }
            self.finish_number(n);
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.reading_key = self.expect_key;
                self.key_len = 0;
                self.key_other = false;
            }
            b'{' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                if let Some(slot) = self.object_at.get_mut(self.depth as usize) {
                    *slot = b == b'{';
                }
                self.expect_key = b == b'{';
                self.field = None;
            }
            b'}' | b']' => {
                if self.depth == 2 && self.in_usage {
                    self.in_usage = false;
                }
                self.depth = self.depth.saturating_sub(1);
                self.expect_key = false;
            }
            b',' => {
                self.expect_key = self.current_is_object();
                if self.depth == 1 {
                    self.in_usage = false;
                }
                self.field = None;
            }
            b':' => self.expect_key = false,
            // A negative number is not a token count.
            b'-' => self.field = None,
            b'0'..=b'9' if self.field.is_some() && self.depth == 2 && self.in_usage => {
                self.number = Some(u64::from(b - b'0'));
            }
            _ => {}
        }
    }

    fn current_is_object(&self) -> bool {
        match self.object_at.get(self.depth as usize) {
            Some(is_object) => *is_object,
            // Deeper containers never hold what we read; their keys are ignored.
            None => false,
        }
    }

    fn string_byte(&mut self, b: u8) {
        if self.escape {
            self.escape = false;
            self.key_other = true;
            return;
        }
        match b {
            b'\\' => self.escape = true,
            b'"' => {
                self.in_string = false;
                if self.reading_key {
                    self.end_key();
                }
            }
            _ if self.reading_key => match self.key.get_mut(self.key_len) {
                Some(slot) => {
                    *slot = b;
                    self.key_len += 1;
                }
                None => self.key_other = true,
            },
            _ => {}
        }
    }

    fn end_key(&mut self) {
        self.reading_key = false;
        let key = if self.key_other {
            &b""[..]
        } else {
            self.key.get(..self.key_len).unwrap_or_default()
        };
        match self.depth {
            1 => self.in_usage = key == b"usage",
            2 if self.in_usage => {
                self.field = match key {
                    b"prompt_tokens" => Some(Field::Prompt),
                    b"completion_tokens" => Some(Field::Completion),
                    _ => None,
                }
            }
            _ => {}
        }
    }

    /// The number being read is not a count: its remaining digits and its field are ignored.
    fn discard_number(&mut self) {
        self.number = None;
        self.field = None;
    }

    fn finish_number(&mut self, n: u64) {
        self.number = None;
        match self.field.take() {
            Some(Field::Prompt) => self.usage.prompt_tokens = Some(n),
            Some(Field::Completion) => self.usage.completion_tokens = Some(n),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;

/// Longest SSE event held back while deciding whether it is the usage-only chunk: that chunk is
/// a few hundred bytes; a longer event is content and goes on at once.
const HELD_EVENT_MAX: usize = 4096;

/// Drops the usage-only event (`"choices": []` with a `usage`) from an SSE stream, for a client
/// that did not ask for usage when the router asked the engine for it. Every other byte passes
/// unchanged and in order; only the bytes of a still-incomplete event wait for its end (at most
/// [`HELD_EVENT_MAX`]), so a client sees exactly the stream it asked for.
#[derive(Debug, Clone, Default)]
pub struct UsageChunkFilter {
    held: Vec<u8>,
    /// The held event is too long to be the usage chunk: pass the rest of it through.
    passing: bool,
    /// The current event's last byte so far (a blank line may straddle two chunks).
    last: Option<u8>,
}

impl UsageChunkFilter {
    /// The bytes to forward for `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + self.held.len());
        let mut rest = chunk;
        while !rest.is_empty() {
            let (piece, ends, tail) = match find_event_end(self.last, rest) {
                Some(n) => (
                    rest.get(..n).unwrap_or(rest),
                    true,
                    rest.get(n..).unwrap_or(&[]),
                ),
                None => (rest, false, &[][..]),
            };
            rest = tail;
            self.last = piece.last().copied().or(self.last);
            if self.passing {
                out.extend_from_slice(piece);
            } else {
                self.held.extend_from_slice(piece);
                if !ends && self.held.len() > HELD_EVENT_MAX {
                    out.append(&mut self.held);
                    self.passing = true;
                }
            }
            if ends {
                if !self.passing && !is_usage_only(&self.held) {
                    out.extend_from_slice(&self.held);
                }
                self.held.clear();
                self.passing = false;
                self.last = None;
            }
        }
        out
    }

    /// The end of the stream: whatever is held goes out as it is.
    pub fn finish(&mut self) -> Vec<u8> {
        self.passing = false;
        self.last = None;
        std::mem::take(&mut self.held)
    }
}

/// Where in `next` the current event (whose last byte so far is `last`) ends, just past its
/// blank line, if it does.
fn find_event_end(last: Option<u8>, next: &[u8]) -> Option<usize> {
    if last == Some(b'\n') && next.first() == Some(&b'\n') {
        return Some(1);
    }
    next.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Whether `"usage"` appears followed by `:` and an object (not `null`).
fn has_usage_object(event: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = event;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = rest.get(at + KEY.len()..).unwrap_or_default();
        let mut after = rest.iter().copied().filter(|b| !b.is_ascii_whitespace());
        if after.next() == Some(b':') && after.next() == Some(b'{') {
            return true;
        }
    }
    false
}

/// Whether one whole SSE event is a usage-only chunk: a `data:` line whose JSON has an empty
/// top-level `choices` and a `usage` object.
fn is_usage_only(event: &[u8]) -> bool {
    // Content events (nearly all of them) carry no usage object: decide those without a parse.
    if !has_usage_object(event) {
        return false;
    }
    let text = String::from_utf8_lossy(event);
    let Some(json) = text.trim().strip_prefix("data:") else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
        return false;
    };
    v.get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.is_empty())
        && v.get("usage").is_some_and(|u| u.is_object())
}
