//! Single-pass JSON scanner for request bodies.
//!
//! Validates the whole body as one JSON object (the same documents `serde_json` accepts) and
//! captures, without building a DOM, the top-level fields routing needs: `model` (decoded
//! value and the byte span of its token, for splicing) and `stream`. Nested values are
//! skipped with an explicit stack, so depth costs no native stack and no allocation per value.
//! Owns: JSON grammar only. Must not know about routes, servers or the host.

use std::borrow::Cow;
use std::ops::Range;

/// What the scanner found at the top level of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan<'a> {
    /// The last top-level `model` member (duplicates: the last wins, as in most JSON parsers).
    pub model: Option<Model<'a>>,
    /// Top-level `stream`, when it is a boolean.
    pub stream: Option<bool>,
    /// The top-level members the filter reads or edits ([`Key`]), in document order. Other
    /// members are not recorded, so memory follows the few keys we know, not the body's shape.
    pub members: Vec<Member>,
    /// Byte offsets of the top-level object's `{` and `}`.
    pub object: Range<usize>,
}

/// The top-level members the filter reads, removes or rewrites, recognised by their key as
/// JSON means it: `"stre\u0061m"` is `stream`, as it is for the engine that parses the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Model,
    Stream,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    KvTransferParams,
    BootstrapHost,
    BootstrapPort,
    BootstrapRoom,
    Messages,
    Prompt,
    Input,
}

impl Key {
    pub const ALL: [Key; 12] = [
        Key::Model,
        Key::Stream,
        Key::StreamOptions,
        Key::MaxTokens,
        Key::MaxCompletionTokens,
        Key::KvTransferParams,
        Key::BootstrapHost,
        Key::BootstrapPort,
        Key::BootstrapRoom,
        Key::Messages,
        Key::Prompt,
        Key::Input,
    ];

    /// The key as written on the wire (unescaped).
    pub fn name(self) -> &'static str {
        match self {
            Key::Model => "model",
            Key::Stream => "stream",
            Key::StreamOptions => "stream_options",
            Key::MaxTokens => "max_tokens",
            Key::MaxCompletionTokens => "max_completion_tokens",
            Key::KvTransferParams => "kv_transfer_params",
            Key::BootstrapHost => "bootstrap_host",
            Key::BootstrapPort => "bootstrap_port",
            Key::BootstrapRoom => "bootstrap_room",
            Key::Messages => "messages",
            Key::Prompt => "prompt",
            Key::Input => "input",
        }
    }

    /// The known key a decoded member name is, if any (every top-level member of every request
    /// asks: one match, no loop over the names).
    pub fn of(name: &[u8]) -> Option<Key> {
        Some(match name {
            b"model" => Key::Model,
            b"stream" => Key::Stream,
            b"stream_options" => Key::StreamOptions,
            b"max_tokens" => Key::MaxTokens,
            b"max_completion_tokens" => Key::MaxCompletionTokens,
            b"kv_transfer_params" => Key::KvTransferParams,
            b"bootstrap_host" => Key::BootstrapHost,
            b"bootstrap_port" => Key::BootstrapPort,
            b"bootstrap_room" => Key::BootstrapRoom,
            b"messages" => Key::Messages,
            b"prompt" => Key::Prompt,
            b"input" => Key::Input,
            _ => return None,
        })
    }
}

/// How many known members a body may carry: each key once is 12; real clients never repeat
/// one, and a body repeating them by the million must not buy memory with it.
pub const MAX_KNOWN_MEMBERS: usize = 64;

/// One recorded top-level `"key": value` member, as byte offsets into the body (`u32`: bodies
/// are far below 4 GiB; a record is 16 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Key,
    /// The key's opening quote.
    start: u32,
    value_start: u32,
    value_end: u32,
}

impl Member {
    /// From the key's opening quote to the end of its value.
    pub fn span(&self) -> Range<usize> {
        self.start as usize..self.value_end as usize
    }

    /// The value token.
    pub fn value(&self) -> Range<usize> {
        self.value_start as usize..self.value_end as usize
    }
}

