//! Per-callback time inside the VM (feature `timing`, benchmark builds only): nanoseconds
//! per phase and a request count, added to `modelroute.timing.*` counters. Each measurement
//! itself costs two clock reads (host calls), which the numbers include.
pub const HEADERS: usize = 0;
pub const BODY: usize = 1;
pub const DONE: usize = 2;
pub const RESPONSE_BODY: usize = 4;
pub const RESPONSE_HEADERS: usize = 5;

#[cfg(not(feature = "timing"))]
#[inline(always)]
pub fn timed<T>(_slot: usize, f: impl FnOnce() -> T) -> T {
    f()
}

#[cfg(feature = "timing")]
pub fn timed<T>(slot: usize, f: impl FnOnce() -> T) -> T {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::MetricType;
    use std::cell::RefCell;
    const NAMES: [&str; 6] = [
        "modelroute.timing.headers_ns",
        "modelroute.timing.body_ns",
        "modelroute.timing.done_ns",
        "modelroute.timing.requests",
        "modelroute.timing.response_body_ns",
        "modelroute.timing.response_headers_ns",
    ];
    thread_local! {
        static IDS: RefCell<[Option<u32>; 6]> = const { RefCell::new([None; 6]) };
    }
    fn now_ns() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
    fn add(slot: usize, v: u64) {
        IDS.with(|ids| {
            let Ok(mut ids) = ids.try_borrow_mut() else {
                return;
            };
            let (Some(id), Some(name)) = (ids.get_mut(slot), NAMES.get(slot)) else {
                return;
            };
            if id.is_none() {
                *id = hostcalls::define_metric(MetricType::Counter, name).ok();
            }
            if let Some(id) = *id {
                let _ = hostcalls::increment_metric(id, v as i64);
            }
        });
    }
    let t0 = now_ns();
    let r = f();
    add(slot, now_ns().saturating_sub(t0));
    if slot == HEADERS {
        add(3, 1);
    }
    r
}
