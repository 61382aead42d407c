use super::errors::error_type;
use super::*;
use serde_json::json;

fn served() -> Served {
    Served {
        model: "llama".into(),
        aliases: vec!["llama-alias".into()],
        lora: vec!["lora-A".into(), "lora-B".into()],
        engine: EngineKind::Vllm,
    }
}

fn stamp() -> Stamp {
    Stamp {
        id_hex: "abc123".into(),
        created: 1_700_000_000,
    }
}

fn ask(api: Api, body: Value) -> Reply {
    answer(&served(), api, Ok(&body), &stamp())
}

fn json_of(reply: Reply) -> (u16, Value) {
    match reply {
        Reply::Json { status, body } => (status, parse(&body)),
        Reply::Stream { .. } => (0, Value::Null),
    }
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

fn events_of(reply: Reply) -> Vec<String> {
    match reply {
        Reply::Stream { events } => events,
        Reply::Json { .. } => Vec::new(),
    }
}

/// The JSON payloads of the events (all but `[DONE]`).
fn payloads(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| e.strip_suffix("\n\n"))
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect()
}

#[test]
fn served_model_aliases_and_lora_are_known_others_are_not() {
    let s = served();
    for m in ["llama", "llama-alias", "lora-A", "lora-B"] {
        assert!(s.knows(m), "{m}");
    }
    for m in ["", "Llama", "lora-C", "llama "] {
        assert!(!s.knows(m), "{m}");
    }
}

#[test]
fn unknown_model_is_vllm_404() {
    let (status, body) = json_of(ask(
        Api::Completions,
        json!({"model": "gpt-4", "prompt": "x"}),
    ));
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({
            "object": "error",
            "message": "The model `gpt-4` does not exist.",
            "type": "NotFoundError",
            "param": null,
            "code": 404,
        })
    );
}

#[test]
fn body_must_be_a_json_object() {
    for body in [json!([1]), json!("s"), json!(3), Value::Null] {
        let (status, err) = json_of(ask(Api::Chat, body));
        assert_eq!(status, 400);
        assert_eq!(err["type"], "BadRequestError");
        assert_eq!(err["object"], "error");
        assert_eq!(err["code"], 400);
        assert_eq!(err["param"], Value::Null);
    }
    let (status, err) = json_of(answer(&served(), Api::Chat, Err("EOF"), &stamp()));
    assert_eq!(status, 400);
    assert_eq!(err["type"], "BadRequestError");
    let (status, _) = json_of(ask(Api::Chat, json!({"model": 7})));
    assert_eq!(status, 400);
}

#[test]
fn missing_model_uses_served_model() {
    let (status, body) = json_of(ask(Api::Completions, json!({"prompt": "hi"})));
    assert_eq!(status, 200);
    assert_eq!(body["model"], "llama");
    assert_eq!(
        body["choices"][0]["text"],
        "This is simulated message from llama!"
    );
}

#[test]
fn completion_shape() {
    let (status, body) = json_of(ask(
        Api::Completions,
        json!({"model": "lora-A", "prompt": "one two  three"}),
    ));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "id": "cmpl-abc123",
            "object": "text_completion",
            "created": 1_700_000_000u64,
            "model": "lora-A",
            "choices": [{
                "index": 0,
                "text": "This is simulated message from lora-A!",
                "logprobs": null,
                "finish_reason": "length",
            }],
            "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
        })
    );
}

#[test]
fn chat_shape_counts_all_message_words() {
    let (status, body) = json_of(ask(
        Api::Chat,
        json!({"model": "llama-alias", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
        ]}),
    ));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "id": "chatcmpl-abc123",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": "llama-alias",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "This is simulated message from llama-alias!"},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        })
    );
}

#[test]
fn prompt_tokens_are_at_least_one_and_count_token_ids() {
    let (_, body) = json_of(ask(Api::Completions, json!({"prompt": ""})));
    assert_eq!(body["usage"]["prompt_tokens"], 1);
    let (_, body) = json_of(ask(Api::Completions, json!({"prompt": [1, 2, 3, 4]})));
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let (_, body) = json_of(ask(Api::Completions, json!({"prompt": ["a b", "c"]})));
    assert_eq!(body["usage"]["prompt_tokens"], 3);
}

