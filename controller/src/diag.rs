//! Errors and warnings collected over a whole run: every problem is reported, not the first.
//! Each line names the file, the object (`Kind namespace/name`) and the field path.

/// Everything found wrong (errors) or worth knowing (warnings) about the inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Diagnostics {
    pub fn error(&mut self, line: String) {
        self.errors.push(line);
    }

    pub fn warn(&mut self, line: String) {
        self.warnings.push(line);
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// `file: Kind namespace/name: path: message` (the path part is left out when empty).
pub fn object_line(file: &str, kind: &str, key: &str, path: &str, msg: &str) -> String {
    if path.is_empty() {
        format!("{file}: {kind} {key}: {msg}")
    } else {
        format!("{file}: {kind} {key}: {path}: {msg}")
    }
}
