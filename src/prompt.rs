//! The prompt text prefix-cache scoring hashes, taken from the scanned body without a DOM for
//! completions: `prompt` (a string: its raw bytes; an array: its raw JSON), `input`
//! (responses, embeddings). Chat `messages` are rendered consistently as `role\ncontent\n`
//! per message (text parts concatenated), so formatting differences between clients do not
//! change the hashes.

use std::borrow::Cow;

use crate::scan::{Key, Scan};

/// The prompt text, at most about `cap` bytes (prefix hashing never reads further, so long
/// chat bodies are not rendered past it).
pub fn prompt_text<'a>(body: &'a [u8], scan: &Scan<'_>, cap: usize) -> Cow<'a, [u8]> {
    if let Some(span) = scan.member(Key::Messages) {
        return Cow::Owned(render_messages(body.get(span).unwrap_or_default(), cap));
    }
    for key in [Key::Prompt, Key::Input] {
        if let Some(span) = scan.member(key) {
            let raw = body.get(span).unwrap_or_default();
            // A string's bytes without its quotes; anything else as written.
            let inner = raw
                .strip_prefix(b"\"")
                .and_then(|r| r.strip_suffix(b"\""))
                .unwrap_or(raw);
            return Cow::Borrowed(inner.get(..cap.min(inner.len())).unwrap_or(inner));
        }
    }
    Cow::Borrowed(&[])
}

/// Kthena's estimate of a request's input tokens, made before routing: a quarter of the
/// prompt's characters, rounded up. Counted on the JSON text of `messages` (else `prompt`,
/// else `input`) as the client wrote it, without rendering or copying it: for compact chat
/// JSON, `{"role":"user","content":"..."},` is within one character per message of Kthena's
/// `<|im_start|>user\n...<|im_end|>\n` rendering (escapes and whitespace count as written).
/// Eight bytes a step, so a long prompt costs little next to copying it out of Envoy.
pub fn estimate_input_tokens(body: &[u8], scan: &Scan<'_>) -> u64 {
    let span = [Key::Messages, Key::Prompt, Key::Input]
        .into_iter()
        .find_map(|k| scan.member(k));
    let Some(raw) = span.and_then(|s| body.get(s)) else {
        return 0;
    };
    // A string's quotes are not the prompt's.
    let text = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(raw);
    utf8_chars(text).div_ceil(4)
}

/// UTF-8 characters in `bytes`: the bytes that are not continuation bytes (`10xxxxxx`),
/// counted eight at a time.
fn utf8_chars(bytes: &[u8]) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    let mut continuation = 0u64;
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().unwrap_or_default());
        // Bit 7 set and bit 6 clear, read at each byte's bit 7.
        continuation += u64::from((x & !(x << 1) & HIGH).count_ones());
    }
    continuation += words
        .remainder()
        .iter()
        .filter(|&&b| b & 0xC0 == 0x80)
        .count() as u64;
    bytes.len() as u64 - continuation
}

/// Renders a chat `messages` array (already validated JSON) as `role\ncontent\n` per message,
/// stopping once `cap` bytes are out: the work is proportional to the rendered prefix, not to
/// the body (no DOM, no copy of long contents). Strings without escapes are copied as they
/// are; escaped ones are decoded.
fn render_messages(raw: &[u8], cap: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(cap.min(raw.len()).saturating_add(64));
    let mut w = Walker { b: raw, i: 0 };
    w.ws();
    if w.peek() != Some(b'[') {
        return raw.get(..cap.min(raw.len())).unwrap_or_default().to_vec();
    }
    w.i += 1;
    while out.len() < cap {
        w.ws();
        match w.peek() {
            None | Some(b']') => break,
            Some(b',') => w.i += 1,
            Some(b'{') => w.message(&mut out, cap),
            Some(_) => w.skip(),
        }
    }
    out
}

/// A raw string token: the bytes between the quotes and whether they hold escapes.
#[derive(Clone, Copy)]
struct Token<'a> {
    raw: &'a [u8],
    escaped: bool,
}