#[test]
fn max_tokens_truncates_with_finish_reason_length() {
    let (_, body) = json_of(ask(Api::Chat, json!({"messages": [], "max_tokens": 2})));
    assert_eq!(body["choices"][0]["message"]["content"], "This is");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 2);

    let (_, body) = json_of(ask(Api::Chat, json!({"max_completion_tokens": 3})));
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "This is simulated"
    );

    // A limit at or above the text length changes nothing.
    let (_, body) = json_of(ask(Api::Chat, json!({"max_tokens": 6})));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 6);

    for bad in [json!(0), json!(-1), json!(1.5), json!("3")] {
        let (status, _) = json_of(ask(Api::Completions, json!({"max_tokens": bad})));
        assert_eq!(status, 400, "{bad}");
    }
}

#[test]
fn chat_stream_is_one_event_per_word_then_finish_then_done() {
    let events = events_of(ask(Api::Chat, json!({"model": "llama", "stream": true})));
    assert_eq!(events.len(), 6 + 2);
    assert!(events
        .iter()
        .all(|e| e.starts_with("data: ") && e.ends_with("\n\n")));
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let p = payloads(&events);
    assert_eq!(p.len(), 7);
    assert!(p.iter().all(|c| c["object"] == "chat.completion.chunk"
        && c["id"] == "chatcmpl-abc123"
        && c["model"] == "llama"
        && c.get("usage").is_none()));
    assert_eq!(
        p[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "This"})
    );
    assert!(p[1..]
        .iter()
        .all(|c| c["choices"][0]["delta"].get("role").is_none()));
    let text: String = p
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "This is simulated message from llama!");
    assert!(p[..6]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(p[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(p[6]["choices"][0]["delta"], json!({}));
}

#[test]
fn include_usage_adds_a_usage_chunk_with_empty_choices_before_done() {
    let events = events_of(ask(
        Api::Completions,
        json!({"prompt": "a b", "stream": true, "max_tokens": 4,
               "stream_options": {"include_usage": true}}),
    ));
    assert_eq!(events.len(), 4 + 3);
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let p = payloads(&events);
    assert!(p
        .iter()
        .all(|c| c["object"] == "text_completion" && c["id"] == "cmpl-abc123"));
    let text: String = p
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "This is simulated message");
    assert_eq!(p[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(p[5]["choices"], json!([]));
    assert_eq!(
        p[5]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );

    // include_usage false: no usage chunk.
    let events = events_of(ask(
        Api::Completions,
        json!({"stream": true, "stream_options": {"include_usage": false}}),
    ));
    assert!(payloads(&events).iter().all(|c| c.get("usage").is_none()));
}

#[test]
fn models_list_has_served_aliases_and_lora_with_parent() {
    let list = parse(&served().models_list(5));
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["llama", "llama-alias", "lora-A", "lora-B"]);
    assert_eq!(
        list["data"][0],
        json!({"id": "llama", "object": "model", "created": 5, "owned_by": "vllm",
               "root": "llama", "parent": null})
    );
    assert_eq!(
        list["data"][2],
        json!({"id": "lora-A", "object": "model", "created": 5, "owned_by": "vllm",
               "root": "lora-A", "parent": "llama"})
    );
}

#[test]
fn metrics_use_engine_names() {
    let text = metrics_text(
        &served(),
        Load {
            running: 16,
            success_total: 3,
        },
    );
    assert!(text.contains("vllm:num_requests_running{model_name=\"llama\"} 16\n"));
    assert!(text.contains("vllm:num_requests_waiting{model_name=\"llama\"} 0\n"));
    assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"llama\"} 0.25\n"));
    assert!(text.contains("vllm:gpu_cache_usage_perc{model_name=\"llama\"} 0.25\n"));
    assert!(text.contains("vllm:request_success_total{model_name=\"llama\"} 3\n"));

    let mut s = served();
    s.engine = EngineKind::Sglang;
    let text = metrics_text(
        &s,
        Load {
            running: 100,
            success_total: 0,
        },
    );
    assert!(text.contains("sglang:num_running_reqs{model_name=\"llama\"} 100\n"));
    assert!(text.contains("sglang:num_queue_reqs{model_name=\"llama\"} 0\n"));
    assert!(text.contains("sglang:token_usage{model_name=\"llama\"} 1.0\n"));
    assert!(!text.contains("vllm:"));
}

#[test]
fn error_types_follow_status() {
    assert_eq!(error_type(400), "BadRequestError");
    assert_eq!(error_type(404), "NotFoundError");
    assert_eq!(error_type(429), "RateLimitError");
    assert_eq!(error_type(500), "InternalServerError");
    assert_eq!(error_type(502), "InternalServerError");
    assert_eq!(error_type(503), "ServiceUnavailableError");
}