impl Scan<'_> {
    /// The value span of the last top-level `key` member.
    pub fn member(&self, key: Key) -> Option<Range<usize>> {
        self.members
            .iter()
            .rev()
            .find(|m| m.key == key)
            .map(Member::value)
    }
}

/// The top-level `model` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model<'a> {
    /// A string: its decoded value and the span of the whole string token (quotes included).
    Str {
        value: Cow<'a, str>,
        span: Range<usize>,
    },
    /// Present but not a string.
    NotString,
}

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

/// Scans `body`, which must hold exactly one JSON object (surrounding whitespace allowed).
pub fn scan(body: &[u8]) -> Result<Scan<'_>, ScanError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ScanError {
            offset: e.valid_up_to(),
            reason: "invalid UTF-8",
        });
    }
    if u32::try_from(body.len()).is_err() {
        return Err(ScanError {
            offset: 0,
            reason: "request body larger than 4 GiB",
        });
    }
    let mut p = Parser { b: body, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return Err(p.err("request body must be a JSON object"));
    }
    let open = p.i;
    p.i += 1;
    let mut out = Scan::default();
    p.ws();
    if p.peek() != Some(b'}') {
        loop {
            p.ws();
            let key_start = p.i;
            let raw = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value_start = p.i;
            let key = if raw.escaped {
                Key::of(raw.decode().as_bytes())
            } else {
                Key::of(raw.raw)
            };
            match key {
                Some(Key::Model) if p.peek() == Some(b'"') => {
                    let s = p.string()?;
                    out.model = Some(Model::Str {
                        value: s.decode(),
                        span: value_start..p.i,
                    });
                }
                Some(Key::Model) => {
                    p.value()?;
                    out.model = Some(Model::NotString);
                }
                Some(Key::Stream) => {
                    p.value()?;
                    out.stream = match p.b.get(value_start..p.i) {
                        Some(b"true") => Some(true),
                        Some(b"false") => Some(false),
                        _ => None,
                    };
                }
                _ => p.value()?,
            }
            if let Some(key) = key {
                if out.members.len() == MAX_KNOWN_MEMBERS {
                    return Err(ScanError {
                        offset: key_start,
                        reason: "too many repeated top-level keys",
                    });
                }
                // Offsets fit: the body was checked to be below 4 GiB.
                out.members.push(Member {
                    key,
                    start: key_start as u32,
                    value_start: value_start as u32,
                    value_end: p.i as u32,
                });
            }
            p.ws();
            match p.peek() {
                Some(b',') => p.i += 1,
                Some(b'}') => break,
                _ => return Err(p.err("expected ',' or '}'")),
            }
        }
    }
    out.object = open..p.i;
    p.i += 1;
    p.ws();
    if p.i != body.len() {
        return Err(p.err("trailing characters after the JSON object"));
    }
    Ok(out)
}

struct RawStr<'a> {
    /// Bytes between the quotes, escapes not decoded.
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> RawStr<'a> {
    fn decode(&self) -> Cow<'a, str> {
        if !self.escaped {
            // The whole body was checked to be UTF-8 and strings end on ASCII quotes.
            return match std::str::from_utf8(self.raw) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => Cow::Owned(String::from_utf8_lossy(self.raw).into_owned()),
            };
        }
        Cow::Owned(unescape(self.raw))
    }
}

