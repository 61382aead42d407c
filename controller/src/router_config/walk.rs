//! Walking untyped YAML values (the router configuration) with a path for every diagnostic:
//! typed accessors that report a wrong type at its path, unknown-key warnings, and the
//! [`Report`] that prefixes each message with the file and object.

use serde_json::{Map, Value};

use super::KVCACHE_AWARE;
use crate::diag::Diagnostics;

/// Diagnostics with the file / object prefix.
pub(super) struct Report<'a> {
    pub(super) prefix: String,
    pub(super) diags: &'a mut Diagnostics,
    pub(super) errors: usize,
}

impl Report<'_> {
    pub(super) fn error(&mut self, path: &str, msg: &str) {
        self.errors += 1;
        self.diags.error(format!("{}{path}: {msg}", self.prefix));
    }
    pub(super) fn warn(&mut self, path: &str, msg: &str) {
        self.diags.warn(format!("{}{path}: {msg}", self.prefix));
    }
    pub(super) fn unsupported_kvcache(&mut self, path: &str) {
        self.warn(
            path,
            &format!(
                "{KVCACHE_AWARE} is not supported (it needs Redis and the Kthena router runtime); \
                 ignored"
            ),
        );
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A mapping (null counts as empty); anything else is an error.
pub(super) fn mapping<'v>(
    v: &'v Value,
    path: &str,
    r: &mut Report,
) -> Option<&'v Map<String, Value>> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match v {
        Value::Object(m) => Some(m),
        Value::Null => Some(EMPTY.get_or_init(Map::new)),
        other => {
            r.error(
                path,
                &format!("must be a mapping, got {}", type_name(other)),
            );
            None
        }
    }
}

/// A list (null counts as empty); anything else is an error.
pub(super) fn list<'v>(v: &'v Value, path: &str, r: &mut Report) -> &'v [Value] {
    match v {
        Value::Array(a) => a,
        Value::Null => &[],
        other => {
            r.error(path, &format!("must be a list, got {}", type_name(other)));
            &[]
        }
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Warns about every key of `m` not in `known`.
pub(super) fn unknown_keys(m: &Map<String, Value>, known: &[&str], path: &str, r: &mut Report) {
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            r.warn(&join(path, k), "unknown field, ignored");
        }
    }
}