fn push_capped(out: &mut Vec<u8>, cap: usize, bytes: &[u8]) {
    let room = cap.saturating_sub(out.len());
    out.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
}

fn push_token(out: &mut Vec<u8>, cap: usize, t: Token<'_>) {
    if t.escaped {
        // Decode only what can still fit: an escape is at most 6 raw bytes per output byte,
        // so 6 x the room (cut at a whole escape / character) always fills it.
        let room = cap.saturating_sub(out.len());
        let cut = safe_cut(t.raw, room.saturating_mul(6));
        let decoded = crate::scan::unescape(t.raw.get(..cut).unwrap_or_default());
        push_capped(out, cap, decoded.as_bytes());
    } else {
        push_capped(out, cap, t.raw);
    }
}

/// The first boundary at or after `want` bytes that splits neither an escape sequence nor a
/// UTF-8 character (or the whole token).
fn safe_cut(raw: &[u8], want: usize) -> usize {
    let mut i = 0;
    while i < want && i < raw.len() {
        i += match raw.get(i) {
            Some(b'\\') => match (raw.get(i + 1), raw.get(i + 6), raw.get(i + 7)) {
                (Some(b'u'), Some(b'\\'), Some(b'u'))
                    if is_high_surrogate(raw.get(i + 2..i + 6)) =>
                {
                    12
                }
                (Some(b'u'), _, _) => 6,
                _ => 2,
            },
            Some(&c) if c >= 0xF0 => 4,
            Some(&c) if c >= 0xE0 => 3,
            Some(&c) if c >= 0xC0 => 2,
            _ => 1,
        };
    }
    i.min(raw.len())
}

fn is_high_surrogate(hex: Option<&[u8]>) -> bool {
    let Some(hex) = hex.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    u32::from_str_radix(hex, 16).is_ok_and(|v| (0xD800..0xDC00).contains(&v))
}

