use super::*;
use filter_config::StringMatch as S;

fn inputs(yaml: &str) -> Inputs {
    let mut diags = Diagnostics::default();
    let src = crate::load::Source {
        path: "t.yaml".into(),
        content: yaml.as_bytes().to_vec(),
    };
    let inputs = crate::load::parse(&[src], &mut diags);
    assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    inputs
}

fn compile_yaml(yaml: &str) -> (Compiled, Diagnostics) {
    let mut diags = Diagnostics::default();
    let c = compile(&inputs(yaml), Settings::default(), &mut diags);
    (c, diags)
}

const SERVER: &str = "
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelServer
metadata: {name: s}
spec: {inferenceEngine: SGLang, model: real, workloadSelector: {matchLabels: {app: x}}, workloadPort: {port: 8000},
       trafficPolicy: {timeout: 1m30s, retry: {attempts: 2, retryInterval: 250ms}}, kvConnector: {type: NIXL}}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, labels: {app: x}}
status: {phase: Running, podIP: 'fd00::2', conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, labels: {app: x}}
status: {phase: Running, podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}
";

fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> kthena::StringMatch {
    kthena::StringMatch {
        exact: exact.map(Into::into),
        prefix: prefix.map(Into::into),
        regex: regex.map(Into::into),
    }
}

#[test]
fn string_match_precedence_is_exact_then_prefix_then_regex() {
    assert_eq!(
        resolve_string_match(&sm(Some("e"), Some("p"), Some("r"))),
        S::Exact("e".into())
    );
    assert_eq!(
        resolve_string_match(&sm(None, Some("p"), Some("r"))),
        S::Prefix("p".into())
    );
    assert_eq!(
        resolve_string_match(&sm(None, None, Some("r"))),
        S::Regex("r".into())
    );
    assert_eq!(resolve_string_match(&sm(None, None, None)), S::Any {});
}

#[test]
fn server_compiles_with_policy_and_ready_pods() {
    let (c, diags) = compile_yaml(SERVER);
    assert!(diags.warnings.is_empty(), "{:?}", diags.warnings);
    let s = &c.config.servers[0];
    assert_eq!(s.name, "default/s");
    assert_eq!(s.cluster, "modelserver|default|s");
    assert_eq!(s.engine, Engine::Sglang);
    assert_eq!(s.model.as_deref(), Some("real"));
    assert_eq!(s.timeout_ms, Some(90_000));
    assert_eq!(
        s.retry,
        Some(Retry {
            attempts: 2,
            interval_ms: Some(250)
        })
    );
    assert_eq!(s.kv_connector.as_deref(), Some("nixl"));
    let addrs: Vec<&str> = s.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, vec!["10.0.0.1:8000", "[fd00::2]:8000"]);
    assert_eq!(s.endpoints[0].pod, "default/p1");
    assert_eq!(c.clusters[0].endpoints.len(), 2);
    assert!(!c.clusters[0].tls);
}

#[test]
fn weight_defaults_to_100() {
    let (c, _) = compile_yaml(&format!(
        "{SERVER}\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {{name: r}}\nspec: {{modelName: m, rules: [{{name: a, targetModels: [{{modelServerName: s}}, {{modelServerName: s, weight: 30}}]}}]}}"
    ));
    let w: Vec<u32> = c.config.routes[0].rules[0]
        .targets
        .iter()
        .map(|t| t.weight)
        .collect();
    assert_eq!(w, vec![100, 30]);
}

#[test]
fn targets_resolve_in_the_route_namespace_and_missing_servers_warn() {
    let (c, diags) = compile_yaml(
        "apiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {name: r, namespace: team}\nspec: {modelName: m, rules: [{name: a, targetModels: [{modelServerName: s}]}]}",
    );
    assert_eq!(c.config.routes[0].name, "team/r");
    assert_eq!(c.config.routes[0].rules[0].targets[0].server, "team/s");
    assert_eq!(
        diags.warnings,
        vec!["t.yaml: ModelRoute team/r: spec.rules[0].targetModels[0].modelServerName: ModelServer team/s not found; requests choosing this target get 404"]
    );
}

