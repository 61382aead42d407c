use super::*;
use serde_json::{json, Value};

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

const CHAT: &str = r#"{"model":"pd","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":64,"user":"u1"}"#;

#[test]
fn protocol_follows_engine_and_connector() {
    assert_eq!(Protocol::of(Engine::Vllm, None), Protocol::VllmSequential);
    assert_eq!(
        Protocol::of(Engine::Vllm, Some("http")),
        Protocol::VllmSequential
    );
    assert_eq!(
        Protocol::of(Engine::Vllm, Some("lmcache")),
        Protocol::VllmSequential
    );
    assert_eq!(
        Protocol::of(Engine::Vllm, Some("nixl")),
        Protocol::VllmKvTransfer
    );
    assert_eq!(
        Protocol::of(Engine::Vllm, Some("mooncake")),
        Protocol::VllmKvTransfer
    );
    assert_eq!(Protocol::of(Engine::Sglang, None), Protocol::Sglang);
}

#[test]
fn vllm_prefill_leg_drops_streaming_and_asks_for_one_token() {
    let s = scan(CHAT.as_bytes()).unwrap();
    let p = parse(&prefill_body(
        CHAT.as_bytes(),
        &s,
        Protocol::VllmSequential,
        "real/model",
        None,
    ));
    assert_eq!(
        p,
        json!({"model":"real/model","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"user":"u1"})
    );
}

#[test]
fn max_completion_tokens_is_capped_only_when_present() {
    let body = br#"{"model":"pd","max_completion_tokens":99,"prompt":"x"}"#;
    let s = scan(body).unwrap();
    let p = parse(&prefill_body(body, &s, Protocol::VllmSequential, "m", None));
    assert_eq!(p["max_completion_tokens"], 1);
    assert_eq!(p["max_tokens"], 1);
    let body = br#"{"model":"pd","prompt":"x"}"#;
    let p = parse(&prefill_body(
        body,
        &scan(body).unwrap(),
        Protocol::VllmSequential,
        "m",
        None,
    ));
    assert!(p.get("max_completion_tokens").is_none());
}

#[test]
fn nixl_prefill_asks_for_remote_decode_and_decode_gets_the_params_verbatim() {
    let s = scan(CHAT.as_bytes()).unwrap();
    let p = parse(&prefill_body(
        CHAT.as_bytes(),
        &s,
        Protocol::VllmKvTransfer,
        "m",
        None,
    ));
    assert_eq!(
        p["kv_transfer_params"],
        json!({"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null})
    );
    let answer = br#"{"id":"x","choices":[],"kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"e1","remote_block_ids":[7,8],"remote_host":"10.0.0.1","remote_port":5600,"tp_size":1}}"#;
    let kv = kv_transfer_params(answer).unwrap();
    let d = parse(&decode_body(CHAT.as_bytes(), &s, "m", Some(kv), None, None));
    assert_eq!(d["kv_transfer_params"]["remote_block_ids"], json!([7, 8]));
    assert_eq!(d["stream"], true, "decode keeps streaming");
    assert_eq!(d["max_tokens"], 64);
    assert_eq!(d["model"], "m");
}

#[test]
fn a_client_supplied_kv_transfer_params_is_replaced_not_duplicated() {
    let body = br#"{"model":"pd","kv_transfer_params":{"evil":1},"prompt":"x"}"#;
    let s = scan(body).unwrap();
    let out = decode_body(body, &s, "m", Some(br#"{"ok":true}"#), None, None);
    assert_eq!(
        String::from_utf8_lossy(&out)
            .matches("kv_transfer_params")
            .count(),
        1
    );
    assert_eq!(parse(&out)["kv_transfer_params"], json!({"ok":true}));
}

#[test]
fn answers_without_kv_params_yield_none() {
    assert_eq!(kv_transfer_params(br#"{"choices":[]}"#), None);
    assert_eq!(kv_transfer_params(br#"{"kv_transfer_params":null}"#), None);
    assert_eq!(kv_transfer_params(b"not json"), None);
}

#[test]
fn sglang_legs_share_the_bootstrap_fields() {
    let s = scan(CHAT.as_bytes()).unwrap();
    let b = Bootstrap {
        host: "127.0.0.51".into(),
        port: 8998,
        room: (1 << 63) - 1,
    };
    let p = parse(&prefill_body(
        CHAT.as_bytes(),
        &s,
        Protocol::Sglang,
        "m",
        Some(&b),
    ));
    let d = parse(&decode_body(CHAT.as_bytes(), &s, "m", None, Some(&b), None));
    for leg in [&p, &d] {
        assert_eq!(leg["bootstrap_host"], "127.0.0.51");
        assert_eq!(leg["bootstrap_port"], 8998);
        assert_eq!(leg["bootstrap_room"], json!(9223372036854775807u64));
        assert_eq!(leg["model"], "m");
    }
    assert_eq!(d["stream"], true);
}

#[test]
fn property_edited_objects_equal_the_serde_json_edit() {
    let mut r = crate::rng::Rng::new(11);
    let keys = ["model", "stream", "a", "b", "max_tokens", "x"];
    for _ in 0..2000 {
        let mut obj = serde_json::Map::new();
        for _ in 0..r.below(6) {
            let k = keys[r.below(keys.len() as u64) as usize];
            obj.insert(k.into(), json!([r.below(100), {"k": "v"}]));
        }
        let body = serde_json::to_vec_pretty(&Value::Object(obj.clone())).unwrap();
        let s = scan(&body).unwrap();
        let out = edit_object(
            &body,
            &s,
            &[Key::Stream],
            &[
                (Key::Model, b"\"m\"".to_vec()),
                (Key::BootstrapPort, b"1".to_vec()),
            ],
        );
        let mut want = obj.clone();
        want.remove("stream");
        want.insert("model".into(), json!("m"));
        want.insert("bootstrap_port".into(), json!(1));
        assert_eq!(parse(&out), Value::Object(want));
    }
}

#[test]
fn escaped_keys_are_edited_as_json_means_them() {
    // `stre\u0061m` is `stream`, `max_tok\u0065ns` is `max_tokens`: a spelling must not smuggle
    // streaming into a prefill leg or keep a second, larger max_tokens next to ours.
    let body = br#"{"model":"pd","stre\u0061m":true,"stream_opti\u006fns":{"include_usage":true},"max_tok\u0065ns":500,"prompt":"x"}"#;
    let s = scan(body).unwrap();
    let p = parse(&prefill_body(body, &s, Protocol::VllmKvTransfer, "m", None));
    assert_eq!(
        p,
        json!({"model":"m","prompt":"x","max_tokens":1,"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}})
    );
    let answer = br#"{"kv_tr\u0061nsfer_params":{"remote_block_ids":[1]}}"#;
    assert_eq!(
        kv_transfer_params(answer),
        Some(&br#"{"remote_block_ids":[1]}"#[..])
    );
    let client = br#"{"model":"pd","kv_transfer_p\u0061rams":{"evil":1},"prompt":"x"}"#;
    let d = decode_body(client, &scan(client).unwrap(), "m", Some(b"{}"), None, None);
    assert_eq!(
        parse(&d),
        json!({"model":"m","prompt":"x","kv_transfer_params":{}})
    );
}

#[test]
fn members_named_twice_are_all_removed() {
    let body = br#"{"stream":true,"model":"a","stream":false,"prompt":"x","stream":1}"#;
    let s = scan(body).unwrap();
    let p = parse(&prefill_body(body, &s, Protocol::VllmSequential, "m", None));
    assert_eq!(p, json!({"prompt":"x","model":"m","max_tokens":1}));
}
