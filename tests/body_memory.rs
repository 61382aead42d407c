//! Per-request memory is bounded by the body's size, whatever the JSON's shape: the scanner
//! and every leg builder run here under a counting allocator on bodies built to inflate them
//! (millions of tiny top-level members, deep nesting, long key runs). A worker VM's linear
//! memory never shrinks, so an allocation spike on one request is paid for as long as the VM
//! lives.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use modelroute::pd::{decode_body, prefill_body, Bootstrap, Protocol};
use modelroute::prompt::prompt_text;
use modelroute::scan::scan;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Tests in this binary measure one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f` beyond what was live before it.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

/// What handling one body may cost: the prefill leg and the decode leg are each a copy of the
/// body (plus a few fields), and one of them is live at a time in the filter; the scan itself
/// may add at most one more body's worth. `make` builds the body under the same lock, so no
/// other test allocates while one measures.
fn assert_bounded(name: &str, make: impl FnOnce() -> Vec<u8>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let body = &make()[..];
    let bootstrap = Bootstrap {
        host: "10.0.0.1".into(),
        port: 8998,
        room: 7,
    };
    let peak = peak_of(|| {
        // A body the scanner refuses is answered 400 at once; that path must be bounded too.
        let Ok(s) = scan(body) else { return };
        let p = prompt_text(body, &s, 8192);
        drop(p);
        for protocol in [
            Protocol::VllmSequential,
            Protocol::VllmKvTransfer,
            Protocol::Sglang,
        ] {
            let leg = prefill_body(body, &s, protocol, "served/model", Some(&bootstrap));
            drop(leg);
        }
        let leg = decode_body(
            body,
            &s,
            "served/model",
            Some(b"{\"a\":1}"),
            Some(&bootstrap),
            Some(b"{\"include_usage\":true}"),
        );
        drop(leg);
    });
    let limit = 3 * body.len() + 64 * 1024;
    assert!(
        peak <= limit,
        "{name}: a {} byte body peaked at {peak} bytes (limit {limit})",
        body.len()
    );
}

const MIB: usize = 1024 * 1024;

fn object_of(members: impl Iterator<Item = String>) -> Vec<u8> {
    let mut b = b"{\"model\":\"m\"".to_vec();
    for m in members {
        b.push(b',');
        b.extend_from_slice(m.as_bytes());
    }
    b.push(b'}');
    b
}

#[test]
fn millions_of_tiny_top_level_members() {
    // The reproduction: 8 MB, ~1.4 million top-level members.
    assert_bounded("tiny members", || {
        let body = object_of((0..1_400_000u32).map(|i| format!("\"{}\":0", i % 1000)));
        assert!(body.len() > 7 * MIB);
        body
    });
}

#[test]
fn members_the_filter_edits_repeated_a_million_times() {
    assert_bounded("repeated stream", || {
        object_of((0..700_000).map(|_| "\"stream\":1".to_string()))
    });
}

#[test]
fn deep_nesting() {
    assert_bounded("deep nesting", || {
        let depth = 4 * MIB;
        let mut b = b"{\"model\":\"m\",\"x\":".to_vec();
        b.extend(std::iter::repeat_n(b'[', depth));
        b.extend(std::iter::repeat_n(b']', depth));
        b.push(b'}');
        b
    });
}

#[test]
fn many_chat_messages() {
    assert_bounded("many messages", || {
        let msgs: Vec<String> = (0..300_000)
            .map(|_| "{\"role\":\"user\",\"content\":\"a\"}".to_string())
            .collect();
        format!("{{\"model\":\"m\",\"messages\":[{}]}}", msgs.join(",")).into_bytes()
    });
}