#[test]
fn external_provider_targets_are_dropped_and_empty_rules_and_routes_too() {
    let (c, diags) = compile_yaml(&format!(
        "{SERVER}\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {{name: r}}\nspec: {{modelName: m, rules: [{{name: a, targetModels: [{{externalModelProviderName: openai}}, {{modelServerName: s}}]}}, {{name: b, targetModels: [{{externalModelProviderName: openai}}]}}]}}\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {{name: only-external}}\nspec: {{modelName: x, rules: [{{name: a, targetModels: [{{externalModelProviderName: openai}}]}}]}}"
    ));
    assert_eq!(c.config.routes.len(), 1);
    let rules: Vec<&str> = c.config.routes[0]
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(rules, vec!["a"]);
    assert_eq!(c.config.routes[0].rules[0].targets.len(), 1);
    assert_eq!(diags.warnings.len(), 6, "{:?}", diags.warnings);
    assert!(diags
        .warnings
        .iter()
        .any(|w| w.ends_with("spec.rules: no usable rule left; route dropped")));
}

#[test]
fn header_names_are_lower_cased() {
    let (c, _) = compile_yaml(&format!(
        "{SERVER}\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {{name: r}}\nspec: {{modelName: m, rules: [{{name: a, modelMatch: {{headers: {{User-Type: {{exact: premium}}}}, uri: {{prefix: /v1}}, body: {{model: m}}}}, targetModels: [{{modelServerName: s}}]}}]}}"
    ));
    let m = &c.config.routes[0].rules[0].matches;
    assert_eq!(
        m.headers,
        vec![HeaderMatch {
            name: "user-type".into(),
            value: S::Exact("premium".into())
        }]
    );
    assert_eq!(m.uri, Some(S::Prefix("/v1".into())));
    assert_eq!(m.body_model.as_deref(), Some("m"));
}

#[test]
fn https_warns() {
    let (c, diags) = compile_yaml(
        "apiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata: {name: s}\nspec: {inferenceEngine: vLLM, workloadSelector: {matchLabels: {app: x}}, workloadPort: {port: 443, protocol: https}}\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {name: r}\nspec: {modelName: m, rules: [{name: a, targetModels: [{modelServerName: s}]}]}",
    );
    assert!(c.clusters[0].tls);
    assert_eq!(diags.warnings.len(), 1, "{:?}", diags.warnings);
}

/// A ModelRoute `name` (created at `minute`) for `model` (or LoRA adapter `lora`) with `limit`.
fn limited_route(name: &str, minute: u32, model: &str, limit: &str) -> String {
    let names = if model.starts_with("lora") {
        format!("loraAdapters: [{model}]")
    } else {
        format!("modelName: {model}")
    };
    format!("---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {{name: {name}, creationTimestamp: '2026-01-01T00:{minute:02}:00Z'}}\nspec: {{{names}, rateLimit: {limit}, rules: [{{name: a, targetModels: [{{modelServerName: s}}]}}]}}\n")
}

#[test]
fn rate_limits_compile_with_kthenas_units_and_the_oldest_route_wins() {
    let yaml = format!(
        "{SERVER}{}{}{}{}",
        limited_route(
            "old",
            1,
            "m",
            "{inputTokensPerUnit: 30, outputTokensPerUnit: 100, unit: minute}"
        ),
        limited_route("new", 2, "m", "{inputTokensPerUnit: 5}"),
        limited_route(
            "monthly",
            3,
            "mm",
            "{outputTokensPerUnit: 7, unit: month, global: {redis: {address: 'r:6379'}}}"
        ),
        limited_route("adapters", 4, "lora-x", "{inputTokensPerUnit: 1}"),
    );
    let (c, diags) = compile_yaml(&yaml);
    let limit = |name: &str| {
        c.config
            .routes
            .iter()
            .find(|r| r.name == format!("default/{name}"))
            .and_then(|r| r.rate_limit.clone())
    };
    assert_eq!(
        limit("old"),
        Some(filter_config::RateLimit {
            input_per_unit: Some(30),
            output_per_unit: Some(100),
            unit_seconds: 60,
            client_header: None,
            client_slots: 0,
            global: None,
        })
    );
    assert_eq!(
        limit("new").map(|l| l.unit_seconds),
        Some(1),
        "second by default"
    );
    assert_eq!(limit("monthly").map(|l| l.unit_seconds), Some(30 * 86_400));
    assert_eq!(limit("adapters"), None, "LoRA adapters are never limited");
    let w = diags.warnings.join("\n");
    assert!(w.contains("default/new: spec.rateLimit: modelName \"m\" is already limited by the older ModelRoute default/old"), "{w}");
    assert_eq!(
        limit("monthly").and_then(|l| l.global),
        Some(filter_config::GlobalRateLimit {
            redis: "r:6379".into(),
            deny_on_redis_failure: false,
        })
    );
    assert!(
        w.contains("a route without modelName is not limited"),
        "{w}"
    );
    assert!(!w.contains("not enforced"), "{w}");
}

