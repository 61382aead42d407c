//! Byte-splicing body rewrites: replace one JSON token without re-serialising the document.

use std::ops::Range;

/// Returns `body` with the bytes in `span` replaced by `value` encoded as a JSON string.
pub fn splice_string(body: &[u8], span: Range<usize>, value: &str) -> Vec<u8> {
    let (Some(head), Some(tail)) = (body.get(..span.start), body.get(span.end..)) else {
        return body.to_vec();
    };
    let mut out = Vec::with_capacity(head.len() + value.len() + 2 + tail.len());
    out.extend_from_slice(head);
    push_json_string(&mut out, value);
    out.extend_from_slice(tail);
    out
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 2);
    push_json_string(&mut v, s);
    v
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, Model};

    fn rewrite(body: &str, to: &str) -> String {
        let Some(Model::Str { span, .. }) = scan(body.as_bytes()).unwrap().model else {
            panic!()
        };
        String::from_utf8(splice_string(body.as_bytes(), span, to)).unwrap()
    }

    #[test]
    fn only_the_model_token_changes() {
        let body = "{\"prompt\":\"model\",\n \"model\" : \"deepseek-simple\" ,\"x\":[1]}";
        assert_eq!(rewrite(body, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"),
            "{\"prompt\":\"model\",\n \"model\" : \"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B\" ,\"x\":[1]}");
    }

    #[test]
    fn property_rewritten_body_parses_to_the_same_document_with_new_model() {
        let names = [
            "m",
            "a\"b",
            "back\\slash",
            "tab\tnew\nline",
            "\u{1}ctl",
            "ünï😀",
            "",
        ];
        let body =
            r#"{"model":"lora\u002dA","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        for n in names {
            let out = rewrite(body, n);
            let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["model"], n);
            let mut orig: serde_json::Value = serde_json::from_str(body).unwrap();
            v["model"] = serde_json::Value::Null;
            orig["model"] = serde_json::Value::Null;
            assert_eq!(v, orig);
        }
    }
}
