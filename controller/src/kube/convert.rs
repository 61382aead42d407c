//! From API objects to the crate's inputs: ModelRoutes and ModelServers (`DynamicObject`s) go
//! through the file loader as one JSON `List` document, so parsing, unknown-field warnings and
//! every message are exactly those of file mode; Pods are converted field by field through
//! serde_json. Pure: no client, no clock.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod as K8sPod;
use kube::api::DynamicObject;
use serde_json::{json, Value};

use crate::diag::Diagnostics;
use crate::kthena::API_VERSION;
use crate::load::{self, Inputs, Source};
use crate::pods::Pod;

/// The "file" every message about an API object names.
pub const SOURCE: &str = "apiserver.json";

/// Kinds we read from the API.
pub const ROUTE_KIND: &str = "ModelRoute";
pub const SERVER_KIND: &str = "ModelServer";

/// `namespace/name` of an API object (namespace `default` when unset, as the loader does).
pub fn key(obj: &DynamicObject) -> String {
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    format!("{ns}/{}", obj.metadata.name.as_deref().unwrap_or(""))
}

/// The object as a Kubernetes JSON document of `kind` (list items from the API carry no
/// `apiVersion`/`kind`; the watcher knows them from the request).
pub fn document(obj: &DynamicObject, kind: &str) -> Value {
    let mut doc = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = doc.as_object_mut() {
        map.insert("apiVersion".into(), json!(API_VERSION));
        map.insert("kind".into(), json!(kind));
    }
    doc
}

fn sorted(objs: &[Arc<DynamicObject>]) -> Vec<&DynamicObject> {
    let mut v: Vec<&DynamicObject> = objs.iter().map(AsRef::as_ref).collect();
    v.sort_by_key(|o| key(o));
    v
}

/// A Kubernetes Pod as the crate's [`Pod`] (only metadata and status are read).
pub fn pod(p: &K8sPod) -> Option<Pod> {
    let v = json!({"metadata": p.metadata, "status": p.status});
    serde_json::from_value(v).ok()
}

/// Every object as the loader would read it from a file named [`SOURCE`]; routes and servers
/// are ordered by `namespace/name` (route precedence then follows creation time as in Kthena).
pub fn inputs(
    routes: &[Arc<DynamicObject>],
    servers: &[Arc<DynamicObject>],
    pods: &[Arc<K8sPod>],
    diags: &mut Diagnostics,
) -> Inputs {
    let items: Vec<Value> = sorted(routes)
        .into_iter()
        .map(|o| document(o, ROUTE_KIND))
        .chain(
            sorted(servers)
                .into_iter()
                .map(|o| document(o, SERVER_KIND)),
        )
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let source = Source {
        path: SOURCE.into(),
        content: serde_json::to_vec(&list).unwrap_or_default(),
    };
    let mut inputs = load::parse(&[source], diags);
    inputs.pods = pods.iter().filter_map(|p| pod(p)).collect();
    inputs
}

/// Drops what the controller never reads from a Pod before it is stored (spec, managed
/// fields, annotations): a cluster's pods are most of the controller's memory.
pub fn slim_pod(p: &mut K8sPod) {
    p.spec = None;
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(v: Value) -> Arc<DynamicObject> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn list_items_without_kind_become_kthena_objects() {
        // What a watcher hands over for an item of a list: no apiVersion/kind, extra metadata.
        let route = dynamic(json!({
            "metadata": {"name": "r", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                         "creationTimestamp": "2025-01-01T00:00:00Z", "generation": 2,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"modelName": "m", "rules": [{"name": "a", "targetModels": [
                {"modelServerName": "s", "weight": 70}]}]},
            "status": {"conditions": []}
        }));
        let server = dynamic(json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"model": "real", "inferenceEngine": "vLLM",
                     "workloadSelector": {"matchLabels": {"app": "x"}},
                     "workloadPort": {"port": 8000}}
        }));
        let mut diags = Diagnostics::default();
        let inputs = inputs(&[route], &[server], &[], &mut diags);
        assert_eq!(diags, Diagnostics::default());
        let r = &inputs.routes[0];
        assert_eq!(r.file, SOURCE);
        assert_eq!(r.meta.key(), "ns/r");
        assert_eq!(r.meta.resource_version.as_deref(), Some("7"));
        assert_eq!(r.spec.model_name.as_deref(), Some("m"));
        assert_eq!(r.spec.rules[0].target_models[0].weight, Some(70));
        let s = &inputs.servers[0];
        assert_eq!(s.meta.key(), "ns/s");
        assert_eq!(s.spec.workload_port.as_ref().unwrap().port, 8000);
    }

    #[test]
    fn objects_are_ordered_by_key_not_by_store_order() {
        let mk = |ns: &str, n: &str| {
            dynamic(json!({"metadata": {"name": n, "namespace": ns},
                           "spec": {"modelName": n, "rules": []}}))
        };
        let mut diags = Diagnostics::default();
        let got = inputs(
            &[mk("b", "x"), mk("a", "y"), mk("a", "x")],
            &[],
            &[],
            &mut diags,
        );
        let keys: Vec<String> = got.routes.iter().map(|r| r.meta.key()).collect();
        assert_eq!(keys, vec!["a/x", "a/y", "b/x"]);
    }

    #[test]
    fn unknown_spec_fields_warn_and_type_errors_name_the_object() {
        let bad = dynamic(json!({"metadata": {"name": "s", "namespace": "ns"},
                                 "spec": {"workloadPort": {"port": "eighty"}, "colour": 1}}));
        let mut diags = Diagnostics::default();
        let got = inputs(&[], &[bad], &[], &mut diags);
        assert!(got.servers.is_empty());
        assert_eq!(diags.errors.len(), 1);
        assert!(
            diags.errors[0].starts_with("apiserver.json: ModelServer ns/s: spec: "),
            "{:?}",
            diags.errors
        );
    }

    #[test]
    fn pods_keep_labels_ip_and_readiness() {
        let p: K8sPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let mut slim = p.clone();
        slim_pod(&mut slim);
        let mut diags = Diagnostics::default();
        let got = inputs(&[], &[], &[Arc::new(slim)], &mut diags);
        let pod = &got.pods[0];
        assert!(pod.is_ready());
        assert_eq!(pod.metadata.key(), "ns/p");
        assert_eq!(pod.metadata.labels["app"], "x");
    }
}