#[test]
fn a_global_budget_needs_the_gateways_rate_limit_service() {
    let route = |name: &str, n: u32, annotations: &str| {
        limited_route(
            name,
            n,
            name,
            "{inputTokensPerUnit: 3, global: {redis: {address: 'redis:6379'}}}",
        )
        .replace(
            "metadata: {name:",
            &format!("metadata: {{annotations: {{{annotations}}}, name:"),
        )
    };
    let yaml = format!(
        "{SERVER}{}{}{}",
        route("deny", 1, "modelroute.io/rate-limit-on-redis-failure: deny"),
        route(
            "typo",
            2,
            "modelroute.io/rate-limit-on-redis-failure: closed"
        ),
        limited_route(
            "noaddr",
            3,
            "noaddr",
            "{inputTokensPerUnit: 3, global: {redis: {}}}"
        ),
    );
    let (c, diags) = compile_yaml(&yaml);
    let global = |c: &crate::compile::Compiled, name: &str| {
        c.config
            .routes
            .iter()
            .find(|r| r.name == format!("default/{name}"))
            .and_then(|r| r.rate_limit.clone())
            .and_then(|l| l.global)
            .map(|g| (g.redis, g.deny_on_redis_failure))
    };
    assert_eq!(global(&c, "deny"), Some(("redis:6379".into(), true)));
    assert_eq!(global(&c, "typo"), Some(("redis:6379".into(), false)));
    assert_eq!(global(&c, "noaddr"), None);
    let w = diags.warnings.join("\n");
    assert!(
        w.contains("\"closed\" is neither allow nor deny; using allow"),
        "{w}"
    );
    assert!(
        w.contains("spec.rateLimit.global.redis.address: missing"),
        "{w}"
    );

    let service = crate::gateway::Gateway {
        rate_limit_service: Some("rls:8081".into()),
        ..Default::default()
    };
    let mut diags = crate::diag::Diagnostics::default();
    let with = c.clone().with_gateway(service, &mut diags);
    assert_eq!(global(&with, "deny"), Some(("redis:6379".into(), true)));
    assert!(diags.warnings.is_empty(), "{:?}", diags.warnings);
    let without = c.with_gateway(Default::default(), &mut diags);
    assert_eq!(global(&without, "deny"), None, "enforced per Envoy instead");
    let local = without
        .config
        .routes
        .iter()
        .find(|r| r.name == "default/deny");
    assert_eq!(
        local
            .and_then(|r| r.rate_limit.as_ref())
            .and_then(|l| l.input_per_unit),
        Some(3)
    );
    let w = diags.warnings.join("\n");
    assert!(
        w.contains(
            "ModelRoute default/deny: spec.rateLimit.global: no rate-limit service configured"
        ),
        "{w}"
    );
}

