//! Validation: Kthena's admission-webhook rules plus the limits the filter relies on
//! (weights 0..100, at most 16 rules / 16 targets / 10 LoRA adapters, ports, durations, regexes
//! that `regex-lite` compiles, engine and connector names). Every problem is reported with
//! file, object and field path; nothing stops at the first error. Pure: reads `Inputs` only.

use std::collections::BTreeMap;

use crate::diag::{object_line, Diagnostics};
use crate::duration::parse_duration_ms;
use crate::kthena::{
    annotation_path, parse_port_annotation, ModelRouteSpec, ModelServerSpec, Object, ObjectMeta,
    SessionStickySpec, StringMatch, KV_CONNECTORS, MAX_SESSION_KEY_SOURCES,
    SGLANG_BOOTSTRAP_PORT_ANNOTATION,
};
use crate::load::Inputs;

pub const MAX_RULES: usize = 16;
pub const MAX_TARGETS: usize = 16;
pub const MAX_LORA_ADAPTERS: usize = 10;
pub const MAX_WEIGHT: i64 = 100;
pub const MAX_MODEL_LEN: usize = 256;

/// Problems of one object as `(field path, message)`.
type Findings = Vec<(String, String)>;

/// Validates every object and reports each problem into `diags.errors`.
pub fn validate(inputs: &Inputs, diags: &mut Diagnostics) {
    for r in &inputs.routes {
        report(r, "ModelRoute", validate_route(&r.spec), diags);
    }
    for s in &inputs.servers {
        let mut findings = validate_server_annotations(&s.meta);
        findings.extend(validate_server(&s.spec));
        report(s, "ModelServer", findings, diags);
    }
    duplicates(
        inputs.routes.iter().map(|o| (&o.file, &o.meta)),
        "ModelRoute",
        diags,
    );
    duplicates(
        inputs.servers.iter().map(|o| (&o.file, &o.meta)),
        "ModelServer",
        diags,
    );
}

fn report<S>(obj: &Object<S>, kind: &str, mut findings: Findings, diags: &mut Diagnostics) {
    if obj.meta.name.is_empty() {
        findings.insert(0, ("metadata.name".into(), "is required".into()));
    }
    for (path, msg) in findings {
        diags.error(object_line(&obj.file, kind, &obj.meta.key(), &path, &msg));
    }
}

fn duplicates<'a>(
    objs: impl Iterator<Item = (&'a String, &'a ObjectMeta)>,
    kind: &str,
    diags: &mut Diagnostics,
) {
    let mut seen: BTreeMap<String, &String> = BTreeMap::new();
    for (file, meta) in objs {
        let key = meta.key();
        if let Some(first) = seen.get(&key) {
            diags.error(object_line(
                file,
                kind,
                &key,
                "",
                &format!("defined twice (also in {first})"),
            ));
        } else {
            seen.insert(key, file);
        }
    }
}

