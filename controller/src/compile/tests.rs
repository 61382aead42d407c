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
fn rate_limit_and_https_warn() {
    let (c, diags) = compile_yaml(
        "apiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata: {name: s}\nspec: {inferenceEngine: vLLM, workloadSelector: {matchLabels: {app: x}}, workloadPort: {port: 443, protocol: https}}\n---\napiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelRoute\nmetadata: {name: r}\nspec: {modelName: m, rateLimit: {inputTokensPerUnit: 10}, rules: [{name: a, targetModels: [{modelServerName: s}]}]}",
    );
    assert!(c.clusters[0].tls);
    assert_eq!(diags.warnings.len(), 2, "{:?}", diags.warnings);
    assert!(diags.warnings[0].contains("spec.rateLimit: accepted but not enforced yet"));
}