#[test]
fn per_client_budgets_come_from_annotations() {
    let route = limited_route("r", 1, "m", "{inputTokensPerUnit: 30}").replace(
        "metadata: {name: r,",
        "metadata: {annotations: {modelroute.io/rate-limit-client-header: X-User-Id, modelroute.io/rate-limit-clients: '64'}, name: r,",
    );
    let (c, diags) = compile_yaml(&format!("{SERVER}{route}"));
    let limit = c.config.routes[0].rate_limit.clone().unwrap();
    assert_eq!(limit.client_header.as_deref(), Some("x-user-id"));
    assert_eq!(limit.client_slots, 64);
    assert!(diags.warnings.is_empty(), "{:?}", diags.warnings);
    let bad = route.replace("'64'", "'lots'");
    let (c, diags) = compile_yaml(&format!("{SERVER}{bad}"));
    assert_eq!(
        c.config.routes[0].rate_limit.as_ref().unwrap().client_slots,
        4096
    );
    assert!(
        diags.warnings[0].contains("metadata.annotations[modelroute.io/rate-limit-clients]"),
        "{:?}",
        diags.warnings
    );
}

// ---------------------------------------------------------------- PD disaggregation

fn pd_group() -> PdGroup {
    PdGroup {
        group_key: "group".into(),
        prefill_labels: [("role".to_string(), "P".to_string())].into(),
        decode_labels: [("role".to_string(), "D".to_string())].into(),
    }
}

fn labelled(labels: &[(&str, &str)]) -> pods::Pod {
    pods::Pod {
        metadata: kthena::ObjectMeta {
            name: "p".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn pd_roles_come_from_prefill_and_decode_labels() {
    let g = pd_group();
    assert_eq!(
        pd_membership(&labelled(&[("group", "g0"), ("role", "P")]), &g),
        Ok(("g0".to_string(), Role::Prefill))
    );
    assert_eq!(
        pd_membership(&labelled(&[("group", "g1"), ("role", "D")]), &g),
        Ok(("g1".to_string(), Role::Decode))
    );
}

#[test]
fn pd_decode_wins_when_a_pod_matches_both_label_sets() {
    let g = PdGroup {
        group_key: "group".into(),
        prefill_labels: [("prefill".to_string(), "yes".to_string())].into(),
        decode_labels: [("decode".to_string(), "yes".to_string())].into(),
    };
    let pod = labelled(&[("group", "g0"), ("prefill", "yes"), ("decode", "yes")]);
    assert_eq!(
        pd_membership(&pod, &g),
        Ok(("g0".to_string(), Role::Decode))
    );
}

#[test]
fn pd_role_needs_all_labels_of_a_set() {
    let mut g = pd_group();
    g.decode_labels.insert("tier".into(), "gpu".into());
    // Only part of decodeLabels: not decode; not prefill either.
    let pod = labelled(&[("group", "g0"), ("role", "D")]);
    assert_eq!(pd_membership(&pod, &g), Err(PdExclusion::NoRole));
}

#[test]
fn pd_pods_without_the_group_label_are_excluded() {
    let g = pd_group();
    assert_eq!(
        pd_membership(&labelled(&[("role", "D")]), &g),
        Err(PdExclusion::NoGroup)
    );
    // An empty value is no group (Kthena skips it too).
    assert_eq!(
        pd_membership(&labelled(&[("group", ""), ("role", "D")]), &g),
        Err(PdExclusion::NoGroup)
    );
}

#[test]
fn pd_pods_with_a_group_but_no_role_are_excluded() {
    let g = pd_group();
    assert_eq!(
        pd_membership(&labelled(&[("group", "g0")]), &g),
        Err(PdExclusion::NoRole)
    );
    assert_eq!(
        pd_membership(&labelled(&[("group", "g0"), ("role", "X")]), &g),
        Err(PdExclusion::NoRole)
    );
}

fn pd_pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: x, {labels}}}}}\nstatus: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n")
}

fn pd_server_yaml(engine: &str, annotations: &str) -> String {
    format!(
        "apiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata: {{name: s, namespace: team{annotations}}}\nspec: {{inferenceEngine: {engine}, workloadSelector: {{matchLabels: {{app: x}}, pdGroup: {{groupKey: group, prefillLabels: {{role: P}}, decodeLabels: {{role: D}}}}}}, workloadPort: {{port: 8000}}}}\n"
    )
}

