//! Reading inputs: expands files and directories (recursively `*.yaml`, `*.yml`, `*.json`, sorted
//! by path), reads them, splits multi-document YAML, unwraps `List` kinds and sorts documents into
//! ModelRoutes, ModelServers and Pods. Other kinds are skipped with a debug log. Unknown fields in
//! a Kthena `spec` are warned about, never fatal. Also counts a file's objects, for watch mode to
//! notice a file emptied mid-write. Owns file reading only; validation is elsewhere.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diag::{object_line, Diagnostics};
use crate::kthena::{ModelRouteSpec, ModelServerSpec, Object, ObjectMeta, API_GROUP, API_VERSION};
use crate::pods::Pod;

/// One input file and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub content: Vec<u8>,
}

impl Source {
    /// The file as the user named it (relative stays relative).
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

/// The resources read from all inputs, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub routes: Vec<Object<ModelRouteSpec>>,
    pub servers: Vec<Object<ModelServerSpec>>,
    pub pods: Vec<Pod>,
}

fn is_input_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, diags: &mut Diagnostics) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return diags.error(format!("{}: cannot read directory: {e}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out, diags);
        } else if is_input_file(&p) {
            out.push(p);
        }
    }
}

/// The files named by `paths`: a file as is, a directory expanded recursively. The result of
/// each argument is sorted by path; arguments keep their order. Missing paths are errors.
pub fn expand(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, diags);
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            diags.error(format!("{}: no such file or directory", p.display()));
        }
    }
    files
}

/// Reads every file; unreadable files are errors.
pub fn read(files: &[PathBuf], diags: &mut Diagnostics) -> Vec<Source> {
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        match fs::read(f) {
            Ok(content) => sources.push(Source {
                path: f.clone(),
                content,
            }),
            Err(e) => diags.error(format!("{}: cannot read: {e}", f.display())),
        }
    }
    sources
}

/// The documents of one file (YAML multi-document, or one JSON value).
fn documents(source: &Source, diags: &mut Diagnostics) -> Vec<Value> {
    let file = source.display();
    let text = match std::str::from_utf8(&source.content) {
        Ok(t) => t,
        Err(e) => {
            diags.error(format!("{file}: not UTF-8: {e}"));
            return Vec::new();
        }
    };
    let is_json = source.path.extension().and_then(|e| e.to_str()) == Some("json");
    let parsed = if is_json {
        serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(docs) => docs.into_iter().filter(|d| !d.is_null()).collect(),
        Err(e) => {
            let first = e.lines().next().unwrap_or("").to_string();
            diags.error(format!("{file}: cannot parse: {first}"));
            Vec::new()
        }
    }
}

/// Parses every document of every source into `Inputs`.
pub fn parse(sources: &[Source], diags: &mut Diagnostics) -> Inputs {
    let mut inputs = Inputs::default();
    let mut order = 0usize;
    for source in sources {
        let file = source.display();
        for doc in documents(source, diags) {
            add_document(&file, doc, &mut order, &mut inputs, diags);
        }
    }
    inputs
}

/// How many objects a file holds: each document counts one, a `List` counts its items. `None`
/// when it does not parse. An empty or whitespace-only file holds 0 (even as `.json`, which
/// does not parse empty). Watch mode uses it to notice a file emptied by a writer.
pub fn object_count(source: &Source) -> Option<usize> {
    if source.content.iter().all(u8::is_ascii_whitespace) {
        return Some(0);
    }
    let mut scratch = Diagnostics::default();
    let docs = documents(source, &mut scratch);
    (!scratch.has_errors()).then(|| docs.iter().map(objects_in).sum())
}

fn objects_in(doc: &Value) -> usize {
    if !is_list(str_field(doc, "kind"), doc) {
        return 1;
    }
    match doc.get("items") {
        Some(Value::Array(items)) => items.iter().map(objects_in).sum(),
        _ => 0,
    }
}

