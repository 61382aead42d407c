//! The prompt text prefix-cache scoring hashes, taken from the scanned body without a DOM for
//! completions: `prompt` (a string: its raw bytes; an array: its raw JSON), `input`
//! (responses, embeddings). Chat `messages` are rendered consistently as `role\ncontent\n`
//! per message (text parts concatenated), so formatting differences between clients do not
//! change the hashes.

use std::borrow::Cow;

use serde::Deserialize;

use crate::scan::Scan;

pub fn prompt_text<'a>(body: &'a [u8], scan: &Scan<'_>) -> Cow<'a, [u8]> {
    if let Some(span) = scan.member(body, "messages") {
        return Cow::Owned(render_messages(body.get(span).unwrap_or_default()));
    }
    for key in ["prompt", "input"] {
        if let Some(span) = scan.member(body, key) {
            let raw = body.get(span).unwrap_or_default();
            // A string's bytes without its quotes; anything else as written.
            let inner = raw
                .strip_prefix(b"\"")
                .and_then(|r| r.strip_suffix(b"\""))
                .unwrap_or(raw);
            return Cow::Borrowed(inner);
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

fn render_messages(raw: &[u8]) -> Vec<u8> {
    let Ok(messages) = serde_json::from_slice::<Vec<Message<'_>>>(raw) else {
        return raw.to_vec();
    };
    let mut out = Vec::with_capacity(raw.len());
    for m in messages {
        out.extend_from_slice(m.role.as_bytes());
        out.push(b'\n');
        match m.content {
            Content::Text(t) => out.extend_from_slice(t.as_bytes()),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .for_each(|t| out.extend_from_slice(t.as_bytes())),
            Content::None => {}
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan;

    fn text(body: &str) -> String {
        let s = scan(body.as_bytes()).unwrap();
        String::from_utf8(prompt_text(body.as_bytes(), &s).into_owned()).unwrap()
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
}
