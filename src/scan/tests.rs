use super::*;
use crate::rng::Rng;

fn model_of(body: &str) -> Option<String> {
    match scan(body.as_bytes()).ok()?.model? {
        Model::Str { value, .. } => Some(value.into_owned()),
        Model::NotString => None,
    }
}

#[test]
fn finds_top_level_model_and_its_span() {
    let body = r#"{"prompt":"x","model":"deepseek-simple","temperature":0}"#;
    let s = scan(body.as_bytes()).unwrap();
    let Some(Model::Str { value, span }) = s.model else {
        panic!("no model")
    };
    assert_eq!(value, "deepseek-simple");
    assert_eq!(&body[span], "\"deepseek-simple\"");
}

#[test]
fn nested_model_keys_are_not_the_request_model() {
    let body =
        r#"{"messages":[{"role":"user","content":"hi","model":"inner"}],"meta":{"model":"x"}}"#;
    assert_eq!(scan(body.as_bytes()).unwrap().model, None);
    let body = r#"{"meta":{"model":"x"},"model":"outer"}"#;
    assert_eq!(model_of(body).as_deref(), Some("outer"));
}

#[test]
fn last_duplicate_model_wins() {
    assert_eq!(
        model_of(r#"{"model":"a","model":"b"}"#).as_deref(),
        Some("b")
    );
}

#[test]
fn escaped_model_is_decoded() {
    assert_eq!(
        model_of(r#"{"model":"lora\u002dA"}"#).as_deref(),
        Some("lora-A")
    );
    assert_eq!(
        model_of(r#"{"model":"a\"b\\c\ud83d\ude00"}"#).as_deref(),
        Some("a\"b\\c😀")
    );
    assert_eq!(model_of(r#"{"mod\u0065l":"m"}"#).as_deref(), Some("m"));
}

#[test]
fn non_string_model_is_reported_as_such() {
    let s = scan(br#"{"model":{"a":[1,2]}}"#).unwrap();
    assert_eq!(s.model, Some(Model::NotString));
    let s = scan(br#"{"model":null}"#).unwrap();
    assert_eq!(s.model, Some(Model::NotString));
}

#[test]
fn stream_flag_is_read_only_when_boolean() {
    assert_eq!(scan(br#"{"stream":true}"#).unwrap().stream, Some(true));
    assert_eq!(scan(br#"{"stream":false}"#).unwrap().stream, Some(false));
    assert_eq!(scan(br#"{"stream":"yes"}"#).unwrap().stream, None);
    assert_eq!(scan(br#"{"x":{"stream":true}}"#).unwrap().stream, None);
}

#[test]
fn non_object_bodies_are_rejected() {
    for b in ["", "  ", "[]", "\"model\"", "1", "null", "{}{}", "{} x"] {
        assert!(scan(b.as_bytes()).is_err(), "{b:?} accepted");
    }
    assert!(scan(b" { } \n").is_ok());
}

#[test]
fn malformed_documents_are_rejected() {
    for b in [
        r#"{"model":"a""#,
        r#"{"model":"a",}"#,
        r#"{"model" "a"}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":-}"#,
        r#"{"a":tru}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\udc00"}"#,
        "{\"a\":\"tab\there\"}",
        r#"{"a":{"b":1]}"#,
        r#"{a:1}"#,
    ] {
        assert!(scan(b.as_bytes()).is_err(), "{b} accepted");
        assert!(
            serde_json::from_str::<serde_json::Value>(b).is_err(),
            "serde accepts {b}"
        );
    }
    assert!(scan(b"{\"a\":\"\xff\"}").is_err());
}

#[test]
fn deep_nesting_costs_no_native_stack() {
    let depth = 100_000;
    let body = format!(
        "{{\"a\":{}{}, \"model\":\"m\"}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(model_of(&body).as_deref(), Some("m"));
}

// --- property: the scanner agrees with serde_json -------------------------------------------

fn gen_string(r: &mut Rng, out: &mut String) {
    const PIECES: &[&str] = &[
        "a",
        "model",
        "é",
        "😀",
        "\\n",
        "\\\"",
        "\\u0041",
        "\\ud83d\\ude00",
        " ",
        "\\\\",
        "/",
    ];
    out.push('"');
    for _ in 0..r.below(5) {
        out.push_str(PIECES[r.below(PIECES.len() as u64) as usize]);
    }
    out.push('"');
}

fn gen_value(r: &mut Rng, depth: u32, out: &mut String) {
    let kind = if depth > 4 { r.below(5) } else { r.below(7) };
    match kind {
        0 => gen_string(r, out),
        1 => out.push_str(["0", "-1", "3.25", "1e9", "-0.5E-3", "42"][r.below(6) as usize]),
        2 => out.push_str(["true", "false", "null"][r.below(3) as usize]),
        3 | 4 => gen_string(r, out),
        5 => {
            out.push('[');
            for i in 0..r.below(4) {
                if i > 0 {
                    out.push(',');
                }
                gen_value(r, depth + 1, out);
            }
            out.push(']');
        }
        _ => gen_object(r, depth + 1, out),
    }
}

fn gen_object(r: &mut Rng, depth: u32, out: &mut String) {
    out.push('{');
    for i in 0..r.below(5) {
        if i > 0 {
            out.push_str([",", " , ", ",\n"][r.below(3) as usize]);
        }
        if r.below(4) == 0 {
            out.push_str(["\"model\"", "\"stream\""][r.below(2) as usize]);
        } else {
            gen_string(r, out);
        }
        out.push(':');
        gen_value(r, depth, out);
    }
    out.push('}');
}

fn mutate(r: &mut Rng, doc: &str) -> Vec<u8> {
    let mut b = doc.as_bytes().to_vec();
    if b.is_empty() {
        return b;
    }
    let at = r.below(b.len() as u64) as usize;
    match r.below(3) {
        0 => {
            b.remove(at);
        }
        1 => b.insert(at, b"{}[],:\"\\0-e."[r.below(12) as usize]),
        _ => b.truncate(at),
    }
    b
}

#[test]
fn property_scanner_agrees_with_serde_json_on_validity_and_model() {
    let mut r = Rng::new(0x5eed);
    for _ in 0..20_000 {
        let mut doc = String::new();
        gen_object(&mut r, 0, &mut doc);
        let bodies = [doc.clone().into_bytes(), mutate(&mut r, &doc)];
        for body in bodies {
            let ours = scan(&body);
            let theirs = serde_json::from_slice::<serde_json::Value>(&body);
            let theirs_obj = theirs.as_ref().ok().and_then(|v| v.as_object());
            assert_eq!(
                ours.is_ok(),
                theirs_obj.is_some(),
                "disagree on {:?}",
                String::from_utf8_lossy(&body)
            );
            if let (Ok(s), Some(obj)) = (ours, theirs_obj) {
                let want = obj.get("model");
                match (s.model, want) {
                    (None, None) => {}
                    (Some(Model::Str { value, span }), Some(serde_json::Value::String(w))) => {
                        assert_eq!(&value, w);
                        let token: String = serde_json::from_slice(&body[span]).unwrap();
                        assert_eq!(&token, w);
                    }
                    (Some(Model::NotString), Some(w)) => assert!(!w.is_string()),
                    (a, b) => panic!(
                        "model disagree {a:?} vs {b:?} in {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
                assert_eq!(s.stream, obj.get("stream").and_then(|v| v.as_bool()));
            }
        }
    }
}

#[test]
fn members_record_the_known_top_level_keys_only() {
    let body = br#"{ "model" : "m", "stream":true, "nested":{"a":[1,{"b":2}],"prompt":"in"}, "max_tokens": 7, "messages":[{"x":1}] }"#;
    let s = scan(body).unwrap();
    let keys: Vec<Key> = s.members.iter().map(|m| m.key).collect();
    assert_eq!(
        keys,
        [Key::Model, Key::Stream, Key::MaxTokens, Key::Messages]
    );
    assert_eq!(&body[s.member(Key::Messages).unwrap()], br#"[{"x":1}]"#);
    assert_eq!(&body[s.member(Key::MaxTokens).unwrap()], b"7");
    assert_eq!(s.member(Key::Prompt), None, "nested keys are not top-level");
    assert_eq!(&body[s.members[1].span()], br#""stream":true"#);
    assert_eq!(body[s.object.start], b'{');
    assert_eq!(body[s.object.end], b'}');
}

#[test]
fn escaped_keys_are_recognised_as_json_means_them() {
    let body = br#"{"stre\u0061m":true,"m\u0061x_tokens":3,"\u0070rompt":"p"}"#;
    let s = scan(body).unwrap();
    assert_eq!(s.stream, Some(true));
    assert_eq!(&body[s.member(Key::MaxTokens).unwrap()], b"3");
    assert_eq!(&body[s.member(Key::Prompt).unwrap()], br#""p""#);
}

#[test]
fn known_keys_repeated_past_the_limit_are_refused() {
    let body = |n: usize| format!("{{{}\"model\":\"m\"}}", "\"stream\":true,".repeat(n));
    let ok = body(MAX_KNOWN_MEMBERS - 1);
    assert_eq!(
        scan(ok.as_bytes()).unwrap().members.len(),
        MAX_KNOWN_MEMBERS
    );
    let e = scan(body(MAX_KNOWN_MEMBERS).as_bytes()).unwrap_err();
    assert_eq!(e.reason, "too many repeated top-level keys");
    // Unknown keys are not recorded, so they may repeat freely.
    let many = format!("{{{}\"model\":\"m\"}}", "\"x\":1,".repeat(10_000));
    assert!(scan(many.as_bytes()).is_ok());
}

#[test]
fn every_key_round_trips_through_its_name() {
    for k in Key::ALL {
        assert_eq!(Key::of(k.name().as_bytes()), Some(k));
    }
    assert_eq!(Key::of(b"Stream"), None, "keys are case-sensitive");
}

#[test]
fn property_skip_plain_finds_the_first_special_byte() {
    let mut r = Rng::new(77);
    let alphabet = b"abc \"\\\x01\x1f\x7f\xc3\xa9~ ";
    for _ in 0..20_000 {
        let n = r.below(40) as usize;
        let b: Vec<u8> = (0..n)
            .map(|_| {
                if r.below(6) == 0 {
                    alphabet[r.below(alphabet.len() as u64) as usize]
                } else {
                    b'x'
                }
            })
            .collect();
        let start = r.below(n as u64 + 1) as usize;
        let want = b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .map_or(n, |k| start + k);
        assert_eq!(skip_plain(&b, start), want, "{b:?} from {start}");
    }
}