/// The rules of a ModelRoute.
pub fn validate_route(spec: &ModelRouteSpec) -> Findings {
    let mut f = Findings::new();
    let no_model_name = spec.model_name.as_deref().is_none_or(str::is_empty);
    if no_model_name && spec.lora_adapters.is_empty() {
        f.push((
            "spec".into(),
            "one of modelName or loraAdapters is required".into(),
        ));
    }
    if spec.lora_adapters.len() > MAX_LORA_ADAPTERS {
        f.push((
            "spec.loraAdapters".into(),
            format!(
                "at most {MAX_LORA_ADAPTERS} adapters are allowed, got {}",
                spec.lora_adapters.len()
            ),
        ));
    }
    for (i, name) in spec.lora_adapters.iter().enumerate() {
        if name.trim().is_empty() {
            f.push((
                format!("spec.loraAdapters[{i}]"),
                "must not be empty".into(),
            ));
        }
    }
    if let Some(rl) = &spec.rate_limit {
        for (field, v) in [
            ("inputTokensPerUnit", rl.input_tokens_per_unit),
            ("outputTokensPerUnit", rl.output_tokens_per_unit),
        ] {
            if v == Some(0) {
                f.push((
                    format!("spec.rateLimit.{field}"),
                    "must be at least 1".into(),
                ));
            }
        }
        if rl.unit_seconds().is_none() {
            f.push((
                "spec.rateLimit.unit".into(),
                "must be one of second, minute, hour, day, month".into(),
            ));
        }
    }
    if let Some(sticky) = &spec.session_sticky {
        validate_session_sticky(sticky, &mut f);
    }
    if spec.rules.is_empty() {
        f.push(("spec.rules".into(), "at least one rule is required".into()));
    }
    if spec.rules.len() > MAX_RULES {
        f.push((
            "spec.rules".into(),
            format!(
                "at most {MAX_RULES} rules are allowed, got {}",
                spec.rules.len()
            ),
        ));
    }
    let lora_route = !spec.lora_adapters.is_empty();
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        if let Some(m) = &rule.model_match {
            for (name, sm) in &m.headers {
                if name.trim().is_empty() {
                    f.push((
                        format!("{rp}.modelMatch.headers"),
                        "header name must not be empty".into(),
                    ));
                }
                check_regex(&format!("{rp}.modelMatch.headers.{name}"), sm, &mut f);
            }
            if let Some(uri) = &m.uri {
                check_regex(&format!("{rp}.modelMatch.uri"), uri, &mut f);
            }
        }
        let targets = &rule.target_models;
        if targets.is_empty() {
            f.push((
                format!("{rp}.targetModels"),
                "at least one target is required".into(),
            ));
        }
        if targets.len() > MAX_TARGETS {
            f.push((
                format!("{rp}.targetModels"),
                format!(
                    "at most {MAX_TARGETS} targets are allowed, got {}",
                    targets.len()
                ),
            ));
        }
        let mut total = 0i64;
        let mut weights_ok = true;
        for (j, t) in targets.iter().enumerate() {
            let tp = format!("{rp}.targetModels[{j}]");
            let server = t
                .model_server_name
                .as_deref()
                .is_some_and(|s| !s.is_empty());
            let provider = t
                .external_model_provider_name
                .as_deref()
                .is_some_and(|s| !s.is_empty());
            if server == provider {
                f.push((
                    tp.clone(),
                    "exactly one of modelServerName or externalModelProviderName must be set"
                        .into(),
                ));
            }
            if provider && lora_route {
                f.push((
                    format!("{tp}.externalModelProviderName"),
                    "external model providers cannot serve a route with loraAdapters".into(),
                ));
            }
            let w = t.weight();
            if !(0..=MAX_WEIGHT).contains(&w) {
                f.push((
                    format!("{tp}.weight"),
                    format!("must be between 0 and {MAX_WEIGHT}"),
                ));
                weights_ok = false;
            }
            total += w;
        }
        if weights_ok && !targets.is_empty() && total == 0 {
            f.push((
                format!("{rp}.targetModels"),
                "total weight must be greater than 0".into(),
            ));
        }
    }
    f
}

/// `spec.sessionSticky`: Kthena's CRD and webhook rules (sources 1..16, a known type, a
/// name, TTL at least 1 s), a header name a header can have, and no JWTClaim source (the
/// filter does not see JWT claims; Envoy's jwt_authn can copy one into a header).
fn validate_session_sticky(sticky: &SessionStickySpec, f: &mut Findings) {
    let path = "spec.sessionSticky";
    if sticky.sources.is_empty() {
        f.push((
            format!("{path}.sources"),
            "must not be empty (omit sessionSticky to turn it off)".into(),
        ));
    }
    if sticky.sources.len() > MAX_SESSION_KEY_SOURCES {
        f.push((
            format!("{path}.sources"),
            format!(
                "at most {MAX_SESSION_KEY_SOURCES} sources are allowed, got {}",
                sticky.sources.len()
            ),
        ));
    }
    if sticky.session_affinity_seconds.is_some_and(|s| s < 1) {
        f.push((
            format!("{path}.sessionAffinitySeconds"),
            "must be at least 1".into(),
        ));
    }
    for (i, source) in sticky.sources.iter().enumerate() {
        let at = format!("{path}.sources[{i}]");
        let name = source.name.trim();
        if name.is_empty() {
            f.push((format!("{at}.name"), "must not be empty".into()));
        }
        match source.kind.as_str() {
            "Header" if !name.is_empty() && !crate::kthena::is_header_name(name) => f.push((
                format!("{at}.name"),
                format!("{name:?} is not a header name (letters, digits and -)"),
            )),
            "Header" | "Query" | "Cookie" => {}
            "JWTClaim" => f.push((
                format!("{at}.type"),
                "JWTClaim is not supported: copy the claim into a request header with Envoy's \
                 jwt_authn claim_to_headers and use a Header source"
                    .into(),
            )),
            other => f.push((
                format!("{at}.type"),
                format!("{other:?} is not one of Header, Query, Cookie, JWTClaim"),
            )),
        }
    }
}