#[test]
fn fields_keep_vllm_wire_order() {
    let reply = ask(
        Api::Completions,
        json!({"model": "llama", "prompt": "hi", "max_tokens": 1}),
    );
    let Reply::Json { body, .. } = reply else {
        panic!("expected JSON");
    };
    assert_eq!(
        body,
        r#"{"id":"cmpl-abc123","object":"text_completion","created":1700000000,"model":"llama","choices":[{"index":0,"text":"This","logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#
    );
    let events = events_of(ask(Api::Chat, json!({"stream": true, "max_tokens": 1})));
    assert_eq!(
        events,
        [
            "data: {\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"This\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n",
            "data: [DONE]\n\n",
        ]
    );
    assert_eq!(
        error_body(404, "nope"),
        r#"{"object":"error","message":"nope","type":"NotFoundError","param":null,"code":404}"#
    );
}

// --- Prefill/decode disaggregation -------------------------------------------------------

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[test]
fn roles_and_connectors_parse() {
    assert_eq!(Role::parse("Prefill"), Some(Role::Prefill));
    assert_eq!(Role::parse("decode"), Some(Role::Decode));
    assert_eq!(Role::parse("both"), None);
    for (s, c, moves) in [
        ("http", KvConnector::Http, false),
        ("LMCache", KvConnector::Lmcache, false),
        ("nixl", KvConnector::Nixl, true),
        ("mooncake", KvConnector::Mooncake, true),
    ] {
        assert_eq!(KvConnector::parse(s), Some(c));
        assert_eq!(c.transfers_kv(), moves);
        assert_eq!(KvConnector::parse(c.as_str()), Some(c));
    }
    assert_eq!(KvConnector::parse("p2p"), None);
    let d = PdSettings::default();
    assert_eq!(
        (
            d.role,
            d.kv_connector,
            d.bootstrap_port,
            d.bootstrap_timeout_ms
        ),
        (None, KvConnector::Http, 8998, 5000)
    );
}

#[test]
fn prefill_kv_params_must_ask_for_a_remote_decode() {
    // What the router sends (Kthena's shape, nulls included).
    let router = json!({"kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
        "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null}});
    assert_eq!(check_prefill_kv(&obj(router)), Ok(true));
    assert_eq!(
        check_prefill_kv(&obj(
            json!({"kv_transfer_params": {"do_remote_decode": true}})
        )),
        Ok(true)
    );
    assert_eq!(check_prefill_kv(&obj(json!({"prompt": "x"}))), Ok(false));
    assert_eq!(
        check_prefill_kv(&obj(json!({"kv_transfer_params": null}))),
        Ok(false)
    );
    for bad in [
        json!({"kv_transfer_params": "yes"}),
        json!({"kv_transfer_params": {}}),
        json!({"kv_transfer_params": {"do_remote_decode": false}}),
        json!({"kv_transfer_params": {"do_remote_decode": "true"}}),
        json!({"kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": true}}),
    ] {
        let err = check_prefill_kv(&obj(bad.clone()))
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("malformed kv_transfer_params"),
            "{bad}: {err}"
        );
    }
}

fn good_decode_params() -> Value {
    json!({"do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id": "p-0-ab",
           "remote_block_ids": [5, 6, 7, 8], "remote_host": "10.0.0.7", "remote_port": 8000,
           "tp_size": 1})
}

#[test]
fn decode_kv_params_name_where_to_pull_from() {
    assert_eq!(
        check_decode_kv(&obj(json!({"kv_transfer_params": good_decode_params()}))),
        Ok(Some(RemoteKv {
            engine_id: "p-0-ab".into(),
            block_ids: vec![5, 6, 7, 8],
            host: "10.0.0.7".into(),
            port: 8000,
        }))
    );
    assert_eq!(check_decode_kv(&obj(json!({}))), Ok(None));
    assert_eq!(
        check_decode_kv(&obj(json!({"kv_transfer_params": null}))),
        Ok(None)
    );
    let broken: [(&str, Value); 11] = [
        ("do_remote_prefill", Value::Null),
        ("do_remote_prefill", json!(false)),
        ("do_remote_decode", json!(true)),
        ("remote_engine_id", Value::Null),
        ("remote_engine_id", json!(3)),
        ("remote_block_ids", json!([])),
        ("remote_block_ids", json!([1, "2"])),
        ("remote_block_ids", json!([-1])),
        ("remote_host", json!(["h"])),
        ("remote_port", json!("8000")),
        ("remote_port", json!(70000)),
    ];
    for (key, value) in broken {
        let mut params = obj(good_decode_params());
        params.insert(key.into(), value.clone());
        let body = obj(json!({ "kv_transfer_params": params }));
        let err = check_decode_kv(&body).err().unwrap_or_default();
        assert!(
            err.starts_with("malformed kv_transfer_params: "),
            "{key}={value}: {err}"
        );
    }
    for key in ["remote_block_ids", "remote_host", "remote_port"] {
        let mut params = obj(good_decode_params());
        params.remove(key);
        let body = obj(json!({ "kv_transfer_params": params }));
        let err = check_decode_kv(&body).err().unwrap_or_default();
        assert!(err.contains(key), "{key}: {err}");
    }
    assert!(check_decode_kv(&obj(json!({"kv_transfer_params": [1]}))).is_err());
}

