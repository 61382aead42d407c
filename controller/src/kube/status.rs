//! What the controller says about each ModelRoute / ModelServer: `status.conditions`
//! (`Accepted`, and `ResolvedRefs` for routes) and the Warning Events, derived from the
//! diagnostics of a build. Pure: the caller patches and publishes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::convert::SOURCE;
use crate::diag::Diagnostics;

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_SERVER_NOT_FOUND: &str = "ModelServerNotFound";
/// Reason of the Warning Event emitted for each error of an object.
pub const EVENT_REASON: &str = "InvalidSpec";

/// A `metav1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub last_transition_time: String,
}

fn condition(kind: &str, ok: bool, reason: &str, message: String, gen: Option<i64>) -> Condition {
    Condition {
        kind: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: gen,
        last_transition_time: String::new(),
    }
}

/// The errors of object `kind namespace/name`, each without the `apiserver.json: Kind key: `
/// prefix (so `spec.rules[0].targetModels: ...`).
pub fn object_errors(diags: &Diagnostics, kind: &str, key: &str) -> Vec<String> {
    let prefix = format!("{SOURCE}: {kind} {key}: ");
    diags
        .errors
        .iter()
        .filter_map(|e| e.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// ModelServers named by a route's targets (`spec.rules[].targetModels[].modelServerName`)
/// that are not in `servers` (keys `namespace/name`), in order, each once. Read from JSON, so
/// a route whose spec does not parse still gets an answer.
pub fn missing_servers(spec: &Value, namespace: &str, servers: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    let rules = spec.get("rules").and_then(Value::as_array);
    for rule in rules.into_iter().flatten() {
        let targets = rule.get("targetModels").and_then(Value::as_array);
        for t in targets.into_iter().flatten() {
            let Some(name) = t.get("modelServerName").and_then(Value::as_str) else {
                continue;
            };
            let key = format!("{namespace}/{name}");
            if !name.is_empty() && !servers.contains(&key) && !missing.contains(&key) {
                missing.push(key);
            }
        }
    }
    missing
}

/// Conditions for an object with `errors` (from [`object_errors`]); `missing` is `Some` for
/// routes (from [`missing_servers`]) and adds `ResolvedRefs`.
pub fn conditions(
    errors: &[String],
    missing: Option<&[String]>,
    gen: Option<i64>,
) -> Vec<Condition> {
    let accepted = if errors.is_empty() {
        condition(ACCEPTED, true, ACCEPTED, "valid".into(), gen)
    } else {
        condition(ACCEPTED, false, REASON_INVALID, errors.join("; "), gen)
    };
    let mut out = vec![accepted];
    if let Some(missing) = missing {
        out.push(if missing.is_empty() {
            condition(
                RESOLVED_REFS,
                true,
                RESOLVED_REFS,
                "all ModelServers found".into(),
                gen,
            )
        } else {
            let names: Vec<String> = missing
                .iter()
                .map(|m| format!("ModelServer {m} not found"))
                .collect();
            condition(
                RESOLVED_REFS,
                false,
                REASON_SERVER_NOT_FOUND,
                names.join("; "),
                gen,
            )
        });
    }
    out
}

/// `new` with each `lastTransitionTime` kept from `old` when the status did not change, else
/// `now` (RFC 3339).
pub fn with_transition_times(new: Vec<Condition>, old: &[Condition], now: &str) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            c.last_transition_time = old
                .iter()
                .find(|o| {
                    o.kind == c.kind && o.status == c.status && !o.last_transition_time.is_empty()
                })
                .map_or_else(|| now.to_string(), |o| o.last_transition_time.clone());
            c
        })
        .collect()
}

