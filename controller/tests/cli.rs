//! The `modelroute-controller` binary end to end on files: `render` writes the four outputs and
//! leaves them untouched when nothing changed; `render --print`; invalid input exits 1 and
//! writes nothing; `watch` follows edits (rename and in-place) and keeps the last good outputs
//! on invalid input (resources and `--scheduler-config` alike), and never applies a pods file
//! read mid-write (truncated, then rewritten) while a deliberate edit or emptying still applies.
//! Readiness is polled with deadlines, never fixed sleeps; the only timed waits stand in for a
//! slow writer, with the outputs sampled throughout.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_modelroute-controller");
const SEED: &str = "tests/golden/seed-multi-models/input";
const HELM_SCHEDULER: &str = "../examples/scheduler/kthena-router-config.yaml";

fn temp_dir(tag: &str) -> PathBuf {
    test_support::temp_dir(&format!("cli-{tag}"))
}

/// A copy of the seed inputs, so tests can edit them.
fn inputs(dir: &Path) -> PathBuf {
    let input = dir.join("input");
    fs::create_dir_all(&input).unwrap();
    for e in fs::read_dir(SEED).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, input.join(p.file_name().unwrap())).unwrap();
    }
    input
}

fn outputs(out: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        out.join("filter-config.json"),
        out.join("cds/clusters.json"),
        out.join("ecds/modelroute.json"),
    ];
    let mut eds: Vec<PathBuf> = fs::read_dir(out.join("eds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    eds.sort();
    files.extend(eds);
    files
}

/// (inode, mtime ns, content hash) of every output.
fn snapshot(out: &Path) -> Vec<(PathBuf, u64, i64, u64)> {
    outputs(out)
        .into_iter()
        .map(|p| {
            let m = fs::metadata(&p).unwrap();
            let mut h = DefaultHasher::new();
            fs::read(&p).unwrap().hash(&mut h);
            (
                p,
                m.ino(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                h.finish(),
            )
        })
        .collect()
}

fn render(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["render", "--resources"])
        .arg(input)
        .arg("--wasm")
        .arg(out.parent().unwrap().join("modelroute.wasm"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn render_writes_outputs_and_leaves_them_alone_when_unchanged() {
    let dir = temp_dir("render");
    let input = inputs(&dir);
    let out = dir.join("out");
    let first = render(
        &input,
        &out,
        &[
            "--endpoint-fallbacks",
            "1",
            "--target-selection",
            "weighted-random",
        ],
    );
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 routes, 2 servers, 3 ready endpoints -> "),
        "{stderr}"
    );
    let files = outputs(&out);
    assert_eq!(files.len(), 5, "{files:?}");
    let config = fs::read_to_string(out.join("filter-config.json")).unwrap();
    assert!(config.contains("\"target_selection\": \"weighted-random\""));
    assert!(config.contains("\"endpoint_fallbacks\": 1"));
    let cds = fs::read_to_string(out.join("cds/clusters.json")).unwrap();
    let canonical = out.canonicalize().unwrap();
    assert!(cds.contains(&format!(
        "\"{}/eds/modelserver_default_deepseek-r1-7b.json\"",
        canonical.display()
    )));

    let before = snapshot(&out);
    let second = render(
        &input,
        &out,
        &[
            "--endpoint-fallbacks",
            "1",
            "--target-selection",
            "weighted-random",
        ],
    );
    assert!(second.status.success());
    assert_eq!(
        snapshot(&out),
        before,
        "an identical render must not touch any file"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn render_print_writes_json_to_stdout() {
    let dir = temp_dir("print");
    let input = inputs(&dir);
    let o = Command::new(BIN)
        .args(["render", "--print", "--resources"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["routes"][0]["name"], "default/deepseek-multi-models");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_render_exits_1_with_every_error_and_writes_nothing() {
    let dir = temp_dir("invalid");
    let out = dir.join("out");
    let o = render(Path::new("tests/golden/invalid/input"), &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let expected = fs::read_to_string("tests/golden/invalid/errors.txt").unwrap();
    for line in expected.lines() {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(!out.join("filter-config.json").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn render_reads_the_scheduler_config_and_rejects_a_bad_one() {
    let dir = temp_dir("scheduler");
    let input = inputs(&dir);
    let out = dir.join("out");
    let o = render(
        &input,
        &out,
        &[
            "--scheduler-config",
            HELM_SCHEDULER,
            "--metrics-interval-ms",
            "200",
            "--metrics-stale-ms",
            "900",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value =
        serde_json::from_str(&read(&out.join("filter-config.json"))).unwrap();
    let s = &config["settings"]["scheduler"];
    assert_eq!(s["filters"], serde_json::json!(["least-request"]));
    assert_eq!(s["scores"].as_array().unwrap().len(), 4);
    assert_eq!(
        (
            s["metrics_interval_ms"].as_u64(),
            s["metrics_stale_ms"].as_u64()
        ),
        (Some(200), Some(900))
    );

    let bad = dir.join("sched.yaml");
    fs::write(
        &bad,
        "scheduler:\n  plugins:\n    Score:\n      enabled:\n      - {name: foo, weight: 1}\n",
    )
    .unwrap();
    let out2 = dir.join("out2");
    let o = render(
        &input,
        &out2,
        &["--scheduler-config", bad.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "sched.yaml: scheduler.plugins.Score.enabled[0].name: unknown plugin \"foo\""
        ),
        "{stderr}"
    );
    assert!(!out2.join("filter-config.json").exists());

    // Metrics that go stale before the next scrape are a usage error.
    let o = render(
        &input,
        &out2,
        &["--metrics-interval-ms", "1000", "--metrics-stale-ms", "500"],
    );
    assert_eq!(o.status.code(), Some(2));
    fs::remove_dir_all(&dir).unwrap();
}

struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Watch {
    /// `watch` polling every 50 ms: resources from `input`, `extra` flags with their paths,
    /// outputs in `out`, the log in `log`.
    fn start(input: &Path, extra: &[(&str, &Path)], out: &Path, log: &Path) -> Watch {
        let mut cmd = Command::new(BIN);
        cmd.args(["watch", "--interval-ms", "50", "--resources"])
            .arg(input);
        for (flag, path) in extra {
            cmd.arg(flag).arg(path);
        }
        let wasm = out.with_file_name("modelroute.wasm");
        let child = cmd
            .arg("--wasm")
            .arg(wasm)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Watch(child)
    }
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    test_support::wait_until(Duration::from_secs(20), what, f)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn watch_follows_edits_and_keeps_last_good_outputs_on_invalid_input() {
    let dir = temp_dir("watch");
    let input = inputs(&dir);
    let out = dir.join("out");
    let log = dir.join("watch.log");
    let sched = dir.join("kthena-router-config.yaml");
    fs::copy(HELM_SCHEDULER, &sched).unwrap();
    let mut watch = Watch::start(&input, &[("--scheduler-config", &sched)], &out, &log);
    // The ECDS file is written last: once it shows a change, the whole render is on disk.
    let config = out.join("ecds/modelroute.json");
    wait_until("first render", || {
        read(&config).contains("deepseek-multi-models")
    });
    let filter_config = out.join("filter-config.json");
    let scheduler = || -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&read(&filter_config))
            .map(|v| v["settings"]["scheduler"].clone())
            .unwrap_or_default()
    };
    assert_eq!(scheduler()["max_waiting_requests"], 10);

    // Edit 0: the scheduler config, replaced by rename.
    let helm = read(&sched);
    let tmp = dir.join(".sched.tmp");
    fs::write(
        &tmp,
        helm.replace("maxWaitingRequests: 10", "maxWaitingRequests: 4")
            .replace("TTFTTPOTWeightFactor: 0.5", "TTFTTPOTWeightFactor: 0.25"),
    )
    .unwrap();
    fs::rename(&tmp, &sched).unwrap();
    wait_until("scheduler edit", || {
        let s = scheduler();
        s["max_waiting_requests"] == 4 && s["ttft_tpot_weight_factor"] == 0.25
    });
    // The ECDS file follows (it embeds the filter config).
    wait_until("scheduler edit in ECDS", || {
        read(&config).contains("\\\"max_waiting_requests\\\":4")
    });

    // Edit 1: write a temp file and rename it over the route (what editors and kubectl do).
    let route = input.join("ModelRouteMultiModels.yaml");
    let original = read(&route);
    let tmp = input.join(".route.tmp");
    fs::write(
        &tmp,
        original.replace(
            "modelName: \"deepseek-multi-models\"",
            "modelName: \"renamed-model\"",
        ),
    )
    .unwrap();
    fs::rename(&tmp, &route).unwrap();
    wait_until("rename edit", || read(&config).contains("renamed-model"));

    // Edit 2: in-place write of the same file.
    fs::write(
        &route,
        original.replace(
            "modelName: \"deepseek-multi-models\"",
            "modelName: \"in-place-model\"",
        ),
    )
    .unwrap();
    wait_until("in-place edit", || read(&config).contains("in-place-model"));

    // Invalid input: outputs stay as they are, the process lives on.
    let before = snapshot(&out);
    fs::write(
        &route,
        original.replace("exact: premium", "regex: \"(premium\""),
    )
    .unwrap();
    wait_until("invalid input logged", || {
        read(&log).contains("keeping the last good outputs")
    });
    assert!(
        read(&log).contains("spec.rules[0].modelMatch.headers.user-type.regex: invalid regex"),
        "{}",
        read(&log)
    );
    assert_eq!(
        snapshot(&out),
        before,
        "outputs must stay untouched on invalid input"
    );
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "watch must keep running"
    );

    // And it recovers once the input is valid again.
    fs::write(&route, &original).unwrap();
    wait_until("recovery", || {
        read(&config).contains("model_name\\\":\\\"deepseek-multi-models")
    });
    assert!(watch.0.try_wait().unwrap().is_none());
    drop(watch);
    fs::remove_dir_all(&dir).unwrap();
}

/// Ready endpoints per cluster as Envoy would see them: `eds:<cluster>` from each EDS file and
/// `ecds:<cluster>` from the filter config embedded in the ECDS file.
fn endpoint_counts(out: &Path) -> BTreeMap<String, usize> {
    let json = |p: &Path| serde_json::from_str::<serde_json::Value>(&read(p)).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for e in fs::read_dir(out.join("eds")).into_iter().flatten() {
        let v = json(&e.unwrap().path());
        let cla = &v["resources"][0];
        let n = cla["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["lb_endpoints"].as_array().map_or(0, Vec::len))
            .sum();
        counts.insert(
            format!("eds:{}", cla["cluster_name"].as_str().unwrap_or("?")),
            n,
        );
    }
    let ecds = json(&out.join("ecds/modelroute.json"));
    let embedded = ecds["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .unwrap_or_default();
    for s in embedded["servers"].as_array().into_iter().flatten() {
        let n = s["endpoints"].as_array().map_or(0, Vec::len);
        counts.insert(format!("ecds:{}", s["cluster"].as_str().unwrap_or("?")), n);
    }
    counts
}

/// Samples the outputs every 20 ms for `how_long` (or until `until` holds) and fails as soon as
/// a cluster of `baseline` shows no endpoints. Returns the last sample.
fn sample_never_empty(
    out: &Path,
    baseline: &BTreeMap<String, usize>,
    how_long: Duration,
    mut until: impl FnMut(&BTreeMap<String, usize>) -> bool,
    what: &str,
) -> BTreeMap<String, usize> {
    let end = Instant::now() + how_long;
    loop {
        let now = endpoint_counts(out);
        for cluster in baseline.keys() {
            let n = now.get(cluster).copied().unwrap_or(0);
            assert!(n > 0, "{what}: {cluster} went to 0 endpoints: {now:?}");
        }
        if until(&now) || Instant::now() >= end {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watch_never_applies_a_pods_file_read_mid_write() {
    let dir = temp_dir("watch-truncate");
    let input = inputs(&dir);
    let pods = dir.join("pods.yaml");
    fs::rename(input.join("pods.yaml"), &pods).unwrap();
    let full = read(&pods);
    let out = dir.join("out");
    let log = dir.join("watch.log");
    let watch = Watch::start(&input, &[("--pods", &pods)], &out, &log);
    let r7b = "modelserver|default|deepseek-r1-7b";
    let expected: BTreeMap<String, usize> = [
        ("eds:modelserver|default|deepseek-r1-1-5b", 1),
        ("eds:modelserver|default|deepseek-r1-7b", 2),
        ("ecds:modelserver|default|deepseek-r1-1-5b", 1),
        ("ecds:modelserver|default|deepseek-r1-7b", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    wait_until("first render", || endpoint_counts(&out) == expected);

    // What `kubectl get pods -o yaml > pods.yaml` does: the shell truncates the file, kubectl
    // writes it ~1.5 s later (longer than the settle window, shorter than the emptying hold).
    drop(fs::File::create(&pods).unwrap());
    let hold = controller::watch::EMPTIED_HOLD;
    let wait = Duration::from_millis(1500);
    assert!(controller::watch::SETTLE < wait && wait < hold);
    sample_never_empty(&out, &expected, wait, |_| false, "truncated");
    let deferred = format!(
        "deferring change to {}: it became empty (was 3 objects); applying only if it stays so for {hold:?}",
        pods.display()
    );
    assert!(read(&log).contains(&deferred), "{}", read(&log));
    fs::write(&pods, &full).unwrap();
    let after = sample_never_empty(
        &out,
        &expected,
        Duration::from_secs(1),
        |_| false,
        "rewritten",
    );
    assert_eq!(after, expected);
    wait_until("withdrawn logged", || read(&log).contains("withdrawn"));

    // A deliberate, stable in-place edit (one pod gone) still applies within ~1.5 s.
    let last = full
        .find("- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: deepseek-r1-7b-b")
        .expect("deepseek-r1-7b-b is the last pod");
    let edited = &full[..last];
    let start = Instant::now();
    fs::write(&pods, edited).unwrap();
    let now = sample_never_empty(
        &out,
        &expected,
        Duration::from_secs(5),
        |c| c[&format!("eds:{r7b}")] == 1 && c[&format!("ecds:{r7b}")] == 1,
        "edit",
    );
    let took = start.elapsed();
    assert_eq!(now[&format!("ecds:{r7b}")], 1, "edit not applied: {now:?}");
    assert!(took < Duration::from_millis(1500), "edit took {took:?}");
    let log_text = read(&log);
    assert!(
        log_text.contains(&format!("deferring change to {}: waiting", pods.display())),
        "{log_text}"
    );

    // A deliberate emptying is honoured, after the hold.
    let start = Instant::now();
    drop(fs::File::create(&pods).unwrap());
    wait_until("emptying applied", || {
        let c = endpoint_counts(&out);
        !c.is_empty() && c.values().all(|&n| n == 0)
    });
    assert!(
        start.elapsed() >= hold,
        "applied after {:?}",
        start.elapsed()
    );
    drop(watch);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn render_watch_and_kube_take_the_same_filter_and_gateway_flags() {
    let help = |mode: &str| {
        let out = Command::new(BIN).args([mode, "--help"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (render, watch, kube) = (help("render"), help("watch"), help("kube"));
    for flag in [
        "--max-body-bytes",
        "--endpoint-fallbacks",
        "--target-selection",
        "--metrics-interval-ms",
        "--metrics-stale-ms",
        "--cors-allow-origin",
        "--stream-idle-timeout",
    ] {
        for (mode, text) in [("render", &render), ("watch", &watch), ("kube", &kube)] {
            assert!(text.contains(flag), "{mode} lacks {flag}:\n{text}");
        }
    }
}
