//! Every PD leg builder (`pd::prefill_body`, `pd::decode_body`, `pd::edit_object`,
//! `pd::kv_transfer_params`) against the same edit done on serde_json's object.
//!
//! Input: `body 0xFF model 0xFF prefill-answer 0xFF control`. For every body the scanner and
//! serde_json accept, asserts: each leg of each protocol (vLLM sequential, vLLM KV transfer,
//! SGLang) is valid JSON, scans again (bar the known-member limit), and equals serde_json's
//! object with the protocol's members removed and set (as src/pd.rs documents); `edit_object` with any choice of known
//! keys removed and set does the same; and `kv_transfer_params` finds exactly the answer's
//! top-level `kv_transfer_params` object that serde_json finds.
//! Why: the legs are built by cutting bytes, not by re-serialising; a cut that leaves a comma,
//! drops a member or keeps a duplicate `stream` sends an engine a request nobody meant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::pd::{
    decode_body, edit_object, kv_transfer_params, prefill_body, Bootstrap, Protocol,
    KV_TRANSFER_REQUEST,
};
use modelroute::scan::{scan, Key};
use modelroute_fuzz::{json_depth, known_divergence, must_parse, parts, serde_object, SERDE_DEPTH};
use serde_json::{json, Map, Value};

type Object = Map<String, Value>;

/// Checks a leg: valid JSON, acceptable to the scanner, and the reference object. (A leg may
/// carry more known members than a client body may: the set ones are added to a body that
/// was at the limit. Legs go to engines, never through the scanner, so that is fine.)
fn check(leg: &str, out: &[u8], want: &Object) {
    let got: Object = must_parse(leg, out);
    if let Err(e) = scan(out) {
        assert!(
            e.reason == "too many repeated top-level keys",
            "{leg} does not scan ({e}): {}",
            String::from_utf8_lossy(out)
        );
    }
    assert_eq!(&got, want, "{leg}: {}", String::from_utf8_lossy(out));
}

/// `base` with `remove` taken out, then `set` put in (in order: the last one wins).
fn edited(base: &Object, remove: &[&str], set: &[(&str, Value)]) -> Object {
    let mut o = base.clone();
    for k in remove {
        o.remove(*k);
    }
    for (k, v) in set {
        o.insert((*k).to_string(), v.clone());
    }
    o
}

/// Values `edit_object` may be asked to set (raw JSON, as the filter passes them).
const VALUES: [&str; 4] = ["1", "\"m\"", "{\"a\":[true,null]}", "[]"];

fuzz_target!(|data: &[u8]| {
    let [body, model, answer, ctl] = parts::<4>(data);
    let model = String::from_utf8_lossy(model);
    let c = |i: usize| ctl.get(i).copied().unwrap_or(0);
    let bootstrap = Bootstrap {
        host: model.chars().rev().collect(),
        port: u16::from_le_bytes([c(0), c(1)]),
        room: u64::from_le_bytes([c(2), c(3), c(4), c(5), c(6), c(7), c(8), 0x7f & c(9)]),
    };

    // The prefill answer: the scanner's find is serde_json's.
    let kv = kv_transfer_params(answer);
    // Where serde_json is a reference for the params (and for a leg that carries them).
    let kv_checkable = kv.filter(|raw| {
        json_depth(raw) < SERDE_DEPTH - 1
            && !matches!(serde_json::from_slice::<Value>(raw), Err(e) if known_divergence(&e))
    });
    if let Some(reference) = serde_object(answer) {
        let want = reference
            .ok()
            .and_then(|mut o| o.remove("kv_transfer_params"))
            .filter(Value::is_object);
        let got = kv.map(|raw| must_parse::<Value>("kv_transfer_params", raw));
        // The scanner alone refuses answers repeating known keys past its limit.
        if !(got.is_none() && scan(answer).is_err_and(|e| e.reason.starts_with("too many"))) {
            assert_eq!(got, want, "answer {:?}", String::from_utf8_lossy(answer));
        }
    }

    let Ok(s) = scan(body) else { return };
    let Some(Ok(base)) = serde_object(body) else {
        return;
    };
    let m = || json!(model);
    let boot = || {
        [
            ("bootstrap_host", json!(bootstrap.host)),
            ("bootstrap_port", json!(bootstrap.port)),
            ("bootstrap_room", json!(bootstrap.room)),
        ]
    };
    let vllm_prefill = |extra: &[(&str, Value)]| {
        let mut set = vec![("model", m()), ("max_tokens", json!(1))];
        if base.contains_key("max_completion_tokens") {
            set.push(("max_completion_tokens", json!(1)));
        }
        set.extend_from_slice(extra);
        edited(&base, &["stream", "stream_options"], &set)
    };

    let out = prefill_body(body, &s, Protocol::VllmSequential, &model, None);
    check("vLLM prefill", &out, &vllm_prefill(&[]));
    let kv_request: Value = must_parse("KV_TRANSFER_REQUEST", KV_TRANSFER_REQUEST.as_bytes());
    let out = prefill_body(body, &s, Protocol::VllmKvTransfer, &model, None);
    check(
        "vLLM KV-transfer prefill",
        &out,
        &vllm_prefill(&[("kv_transfer_params", kv_request)]),
    );
    let mut sglang = vec![("model", m())];
    sglang.extend(boot());
    let out = prefill_body(body, &s, Protocol::Sglang, &model, Some(&bootstrap));
    check("SGLang prefill", &out, &edited(&base, &[], &sglang));

    let out = decode_body(body, &s, &model, None, None, None);
    check("vLLM decode", &out, &edited(&base, &[], &[("model", m())]));
    let usage = br#"{"include_usage":true}"#;
    let out = decode_body(body, &s, &model, None, None, Some(usage));
    let want = edited(
        &base,
        &[],
        &[("model", m()), ("stream_options", json!({"include_usage": true}))],
    );
    check("decode asking for usage", &out, &want);
    if let Some(raw) = kv_checkable {
        let out = decode_body(body, &s, &model, Some(raw), None, None);
        let params = must_parse::<Value>("kv_transfer_params", raw);
        let want = edited(
            &base,
            &[],
            &[("model", m()), ("kv_transfer_params", params)],
        );
        check("vLLM KV-transfer decode", &out, &want);
    }
    let out = decode_body(body, &s, &model, None, Some(&bootstrap), None);
    check("SGLang decode", &out, &edited(&base, &[], &sglang));

    // Any known keys removed, any set (a key may be in both, or set twice: the last wins).
    let bits = u32::from_le_bytes([c(10), c(11), c(12), c(13)]);
    let remove: Vec<Key> = Key::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 == 1)
        .map(|(_, k)| k)
        .collect();
    let set: Vec<(Key, Vec<u8>)> = ctl
        .iter()
        .skip(14)
        .take(6)
        .map(|&b| {
            let key = Key::ALL[usize::from(b) % Key::ALL.len()];
            (
                key,
                VALUES[usize::from(b >> 4) % VALUES.len()]
                    .as_bytes()
                    .to_vec(),
            )
        })
        .collect();
    let out = edit_object(body, &s, &remove, &set);
    let remove: Vec<&str> = remove.iter().map(|k| k.name()).collect();
    let set: Vec<(&str, Value)> = set
        .iter()
        .map(|(k, v)| (k.name(), must_parse::<Value>("a set value", v)))
        .collect();
    check("edit_object", &out, &edited(&base, &remove, &set));
});
