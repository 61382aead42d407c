//! The settle rules on a fake clock, and what counts as a file becoming empty.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

const APPLIED: u64 = 1;
const EMPTY: u64 = 2;
const FULL: u64 = 3;

/// A fake clock: `at(ms)` is `ms` after a fixed start.
fn clock() -> impl Fn(u64) -> Instant {
    let start = Instant::now();
    move |ms| start + Duration::from_millis(ms)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[test]
fn a_change_applies_once_it_reads_the_same_for_the_settle_window() {
    let at = clock();
    let mut s = Settle::new(APPLIED);
    assert_eq!(s.observe(APPLIED, false, at(0)), Decision::Unchanged);
    assert_eq!(
        s.observe(FULL, false, at(100)),
        Decision::Deferred(Hold::Settling)
    );
    assert!(s.is_pending());
    assert_eq!(s.observe(FULL, false, at(200)), Decision::Waiting);
    let settled = 100 + ms(SETTLE);
    assert_eq!(s.observe(FULL, false, at(settled - 1)), Decision::Waiting);
    assert_eq!(
        s.observe(FULL, false, at(settled)),
        Decision::Apply { stable_for: SETTLE }
    );
    assert!(!s.is_pending());
    s.rendered(FULL);
    assert_eq!(
        s.observe(FULL, false, at(settled + 100)),
        Decision::Unchanged
    );
}

#[test]
fn a_deliberate_edit_applies_within_a_second_at_the_default_poll() {
    // Seen at worst one 500 ms poll late, then confirmed at the pending poll.
    let at = clock();
    let mut s = Settle::new(APPLIED);
    let mut t = 500;
    assert_eq!(
        s.observe(FULL, false, at(t)),
        Decision::Deferred(Hold::Settling)
    );
    loop {
        t += ms(PENDING_POLL);
        if let Decision::Apply { .. } = s.observe(FULL, false, at(t)) {
            break;
        }
    }
    assert!(t <= 1000, "applied {t} ms after the edit");
}

#[test]
fn a_change_that_keeps_changing_is_never_applied_midway() {
    let at = clock();
    let mut s = Settle::new(APPLIED);
    assert_eq!(
        s.observe(10, false, at(0)),
        Decision::Deferred(Hold::Settling)
    );
    // A slow writer: new bytes on every poll for three seconds.
    for (i, t) in (100..3000).step_by(100).enumerate() {
        let d = s.observe(11 + i as u64, false, at(t));
        assert_eq!(
            d,
            Decision::Superseded {
                hold: Hold::Settling,
                was: Hold::Settling
            },
            "at {t} ms"
        );
    }
    // Done writing at 3000 ms: applies once that content has read the same for SETTLE.
    assert_eq!(
        s.observe(99, false, at(3000)),
        Decision::Superseded {
            hold: Hold::Settling,
            was: Hold::Settling
        }
    );
    assert_eq!(s.observe(99, false, at(3100)), Decision::Waiting);
    assert_eq!(
        s.observe(99, false, at(3000 + ms(SETTLE))),
        Decision::Apply { stable_for: SETTLE }
    );
}

#[test]
fn an_emptied_file_is_held_for_the_long_hold_then_applied_if_still_empty() {
    let at = clock();
    let mut s = Settle::new(APPLIED);
    assert_eq!(
        s.observe(EMPTY, true, at(0)),
        Decision::Deferred(Hold::Emptied)
    );
    let mut t = 100;
    while t < ms(EMPTIED_HOLD) {
        assert_eq!(
            s.observe(EMPTY, true, at(t)),
            Decision::Waiting,
            "at {t} ms"
        );
        t += 100;
    }
    assert_eq!(
        s.observe(EMPTY, true, at(ms(EMPTIED_HOLD))),
        Decision::Apply {
            stable_for: EMPTIED_HOLD
        }
    );
}

#[test]
fn emptied_then_rewritten_within_the_hold_applies_the_full_content_never_the_empty_one() {
    let at = clock();
    let mut s = Settle::new(APPLIED);
    assert_eq!(
        s.observe(EMPTY, true, at(0)),
        Decision::Deferred(Hold::Emptied)
    );
    for t in (50..1500).step_by(50) {
        assert_eq!(
            s.observe(EMPTY, true, at(t)),
            Decision::Waiting,
            "at {t} ms"
        );
    }
    assert_eq!(
        s.observe(FULL, false, at(1500)),
        Decision::Superseded {
            hold: Hold::Settling,
            was: Hold::Emptied
        }
    );
    assert_eq!(s.observe(FULL, false, at(1600)), Decision::Waiting);
    assert_eq!(
        s.observe(FULL, false, at(1500 + ms(SETTLE))),
        Decision::Apply { stable_for: SETTLE }
    );
}

#[test]
fn a_file_rewritten_as_it_was_withdraws_the_pending_change() {
    // `kubectl get pods -o yaml > pods.yaml` when no pod changed.
    let at = clock();
    let mut s = Settle::new(APPLIED);
    assert_eq!(
        s.observe(EMPTY, true, at(0)),
        Decision::Deferred(Hold::Emptied)
    );
    assert_eq!(s.observe(APPLIED, false, at(1500)), Decision::Withdrawn);
    assert!(!s.is_pending());
    assert_eq!(s.observe(APPLIED, false, at(1600)), Decision::Unchanged);
}

#[test]
fn the_read_that_first_sees_a_change_never_applies_it_however_late_the_next() {
    let at = clock();
    let mut s = Settle::new(APPLIED);
    assert_eq!(
        s.observe(FULL, false, at(0)),
        Decision::Deferred(Hold::Settling)
    );
    // A stalled loop: one confirming read is enough once the window has passed.
    assert_eq!(
        s.observe(FULL, false, at(10_000)),
        Decision::Apply {
            stable_for: Duration::from_secs(10)
        }
    );
}

#[test]
fn a_rendered_invalid_input_is_not_retried_but_a_failed_write_is() {
    let at = clock();
    let mut s = Settle::new(APPLIED);
    s.observe(FULL, false, at(0));
    s.observe(FULL, false, at(ms(SETTLE)));
    s.rendered(FULL);
    assert_eq!(s.observe(FULL, false, at(1000)), Decision::Unchanged);
    s.forget();
    assert_eq!(
        s.observe(FULL, false, at(1100)),
        Decision::Deferred(Hold::Settling)
    );
}

fn source(path: &str, text: &str) -> Source {
    Source {
        path: PathBuf::from(path),
        content: text.as_bytes().to_vec(),
    }
}

fn read(sources: Vec<Source>) -> ReadInputs {
    ReadInputs {
        resources: sources,
        scheduler: None,
    }
}

const PODS: &str = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod}\n- {apiVersion: v1, kind: Pod}\n";
const ROUTE: &str = "apiVersion: x/v1\nkind: ModelRoute\n";

