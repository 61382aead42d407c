use super::*;

const HELM_EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/scheduler/kthena-router-config.yaml"
));

const CACHE_AFFINITY_EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/scheduler/cache-affinity.yaml"
));

/// Parses `text` as file `s.yaml` starting from the defaults.
fn run(text: &str) -> (Option<Scheduler>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let s = parse("s.yaml", text, &Scheduler::default(), &mut diags);
    (s, diags)
}

fn ok(text: &str) -> (Scheduler, Vec<String>) {
    let (s, diags) = run(text);
    assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    (s.unwrap(), diags.warnings)
}

fn errors(text: &str) -> Vec<String> {
    let (s, diags) = run(text);
    assert!(s.is_none(), "expected errors, got {s:?}");
    assert!(
        !diags
            .warnings
            .iter()
            .any(|w| w.contains("no score plugins")),
        "{:?}",
        diags.warnings
    );
    assert!(!diags.errors.is_empty());
    diags.errors
}

fn w(name: Plugin, weight: u32) -> WeightedPlugin {
    WeightedPlugin { name, weight }
}

/// A bare routerConfiguration with the given plugins section and no pluginConfig.
fn plugins(yaml: &str) -> String {
    format!("scheduler:\n  plugins:\n{yaml}")
}

#[test]
fn the_cache_affinity_profile_is_prefix_cache_then_load_without_a_filter() {
    let (s, warnings) = ok(CACHE_AFFINITY_EXAMPLE);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(s.filters.is_empty());
    assert_eq!(
        s.scores,
        [w(Plugin::PrefixCache, 3), w(Plugin::LeastRequest, 1)]
    );
    assert_eq!(s.prefix_bounded_load, 1.5);
}

#[test]
fn helm_default_configmap_maps_to_the_defaults() {
    let (s, warnings) = ok(HELM_EXAMPLE);
    assert_eq!(s, Scheduler::default());
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn configmap_and_bare_form_give_the_same_result() {
    let bare = "scheduler:\n  pluginConfig:\n  - name: least-request\n    args: {maxWaitingRequests: 3}\n  plugins:\n    Filter: {enabled: [least-request]}\n    Score: {enabled: [{name: random, weight: 2}]}\n";
    let indented: String = bare.lines().map(|l| format!("    {l}\n")).collect();
    let configmap = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: kthena-router-config, namespace: kthena-system}}\ndata:\n  routerConfiguration: |-\n{indented}"
    );
    let (a, _) = ok(bare);
    let (b, _) = ok(&configmap);
    assert_eq!(a, b);
    assert_eq!(a.max_waiting_requests, 3);
    assert_eq!(a.scores, vec![w(Plugin::Random, 2)]);
}

#[test]
fn configmap_errors_name_the_configmap_and_key() {
    let e = errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kthena-router-config, namespace: kthena-system}\ndata:\n  routerConfiguration: |-\n    scheduler:\n      plugins:\n        Filter: {enabled: [foo]}\n");
    assert_eq!(
        e,
        vec!["s.yaml: ConfigMap kthena-system/kthena-router-config: data.routerConfiguration: scheduler.plugins.Filter.enabled[0]: unknown plugin \"foo\" (known: least-request, gpu-usage, least-latency, prefix-cache, lora-affinity, random, session-affinity)"]
    );
    let e = errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {other: y}\n");
    assert_eq!(
        e,
        vec!["s.yaml: ConfigMap default/x: data.routerConfiguration: missing (Kthena's router reads its configuration from this key)"]
    );
}

#[test]
fn other_kinds_are_rejected() {
    let e = errors("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
    assert!(
        e[0].starts_with("s.yaml: kind \"Deployment\": expected a ConfigMap"),
        "{e:?}"
    );
}

#[test]
fn the_router_config_is_picked_out_of_a_multi_document_file() {
    let text = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: kthena-router}}\n---\n{HELM_EXAMPLE}"
    );
    assert_eq!(ok(&text).0, Scheduler::default());
    let twice = format!("{HELM_EXAMPLE}\n---\n{HELM_EXAMPLE}");
    assert!(errors(&twice)[0].contains("expected exactly one"));
}

