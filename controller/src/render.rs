//! Renderers: turn a [`crate::compile::Compiled`] into what a particular proxy deployment reads:
//! `envoy` (standalone Envoy with ECDS/CDS/EDS from files), `configmap` (those files as one
//! Kubernetes ConfigMap for a mounting Envoy Deployment) and `istio` (an EnvoyFilter). Renderers
//! produce bytes or JSON values, never write.

pub mod configmap;
pub mod envoy;
pub mod istio;
pub mod observability;
pub mod rate_limit;

/// A Kubernetes-manifest render target (`render --target configmap|istio`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifests {
    ConfigMap(configmap::ConfigMapTarget),
    Istio(istio::IstioTarget),
}

impl Manifests {
    /// File written under `render --out DIR`.
    pub fn file_name(&self) -> &'static str {
        match self {
            Manifests::ConfigMap(_) => "configmap.yaml",
            Manifests::Istio(_) => "istio.yaml",
        }
    }

    /// The objects.
    pub fn objects(&self, compiled: &crate::compile::Compiled) -> Vec<serde_json::Value> {
        match self {
            Manifests::ConfigMap(t) => vec![configmap::configmap(compiled, t)],
            Manifests::Istio(t) => vec![istio::envoy_filter(compiled, t)],
        }
    }

    /// The objects as multi-document YAML.
    pub fn yaml(
        &self,
        compiled: &crate::compile::Compiled,
    ) -> Result<String, serde_saphyr::SerializeError> {
        yaml_documents(&self.objects(compiled))
    }
}

/// Kubernetes objects as multi-document YAML (each document starts with `---`). Multi-line
/// strings (the JSON files of a ConfigMap) become literal blocks; other strings stay scalars.
pub fn yaml_documents(docs: &[serde_json::Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut opts = serde_saphyr::SerializerOptions::default();
    opts.prefer_block_scalars = false;
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string_with_options(
            &yaml::Doc(d),
            opts.clone(),
        )?);
    }
    Ok(out)
}

mod yaml {
    use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
    use serde_json::Value;

    /// A JSON value whose multi-line strings serialize as YAML literal blocks.
    pub struct Doc<'a>(pub &'a Value);

    impl Serialize for Doc<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                Value::String(t) if t.contains('\n') => serde_saphyr::LitStr(t).serialize(s),
                Value::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for v in items {
                        seq.serialize_element(&Doc(v))?;
                    }
                    seq.end()
                }
                Value::Object(fields) => {
                    let mut map = s.serialize_map(Some(fields.len()))?;
                    for (k, v) in fields {
                        map.serialize_entry(k, &Doc(v))?;
                    }
                    map.end()
                }
                other => other.serialize(s),
            }
        }
    }
}

/// FNV-1a 64-bit: a stable content hash for `version_info` and change detection
/// (`std`'s hasher is not guaranteed stable across releases).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