/// The conditions in an object's `status`, if any (unparsable ones count as absent).
pub fn current(obj_status: Option<&Value>) -> Vec<Condition> {
    obj_status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// Whether `desired` is already what the object says (transition times aside).
pub fn up_to_date(desired: &[Condition], current: &[Condition]) -> bool {
    let strip = |cs: &[Condition]| -> Vec<Condition> {
        cs.iter()
            .map(|c| Condition {
                last_transition_time: String::new(),
                ..c.clone()
            })
            .collect()
    };
    strip(desired) == strip(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diags(errors: &[&str]) -> Diagnostics {
        Diagnostics {
            errors: errors.iter().map(|e| e.to_string()).collect(),
            warnings: vec![],
        }
    }

    #[test]
    fn errors_are_attributed_to_their_object_only() {
        let d = diags(&[
            "apiserver.json: ModelRoute ns/r: spec.rules[0].targetModels: at least one target is required",
            "apiserver.json: ModelRoute ns/r2: spec: modelName or loraAdapters is required",
            "apiserver.json: ModelServer ns/r: spec.workloadPort.port: is required",
        ]);
        assert_eq!(
            object_errors(&d, "ModelRoute", "ns/r"),
            vec!["spec.rules[0].targetModels: at least one target is required"]
        );
        assert_eq!(object_errors(&d, "ModelServer", "ns/r").len(), 1);
        assert!(object_errors(&d, "ModelRoute", "ns/x").is_empty());
    }

    #[test]
    fn valid_route_with_servers_is_accepted_and_resolved() {
        let c = conditions(&[], Some(&[]), Some(3));
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[0].kind.as_str(),
                c[0].status.as_str(),
                c[0].reason.as_str()
            ),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(
            (c[1].kind.as_str(), c[1].status.as_str()),
            ("ResolvedRefs", "True")
        );
        assert_eq!(c[0].observed_generation, Some(3));
    }

    #[test]
    fn invalid_object_is_not_accepted_with_every_error_in_the_message() {
        let errs = vec!["spec.a: x".to_string(), "spec.b: y".to_string()];
        let c = conditions(&errs, None, None);
        assert_eq!(c.len(), 1, "servers get no ResolvedRefs");
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(c[0].message, "spec.a: x; spec.b: y");
    }

    #[test]
    fn route_naming_a_missing_server_is_unresolved() {
        let spec = json!({"rules": [
            {"targetModels": [{"modelServerName": "a"}, {"modelServerName": "gone"}]},
            {"targetModels": [{"modelServerName": "gone"}, {"externalModelProviderName": "p"}]}
        ]});
        let servers: BTreeSet<String> = ["ns/a".to_string()].into();
        let missing = missing_servers(&spec, "ns", &servers);
        assert_eq!(missing, vec!["ns/gone"]);
        let c = conditions(&[], Some(&missing), None);
        assert_eq!(
            c[0].status, "True",
            "a missing server does not make the route invalid"
        );
        assert_eq!(
            (c[1].status.as_str(), c[1].reason.as_str()),
            ("False", "ModelServerNotFound")
        );
        assert_eq!(c[1].message, "ModelServer ns/gone not found");
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let old = with_transition_times(conditions(&[], Some(&[]), None), &[], "T1");
        let same = with_transition_times(conditions(&[], Some(&[]), Some(2)), &old, "T2");
        assert!(same.iter().all(|c| c.last_transition_time == "T1"));
        let flipped = with_transition_times(conditions(&["e".into()], Some(&[]), None), &old, "T3");
        assert_eq!(flipped[0].last_transition_time, "T3");
        assert_eq!(flipped[1].last_transition_time, "T1");
    }

    #[test]
    fn up_to_date_ignores_transition_times_only() {
        let a = with_transition_times(conditions(&[], None, None), &[], "T1");
        let b = with_transition_times(conditions(&[], None, None), &[], "T2");
        assert!(up_to_date(&a, &b));
        let c = conditions(&["e".into()], None, None);
        assert!(!up_to_date(&a, &c));
        let parsed = current(Some(
            &json!({"conditions": serde_json::to_value(&a).unwrap()}),
        ));
        assert_eq!(parsed, a);
    }
}
