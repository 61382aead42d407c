//! The model rewrite (`rewrite::splice_string`) against serde_json.
//!
//! Input: `body 0xFF new-model`. Asserts: splicing never panics, whatever the span; a new
//! model encoded by `push_json_string` reads back as itself; and for a body the scanner and
//! serde_json accept, replacing the `model` token yields a body both still accept, holding the
//! same object with only `model` changed, and whose scanned model is the new one.
//! Why: the filter forwards the spliced bytes, never a re-serialised document; a bad escape or
//! an off-by-one span would send the engine a body that says something else, or nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::rewrite::{push_json_string, splice_string};
use modelroute::scan::{scan, Model};
use modelroute_fuzz::{must_parse, parts, serde_object};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let [body, name] = parts::<2>(data);
    let name = String::from_utf8_lossy(name);

    let mut token = Vec::new();
    push_json_string(&mut token, &name);
    assert_eq!(must_parse::<String>("an encoded model", &token), name);

    // Any span, even a reversed or out-of-range one, is answered without a panic.
    let (a, b) = (name.len() % (body.len() + 2), body.len() / 2);
    let _ = splice_string(body, a..b, &name);
    let _ = splice_string(body, b..a, &name);

    let Ok(s) = scan(body) else { return };
    let Some(Model::Str { span, .. }) = s.model else {
        return;
    };
    let Some(Ok(mut want)) = serde_object(body) else {
        return;
    };
    let out = splice_string(body, span.clone(), &name);
    assert_eq!(out.len(), body.len() - span.len() + token.len());
    match scan(&out).map(|s| s.model) {
        Ok(Some(Model::Str { value, span: at })) => {
            assert_eq!(value, name);
            assert_eq!(at, span.start..span.start + token.len());
        }
        other => panic!("the rewritten body scans as {other:?}"),
    }
    want.insert("model".into(), Value::String(name.into_owned()));
    assert_eq!(
        must_parse::<Map<String, Value>>("the rewritten body", &out),
        want
    );
});
