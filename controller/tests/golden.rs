//! Golden tests: each `tests/golden/<case>/input/` (Kthena YAML + pods) compiles to
//! `tests/golden/<case>/filter-config.json`, or, for invalid cases, fails with exactly the
//! lines of `errors.txt`. A case with an `envoy/` directory also pins the EDS/CDS/ECDS files,
//! rendered for the placeholder output directory `/@OUT@`. A case with a `scheduler.yaml` reads
//! it as `--scheduler-config`.
//! `UPDATE_GOLDEN=1 cargo test -p controller --test golden` rewrites the expected files.

use std::fs;
use std::path::{Path, PathBuf};

use controller::diag::Diagnostics;
use controller::{build, envoy_outputs, filter_config_json, InputPaths};
use filter_config::Settings;

const GOLDEN: &str = "tests/golden";
const WASM: &str = "/opt/modelroute/modelroute.wasm";
const OUT: &str = "/@OUT@";

fn update() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0")
}

/// Compares `actual` with the file at `expected` (or rewrites it); returns a readable diff.
fn check(expected: &Path, actual: &str) -> Option<String> {
    if update() {
        fs::create_dir_all(expected.parent().unwrap()).unwrap();
        fs::write(expected, actual).unwrap();
        return None;
    }
    let want = fs::read_to_string(expected).unwrap_or_default();
    if want == actual {
        return None;
    }
    let (w, a): (Vec<&str>, Vec<&str>) = (want.lines().collect(), actual.lines().collect());
    let first = w
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(w.len().min(a.len()));
    let mut out = format!(
        "{} differs from the actual output at line {}:\n",
        expected.display(),
        first + 1
    );
    let from = first.saturating_sub(3);
    for (i, line) in w.iter().enumerate().skip(from).take(12) {
        out.push_str(&format!("  -{:>4} {line}\n", i + 1));
    }
    for (i, line) in a.iter().enumerate().skip(from).take(12) {
        out.push_str(&format!("  +{:>4} {line}\n", i + 1));
    }
    out.push_str("  (run with UPDATE_GOLDEN=1 to accept)\n");
    Some(out)
}

fn run_case(case: &Path) -> Vec<String> {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let inputs = InputPaths {
        resources: vec![case.join("input")],
        pods: vec![],
        scheduler: Some(case.join("scheduler.yaml")).filter(|p| p.exists()),
    };
    let mut diags = Diagnostics::default();
    let sources = inputs.read(&mut diags);
    let compiled = build(&sources, Settings::default(), &mut diags);
    let mut failures = Vec::new();
    let errors_file = case.join("errors.txt");
    if errors_file.exists() {
        assert!(
            compiled.is_none(),
            "{name}: expected errors, but the input compiled"
        );
        let mut text = diags.errors.join("\n");
        text.push('\n');
        failures.extend(check(&errors_file, &text));
        return failures;
    }
    let Some(compiled) = compiled else {
        panic!("{name}: unexpected errors:\n{}", diags.errors.join("\n"));
    };
    failures.extend(check(
        &case.join("filter-config.json"),
        &filter_config_json(&compiled),
    ));
    let warnings_file = case.join("warnings.txt");
    if warnings_file.exists() || !diags.warnings.is_empty() {
        let mut text = diags.warnings.join("\n");
        text.push('\n');
        failures.extend(check(&warnings_file, &text));
    }
    if case.join("envoy").is_dir() {
        // Rendered for a placeholder output directory, so paths and the version hashes that
        // cover them are machine independent (writing itself is tested in output.rs / cli.rs).
        let set = envoy_outputs(&compiled, Path::new(OUT), Path::new(WASM));
        for (rel, content) in &set.files {
            if rel == Path::new(controller::FILTER_CONFIG_FILE) {
                continue;
            }
            let text = String::from_utf8(content.clone()).unwrap();
            failures.extend(check(&case.join("envoy").join(rel), &text));
        }
    }
    failures
}

#[test]
fn golden_cases() {
    let mut cases: Vec<PathBuf> = fs::read_dir(GOLDEN)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 9, "golden cases missing: {cases:?}");
    let failures: Vec<String> = cases.iter().flat_map(|c| run_case(c)).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