#[test]
fn prefill_answer_carries_kv_transfer_params_last() {
    let prepared = prepare(
        &served(),
        Api::Completions,
        Ok(&json!({"model": "llama", "prompt": "hi", "max_tokens": 1})),
    );
    let Ok(prepared) = prepared else {
        panic!("{prepared:?}");
    };
    assert!(!prepared.is_stream());
    let params = KvTransferParams::issued("p-0-ab", vec![1, 2, 3, 4], "10.0.0.7", 8000);
    let Reply::Json { status, body } = prepared.reply(&stamp(), Some(&params)) else {
        panic!("expected JSON");
    };
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"id":"cmpl-abc123","object":"text_completion","created":1700000000,"model":"llama","choices":[{"index":0,"text":"This","logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"kv_transfer_params":{"do_remote_prefill":true,"do_remote_decode":false,"remote_engine_id":"p-0-ab","remote_block_ids":[1,2,3,4],"remote_host":"10.0.0.7","remote_port":8000,"tp_size":1}}"#
    );
    // The copied params are exactly what a decode accepts.
    let (_, v) = json_of(prepared.reply(&stamp(), Some(&params)));
    assert_eq!(
        check_decode_kv(&obj(json!({"kv_transfer_params": v["kv_transfer_params"]}))),
        Ok(Some(RemoteKv {
            engine_id: "p-0-ab".into(),
            block_ids: vec![1, 2, 3, 4],
            host: "10.0.0.7".into(),
            port: 8000,
        }))
    );
    // Chat answers carry it too; without params nothing is added.
    let chat = prepare(&served(), Api::Chat, Ok(&json!({}))).ok();
    let (_, v) = json_of(chat.clone().map_or(Reply::Stream { events: vec![] }, |p| {
        p.reply(&stamp(), Some(&params))
    }));
    assert_eq!(
        v["kv_transfer_params"]["remote_block_ids"],
        json!([1, 2, 3, 4])
    );
    let (_, v) = json_of(chat.map_or(Reply::Stream { events: vec![] }, |p| {
        p.reply(&stamp(), None)
    }));
    assert!(v.get("kv_transfer_params").is_none());
    // prepare() rejects what answer() rejects.
    assert!(prepare(&served(), Api::Chat, Ok(&json!({"model": "nope"}))).is_err());
}

#[test]
fn bootstrap_fields_are_required_and_typed() {
    let ok = json!({"bootstrap_room": 9223372036854775807u64, "bootstrap_host": "10.0.0.7",
                    "bootstrap_port": 8998});
    assert_eq!(
        check_bootstrap(&obj(ok.clone())),
        Ok(Bootstrap {
            room: i64::MAX as u64,
            host: "10.0.0.7".into(),
            port: 8998,
        })
    );
    let broken: [(&str, Option<Value>); 9] = [
        ("bootstrap_room", None),
        ("bootstrap_room", Some(json!(-1))),
        ("bootstrap_room", Some(json!(9223372036854775808u64))),
        ("bootstrap_room", Some(json!("12"))),
        ("bootstrap_host", None),
        ("bootstrap_host", Some(json!(7))),
        ("bootstrap_port", None),
        ("bootstrap_port", Some(json!(65536))),
        ("bootstrap_port", Some(json!(1.5))),
    ];
    for (key, value) in broken {
        let mut body = obj(ok.clone());
        match &value {
            Some(v) => body.insert(key.into(), v.clone()),
            None => body.remove(key),
        };
        let err = check_bootstrap(&body).err().unwrap_or_default();
        assert!(
            err.starts_with("missing bootstrap_* fields") && err.contains(key),
            "{key}={value:?}: {err}"
        );
    }
}

#[test]
fn bootstrap_host_matches_the_pod_ip() {
    let v4: std::net::IpAddr = [10, 0, 0, 7].into();
    let v6: std::net::IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
    assert!(host_is("10.0.0.7", v4));
    assert!(!host_is("10.0.0.8", v4));
    assert!(!host_is("pod-0.svc", v4));
    assert!(host_is("::1", v6));
    assert!(host_is("[::1]", v6));
    assert!(!host_is("[::1]", v4));
}
