//! This VM's linear memory, as the gauge `modelroute.vm.<n>.memory_bytes` (n: the order in
//! which Envoy's VMs, one per worker plus the main thread's, first configured the filter).
//! Wasm memory only grows, so the gauge is the VM heap's high-water mark; V8's own code and
//! bookkeeping are outside it (see Envoy's RSS for the whole).
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::Cell;

const ORDINAL_KEY: &str = "modelroute.vm.count";

thread_local! {
    /// (gauge id, last recorded bytes).
    static GAUGE: Cell<Option<(u32, u64)>> = const { Cell::new(None) };
}

fn ordinal() -> Option<u32> {
    for _ in 0..16 {
        let (bytes, cas) = hostcalls::get_shared_data(ORDINAL_KEY).ok()?;
        let n = bytes
            .and_then(|b| b.get(..4).and_then(|b| b.try_into().ok()))
            .map(u32::from_le_bytes)
            .unwrap_or(0);
        let next = n.saturating_add(1).to_le_bytes();
        if hostcalls::set_shared_data(ORDINAL_KEY, Some(&next), cas).is_ok() {
            return Some(n);
        }
    }
    None
}

pub fn record_memory() {
    let bytes = core::arch::wasm32::memory_size(0) as u64 * 65_536;
    let gauge = match GAUGE.get() {
        Some((_, last)) if last == bytes => return,
        Some((id, _)) => Some(id),
        None => ordinal().and_then(|n| {
            let name = format!("modelroute.vm.{n}.memory_bytes");
            hostcalls::define_metric(MetricType::Gauge, &name).ok()
        }),
    };
    let Some(id) = gauge else { return };
    if hostcalls::record_metric(id, bytes).is_ok() {
        GAUGE.set(Some((id, bytes)));
    }
}
