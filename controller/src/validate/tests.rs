use super::*;

fn route(yaml: &str) -> ModelRouteSpec {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    serde_json::from_value(v).unwrap()
}

fn server(yaml: &str) -> ModelServerSpec {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    serde_json::from_value(v).unwrap()
}

fn paths(f: &Findings) -> Vec<&str> {
    f.iter().map(|(p, _)| p.as_str()).collect()
}

const GOOD_SERVER: &str = "
inferenceEngine: vLLM
workloadSelector: {matchLabels: {app: x}}
workloadPort: {port: 8000}
";

#[test]
fn valid_route_has_no_findings() {
    let f = validate_route(&route(
        "modelName: m\nrules: [{name: a, targetModels: [{modelServerName: s}]}]",
    ));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn model_name_or_lora_adapters_is_required() {
    let f = validate_route(&route(
        "rules: [{name: a, targetModels: [{modelServerName: s}]}]",
    ));
    assert_eq!(
        f,
        vec![(
            "spec".to_string(),
            "one of modelName or loraAdapters is required".to_string()
        )]
    );
    let f = validate_route(&route(
        "modelName: ''\nrules: [{name: a, targetModels: [{modelServerName: s}]}]",
    ));
    assert_eq!(paths(&f), vec!["spec"]);
}

#[test]
fn lora_adapter_names_must_not_be_empty() {
    let f = validate_route(&route(
        "loraAdapters: [a, '']\nrules: [{name: a, targetModels: [{modelServerName: s}]}]",
    ));
    assert_eq!(paths(&f), vec!["spec.loraAdapters[1]"]);
}

#[test]
fn at_most_ten_lora_adapters() {
    let names: Vec<String> = (0..11).map(|i| format!("l{i}")).collect();
    let yaml = format!(
        "loraAdapters: [{}]\nrules: [{{name: a, targetModels: [{{modelServerName: s}}]}}]",
        names.join(",")
    );
    assert_eq!(
        paths(&validate_route(&route(&yaml))),
        vec!["spec.loraAdapters"]
    );
}

#[test]
fn rules_are_required() {
    assert_eq!(
        paths(&validate_route(&route("modelName: m"))),
        vec!["spec.rules"]
    );
}

#[test]
fn at_most_sixteen_rules() {
    let rules: Vec<String> = (0..17)
        .map(|i| format!("{{name: r{i}, targetModels: [{{modelServerName: s}}]}}"))
        .collect();
    let yaml = format!("modelName: m\nrules: [{}]", rules.join(","));
    assert_eq!(paths(&validate_route(&route(&yaml))), vec!["spec.rules"]);
}

#[test]
fn rule_needs_a_target() {
    let f = validate_route(&route("modelName: m\nrules: [{name: a, targetModels: []}]"));
    assert_eq!(paths(&f), vec!["spec.rules[0].targetModels"]);
}

#[test]
fn at_most_sixteen_targets_per_rule() {
    let t: Vec<String> = (0..17)
        .map(|i| format!("{{modelServerName: s{i}}}"))
        .collect();
    let yaml = format!(
        "modelName: m\nrules: [{{name: a, targetModels: [{}]}}]",
        t.join(",")
    );
    assert_eq!(
        paths(&validate_route(&route(&yaml))),
        vec!["spec.rules[0].targetModels"]
    );
}

#[test]
fn target_needs_exactly_one_of_server_or_provider() {
    let f = validate_route(&route(
        "modelName: m\nrules: [{name: a, targetModels: [{modelServerName: s, externalModelProviderName: p}, {weight: 5}]}]",
    ));
    assert_eq!(
        paths(&f),
        vec![
            "spec.rules[0].targetModels[0]",
            "spec.rules[0].targetModels[1]"
        ]
    );
}

#[test]
fn provider_target_not_allowed_on_lora_route() {
    let f = validate_route(&route(
        "loraAdapters: [a]\nrules: [{name: a, targetModels: [{externalModelProviderName: p}]}]",
    ));
    assert_eq!(
        paths(&f),
        vec!["spec.rules[0].targetModels[0].externalModelProviderName"]
    );
}

#[test]
fn weight_must_be_between_0_and_100() {
    let f = validate_route(&route(
        "modelName: m\nrules: [{name: a, targetModels: [{modelServerName: s, weight: 101}, {modelServerName: t, weight: -1}]}]",
    ));
    assert_eq!(
        f,
        vec![
            (
                "spec.rules[0].targetModels[0].weight".to_string(),
                "must be between 0 and 100".to_string()
            ),
            (
                "spec.rules[0].targetModels[1].weight".to_string(),
                "must be between 0 and 100".to_string()
            ),
        ]
    );
}

#[test]
fn total_weight_must_not_be_zero() {
    let f = validate_route(&route(
        "modelName: m\nrules: [{name: a, targetModels: [{modelServerName: s, weight: 0}, {modelServerName: t, weight: 0}]}]",
    ));
    assert_eq!(paths(&f), vec!["spec.rules[0].targetModels"]);
    // One zero weight next to a default weight is fine.
    let f = validate_route(&route(
        "modelName: m\nrules: [{name: a, targetModels: [{modelServerName: s, weight: 0}, {modelServerName: t}]}]",
    ));
    assert!(f.is_empty());
}

#[test]
fn header_and_uri_regex_must_compile() {
    let f = validate_route(&route(
        "modelName: m\nrules: [{name: a, modelMatch: {headers: {x-a: {regex: '(' }}, uri: {regex: '[z-a]'}}, targetModels: [{modelServerName: s}]}]",
    ));
    assert_eq!(
        paths(&f),
        vec![
            "spec.rules[0].modelMatch.headers.x-a.regex",
            "spec.rules[0].modelMatch.uri.regex"
        ]
    );
    assert!(f[0].1.starts_with("invalid regex \"(\""), "{f:?}");
}

#[test]
fn valid_server_has_no_findings() {
    assert!(validate_server(&server(GOOD_SERVER)).is_empty());
    let f = validate_server(&server(
        "inferenceEngine: sglang\nworkloadSelector: {matchLabels: {app: x}, pdGroup: {groupKey: g, prefillLabels: {r: p}, decodeLabels: {r: d}}}\nworkloadPort: {port: 65535, protocol: HTTPS}\ntrafficPolicy: {timeout: 1m30s, retry: {attempts: 3, retryInterval: 100ms}}\nkvConnector: {type: NIXL}",
    ));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn server_needs_match_labels() {
    let f = validate_server(&server("inferenceEngine: vLLM\nworkloadPort: {port: 8000}"));
    assert_eq!(paths(&f), vec!["spec.workloadSelector.matchLabels"]);
    let f = validate_server(&server(
        "inferenceEngine: vLLM\nworkloadSelector: {matchLabels: {}}\nworkloadPort: {port: 8000}",
    ));
    assert_eq!(paths(&f), vec!["spec.workloadSelector.matchLabels"]);
}

const PD_SERVER: &str = "inferenceEngine: vLLM\nworkloadPort: {port: 8000}\nworkloadSelector: {matchLabels: {app: x}, pdGroup: ";

fn pd_server(pd_group: &str) -> Findings {
    validate_server(&server(&format!("{PD_SERVER}{pd_group}}}")))
}

#[test]
fn pd_group_needs_group_key() {
    for key in ["groupKey: ''", "groupKey: '  '"] {
        let f = pd_server(&format!(
            "{{{key}, prefillLabels: {{r: p}}, decodeLabels: {{r: d}}}}"
        ));
        assert_eq!(
            paths(&f),
            vec!["spec.workloadSelector.pdGroup.groupKey"],
            "{key}"
        );
    }
    let f = pd_server("{prefillLabels: {r: p}, decodeLabels: {r: d}}");
    assert_eq!(paths(&f), vec!["spec.workloadSelector.pdGroup.groupKey"]);
    assert_eq!(f[0].1, "must not be empty");
}

#[test]
fn pd_group_needs_prefill_labels() {
    for labels in ["prefillLabels: {}, ", ""] {
        let f = pd_server(&format!("{{groupKey: g, {labels}decodeLabels: {{r: d}}}}"));
        assert_eq!(
            paths(&f),
            vec!["spec.workloadSelector.pdGroup.prefillLabels"],
            "{labels}"
        );
        assert_eq!(f[0].1, "at least one label is required");
    }
}

#[test]
fn pd_group_needs_decode_labels() {
    for labels in [", decodeLabels: {}", ""] {
        let f = pd_server(&format!("{{groupKey: g, prefillLabels: {{r: p}}{labels}}}"));
        assert_eq!(
            paths(&f),
            vec!["spec.workloadSelector.pdGroup.decodeLabels"],
            "{labels}"
        );
    }
}

#[test]
fn pd_group_problems_are_all_reported() {
    let f = pd_server("{groupKey: ''}");
    assert_eq!(
        paths(&f),
        vec![
            "spec.workloadSelector.pdGroup.groupKey",
            "spec.workloadSelector.pdGroup.prefillLabels",
            "spec.workloadSelector.pdGroup.decodeLabels"
        ]
    );
}

fn meta_with(annotations: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: "s".into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn sglang_bootstrap_port_annotation_is_optional() {
    assert!(validate_server_annotations(&meta_with(&[])).is_empty());
    assert!(validate_server_annotations(&meta_with(&[("other.io/x", "y")])).is_empty());
    for ok in ["1", "8998", "65535"] {
        let f = validate_server_annotations(&meta_with(&[(SGLANG_BOOTSTRAP_PORT_ANNOTATION, ok)]));
        assert!(f.is_empty(), "{ok}: {f:?}");
    }
}

#[test]
fn sglang_bootstrap_port_annotation_must_be_a_decimal_port() {
    for bad in ["", "0", "65536", "-1", "8998 ", "0x2326", "port"] {
        let f = validate_server_annotations(&meta_with(&[(SGLANG_BOOTSTRAP_PORT_ANNOTATION, bad)]));
        assert_eq!(
            f,
            vec![(
                "metadata.annotations[modelroute.io/sglang-bootstrap-port]".to_string(),
                format!("{bad:?} is not a port number (decimal 1..65535)")
            )],
            "{bad:?}"
        );
    }
}

#[test]
fn bad_sglang_bootstrap_port_annotation_is_an_error_naming_it() {
    let mut diags = Diagnostics::default();
    let src = crate::load::Source {
        path: "ms.yaml".into(),
        content: br#"
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelServer
metadata:
  name: s
  annotations: {modelroute.io/sglang-bootstrap-port: 99999}
spec:
  inferenceEngine: SGLang
  workloadSelector: {matchLabels: {app: x}, pdGroup: {groupKey: g, prefillLabels: {r: p}, decodeLabels: {r: d}}}
  workloadPort: {port: 8000}
"#
        .to_vec(),
    };
    let inputs = crate::load::parse(&[src], &mut diags);
    validate(&inputs, &mut diags);
    assert_eq!(
        diags.errors,
        vec![
            r#"ms.yaml: ModelServer default/s: metadata.annotations[modelroute.io/sglang-bootstrap-port]: "99999" is not a port number (decimal 1..65535)"#
        ]
    );
}

#[test]
fn port_must_be_between_1_and_65535() {
    for port in ["0", "65536", "-1"] {
        let f = validate_server(&server(&format!(
            "inferenceEngine: vLLM\nworkloadSelector: {{matchLabels: {{app: x}}}}\nworkloadPort: {{port: {port}}}"
        )));
        assert_eq!(paths(&f), vec!["spec.workloadPort.port"], "port {port}");
    }
    let f = validate_server(&server(
        "inferenceEngine: vLLM\nworkloadSelector: {matchLabels: {app: x}}",
    ));
    assert_eq!(paths(&f), vec!["spec.workloadPort.port"]);
}

#[test]
fn protocol_must_be_http_or_https() {
    let f = validate_server(&server("inferenceEngine: vLLM\nworkloadSelector: {matchLabels: {app: x}}\nworkloadPort: {port: 80, protocol: grpc}"));
    assert_eq!(paths(&f), vec!["spec.workloadPort.protocol"]);
}

#[test]
fn inference_engine_must_be_vllm_or_sglang() {
    let f = validate_server(&server(
        "inferenceEngine: TGI\nworkloadSelector: {matchLabels: {app: x}}\nworkloadPort: {port: 1}",
    ));
    assert_eq!(paths(&f), vec!["spec.inferenceEngine"]);
    let f = validate_server(&server(
        "workloadSelector: {matchLabels: {app: x}}\nworkloadPort: {port: 1}",
    ));
    assert_eq!(paths(&f), vec!["spec.inferenceEngine"]);
}

#[test]
fn durations_must_parse() {
    let f = validate_server(&server(&format!(
        "{GOOD_SERVER}\ntrafficPolicy: {{timeout: 10 seconds, retry: {{attempts: -1, retryInterval: 5}}}}"
    )));
    assert_eq!(
        paths(&f),
        vec![
            "spec.trafficPolicy.timeout",
            "spec.trafficPolicy.retry.attempts",
            "spec.trafficPolicy.retry.retryInterval"
        ]
    );
}

#[test]
fn kv_connector_must_be_known() {
    let f = validate_server(&server(&format!(
        "{GOOD_SERVER}\nkvConnector: {{type: rdma}}"
    )));
    assert_eq!(paths(&f), vec!["spec.kvConnector.type"]);
}

#[test]
fn model_is_at_most_256_characters() {
    let f = validate_server(&server(&format!(
        "{GOOD_SERVER}\nmodel: {}",
        "m".repeat(257)
    )));
    assert_eq!(paths(&f), vec!["spec.model"]);
}

#[test]
fn errors_name_file_object_and_field_and_all_are_collected() {
    let mut diags = Diagnostics::default();
    let src = crate::load::Source {
        path: "examples/bad.yaml".into(),
        content: br#"
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {name: foo}
spec: {modelName: m, rules: [{name: a, targetModels: [{modelServerName: s}, {modelServerName: t, weight: 200}]}]}
---
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {name: foo}
spec: {rules: [{name: a, targetModels: [{modelServerName: s}]}]}
"#
        .to_vec(),
    };
    let inputs = crate::load::parse(&[src], &mut diags);
    validate(&inputs, &mut diags);
    assert_eq!(
        diags.errors,
        vec![
            "examples/bad.yaml: ModelRoute default/foo: spec.rules[0].targetModels[1].weight: must be between 0 and 100",
            "examples/bad.yaml: ModelRoute default/foo: spec: one of modelName or loraAdapters is required",
            "examples/bad.yaml: ModelRoute default/foo: defined twice (also in examples/bad.yaml)",
        ]
    );
}

#[test]
fn rate_limits_are_at_least_one_token_per_known_unit() {
    let f = validate_route(&route(
        "modelName: m\nrateLimit: {inputTokensPerUnit: 0, outputTokensPerUnit: 5, unit: week}\nrules: [{name: a, targetModels: [{modelServerName: s}]}]",
    ));
    assert_eq!(
        paths(&f),
        vec!["spec.rateLimit.inputTokensPerUnit", "spec.rateLimit.unit"]
    );
    let f = validate_route(&route(
        "modelName: m\nrateLimit: {outputTokensPerUnit: 5, unit: month}\nrules: [{name: a, targetModels: [{modelServerName: s}]}]",
    ));
    assert!(f.is_empty(), "{f:?}");
}

fn sticky_route(sticky: &str) -> Findings {
    validate_route(&route(&format!(
        "modelName: m\nsessionSticky: {sticky}\nrules: [{{name: a, targetModels: [{{modelServerName: s}}]}}]"
    )))
}

#[test]
fn session_sticky_follows_kthenas_rules_and_refuses_what_the_filter_cannot_read() {
    let good = "{sessionAffinitySeconds: 60, sources: [{type: Header, name: X-Session-ID}, {type: Query, name: s}, {type: Cookie, name: sid}]}";
    assert!(sticky_route(good).is_empty(), "{:?}", sticky_route(good));
    assert!(sticky_route("null").is_empty(), "null: off");
    assert_eq!(paths(&sticky_route("{}")), ["spec.sessionSticky.sources"]);
    let seventeen = vec!["{type: Header, name: x}"; 17].join(", ");
    assert_eq!(
        paths(&sticky_route(&format!("{{sources: [{seventeen}]}}"))),
        ["spec.sessionSticky.sources"]
    );
    assert_eq!(
        paths(&sticky_route(
            "{sessionAffinitySeconds: 0, sources: [{type: Query, name: s}]}"
        )),
        ["spec.sessionSticky.sessionAffinitySeconds"]
    );
    let f = sticky_route(
        "{sources: [{type: Header, name: ' '}, {type: Header, name: x_y}, {type: Path, name: p}, {type: JWTClaim, name: sub}]}",
    );
    assert_eq!(
        paths(&f),
        [
            "spec.sessionSticky.sources[0].name",
            "spec.sessionSticky.sources[1].name",
            "spec.sessionSticky.sources[2].type",
            "spec.sessionSticky.sources[3].type",
        ]
    );
    assert!(f[3].1.contains("claim_to_headers"), "{f:?}");
}