#[test]
fn defaults_when_absent() {
    // Without a scheduler section: Kthena's defaults, with a warning.
    let (s, warnings) = ok("auth: {issuer: x}\n");
    assert_eq!(s, Scheduler::default());
    assert_eq!(
        warnings,
        vec![
            "s.yaml: auth: not used by modelroute (only `scheduler` is); ignored",
            "s.yaml: scheduler: missing; using Kthena's default scheduler configuration",
        ]
    );
    // Missing arguments keep their defaults; the base's metrics timing is kept.
    let base = Scheduler {
        metrics_interval_ms: 250,
        metrics_stale_ms: 900,
        ..Scheduler::default()
    };
    let mut diags = Diagnostics::default();
    let s = parse(
        "s.yaml",
        "scheduler:\n  pluginConfig:\n  - name: prefix-cache\n    args: {topKMatches: 2}\n  plugins:\n    Filter: {enabled: []}\n    Score: {enabled: [{name: prefix-cache}]}\n",
        &base,
        &mut diags,
    )
    .unwrap();
    assert_eq!(diags, Diagnostics::default());
    assert_eq!(s.filters, vec![]);
    assert_eq!(s.scores, vec![w(Plugin::PrefixCache, 1)]);
    assert_eq!(s.prefix_top_k, 2);
    assert_eq!(
        (
            s.prefix_block_size,
            s.prefix_max_blocks,
            s.prefix_max_hashes
        ),
        (64, 128, 50_000)
    );
    assert_eq!(s.max_waiting_requests, 10);
    assert_eq!(s.ttft_tpot_weight_factor, 0.5);
    assert_eq!((s.metrics_interval_ms, s.metrics_stale_ms), (250, 900));
}

#[test]
fn no_plugins_section_means_no_plugins_as_in_kthena() {
    let (s, warnings) = ok("scheduler:\n  pluginConfig: []\n");
    assert!(s.filters.is_empty() && s.scores.is_empty());
    assert_eq!(
        warnings,
        vec!["s.yaml: scheduler.plugins.Score.enabled: no score plugins: every pod that passes the filters scores the same"]
    );
}

#[test]
fn unknown_plugin_is_an_error_with_its_path() {
    let e = errors(&plugins(
        "    Score:\n      enabled:\n      - {name: least-request, weight: 1}\n      - {name: gpu-usage}\n      - {name: foo, weight: 1}\n",
    ));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("s.yaml: scheduler.plugins.Score.enabled[2].name: unknown plugin \"foo\""),
        "{e:?}"
    );
    let e = errors("scheduler:\n  pluginConfig:\n  - name: least-requests\n    args: {}\n");
    assert!(
        e[0].starts_with(
            "s.yaml: scheduler.pluginConfig[0].name: unknown plugin \"least-requests\""
        ),
        "{e:?}"
    );
    let e = errors(&plugins("    Filter: {disabled: [bogus]}\n"));
    assert!(e[0].starts_with("s.yaml: scheduler.plugins.Filter.disabled[0]: unknown plugin"));
}

#[test]
fn cost_aware_a_plugin_proposed_for_kthena_is_an_error_that_says_so() {
    let e = errors(&plugins(
        "    Score:\n      enabled:\n      - {name: prefix-cache, weight: 3}\n      - {name: cost-aware, weight: 10}\n",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "s.yaml: scheduler.plugins.Score.enabled[1].name: \"cost-aware\" is a plugin proposed for Kthena's router (an open pull request) that this router does not implement"
        ),
        "{e:?}"
    );
    let e = errors("scheduler:\n  pluginConfig:\n  - name: cost-aware\n    args: {mode: score}\n");
    assert!(
        e[0].starts_with(
            "s.yaml: scheduler.pluginConfig[0].name: \"cost-aware\" is a plugin proposed for Kthena"
        ),
        "{e:?}"
    );
}