#[test]
fn pd_server_endpoints_carry_group_and_role_in_its_namespace_only() {
    let mut yaml = pd_server_yaml("vLLM", "");
    yaml += &pd_pod("team", "d0", "10.0.0.2", "group: g0, role: D");
    yaml += &pd_pod("team", "p0", "10.0.0.1", "group: g0, role: P");
    yaml += &pd_pod("team", "plain", "10.0.0.3", "role: D");
    yaml += &pd_pod("team", "roleless", "10.0.0.4", "group: g0");
    // Same labels, other namespace: not a member.
    yaml += &pd_pod("other", "a-d9", "10.0.0.9", "group: g0, role: D");
    let (c, diags) = compile_yaml(&yaml);
    assert!(diags.warnings.is_empty(), "{:?}", diags.warnings);
    let s = &c.config.servers[0];
    assert_eq!(
        s.pd,
        Some(Pd {
            group_key: "group".into(),
            bootstrap_port: None
        })
    );
    let got: Vec<(&str, Option<&str>, Option<Role>)> = s
        .endpoints
        .iter()
        .map(|e| (e.pod.as_str(), e.group.as_deref(), e.role))
        .collect();
    assert_eq!(
        got,
        vec![
            ("team/d0", Some("g0"), Some(Role::Decode)),
            ("team/p0", Some("g0"), Some(Role::Prefill)),
        ]
    );
    let addrs: Vec<String> = c.clusters[0]
        .endpoints
        .iter()
        .map(|(ip, port)| pods::endpoint_address(*ip, *port))
        .collect();
    assert_eq!(addrs, vec!["10.0.0.2:8000", "10.0.0.1:8000"]);
}

#[test]
fn non_pd_servers_have_no_pd_group_or_role() {
    let (c, _) = compile_yaml(SERVER);
    let s = &c.config.servers[0];
    assert_eq!(s.pd, None);
    assert!(s
        .endpoints
        .iter()
        .all(|e| e.group.is_none() && e.role.is_none()));
    let json = serde_json::to_string(s).unwrap();
    assert!(
        !json.contains("\"pd\"") && !json.contains("\"group\"") && !json.contains("\"role\""),
        "{json}"
    );
}

const PORT_ANNOTATION: &str = ", annotations: {modelroute.io/sglang-bootstrap-port: '9000'}";

#[test]
fn sglang_pd_takes_the_bootstrap_port_annotation() {
    let (c, diags) = compile_yaml(&pd_server_yaml("SGLang", PORT_ANNOTATION));
    assert!(diags.warnings.is_empty(), "{:?}", diags.warnings);
    assert_eq!(
        c.config.servers[0].pd.as_ref().unwrap().bootstrap_port,
        Some(9000)
    );
    let (c, _) = compile_yaml(&pd_server_yaml("SGLang", ""));
    assert_eq!(
        c.config.servers[0].pd.as_ref().unwrap().bootstrap_port,
        None
    );
}

#[test]
fn bootstrap_port_annotation_is_ignored_with_a_warning_for_vllm() {
    let (c, diags) = compile_yaml(&pd_server_yaml("vLLM", PORT_ANNOTATION));
    assert_eq!(
        c.config.servers[0].pd.as_ref().unwrap().bootstrap_port,
        None
    );
    assert_eq!(
        diags.warnings,
        vec!["t.yaml: ModelServer team/s: metadata.annotations[modelroute.io/sglang-bootstrap-port]: only used by SGLang, not vLLM; ignored"]
    );
}

#[test]
fn bootstrap_port_annotation_is_ignored_with_a_warning_without_pd_group() {
    let (c, diags) = compile_yaml(
        "apiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata: {name: s, annotations: {modelroute.io/sglang-bootstrap-port: '9000'}}\nspec: {inferenceEngine: SGLang, workloadSelector: {matchLabels: {app: x}}, workloadPort: {port: 8000}}",
    );
    assert_eq!(c.config.servers[0].pd, None);
    assert_eq!(
        diags.warnings,
        vec!["t.yaml: ModelServer default/s: metadata.annotations[modelroute.io/sglang-bootstrap-port]: only used with spec.workloadSelector.pdGroup; ignored"]
    );
}

