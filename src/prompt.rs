//! The prompt text prefix-cache scoring hashes, taken from the scanned body without a DOM for
//! completions: `prompt` (a string: its raw bytes; an array: its raw JSON), `input`
//! (responses, embeddings). Chat `messages` are rendered consistently as `role\ncontent\n`
//! per message (text parts concatenated), so formatting differences between clients do not
//! change the hashes.

use std::borrow::Cow;

use serde::Deserialize;

use crate::scan::Scan;

/// The prompt text, at most about `cap` bytes (prefix hashing never reads further, so long
/// chat bodies are not rendered past it).
pub fn prompt_text<'a>(body: &'a [u8], scan: &Scan<'_>, cap: usize) -> Cow<'a, [u8]> {
    if let Some(span) = scan.member(body, "messages") {
        return Cow::Owned(render_messages(body.get(span).unwrap_or_default(), cap));
    }
    for key in ["prompt", "input"] {
        if let Some(span) = scan.member(body, key) {
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

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Cow<'a, str>,
    #[serde(default)]
    content: Content<'a>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Content<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
    #[default]
    None,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

fn render_messages(raw: &[u8], cap: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len().min(cap.saturating_add(256)));
    let mut de = serde_json::Deserializer::from_slice(raw);
    // Stops with an error once `cap` bytes are rendered: what came before is kept.
    if serde::Deserializer::deserialize_seq(&mut de, Render { out: &mut out, cap }).is_err()
        && out.is_empty()
    {
        return raw.get(..cap.min(raw.len())).unwrap_or_default().to_vec();
    }
    out
}

struct Render<'o> {
    out: &'o mut Vec<u8>,
    cap: usize,
}

impl Render<'_> {
    /// Appends at most what is left below the cap.
    fn push(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.out.len());
        self.out
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }
}

impl<'de> serde::de::Visitor<'de> for Render<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of chat messages")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(m) = seq.next_element::<Message<'de>>()? {
            self.push(m.role.as_bytes());
            self.push(b"\n");
            match m.content {
                Content::Text(t) => self.push(t.as_bytes()),
                Content::Parts(parts) => parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .for_each(|t| self.push(t.as_bytes())),
                Content::None => {}
            }
            self.push(b"\n");
            if self.out.len() >= self.cap {
                return Err(serde::de::Error::custom("enough prompt"));
            }
        }
        Ok(())
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
}