#[test]
fn session_affinity_scores_with_its_header_and_ttl() {
    let enabled = "  plugins:\n    Score: {enabled: [{name: session-affinity, weight: 10}, {name: least-request}]}\n";
    let (s, warnings) = ok(&format!("scheduler:\n{enabled}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(s.scores[0], w(Plugin::SessionAffinity, 10));
    // Kthena's defaults apply without arguments.
    assert_eq!(s.session_affinity, None);
    let with = |args: &str| {
        format!(
            "scheduler:\n  pluginConfig:\n  - name: session-affinity\n    args: {args}\n{enabled}"
        )
    };
    let (s, warnings) = ok(&with("{headerName: X-Conversation-ID, ttl: 1h30m}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        s.session_affinity,
        Some(filter_config::SessionAffinity {
            header: "x-conversation-id".into(),
            ttl_ms: 5_400_000
        })
    );
    let (s, _) = ok(&with("{ttl: 90s}"));
    assert_eq!(
        s.session_affinity.map(|a| (a.header, a.ttl_ms)),
        Some(("x-session-id".into(), 90_000))
    );
    for (bad, field) in [
        ("{ttl: 0s}", "ttl"),
        ("{ttl: -5m}", "ttl"),
        ("{ttl: soon}", "ttl"),
        ("{ttl: 30}", "ttl"),
        ("{headerName: \"x session\"}", "headerName"),
        ("{headerName: \"\"}", "headerName"),
        ("{headerName: [a]}", "headerName"),
    ] {
        let e = errors(&with(bad));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with(&format!("s.yaml: scheduler.pluginConfig[0].args.{field}: ")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn filter_only_plugin_cannot_score() {
    let e = errors(&plugins(
        "    Score: {enabled: [{name: lora-affinity, weight: 1}]}\n",
    ));
    assert_eq!(
        e,
        vec!["s.yaml: scheduler.plugins.Score.enabled[0].name: \"lora-affinity\" is not a score plugin (scores: least-request, gpu-usage, least-latency, prefix-cache, random, session-affinity)"]
    );
}

#[test]
fn score_only_plugins_cannot_filter() {
    let e = errors(&plugins(
        "    Filter: {enabled: [least-request, gpu-usage, prefix-cache, lora-affinity]}\n",
    ));
    assert_eq!(
        e,
        vec![
            "s.yaml: scheduler.plugins.Filter.enabled[1]: \"gpu-usage\" is not a filter plugin (filters: least-request, lora-affinity)",
            "s.yaml: scheduler.plugins.Filter.enabled[2]: \"prefix-cache\" is not a filter plugin (filters: least-request, lora-affinity)",
        ]
    );
}

#[test]
fn filters_keep_their_order() {
    let (s, _) = ok(&plugins(
        "    Filter: {enabled: [lora-affinity, least-request]}\n    Score: {enabled: [{name: gpu-usage}]}\n",
    ));
    assert_eq!(s.filters, vec![Plugin::LoraAffinity, Plugin::LeastRequest]);
}

#[test]
fn weight_defaults_to_1() {
    let (s, warnings) = ok(&plugins(
        "    Score:\n      enabled:\n      - name: gpu-usage\n      - {name: least-latency, weight: 0}\n      - {name: prefix-cache, weight: 7}\n",
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        s.scores,
        vec![
            w(Plugin::GpuUsage, 1),
            w(Plugin::LeastLatency, 0),
            w(Plugin::PrefixCache, 7)
        ]
    );
}

#[test]
fn weight_must_be_a_non_negative_integer() {
    let e = errors(&plugins(
        "    Score:\n      enabled:\n      - {name: gpu-usage, weight: -1}\n      - {name: prefix-cache, weight: 1.5}\n      - {name: least-latency, weight: \"2\"}\n",
    ));
    assert_eq!(
        e,
        vec![
            "s.yaml: scheduler.plugins.Score.enabled[0].weight: must be at least 0, got -1",
            "s.yaml: scheduler.plugins.Score.enabled[1].weight: must be an integer, got 1.5",
            "s.yaml: scheduler.plugins.Score.enabled[2].weight: must be an integer, got a string",
        ]
    );
}

#[test]
fn both_enabled_and_disabled_is_an_error() {
    let e = errors(&plugins(
        "    Filter:\n      enabled: [least-request]\n      disabled: [lora-affinity, least-request]\n    Score:\n      enabled: [{name: gpu-usage}]\n      disabled: [{name: gpu-usage, weight: 1}, {name: random}]\n",
    ));
    assert_eq!(
        e,
        vec![
            "s.yaml: scheduler.plugins.Filter.disabled[1]: \"least-request\" is both enabled and disabled",
            "s.yaml: scheduler.plugins.Score.disabled[0]: \"gpu-usage\" is both enabled and disabled",
        ]
    );
    // The same plugin may filter in one section and be disabled in the other.
    let (s, _) = ok(&plugins(
        "    Filter: {enabled: [least-request]}\n    Score: {enabled: [{name: gpu-usage}], disabled: [least-request]}\n",
    ));
    assert_eq!(s.filters, vec![Plugin::LeastRequest]);
}

#[test]
fn factor_out_of_range_is_an_error() {
    for bad in ["1.5", "-0.1", "high", "~"] {
        let e = errors(&format!(
            "scheduler:\n  pluginConfig:\n  - name: least-latency\n    args:\n      TTFTTPOTWeightFactor: {bad}\n"
        ));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with(
                "s.yaml: scheduler.pluginConfig[0].args.TTFTTPOTWeightFactor: must be"
            ),
            "{bad}: {e:?}"
        );
    }
    // The YAML parser already rejects non-finite numbers.
    for bad in [".nan", ".inf", "-.inf"] {
        let e = errors(&format!(
            "scheduler:\n  pluginConfig:\n  - name: least-latency\n    args: {{TTFTTPOTWeightFactor: {bad}}}\n"
        ));
        assert!(e[0].contains("non-finite"), "{bad}: {e:?}");
    }
    for good in ["0", "1", "0.25"] {
        let (s, _) = ok(&format!(
            "scheduler:\n  pluginConfig:\n  - name: least-latency\n    args: {{TTFTTPOTWeightFactor: {good}}}\n  plugins:\n    Score: {{enabled: [{{name: least-latency}}]}}\n"
        ));
        assert_eq!(s.ttft_tpot_weight_factor, good.parse::<f64>().unwrap());
    }
}

#[test]
fn bounded_load_is_off_or_a_factor_of_at_least_1() {
    let with = |v: &str| {
        format!("scheduler:\n  pluginConfig:\n  - name: prefix-cache\n    args: {{boundedLoad: {v}}}\n  plugins:\n    Score: {{enabled: [{{name: prefix-cache}}]}}\n")
    };
    assert_eq!(
        ok(&plugins("    Score: {enabled: [{name: prefix-cache}]}\n"))
            .0
            .prefix_bounded_load,
        0.0
    );
    for (good, factor) in [("0", 0.0), ("1", 1.0), ("1.25", 1.25), ("3", 3.0)] {
        let (s, warnings) = ok(&with(good));
        assert!(warnings.is_empty(), "{good}: {warnings:?}");
        assert_eq!(s.prefix_bounded_load, factor, "{good}");
    }
    for bad in ["0.5", "-1", "high", "~"] {
        let e = errors(&with(bad));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with("s.yaml: scheduler.pluginConfig[0].args.boundedLoad: must be"),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn pod_speed_is_true_or_false() {
    let with = |v: &str| {
        format!("scheduler:\n  pluginConfig:\n  - name: prefix-cache\n    args: {{podSpeed: {v}}}\n  plugins:\n    Score: {{enabled: [{{name: prefix-cache}}]}}\n")
    };
    assert!(
        !ok(&plugins("    Score: {enabled: [{name: prefix-cache}]}\n"))
            .0
            .prefix_pod_speed
    );
    for (good, on) in [("true", true), ("false", false)] {
        let (s, warnings) = ok(&with(good));
        assert!(warnings.is_empty(), "{good}: {warnings:?}");
        assert_eq!(s.prefix_pod_speed, on, "{good}");
    }
    for bad in ["1", "yes please", "~"] {
        let e = errors(&with(bad));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with(
                "s.yaml: scheduler.pluginConfig[0].args.podSpeed: must be true or false"
            ),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn integer_arguments_must_be_at_least_1() {
    let e = errors(
        "scheduler:\n  pluginConfig:\n  - name: least-request\n    args: {maxWaitingRequests: 0}\n  - name: prefix-cache\n    args: {blockSizeToHash: 0, maxBlocksToMatch: -3, maxHashCacheSize: 2.5, topKMatches: 0}\n",
    );
    assert_eq!(
        e,
        vec![
            "s.yaml: scheduler.pluginConfig[0].args.maxWaitingRequests: must be at least 1, got 0",
            "s.yaml: scheduler.pluginConfig[1].args.blockSizeToHash: must be at least 1, got 0",
            "s.yaml: scheduler.pluginConfig[1].args.maxBlocksToMatch: must be at least 1, got -3",
            "s.yaml: scheduler.pluginConfig[1].args.maxHashCacheSize: must be an integer, got 2.5",
            "s.yaml: scheduler.pluginConfig[1].args.topKMatches: must be at least 1, got 0",
        ]
    );
}

#[test]
fn kvcache_aware_is_warned_and_ignored() {
    let (s, warnings) = ok(
        "scheduler:\n  pluginConfig:\n  - name: kvcache-aware\n    args: {blockSizeToHash: 128}\n  plugins:\n    Filter: {enabled: [least-request]}\n    Score:\n      enabled:\n      - {name: kvcache-aware, weight: 5}\n      - {name: gpu-usage, weight: 2}\n      disabled: [kvcache-aware]\n",
    );
    assert_eq!(s.scores, vec![w(Plugin::GpuUsage, 2)]);
    assert_eq!(s.prefix_block_size, 64, "kvcache-aware args must not leak");
    let msg =
        "kvcache-aware is not supported (it needs Redis and the Kthena router runtime); ignored";
    assert_eq!(
        warnings,
        vec![
            format!("s.yaml: scheduler.pluginConfig[0].name: {msg}"),
            format!("s.yaml: scheduler.plugins.Score.enabled[0].name: {msg}"),
        ]
    );
}

#[test]
fn random_next_to_other_scores_is_dropped_as_in_kthena() {
    let (s, warnings) = ok(&plugins(
        "    Score: {enabled: [{name: random}, {name: prefix-cache, weight: 3}]}\n",
    ));
    assert_eq!(s.scores, vec![w(Plugin::PrefixCache, 3)]);
    assert_eq!(
        warnings,
        vec!["s.yaml: scheduler.plugins.Score.enabled[0].name: \"random\" is dropped because other score plugins are enabled (as Kthena does)"]
    );
    let (s, warnings) = ok(&plugins("    Score: {enabled: [{name: random}]}\n"));
    assert_eq!(s.scores, vec![w(Plugin::Random, 1)]);
    assert!(warnings.is_empty());
}

#[test]
fn duplicates_are_warned_about() {
    let (s, warnings) = ok(&plugins(
        "    Filter: {enabled: [least-request, least-request]}\n    Score: {enabled: [{name: gpu-usage, weight: 1}, {name: least-request}, {name: gpu-usage, weight: 4}]}\n",
    ));
    assert_eq!(s.filters, vec![Plugin::LeastRequest]);
    assert_eq!(
        s.scores,
        vec![w(Plugin::GpuUsage, 4), w(Plugin::LeastRequest, 1)]
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn unknown_fields_and_arguments_are_warned_about() {
    let (s, warnings) = ok(
        "scheduler:\n  profile: x\n  pluginConfig:\n  - name: least-request\n    args: {maxWaitingRequest: 3}\n  - name: gpu-usage\n    args: {foo: 1}\n  plugins:\n    filter: {enabled: [lora-affinity]}\n    Score: {enabled: [{name: gpu-usage, wieght: 2}]}\n",
    );
    assert_eq!(s.max_waiting_requests, 10);
    assert_eq!(s.scores, vec![w(Plugin::GpuUsage, 1)]);
    assert_eq!(
        warnings,
        vec![
            "s.yaml: scheduler.profile: unknown field, ignored",
            "s.yaml: scheduler.pluginConfig[0].args.maxWaitingRequest: unknown argument of least-request, ignored",
            "s.yaml: scheduler.pluginConfig[1].args.foo: unknown argument of gpu-usage, ignored",
            "s.yaml: scheduler.plugins.filter: unknown field, ignored",
            "s.yaml: scheduler.plugins.Score.enabled[0].wieght: unknown field, ignored",
        ]
    );
}

#[test]
fn all_errors_are_collected() {
    let e = errors(
        "scheduler:\n  pluginConfig:\n  - name: least-request\n    args: {maxWaitingRequests: 0}\n  plugins:\n    Filter: {enabled: [gpu-usage]}\n    Score: {enabled: [{name: foo}, lora-affinity]}\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[3].starts_with("s.yaml: scheduler.plugins.Score.enabled[1]: must be a mapping"));
}

#[test]
fn syntax_and_type_errors_name_the_file() {
    assert!(errors("scheduler: [unclosed\n")[0].starts_with("s.yaml: cannot parse"));
    assert_eq!(
        errors("scheduler:\n  plugins: [a]\n"),
        vec!["s.yaml: scheduler.plugins: must be a mapping, got a list"]
    );
    assert!(errors("")[0].starts_with("s.yaml: empty"));
}

#[test]
fn metrics_staleness_must_exceed_the_interval() {
    assert!(check_metrics(&Scheduler::default()).is_ok());
    let s = Scheduler {
        metrics_interval_ms: 1000,
        metrics_stale_ms: 1000,
        ..Scheduler::default()
    };
    assert!(check_metrics(&s).unwrap_err().contains("must be longer"));
}
