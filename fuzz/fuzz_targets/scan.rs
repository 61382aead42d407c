//! The body scanner against serde_json.
//!
//! Asserts: `scan` never panics; it accepts exactly the bodies serde_json accepts as one
//! top-level object (except a body repeating known keys past `MAX_KNOWN_MEMBERS`, which it
//! refuses on purpose, and documents nested past serde_json's recursion limit, where there is
//! no reference); and when both accept, `model`, `stream` and every known member's value are
//! serde_json's (last duplicate wins), and every recorded span holds what it claims.
//! Why: the filter routes on what the scanner reads while the engine acts on what a real JSON
//! parser reads; any difference lets a client route one way and be served another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::scan::{scan, Key, Model, MAX_KNOWN_MEMBERS};
use modelroute_fuzz::{must_parse, serde_object};
use serde_json::{Map, Value};

fuzz_target!(|body: &[u8]| {
    let ours = scan(body);
    let Some(theirs) = serde_object(body) else {
        return;
    };
    let (s, map) = match (ours, theirs) {
        (Ok(s), Ok(map)) => (s, map),
        (Err(_), Err(_)) => return,
        (Err(e), Ok(_)) if e.reason == "too many repeated top-level keys" => return,
        (ours, theirs) => panic!(
            "scan {:?} but serde_json {:?} on {:?}",
            ours.map(|_| "accepts"),
            theirs.map(|_| "accepts"),
            String::from_utf8_lossy(body)
        ),
    };
    assert_eq!(body.get(s.object.start), Some(&b'{'));
    assert_eq!(body.get(s.object.end), Some(&b'}'));
    assert!(s.members.len() <= MAX_KNOWN_MEMBERS);
    for m in &s.members {
        assert!(s.object.start < m.span().start && m.span().end <= s.object.end);
        assert_eq!(m.span().end, m.value().end);
        // The span runs from the key to the value: `"key" : value`, nothing around it.
        let mut member = b"{".to_vec();
        member.extend_from_slice(&body[m.span()]);
        member.push(b'}');
        let one: Map<String, Value> = must_parse("a member span", &member);
        assert_eq!(one.len(), 1);
        assert!(one.contains_key(m.key.name()));
    }
    match (&s.model, map.get("model")) {
        (None, None) => {}
        (Some(Model::Str { value, span }), Some(Value::String(want))) => {
            assert_eq!(value, want);
            assert_eq!(
                &must_parse::<String>("the model span", &body[span.clone()]),
                want
            );
        }
        (Some(Model::NotString), Some(want)) => assert!(!want.is_string()),
        (got, want) => panic!("model: scan {got:?}, serde_json {want:?}"),
    }
    assert_eq!(s.stream, map.get("stream").and_then(Value::as_bool));
    for key in Key::ALL {
        let want = map.get(key.name());
        let got = s
            .member(key)
            .map(|span| must_parse::<Value>("a member value", &body[span]));
        assert_eq!(got.as_ref(), want, "member {}", key.name());
    }
});
