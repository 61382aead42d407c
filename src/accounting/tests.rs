use super::*;

fn value<'a>(values: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

const ROUTED: Routed<'static> = Routed {
    route: "default/r",
    server: "default/s",
    upstream_model: "real/model",
    prefill_pod: "",
};

#[test]
fn include_usage_asks_only_when_the_client_did_not() {
    assert_eq!(include_usage(None).unwrap(), br#"{"include_usage":true}"#);
    assert_eq!(include_usage(Some(br#"{"include_usage": true}"#)), None);
    let kept = include_usage(Some(
        br#"{"include_usage":false,"continuous_usage_stats":true}"#,
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"include_usage": true, "continuous_usage_stats": true})
    );
    assert_eq!(
        include_usage(Some(b"null")).unwrap(),
        br#"{"include_usage":true}"#
    );
}

#[test]
fn path_labels_are_bounded() {
    assert_eq!(path_label("/v1/chat/completions"), "/v1/chat/completions");
    assert_eq!(path_label("/v1/x7f3a"), OTHER_PATH);
    assert_eq!(path_label("/v1/completions/"), OTHER_PATH);
}

#[test]
fn a_json_answer_is_counted_from_its_usage() {
    let mut a = Accounting {
        start_ms: 1_000,
        input_estimate: 99,
        ..Default::default()
    };
    a.on_response_headers(200, "application/json; charset=utf-8", false);
    let body = br#"{"id":"x","choices":[{"text":"hi"}],"usage":{"prompt_tokens":7,"completion_tokens":12,"total_tokens":19}}"#;
    let (head, tail) = body.split_at(70);
    assert_eq!(a.on_response_body(head, false, 1_200), None);
    assert_eq!(a.on_response_body(tail, true, 1_250), None);
    let p = a.published(
        "m",
        "/v1/completions",
        Some(ROUTED),
        Some(Ending::Status(200)),
        1_250,
    );
    assert_eq!(value(&p, published::INPUT_TOKENS), Some("7"));
    assert_eq!(value(&p, published::OUTPUT_TOKENS), Some("12"));
    assert_eq!(value(&p, published::ERROR_TYPE), Some("successful_request"));
    assert_eq!(value(&p, published::DURATION), Some("0.250"));
    assert_eq!(value(&p, published::BACKEND_TYPE), Some("model_server"));
    assert_eq!(value(&p, published::UPSTREAM_MODEL), Some("real/model"));
    // Not a stream: no TTFT / TPOT.
    assert_eq!(value(&p, published::TTFT), None);
}

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\" b\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE_CHUNK: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

#[test]
fn an_injected_usage_chunk_is_counted_and_removed_wherever_the_stream_splits() {
    let full = format!("{STREAM}{USAGE_CHUNK}{DONE}");
    let want = format!("{STREAM}{DONE}");
    for cut in [
        1,
        7,
        40,
        STREAM.len() + 10,
        STREAM.len() + 60,
        full.len() - 3,
    ] {
        let mut a = Accounting {
            start_ms: 1_000,
            usage_injected: true,
            ..Default::default()
        };
        a.on_response_headers(200, "text/event-stream", false);
        let (x, y) = full.as_bytes().split_at(cut);
        let mut out = Vec::new();
        for (piece, end, now) in [(x, false, 1_100), (y, true, 1_300)] {
            out.extend(
                a.on_response_body(piece, end, now)
                    .unwrap_or(piece.to_vec()),
            );
        }
        assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
        let p = a.published(
            "m",
            "/v1/chat/completions",
            Some(ROUTED),
            Some(Ending::Status(200)),
            1_300,
        );
        assert_eq!(
            value(&p, published::OUTPUT_TOKENS),
            Some("2"),
            "cut at {cut}"
        );
        assert_eq!(value(&p, published::INPUT_TOKENS), Some("5"));
        assert_eq!(value(&p, published::TTFT), Some("0.100"));
        assert_eq!(value(&p, published::TPOT), Some("0.200000"));
    }
}

#[test]
fn a_client_that_asked_for_usage_gets_its_chunk() {
    let full = format!("{STREAM}{USAGE_CHUNK}{DONE}");
    let mut a = Accounting {
        start_ms: 1,
        ..Default::default()
    };
    a.on_response_headers(200, "text/event-stream", false);
    assert_eq!(a.on_response_body(full.as_bytes(), true, 5), None);
}

#[test]
fn a_stream_cut_short_counts_what_was_delivered() {
    let mut a = Accounting {
        start_ms: 10,
        input_estimate: 40,
        usage_injected: true,
        ..Default::default()
    };
    a.on_response_headers(200, "text/event-stream", false);
    a.on_response_body(STREAM.as_bytes(), false, 20);
    let p = a.published(
        "m",
        "/v1/chat/completions",
        Some(ROUTED),
        Some(Ending::Status(200)),
        30,
    );
    assert_eq!(value(&p, published::ERROR_TYPE), Some("stream_interrupted"));
    assert_eq!(value(&p, published::OUTPUT_TOKENS), Some("3"));
    assert_eq!(value(&p, published::INPUT_TOKENS), Some("40"));
}

#[test]
fn endings_without_an_answer_and_local_errors() {
    let a = Accounting {
        start_ms: 10,
        input_estimate: 3,
        ..Default::default()
    };
    let p = a.published(
        UNKNOWN_MODEL,
        "/v1/x",
        None,
        Some(Ending::Local("model_not_found")),
        12,
    );
    assert_eq!(value(&p, published::ERROR_TYPE), Some("route_not_found"));
    assert_eq!(value(&p, published::MODEL), Some("unknown"));
    assert_eq!(value(&p, published::PATH), Some("other"));
    assert_eq!(value(&p, published::BACKEND_TYPE), Some("none"));
    assert_eq!(value(&p, published::OUTPUT_TOKENS), Some("0"));
    let p = a.published("m", "/v1/completions", Some(ROUTED), None, 12);
    assert_eq!(value(&p, published::ERROR_TYPE), Some("client_cancelled"));
    let mut failed = a.clone();
    failed.on_response_headers(503, "application/json", true);
    let p = failed.published(
        "m",
        "/v1/completions",
        Some(ROUTED),
        Some(Ending::Status(503)),
        12,
    );
    assert_eq!(value(&p, published::ERROR_TYPE), Some("request_failed"));
}

#[test]
fn pd_requests_publish_both_legs() {
    let a = Accounting {
        start_ms: 1_000,
        prefill_ms: Some(40),
        decode_start_ms: Some(1_050),
        ..Default::default()
    };
    let routed = Routed {
        prefill_pod: "10.0.0.1:8000",
        ..ROUTED
    };
    let p = a.published(
        "m",
        "/v1/completions",
        Some(routed),
        Some(Ending::Status(200)),
        1_500,
    );
    assert_eq!(value(&p, published::PREFILL_POD), Some("10.0.0.1:8000"));
    assert_eq!(value(&p, published::PREFILL_DURATION), Some("0.040"));
    assert_eq!(value(&p, published::DECODE_DURATION), Some("0.450"));
}