#[test]
fn a_file_that_held_objects_and_holds_none_became_empty() {
    let base = Baseline::of(&read(vec![source("r.yaml", ROUTE), source("p.yaml", PODS)]));
    for empty in [
        "",
        "\n  \n",
        "# refreshed below\n",
        "apiVersion: v1\nkind: List\nitems: []\n",
    ] {
        let changes = base.compare(&read(vec![
            source("r.yaml", ROUTE),
            source("p.yaml", empty),
        ]));
        assert_eq!(
            changes,
            Changes {
                files: vec!["p.yaml".into()],
                emptied: vec![("p.yaml".into(), 2)]
            },
            "{empty:?}"
        );
        assert_eq!(changes.emptied_reason(), "it became empty (was 2 objects)");
    }
}

#[test]
fn a_vanished_half_written_or_unchanged_file_is_not_emptied() {
    let base = Baseline::of(&read(vec![source("r.yaml", ROUTE), source("p.yaml", PODS)]));
    let same = base.compare(&read(vec![source("r.yaml", ROUTE), source("p.yaml", PODS)]));
    assert_eq!(same, Changes::default());
    // Deleting a file from a directory is how it is done: an ordinary change.
    let gone = base.compare(&read(vec![source("r.yaml", ROUTE)]));
    assert_eq!(gone.files, vec!["p.yaml"]);
    assert!(gone.emptied.is_empty());
    // Cut off mid-write: invalid, which never applies anyway.
    let cut = base.compare(&read(vec![
        source("r.yaml", ROUTE),
        source("p.yaml", "items: [\n"),
    ]));
    assert_eq!(cut.files, vec!["p.yaml"]);
    assert!(cut.emptied.is_empty());
    // A file that held nothing cannot become empty.
    let base = Baseline::of(&read(vec![source("p.yaml", "")]));
    let added = base.compare(&read(vec![source("p.yaml", PODS), source("q.yaml", "")]));
    assert_eq!(added.files, vec!["p.yaml", "q.yaml"]);
    assert!(added.emptied.is_empty());
}

#[test]
fn the_log_names_at_most_three_files_and_every_emptied_one() {
    let changes = Changes {
        files: (1..=5).map(|i| format!("f{i}.yaml")).collect(),
        emptied: vec![("f1.yaml".into(), 1), ("f2.yaml".into(), 14)],
    };
    assert_eq!(changes.what(), "f1.yaml, f2.yaml, f3.yaml and 2 more files");
    assert_eq!(
        changes.emptied_reason(),
        "f1.yaml became empty (was 1 object), f2.yaml became empty (was 14 objects)"
    );
}