fn is_list(kind: &str, doc: &Value) -> bool {
    kind == "List" || (kind.ends_with("List") && doc.get("items").is_some())
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn add_document(
    file: &str,
    doc: Value,
    order: &mut usize,
    inputs: &mut Inputs,
    diags: &mut Diagnostics,
) {
    let kind = str_field(&doc, "kind").to_string();
    let api_version = str_field(&doc, "apiVersion").to_string();
    if is_list(&kind, &doc) {
        if let Some(Value::Array(items)) = doc.get("items") {
            for item in items.clone() {
                add_document(file, item, order, inputs, diags);
            }
        }
        return;
    }
    let group = api_version.split('/').next().unwrap_or("");
    let kthena = group == API_GROUP && api_version.contains('/');
    match kind.as_str() {
        "ModelRoute" | "ModelServer" if kthena => {
            let meta = metadata(&doc);
            let key = meta.key();
            if api_version != API_VERSION {
                diags.warn(object_line(
                    file,
                    &kind,
                    &key,
                    "apiVersion",
                    &format!("{api_version} is not {API_VERSION}; reading it as {API_VERSION}"),
                ));
            }
            let spec = doc
                .get("spec")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            *order += 1;
            if kind == "ModelRoute" {
                if let Some(spec) = typed_spec::<ModelRouteSpec>(file, &kind, &key, spec, diags) {
                    inputs.routes.push(Object {
                        file: file.to_string(),
                        order: *order,
                        meta,
                        spec,
                    });
                }
            } else if let Some(spec) = typed_spec::<ModelServerSpec>(file, &kind, &key, spec, diags)
            {
                inputs.servers.push(Object {
                    file: file.to_string(),
                    order: *order,
                    meta,
                    spec,
                });
            }
        }
        "Pod" if api_version == "v1" => match serde_json::from_value::<Pod>(doc) {
            Ok(pod) => inputs.pods.push(pod),
            Err(e) => diags.error(format!("{file}: Pod: {e}")),
        },
        _ => log::debug!("{file}: ignoring {api_version} {kind}"),
    }
}

/// Metadata is read leniently: Kubernetes puts many fields there we do not care about.
fn metadata(doc: &Value) -> ObjectMeta {
    doc.get("metadata")
        .cloned()
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default()
}

fn typed_spec<T: DeserializeOwned>(
    file: &str,
    kind: &str,
    key: &str,
    spec: Value,
    diags: &mut Diagnostics,
) -> Option<T> {
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_ignored::deserialize(spec, |path| unknown.push(field_path(&path)));
    for path in unknown {
        diags.warn(object_line(
            file,
            kind,
            key,
            &format!("spec.{path}"),
            "unknown field, ignored",
        ));
    }
    match result {
        Ok(spec) => Some(spec),
        Err(e) => {
            diags.error(object_line(file, kind, key, "spec", &e.to_string()));
            None
        }
    }
}

/// `rules[0].modelMatch.foo` from serde_ignored's path.
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        P::Map { parent, key } => {
            let p = field_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(name: &str, text: &str) -> (Inputs, Diagnostics) {
        let mut diags = Diagnostics::default();
        let src = Source {
            path: PathBuf::from(name),
            content: text.as_bytes().to_vec(),
        };
        let inputs = parse(&[src], &mut diags);
        (inputs, diags)
    }

    #[test]
    fn multi_document_yaml_with_lists_and_other_kinds() {
        let (inputs, diags) = parse_str(
            "x.yaml",
            r#"
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {name: r}
spec: {modelName: m, rules: [{name: a, targetModels: [{modelServerName: s}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p, labels: {app: x}}
  status: {phase: Running, podIP: 10.0.0.1}
- apiVersion: networking.serving.volcano.sh/v1alpha1
  kind: ModelServer
  metadata: {name: s, namespace: ns}
  spec: {inferenceEngine: vLLM}
"#,
        );
        assert_eq!(diags, Diagnostics::default());
        assert_eq!(inputs.routes.len(), 1);
        assert_eq!(inputs.routes[0].meta.key(), "default/r");
        assert_eq!(inputs.servers[0].meta.key(), "ns/s");
        assert_eq!(inputs.pods[0].metadata.name, "p");
        assert!(inputs.routes[0].order < inputs.servers[0].order);
    }

    #[test]
    fn unknown_spec_fields_warn_with_their_path() {
        let (inputs, diags) = parse_str(
            "x.yaml",
            r#"
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {name: r, uid: abc}
spec: {modelName: m, colour: red, rules: [{name: a, targetModels: [{modelServerName: s, priority: 1}]}]}
"#,
        );
        assert_eq!(inputs.routes.len(), 1);
        assert!(diags.errors.is_empty());
        assert_eq!(
            diags.warnings,
            vec![
                "x.yaml: ModelRoute default/r: spec.colour: unknown field, ignored",
                "x.yaml: ModelRoute default/r: spec.rules[0].targetModels[0].priority: unknown field, ignored",
            ]
        );
    }

    #[test]
    fn type_errors_in_spec_are_errors() {
        let (inputs, diags) = parse_str(
            "x.yaml",
            "apiVersion: networking.serving.volcano.sh/v1alpha1\nkind: ModelServer\nmetadata: {name: s}\nspec: {workloadPort: {port: eighty}}\n",
        );
        assert!(inputs.servers.is_empty());
        assert_eq!(diags.errors.len(), 1);
        assert!(
            diags.errors[0].starts_with("x.yaml: ModelServer default/s: spec: "),
            "{:?}",
            diags.errors
        );
    }

    #[test]
    fn object_count_sees_through_lists_and_counts_an_emptied_file_as_zero() {
        let count = |name: &str, text: &str| {
            object_count(&Source {
                path: PathBuf::from(name),
                content: text.as_bytes().to_vec(),
            })
        };
        let pods = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod}\n- {apiVersion: v1, kind: Pod}\n";
        assert_eq!(count("p.yaml", pods), Some(2));
        assert_eq!(
            count("p.yaml", &format!("{pods}---\nkind: Other\n")),
            Some(3)
        );
        assert_eq!(
            count("p.yaml", "apiVersion: v1\nkind: List\nitems: []\n"),
            Some(0)
        );
        assert_eq!(count("p.yaml", ""), Some(0));
        assert_eq!(count("p.yaml", "# nothing yet\n---\n"), Some(0));
        assert_eq!(count("p.json", " \n"), Some(0));
        assert_eq!(count("p.yaml", "kind: [unclosed\n"), None);
    }

    #[test]
    fn yaml_syntax_errors_name_the_file() {
        let (_, diags) = parse_str("bad.yaml", "kind: [unclosed\n");
        assert_eq!(diags.errors.len(), 1);
        assert!(diags.errors[0].starts_with("bad.yaml: cannot parse"));
    }
}