/// Decodes JSON escapes of a string already validated by the scanner.
pub(crate) fn unescape(raw: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw, i).unwrap_or(0xFFFD);
                i += 4;
                if (0xD800..0xDC00).contains(&hi) {
                    let lo = hex4(raw, i + 2).unwrap_or(0);
                    i += 6;
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                    char::from_u32(cp).unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(hi).unwrap_or('\u{FFFD}')
                }
            }
            _ => '\u{FFFD}',
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).unwrap_or_default()
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// The index of the first byte at or after `i` that is `"`, `\\` or a control character
/// (`b.len()` if none): the bytes a string scan must look at. Eight bytes at a time
/// (SWAR: a word with none of them is skipped whole).
#[inline]
pub(crate) fn skip_plain(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let Ok(arr) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let w = u64::from_le_bytes(arr);
        let q = w ^ (LO * u64::from(b'"'));
        let s = w ^ (LO * u64::from(b'\\'));
        // A byte that is zero after the xor / below 0x20 sets its high bit (no false negatives).
        let hits = (q.wrapping_sub(LO) & !q)
            | (s.wrapping_sub(LO) & !s)
            | (w.wrapping_sub(LO * 0x20) & !w);
        if hits & HI != 0 {
            break;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    b.len()
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn err(&self, reason: &'static str) -> ScanError {
        ScanError {
            offset: self.i,
            reason,
        }
    }

    fn err_at(&self, offset: usize, reason: &'static str) -> ScanError {
        ScanError { offset, reason }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(match c {
                b':' => "expected ':'",
                _ => "unexpected character",
            }))
        }
    }

    /// Parses a string token starting at `"`; leaves `i` after the closing quote.
    fn string(&mut self) -> Result<RawStr<'a>, ScanError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = skip_plain(self.b, self.i);
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    let raw = self.b.get(start..self.i).unwrap_or_default();
                    self.i += 1;
                    return Ok(RawStr { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0..=0x1F => return Err(self.err("control character in string")),
                _ => self.i += 1,
            }
        }
    }

    /// Validates one escape sequence starting at `\`.
    fn escape(&mut self) -> Result<(), ScanError> {
        self.i += 1;
        match self.next() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(()),
            Some(b'u') => {
                let cp = hex4(self.b, self.i).ok_or_else(|| self.err("invalid \\u escape"))?;
                self.i += 4;
                if (0xDC00..0xE000).contains(&cp) {
                    return Err(self.err("lone trailing surrogate in \\u escape"));
                }
                if (0xD800..0xDC00).contains(&cp) {
                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                        return Err(self.err("lone leading surrogate in \\u escape"));
                    }
                    let lo =
                        hex4(self.b, self.i + 2).ok_or_else(|| self.err("invalid \\u escape"))?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(self.err("invalid surrogate pair in \\u escape"));
                    }
                    self.i += 6;
                }
                Ok(())
            }
            _ => Err(self.err_at(self.i.saturating_sub(1), "invalid escape")),
        }
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    /// Skips one complete JSON value of any depth, validating it.
    fn value(&mut self) -> Result<(), ScanError> {
        // Containers still open, one bit each (1 = object): a body of brackets costs an
        // eighth of its size here, not eight times it.
        let mut stack = BitStack::default();
        loop {
            // Parse one value start.
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        stack.push(true);
                        self.member_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        stack.push(false);
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                None => return Err(self.err("unexpected end of input")),
                _ => return Err(self.err("expected a value")),
            }
            // A value ended: close containers or move to the next element.
            loop {
                let Some(is_obj) = stack.last() else {
                    return Ok(());
                };
                self.ws();
                match (self.next(), is_obj) {
                    (Some(b','), true) => {
                        self.member_key()?;
                        break;
                    }
                    (Some(b','), false) => break,
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        stack.pop();
                    }
                    (None, _) => return Err(self.err("unexpected end of input")),
                    _ => {
                        return Err(self.err_at(
                            self.i.saturating_sub(1),
                            if is_obj {
                                "expected ',' or '}'"
                            } else {
                                "expected ',' or ']'"
                            },
                        ))
                    }
                }
            }
        }
    }

    /// Parses `"key" :` inside an object.
    fn member_key(&mut self) -> Result<(), ScanError> {
        self.ws();
        self.string()?;
        self.ws();
        self.expect(b':')
    }
}

/// A stack of booleans, one bit each.
#[derive(Default)]
struct BitStack {
    words: Vec<u64>,
    len: usize,
}

impl BitStack {
    fn push(&mut self, bit: bool) {
        let (word, shift) = (self.len / 64, self.len % 64);
        if word == self.words.len() {
            self.words.push(0);
        }
        if let Some(w) = self.words.get_mut(word) {
            *w = (*w & !(1 << shift)) | (u64::from(bit) << shift);
        }
        self.len += 1;
    }

    fn last(&self) -> Option<bool> {
        let top = self.len.checked_sub(1)?;
        let w = self.words.get(top / 64)?;
        Some(w >> (top % 64) & 1 == 1)
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests;