#[test]
fn shared_placements_go_through_the_gateways_rate_limit_service() {
    let (c, _) = compile_yaml(SERVER);
    let gateway = |service: Option<&str>| crate::gateway::Gateway {
        rate_limit_service: service.map(String::from),
        shared_placements_redis: Some("redis:6379".into()),
        ..Default::default()
    };
    let mut diags = crate::diag::Diagnostics::default();
    let with = c
        .clone()
        .with_gateway(gateway(Some("rls:8081")), &mut diags);
    assert!(diags.warnings.is_empty(), "{:?}", diags.warnings);
    assert_eq!(
        with.config.settings.shared_placements,
        Some(filter_config::SharedPlacements {
            cluster: crate::render::rate_limit::CLUSTER.into(),
            redis: "redis:6379".into(),
            timeout_ms: crate::compile::SHARED_PLACEMENTS_TIMEOUT_MS,
            ttl_s: crate::compile::SHARED_PLACEMENTS_TTL_S,
        })
    );
    let without = c.with_gateway(gateway(None), &mut diags);
    assert_eq!(without.config.settings.shared_placements, None);
    let w = diags.warnings.join("\n");
    assert!(w.contains("--shared-placements-redis"), "{w}");
}

#[test]
fn session_sticky_compiles_to_lower_case_headers_and_ms_and_warns_for_pd_targets() {
    let route = |name: &str, server: &str, sticky: &str| {
        format!("---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {{name: {name}}}\nspec: {{modelName: {name}, sessionSticky: {sticky}, rules: [{{name: a, targetModels: [{{modelServerName: {server}}}]}}]}}\n")
    };
    let pd = "---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata: {name: pd}\nspec: {inferenceEngine: vLLM, workloadSelector: {matchLabels: {app: x}, pdGroup: {groupKey: group, prefillLabels: {role: P}, decodeLabels: {role: D}}}, workloadPort: {port: 8000}}\n";
    let yaml = format!(
        "{SERVER}{pd}{}{}{}",
        route("a", "s", "{sessionAffinitySeconds: 30, sources: [{type: Header, name: X-Session-ID}, {type: Query, name: Sess}, {type: Cookie, name: ' SID '}]}"),
        route("b", "s", "{sources: [{type: Header, name: x-user}]}"),
        route("p", "pd", "{sources: [{type: Header, name: x-user}]}"),
    );
    let (c, diags) = compile_yaml(&yaml);
    let sticky = |name: &str| {
        c.config
            .routes
            .iter()
            .find(|r| r.name == format!("default/{name}"))
            .and_then(|r| r.session_sticky.clone())
    };
    use filter_config::{SessionKeyKind as K, SessionKeySource as S};
    assert_eq!(
        sticky("a"),
        Some(filter_config::SessionSticky {
            sources: vec![
                S::new(K::Header, "x-session-id"),
                S::new(K::Query, "Sess"),
                S::new(K::Cookie, "SID"),
            ],
            ttl_ms: 30_000,
        })
    );
    assert_eq!(
        sticky("b").map(|s| s.ttl_ms),
        Some(600_000),
        "Kthena's default"
    );
    let w = diags.warnings.join("\n");
    assert!(
        w.contains(
            "ModelRoute default/p: spec.sessionSticky: ModelServer default/pd is PD-disaggregated"
        ),
        "{w}"
    );
    assert!(
        !w.contains("default/a:") && !w.contains("default/b:"),
        "{w}"
    );
}

#[test]
fn the_session_sticky_example_validates_and_compiles() {
    let yaml = include_str!("../../../examples/session-sticky/ModelRoute-session-sticky.yaml");
    let mut diags = Diagnostics::default();
    let inputs = inputs(yaml);
    crate::validate::validate(&inputs, &mut diags);
    assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    let c = compile(&inputs, Settings::default(), &mut diags);
    let sticky = c.config.routes[0].session_sticky.clone().unwrap();
    assert_eq!((sticky.sources.len(), sticky.ttl_ms), (3, 600_000));
}