fn check_regex(path: &str, sm: &StringMatch, f: &mut Findings) {
    if let Some(re) = &sm.regex {
        if let Err(e) = regex_lite::Regex::new(re) {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            f.push((
                format!("{path}.regex"),
                format!("invalid regex {re:?}: {first}"),
            ));
        }
    }
}

/// The rules of a ModelServer.
pub fn validate_server(spec: &ModelServerSpec) -> Findings {
    let mut f = Findings::new();
    match spec.inference_engine.as_deref() {
        None | Some("") => f.push((
            "spec.inferenceEngine".into(),
            "is required (vLLM or SGLang)".into(),
        )),
        Some(e) if engine_known(e) => {}
        Some(e) => f.push((
            "spec.inferenceEngine".into(),
            format!("{e:?} is not supported (vLLM or SGLang)"),
        )),
    }
    if let Some(model) = &spec.model {
        if model.len() > MAX_MODEL_LEN {
            f.push((
                "spec.model".into(),
                format!("must be at most {MAX_MODEL_LEN} characters"),
            ));
        }
    }
    let selector = spec.workload_selector.as_ref();
    if selector.is_none_or(|s| s.match_labels.is_empty()) {
        f.push((
            "spec.workloadSelector.matchLabels".into(),
            "at least one label is required".into(),
        ));
    }
    if let Some(pd) = selector.and_then(|s| s.pd_group.as_ref()) {
        let p = "spec.workloadSelector.pdGroup";
        if pd.group_key.trim().is_empty() {
            f.push((format!("{p}.groupKey"), "must not be empty".into()));
        }
        if pd.prefill_labels.is_empty() {
            f.push((
                format!("{p}.prefillLabels"),
                "at least one label is required".into(),
            ));
        }
        if pd.decode_labels.is_empty() {
            f.push((
                format!("{p}.decodeLabels"),
                "at least one label is required".into(),
            ));
        }
    }
    match &spec.workload_port {
        None => f.push(("spec.workloadPort.port".into(), "is required".into())),
        Some(wp) => {
            if !(1..=65535).contains(&wp.port) {
                f.push((
                    "spec.workloadPort.port".into(),
                    "must be between 1 and 65535".into(),
                ));
            }
            if let Some(proto) = &wp.protocol {
                if !proto.eq_ignore_ascii_case("http") && !proto.eq_ignore_ascii_case("https") {
                    f.push((
                        "spec.workloadPort.protocol".into(),
                        format!("{proto:?} is not http or https"),
                    ));
                }
            }
        }
    }
    if let Some(tp) = &spec.traffic_policy {
        if let Some(t) = &tp.timeout {
            if let Err(e) = parse_duration_ms(t) {
                f.push(("spec.trafficPolicy.timeout".into(), e.to_string()));
            }
        }
        if let Some(r) = &tp.retry {
            if let Some(a) = r.attempts {
                if !(0..=i64::from(u32::MAX)).contains(&a) {
                    f.push((
                        "spec.trafficPolicy.retry.attempts".into(),
                        "must not be negative".into(),
                    ));
                }
            }
            if let Some(i) = &r.retry_interval {
                if let Err(e) = parse_duration_ms(i) {
                    f.push((
                        "spec.trafficPolicy.retry.retryInterval".into(),
                        e.to_string(),
                    ));
                }
            }
        }
    }
    if let Some(kind) = spec.kv_connector.as_ref().and_then(|k| k.kind.as_deref()) {
        if !KV_CONNECTORS.iter().any(|k| k.eq_ignore_ascii_case(kind)) {
            f.push((
                "spec.kvConnector.type".into(),
                format!("{kind:?} is not one of {}", KV_CONNECTORS.join(", ")),
            ));
        }
    }
    f
}

/// Our own ModelServer annotations (Kthena YAML without them stays valid).
pub fn validate_server_annotations(meta: &ObjectMeta) -> Findings {
    let mut f = Findings::new();
    if let Some(v) = meta.annotations.get(SGLANG_BOOTSTRAP_PORT_ANNOTATION) {
        if parse_port_annotation(v).is_none() {
            f.push((
                annotation_path(SGLANG_BOOTSTRAP_PORT_ANNOTATION),
                format!("{v:?} is not a port number (decimal 1..65535)"),
            ));
        }
    }
    f
}

/// `vLLM` / `SGLang`, case-insensitively.
pub fn engine_known(e: &str) -> bool {
    e.eq_ignore_ascii_case("vllm") || e.eq_ignore_ascii_case("sglang")
}

#[cfg(test)]
mod tests;
