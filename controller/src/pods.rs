//! Kubernetes Pods as the controller sees them, and which of them are endpoints of a
//! ModelServer: same namespace, all `matchLabels`, phase Running, condition Ready=True, not being
//! deleted, with a pod IP. Pure functions; no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::kthena::ObjectMeta;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub conditions: Vec<PodCondition>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl Pod {
    /// Running, Ready=True, not deleting, and has an IP: may receive traffic.
    pub fn is_ready(&self) -> bool {
        self.status.phase.as_deref() == Some("Running")
            && self.metadata.deletion_timestamp.is_none()
            && self.ip().is_some()
            && self
                .status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True")
    }

    /// The pod IP when it is a valid address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.trim().parse().ok())
    }

    /// Carries every `key: value` of `selector`.
    pub fn matches_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.metadata.labels.get(k) == Some(v))
    }
}

/// The ready pods of namespace `namespace` carrying all labels of `selector`, sorted by pod
/// name. An empty selector selects nothing (validation rejects it anyway).
pub fn select<'a>(
    pods: &'a [Pod],
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<&'a Pod> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut chosen: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata.namespace() == namespace && p.matches_labels(selector) && p.is_ready()
        })
        .collect();
    chosen.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    chosen
}

/// `ip:port`, with IPv6 in brackets, exactly as Envoy prints a host.
pub fn endpoint_address(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        phase: &str,
        ready: &str,
        ip: Option<&str>,
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            status: PodStatus {
                phase: Some(phase.into()),
                pod_ip: ip.map(str::to_string),
                conditions: vec![PodCondition {
                    kind: "Ready".into(),
                    status: ready.into(),
                }],
            },
        }
    }

    fn sel(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(pods: Vec<&Pod>) -> Vec<&str> {
        pods.into_iter().map(|p| p.metadata.name.as_str()).collect()
    }

    #[test]
    fn only_same_namespace_pods_are_selected() {
        let pods = vec![
            pod(
                "default",
                "a",
                &[("app", "x")],
                "Running",
                "True",
                Some("10.0.0.1"),
            ),
            pod(
                "other",
                "b",
                &[("app", "x")],
                "Running",
                "True",
                Some("10.0.0.2"),
            ),
        ];
        assert_eq!(
            names(select(&pods, "default", &sel(&[("app", "x")]))),
            vec!["a"]
        );
    }

    #[test]
    fn all_match_labels_must_be_present() {
        let pods = vec![
            pod(
                "default",
                "a",
                &[("app", "x"), ("version", "v1")],
                "Running",
                "True",
                Some("10.0.0.1"),
            ),
            pod(
                "default",
                "b",
                &[("app", "x")],
                "Running",
                "True",
                Some("10.0.0.2"),
            ),
            pod(
                "default",
                "c",
                &[("app", "x"), ("version", "v2")],
                "Running",
                "True",
                Some("10.0.0.3"),
            ),
        ];
        assert_eq!(
            names(select(
                &pods,
                "default",
                &sel(&[("app", "x"), ("version", "v1")])
            )),
            vec!["a"]
        );
        assert_eq!(
            names(select(&pods, "default", &sel(&[("app", "x")]))),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn pods_not_running_are_not_ready() {
        let p = pod("default", "a", &[], "Pending", "True", Some("10.0.0.1"));
        assert!(!p.is_ready());
    }

    #[test]
    fn pods_without_ready_true_are_not_ready() {
        assert!(!pod("default", "a", &[], "Running", "False", Some("10.0.0.1")).is_ready());
        let mut p = pod("default", "a", &[], "Running", "True", Some("10.0.0.1"));
        p.status.conditions = vec![PodCondition {
            kind: "ContainersReady".into(),
            status: "True".into(),
        }];
        assert!(!p.is_ready());
    }

    #[test]
    fn deleting_pods_are_not_ready() {
        let mut p = pod("default", "a", &[], "Running", "True", Some("10.0.0.1"));
        assert!(p.is_ready());
        p.metadata.deletion_timestamp = Some("2025-01-01T00:00:00Z".into());
        assert!(!p.is_ready());
    }

    #[test]
    fn pods_without_ip_are_not_ready() {
        assert!(!pod("default", "a", &[], "Running", "True", None).is_ready());
        assert!(!pod("default", "a", &[], "Running", "True", Some("not-an-ip")).is_ready());
    }

    #[test]
    fn selected_pods_are_sorted_by_name() {
        let pods = vec![
            pod(
                "default",
                "z",
                &[("app", "x")],
                "Running",
                "True",
                Some("10.0.0.1"),
            ),
            pod(
                "default",
                "a",
                &[("app", "x")],
                "Running",
                "True",
                Some("10.0.0.2"),
            ),
        ];
        assert_eq!(
            names(select(&pods, "default", &sel(&[("app", "x")]))),
            vec!["a", "z"]
        );
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let pods = vec![pod(
            "default",
            "a",
            &[("app", "x")],
            "Running",
            "True",
            Some("10.0.0.1"),
        )];
        assert!(select(&pods, "default", &BTreeMap::new()).is_empty());
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(
            endpoint_address("10.1.2.3".parse().unwrap(), 8000),
            "10.1.2.3:8000"
        );
        assert_eq!(
            endpoint_address("fd00::1".parse().unwrap(), 8000),
            "[fd00::1]:8000"
        );
    }
}
