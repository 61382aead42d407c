use super::*;
use crate::rng::Rng;
use serde_json::{json, Value};

fn scan_whole(body: &[u8], sse: bool) -> Usage {
    let mut s = if sse {
        UsageScanner::sse()
    } else {
        UsageScanner::json()
    };
    s.feed(body);
    s.usage()
}

fn scan_split(body: &[u8], sse: bool, r: &mut Rng) -> Usage {
    let mut s = if sse {
        UsageScanner::sse()
    } else {
        UsageScanner::json()
    };
    let mut at = 0;
    while at < body.len() {
        let n = 1 + r.below(7) as usize;
        let end = (at + n).min(body.len());
        s.feed(&body[at..end]);
        at = end;
    }
    s.usage()
}

/// What serde_json says the top-level `usage` holds.
fn reference(v: &Value) -> Usage {
    let u = &v["usage"];
    Usage {
        prompt_tokens: u["prompt_tokens"].as_u64(),
        completion_tokens: u["completion_tokens"].as_u64(),
    }
}

#[test]
fn a_json_answer_s_usage_is_read() {
    let body = br#"{"id":"cmpl-1","choices":[{"text":"usage: 3","index":0}],"usage":{"prompt_tokens":12,"total_tokens":18,"completion_tokens":6}}"#;
    assert_eq!(
        scan_whole(body, false),
        Usage {
            prompt_tokens: Some(12),
            completion_tokens: Some(6)
        }
    );
}

#[test]
fn nested_usage_keys_are_not_the_answer_s() {
    let body =
        br#"{"choices":[{"usage":{"prompt_tokens":99}}],"meta":{"usage":{"completion_tokens":5}}}"#;
    assert_eq!(scan_whole(body, false), Usage::default());
}

#[test]
fn the_usage_chunk_of_a_stream_is_read_and_null_usage_is_ignored() {
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}\n\n\
data: [DONE]\n\n";
    assert_eq!(
        scan_whole(stream, true),
        Usage {
            prompt_tokens: Some(4),
            completion_tokens: Some(6)
        }
    );
}

#[test]
fn fractions_exponents_and_negatives_are_not_token_counts() {
    // Found by the fuzzer: the digits before the `.` (after the `-`) were taken as the count.
    for value in ["4444444.4444444446", "12e3", "7E1", "3.0", "-2"] {
        let body = format!(r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":{value}}}}}"#);
        assert_eq!(
            scan_whole(body.as_bytes(), false),
            Usage {
                prompt_tokens: Some(1),
                completion_tokens: None
            },
            "{value}"
        );
    }
}

#[test]
fn counts_beyond_u64_are_not_counts() {
    // As serde_json reads them (found by the fuzzer, which checks the two agree).
    let body = br#"{"usage":{"prompt_tokens":99999999999999999999999999,"completion_tokens":6}}"#;
    assert_eq!(
        scan_whole(body, false),
        Usage {
            prompt_tokens: None,
            completion_tokens: Some(6)
        }
    );
    let max = format!(r#"{{"usage":{{"completion_tokens":{}}}}}"#, u64::MAX);
    assert_eq!(
        scan_whole(max.as_bytes(), false).completion_tokens,
        Some(u64::MAX)
    );
}

#[test]
fn property_pieces_split_anywhere_give_what_the_whole_gives() {
    let mut r = Rng::new(3);
    for i in 0..3000 {
        let v = random_answer(&mut r);
        let body = if i % 2 == 0 {
            serde_json::to_vec(&v).unwrap()
        } else {
            serde_json::to_vec_pretty(&v).unwrap()
        };
        let want = reference(&v);
        assert_eq!(
            scan_whole(&body, false),
            want,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(scan_split(&body, false, &mut r), want);
        // The same document as the last event of a stream.
        let stream = format!(
            "data: {{\"choices\":[{{\"delta\":{{}}}}]}}\n\ndata: {}\n\ndata: [DONE]\n\n",
            serde_json::to_string(&v).unwrap()
        );
        assert_eq!(scan_split(stream.as_bytes(), true, &mut r), want);
    }
}

#[test]
fn property_garbage_and_truncation_never_panic() {
    let mut r = Rng::new(9);
    let alphabet = b"{}[]\":,\\ 0123456789usagepromt_kncil\n";
    for _ in 0..20_000 {
        let n = r.below(80) as usize;
        let body: Vec<u8> = (0..n)
            .map(|_| alphabet[r.below(alphabet.len() as u64) as usize])
            .collect();
        let _ = scan_split(&body, false, &mut r);
        let _ = scan_split(&body, true, &mut r);
    }
    let whole = br#"{"usage":{"prompt_tokens":12,"completion_tokens":6}}"#;
    for cut in 0..whole.len() {
        let _ = scan_whole(&whole[..cut], false);
    }
}

/// An OpenAI-style answer with noise around (and sometimes without) a top-level usage.
fn random_answer(r: &mut Rng) -> Value {
    let mut top = serde_json::Map::new();
    let words = [
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "id",
        "x\"y",
        "\\u0041",
    ];
    let word = |r: &mut Rng| words[r.below(words.len() as u64) as usize].to_string();
    for _ in 0..r.below(4) {
        let inner = json!({ word(r): {word(r): r.below(1000)}, "text": word(r) });
        top.insert(word(r) + "_other", json!([inner, r.below(5)]));
    }
    if r.below(4) > 0 {
        let mut usage = serde_json::Map::new();
        let fields = [
            "total_tokens",
            "prompt_tokens",
            "completion_tokens",
            "prompt_tokens_details",
        ];
        for _ in 0..r.below(5) {
            let f = fields[r.below(fields.len() as u64) as usize];
            let value = if f.ends_with("details") {
                json!({"cached_tokens": r.below(50)})
            } else {
                json!(r.below(100_000))
            };
            usage.insert(f.into(), value);
        }
        top.insert("usage".into(), Value::Object(usage));
    }
    top.insert("id".into(), json!(word(r)));
    Value::Object(top)
}

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6}}\n\n\
data: [DONE]\n\n";

#[test]
fn the_usage_only_chunk_is_removed_and_everything_else_is_byte_identical() {
    let mut r = Rng::new(5);
    let want = STREAM.replace(
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6}}\n\n",
        "",
    );
    for _ in 0..500 {
        let mut f = UsageChunkFilter::default();
        let mut out = Vec::new();
        let body = STREAM.as_bytes();
        let mut at = 0;
        while at < body.len() {
            let end = (at + 1 + r.below(40) as usize).min(body.len());
            out.extend(f.feed(&body[at..end]));
            at = end;
        }
        out.extend(f.finish());
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

#[test]
fn content_chunks_and_long_events_are_never_held_past_their_end() {
    let mut f = UsageChunkFilter::default();
    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    assert_eq!(f.feed(event.as_bytes()), event.as_bytes());
    let long = format!("data: {}", "x".repeat(HELD_EVENT_MAX + 10));
    let out = f.feed(long.as_bytes());
    assert_eq!(out, long.as_bytes(), "a long event streams through");
    // Its blank line split over two chunks still ends it.
    assert_eq!(f.feed(b"\n"), b"\n");
    assert_eq!(f.feed(b"\n"), b"\n");
    let usage = "data: {\"choices\":[],\"usage\":{\"completion_tokens\":1}}\n\n";
    assert!(
        f.feed(usage.as_bytes()).is_empty(),
        "the next event is judged on its own"
    );
    // A usage chunk with content choices is the client's (it asked, or the engine sent it).
    let mixed = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"completion_tokens\":1}}\n\n";
    assert_eq!(f.feed(mixed.as_bytes()), mixed.as_bytes());
}