struct Walker<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Walker<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// At a `"`: the string token; leaves `i` after the closing quote.
    fn string(&mut self) -> Token<'a> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = crate::scan::skip_plain(self.b, self.i);
            match self.peek() {
                None => break,
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.i += 2;
                }
                // Not in valid JSON strings; step over it.
                Some(_) => self.i += 1,
            }
        }
        let raw = self
            .b
            .get(start..self.i.min(self.b.len()))
            .unwrap_or_default();
        self.i += 1;
        Token { raw, escaped }
    }

    /// At a member's `"`: its key, leaving `i` at the value.
    fn member_key(&mut self) -> Token<'a> {
        let key = self.string();
        self.ws();
        if self.peek() == Some(b':') {
            self.i += 1;
        }
        self.ws();
        key
    }

    /// Skips one value of any depth.
    fn skip(&mut self) {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return,
                Some(b'"') => {
                    self.string();
                }
                Some(b'{' | b'[') => {
                    depth += 1;
                    self.i += 1;
                }
                Some(b'}' | b']') => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                    self.i += 1;
                }
                Some(b',' | b':') if depth > 0 => self.i += 1,
                Some(b',') => return,
                Some(_) => self.i += 1,
            }
            if depth == 0
                && !matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z')
                )
            {
                return;
            }
        }
    }

    /// At a `{`: one message; appends its rendering.
    fn message(&mut self, out: &mut Vec<u8>, cap: usize) {
        self.i += 1;
        let mut role: Option<Token<'a>> = None;
        let mut content: Vec<Token<'a>> = Vec::new();
        // Role first (the usual order): role and content are written as they are read, and
        // reading stops at the cap, so a long content is never walked to its end.
        let mut streamed = false;
        loop {
            self.ws();
            match self.peek() {
                None => break,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                Some(b',') => self.i += 1,
                Some(b'"') => {
                    let key = self.member_key();
                    match (key.raw, self.peek()) {
                        (b"role", Some(b'"')) => role = Some(self.string()),
                        (b"content", Some(b'"'))
                            if !streamed && content.is_empty() && role.is_some() =>
                        {
                            if let Some(r) = role.take() {
                                push_token(out, cap, r);
                            }
                            push_capped(out, cap, b"\n");
                            streamed = true;
                            if !self.stream_string(out, cap) {
                                return;
                            }
                        }
                        (b"content", Some(b'"')) => content = vec![self.string()],
                        (b"content", Some(b'[')) => content = self.parts(),
                        _ => self.skip(),
                    }
                }
                Some(_) => self.skip(),
            }
        }
        if !streamed {
            if let Some(r) = role {
                push_token(out, cap, r);
            }
            push_capped(out, cap, b"\n");
        }
        for t in content {
            push_token(out, cap, t);
        }
        push_capped(out, cap, b"\n");
    }

    /// At a `"`: writes the string's decoded bytes until it ends (true) or the cap is reached
    /// (false; the rest is not read).
    fn stream_string(&mut self, out: &mut Vec<u8>, cap: usize) -> bool {
        self.i += 1;
        loop {
            let room = cap.saturating_sub(out.len());
            if room == 0 {
                return false;
            }
            let rest = self.b.get(self.i..).unwrap_or_default();
            let window = rest.get(..room.min(rest.len())).unwrap_or_default();
            let special = crate::scan::skip_plain(window, 0);
            match (special < window.len()).then_some(special) {
                None => {
                    out.extend_from_slice(window);
                    self.i += window.len();
                    if window.len() == rest.len() {
                        return true;
                    }
                }
                Some(k) => {
                    out.extend_from_slice(window.get(..k).unwrap_or_default());
                    self.i += k;
                    if self.peek() == Some(b'"') {
                        self.i += 1;
                        return true;
                    }
                    let tail = self.b.get(self.i..).unwrap_or_default();
                    let n = safe_cut(tail, 1).max(2).min(tail.len());
                    let decoded = crate::scan::unescape(tail.get(..n).unwrap_or_default());
                    push_capped(out, cap, decoded.as_bytes());
                    self.i += n;
                }
            }
        }
    }

    /// At a `[` of content parts: the `text` strings of its objects.
    fn parts(&mut self) -> Vec<Token<'a>> {
        self.i += 1;
        let mut texts = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                None => break,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                Some(b',') => self.i += 1,
                Some(b'{') => {
                    self.i += 1;
                    loop {
                        self.ws();
                        match self.peek() {
                            None => break,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            Some(b',') => self.i += 1,
                            Some(b'"') => {
                                let key = self.member_key();
                                if key.raw == b"text" && self.peek() == Some(b'"') {
                                    texts.push(self.string());
                                } else {
                                    self.skip();
                                }
                            }
                            Some(_) => self.skip(),
                        }
                    }
                }
                Some(_) => self.skip(),
            }
        }
        texts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan;

    fn text(body: &str) -> String {
        let s = scan(body.as_bytes()).unwrap();
        String::from_utf8(prompt_text(body.as_bytes(), &s, usize::MAX).into_owned()).unwrap()
    }

    fn estimate(body: &str) -> u64 {
        estimate_input_tokens(body.as_bytes(), &scan(body.as_bytes()).unwrap())
    }

    #[test]
    fn input_estimate_is_kthenas_quarter_of_the_rendered_characters() {
        // "San Francisco is a": 18 characters.
        assert_eq!(
            estimate(r#"{"model":"m","prompt":"San Francisco is a"}"#),
            5
        );
        // <|im_start|>user\nHi<|im_end|>\n = 12 + 4 + 1 + 2 + 10 + 1 = 30 characters.
        assert_eq!(
            estimate(r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#),
            8
        );
        // Characters, not bytes: 8 x "é" (2 bytes each).
        assert_eq!(estimate(r#"{"model":"m","prompt":"éééééééé"}"#), 2);
        assert_eq!(estimate(r#"{"model":"m"}"#), 0);
    }

    #[test]
    fn completion_prompt_is_its_raw_string() {
        assert_eq!(
            text(r#"{"model":"m","prompt":"San Francisco is a"}"#),
            "San Francisco is a"
        );
        assert_eq!(text(r#"{"model":"m","prompt":["a","b"]}"#), r#"["a","b"]"#);
        assert_eq!(text(r#"{"model":"m"}"#), "");
    }

    #[test]
    fn chat_messages_render_the_same_whatever_the_formatting() {
        let a = text(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#,
        );
        let b = text("{\"messages\" : [ {\"content\": \"Be brief.\", \"role\": \"system\"},\n {\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}]} ], \"model\":\"m\"}");
        assert_eq!(a, "system\nBe brief.\nuser\nHi\n");
        assert_eq!(a, b);
    }

    #[test]
    fn rendering_stops_near_the_cap() {
        let long = "x".repeat(1000);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{long}"}},{{"role":"user","content":"tail"}}],"model":"m"}}"#
        );
        let s = scan(body.as_bytes()).unwrap();
        let capped = prompt_text(body.as_bytes(), &s, 100);
        assert!(capped.starts_with(b"user\nxxx"));
        assert!(!String::from_utf8_lossy(&capped).contains("tail"));
        let prompt = r#"{"prompt":"abcdef","model":"m"}"#;
        assert_eq!(
            &*prompt_text(prompt.as_bytes(), &scan(prompt.as_bytes()).unwrap(), 3),
            b"abc"
        );
    }

    /// The reference rendering through serde (what the walker must equal on valid input).
    fn oracle(raw: &str) -> String {
        let msgs: Vec<serde_json::Value> = serde_json::from_str(raw).unwrap();
        let mut out = String::new();
        for m in msgs {
            out += m["role"].as_str().unwrap_or("");
            out += "\n";
            match &m["content"] {
                serde_json::Value::String(t) => out += t,
                serde_json::Value::Array(parts) => {
                    for p in parts {
                        out += p["text"].as_str().unwrap_or("");
                    }
                }
                _ => {}
            }
            out += "\n";
        }
        out
    }

    #[test]
    fn property_walker_renders_like_a_full_parse() {
        let mut r = crate::rng::Rng::new(5);
        let pieces = [
            "hi",
            "a\\\"b",
            "\\u00e9t\\u00e9",
            "line\\nbreak",
            "😀",
            " ",
            "{[,:]}",
            "\\\\",
        ];
        for _ in 0..3000 {
            let mut msgs = Vec::new();
            for _ in 0..r.below(4) {
                let mut text = String::new();
                for _ in 0..r.below(4) {
                    text += pieces[r.below(pieces.len() as u64) as usize];
                }
                let role = ["user", "system", "assistant"][r.below(3) as usize];
                let m = match r.below(4) {
                    0 => format!(r#"{{"role":"{role}","content":"{text}"}}"#),
                    1 => format!(
                        r#"{{ "content" : [{{"type":"text","text":"{text}"}},{{"type":"image_url","image_url":{{"url":"x"}}}},{{"text":"{text}"}}], "role":"{role}", "name":"n"}}"#
                    ),
                    2 => format!(
                        r#"{{"role":"{role}","tool_calls":[{{"id":"1","args":{{"a":[1,2.5e3,true,null]}}}}],"content":null}}"#
                    ),
                    _ => format!(
                        r#"{{"role":"{role}","content":"{text}","extra":{{"nested":["{text}",-1]}}}}"#
                    ),
                };
                msgs.push(m);
            }
            let raw = format!("[{}]", msgs.join(" , "));
            let want = oracle(&raw);
            assert_eq!(
                String::from_utf8(render_messages(raw.as_bytes(), usize::MAX)).unwrap(),
                want,
                "{raw}"
            );
            // Capped renderings are prefixes of the full one (escapes never split).
            let cap = r.below(want.len() as u64 + 2) as usize;
            let capped = render_messages(raw.as_bytes(), cap);
            assert!(want.as_bytes().starts_with(&capped), "{raw} cap {cap}");
            assert!(capped.len() <= cap);
        }
    }
}
