//! The only module that touches proxy-wasm: adapts Envoy's root and HTTP contexts to the pure
//! [`Flow`] and [`Router`]. No routing logic lives here.
//!
//! Host calls go through `proxy_wasm::hostcalls` with every `Result` handled, never through the
//! SDK's convenience methods (they `unwrap`, and a panic aborts the worker's VM). Header values
//! are read as bytes because the SDK's string getter panics on non-UTF-8 input.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as WasmAction, BufferType, ContextType, LogLevel, MapType, MetricType,
};

use std::time::Duration;

use filter_config::global_rate_limit;

use crate::collector::{self, Collector};
use crate::flow::Flow;
use crate::headers::Headers;
use crate::host::{Action, Counter, Host, MetricKind};
use crate::in_flight::InFlight;
use crate::load_report;
use crate::router::Router;
use crate::scheduler::SPEED_MAX_AGE_MS;
use crate::tally::{PrefixReport, Tally};
use std::collections::HashMap;

/// Root tick with the scheduler: keeps the workers' prefix indexes in step (their staleness is
/// a tick: 100 ms cost 3 points of cache hits against 25 in bench/QUALITY.md) and lets the
/// collector scrape the pods that are due; the snapshot is read every `metrics_interval_ms`.
const TICK_MS: u64 = 25;
/// Every this many ticks (100 ms): metrics flushed, in-flight releases published, memory.
const HOUSEKEEPING_TICKS: u32 = 4;
/// Root tick without the scheduler: only the VM memory gauge.
const IDLE_TICK_MS: u64 = 1000;

type Shared = Rc<RefCell<Option<Router>>>;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { router: Rc::new(RefCell::new(None)), collector: None, interval_ms: 1000, next_collect_ms: 0, snapshot_cas: None, ticks: 0 })
    });
}}

struct Root {
    router: Shared,
    /// Present while the scheduler needs engine metrics.
    collector: Option<Collector>,
    interval_ms: u64,
    /// When the snapshot is next read.
    next_collect_ms: u64,
    /// CAS of the last snapshot read, to decode it only when it changed.
    snapshot_cas: Option<u32>,
    /// Root ticks so far (housekeeping runs on every [`HOUSEKEEPING_TICKS`]-th).
    ticks: u32,
}

impl Context for Root {
    /// A scrape side call answered or failed.
    fn on_http_call_response(
        &mut self,
        token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(c) = self.collector.as_mut() {
            c.on_call_response(&mut EnvoyHost, token, body_size);
        }
    }
}

impl Root {
    /// Every VM: take the latest snapshot into the router when it changed.
    fn refresh(&mut self) {
        let Some(snapshot) = collector::read_snapshot(&EnvoyHost, &mut self.snapshot_cas) else {
            return;
        };
        if let Ok(mut slot) = self.router.try_borrow_mut() {
            if let Some(r) = slot.as_mut() {
                r.set_stats(snapshot);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(c)) => c,
            _ => {
                log::error!("modelroute: no plugin configuration");
                return false;
            }
        };
        let seed = crate::rng::vm_seed(
            hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        match Router::from_json(&config, seed) {
            Ok(router) => {
                log::info!(
                    "modelroute: configuration accepted ({} bytes)",
                    config.len()
                );
                self.interval_ms = router.settings.scheduler.metrics_interval_ms.max(100);
                self.collector = router.scheduling().then(|| {
                    let scheduler = &router.settings.scheduler;
                    let collector = Collector::new(
                        router.scrape_targets(),
                        seed | 1,
                        self.interval_ms,
                        &router.settings.endpoint_header,
                    );
                    match scheduler.prefix_pod_speed {
                        true => collector.with_latencies_at_most(SPEED_MAX_AGE_MS),
                        false => collector,
                    }
                });
                self.snapshot_cas = None;
                self.next_collect_ms = 0;
                // Without the scheduler nothing is counted in flight or collected.
                let period = if self.collector.is_some() {
                    Duration::from_millis(TICK_MS)
                } else {
                    Duration::from_millis(IDLE_TICK_MS)
                };
                vm::record_memory();
                if hostcalls::set_tick_period(period).is_err() {
                    log::warn!("modelroute: could not set the tick period");
                }
                match self.router.try_borrow_mut() {
                    Ok(mut slot) => *slot = Some(router),
                    Err(_) => return false,
                }
                // The new router's prefix indexes start empty.
                with_tally(|t| {
                    PREFIX_REPORT.with(|r| {
                        if let Ok(mut r) = r.try_borrow_mut() {
                            r.restart(t);
                        }
                    })
                });
                true
            }
            Err(e) => {
                log::error!("modelroute: {e}; keeping the previous configuration");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Ok(Some(r)) = self.router.try_borrow_mut().as_deref_mut() {
            r.sync_prefixes(&mut EnvoyHost);
        }
        if let Some(c) = self.collector.as_mut() {
            c.tick(&mut EnvoyHost, EnvoyHost.now_ms());
        }
        self.ticks = self.ticks.wrapping_add(1);
        if self.collector.is_some() && self.ticks % HOUSEKEEPING_TICKS != 0 {
            return;
        }
        if let Ok(Some(r)) = self.router.try_borrow().as_deref() {
            let (entries, evicted) = r.prefix_totals();
            with_tally(|t| {
                PREFIX_REPORT.with(|p| {
                    if let Ok(mut p) = p.try_borrow_mut() {
                        p.report(entries, evicted, t);
                    }
                })
            });
        }
        flush_tally();
        IN_FLIGHT.with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                if !f.is_empty() {
                    f.flush(&mut EnvoyHost);
                }
                if !f.debits.is_empty() {
                    f.debits.flush(&mut EnvoyHost, EnvoyHost.now_ms());
                }
            }
        });
        vm::record_memory();
        if self.collector.is_none() {
            return;
        }
        let now = EnvoyHost.now_ms();
        if now < self.next_collect_ms {
            return;
        }
        self.next_collect_ms = now + self.interval_ms;
        self.refresh();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            router: Rc::clone(&self.router),
            flow: Flow::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    router: Shared,
    flow: Flow,
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let shared = self.with_router_and_in_flight(|flow, router, in_flight| {
            flow.on_store_answer(router, &mut EnvoyHost, in_flight, token, body_size)
        });
        if !shared {
            self.flow.on_call_response(&mut EnvoyHost, token, body_size);
        }
    }
}

impl Request {
    fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        let action = self.with_router_and_in_flight(|flow, router, in_flight| {
            flow.on_request_body(router, &mut EnvoyHost, in_flight, body_size, end_of_stream)
        });
        to_wasm(action)
    }

    /// Runs `f` on the flow with the worker's router and in-flight counts (a counts table of
    /// its own if the worker's is in use, which only a re-entrant call could cause).
    fn with_router_and_in_flight<T>(
        &mut self,
        f: impl FnOnce(&mut Flow, Option<&mut Router>, &mut InFlight) -> T,
    ) -> T {
        let mut router = self.router.try_borrow_mut().ok();
        IN_FLIGHT.with(|cell| {
            let mut fallback = InFlight::default();
            let mut in_flight = cell.try_borrow_mut();
            let in_flight = match in_flight.as_deref_mut() {
                Ok(counts) => counts,
                Err(_) => &mut fallback,
            };
            f(
                &mut self.flow,
                router.as_mut().and_then(|r| r.as_mut()),
                in_flight,
            )
        })
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        timing::timed(timing::HEADERS, || {
            let router = self.router.try_borrow().ok();
            let action = self.flow.on_request_headers(
                router.as_ref().and_then(|r| r.as_ref()),
                &mut EnvoyHost,
                end_of_stream,
            );
            to_wasm(action)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        timing::timed(timing::BODY, || self.request_body(body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        if !self.flow.wants_response() {
            return WasmAction::Continue;
        }
        timing::timed(timing::RESPONSE_HEADERS, || {
            let headers = header_map(MapType::HttpResponseHeaders);
            let status = headers.get(":status").and_then(|s| s.parse().ok());
            let content_type = headers.get("content-type").unwrap_or_default();
            let router = self.router.try_borrow().ok();
            let router = router.as_deref().and_then(Option::as_ref);
            // The pod's load report is for the scheduler, not the client.
            if self.flow.wants_load_report() {
                if let Some(report) = headers.get(load_report::REPORT_HEADER) {
                    self.set_http_response_header(load_report::REPORT_HEADER, None);
                    self.flow.on_load_report(&mut EnvoyHost, router, report);
                }
            }
            if self.flow.follows_session() {
                self.flow
                    .on_session_answered(&mut EnvoyHost, router, status);
            }
            // The rate-limit service's refusal is for this filter's metrics, not the client.
            let refused = if self.flow.awaits_global_verdict() {
                let refused = headers.get(global_rate_limit::REFUSED_HEADER);
                if refused.is_some() {
                    self.set_http_response_header(global_rate_limit::REFUSED_HEADER, None);
                }
                refused
            } else {
                None
            };
            self.flow.on_response_headers(
                &mut EnvoyHost,
                status,
                content_type,
                end_of_stream,
                refused,
            );
        });
        WasmAction::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        if self.flow.wants_response() {
            timing::timed(timing::RESPONSE_BODY, || {
                self.flow
                    .on_response_body(&mut EnvoyHost, body_size, end_of_stream)
            });
        }
        WasmAction::Continue
    }

    fn on_log(&mut self) {
        timing::timed(timing::DONE, || {
            IN_FLIGHT.with(|f| {
                if let Ok(mut f) = f.try_borrow_mut() {
                    self.flow.on_done(&mut EnvoyHost, &mut f);
                }
            })
        });
        let o = &self.flow.outcome;
        if !o.model.is_empty() || o.local_status.is_some() {
            log::debug!(
                "modelroute: model={} route={} server={} pod={} prefill={} upstream_model={} local_status={:?}",
                o.model,
                o.route,
                o.server,
                o.endpoint,
                o.prefill,
                o.upstream_model,
                o.local_status
            );
        }
    }
}

fn to_wasm(a: Action) -> WasmAction {
    match a {
        Action::Continue => WasmAction::Continue,
        Action::Pause => WasmAction::Pause,
    }
}

/// [`Host`] over the current HTTP context's host calls.
struct EnvoyHost;

#[link(wasm_import_module = "env")]
extern "C" {
    /// The ABI call behind `hostcalls::get_map_bytes`, used directly because the SDK's
    /// decoder panics on a malformed map and copies every name and value.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> proxy_wasm::types::Status;
}

/// Every header of `map` in one host call, in the host's serialized form (parsed lazily).
fn header_map(map: MapType) -> Headers {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (a leaked `Vec<u8>` of capacity `size`), so the buffer is
    // ours to own and free as that Vec.
    let raw = unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            proxy_wasm::types::Status::Ok if !data.is_null() => {
                Vec::from_raw_parts(data, size, size)
            }
            _ => Vec::new(),
        }
    };
    Headers::parse(raw)
}

impl Host for EnvoyHost {
    fn request_headers(&self) -> Headers {
        header_map(MapType::HttpRequestHeaders)
    }

    fn set_header(&mut self, name: &str, value: &str) {
        if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_err() {
            log::warn!("modelroute: could not set header {name}");
        }
    }

    fn remove_header(&mut self, name: &str) {
        if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).is_err() {
            log::warn!("modelroute: could not remove header {name}");
        }
    }

    fn body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, len)
            .ok()
            .flatten()
    }

    fn replace_body(&mut self, old_len: usize, body: &[u8]) {
        if hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_len, body).is_err() {
            log::warn!("modelroute: could not replace the request body");
        }
    }

    fn respond(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
            log::warn!("modelroute: could not send a local reply");
        }
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        let timeout = std::time::Duration::from_millis(timeout_ms);
        match hostcalls::dispatch_http_call(cluster, headers.to_vec(), Some(body), vec![], timeout)
        {
            Ok(token) => Some(token),
            Err(e) => {
                log::warn!("modelroute: dispatch to {cluster} refused: {e:?}");
                None
            }
        }
    }

    fn call_status(&self) -> Option<u32> {
        let v =
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status").ok()??;
        std::str::from_utf8(&v).ok()?.parse().ok()
    }

    fn call_body(&self, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, len)
            .ok()
            .flatten()
    }

    fn resume(&mut self) {
        if hostcalls::resume_http_request().is_err() {
            log::warn!("modelroute: could not resume the request");
        }
    }

    fn upstream_address(&self) -> Option<String> {
        let bytes = hostcalls::get_property(vec!["upstream", "address"]).ok()??;
        String::from_utf8(bytes).ok()
    }

    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        // Envoy writes an absent key whatever the token, and a present one only if the token
        // matches (a token of 0 - `None` in the SDK - matches anything). Its tokens count up
        // from 1 across all keys; a key absent when read is written under the last one, so the
        // write lands only if the key is still absent, or if the writer who created it since
        // drew exactly that token (one write in four billion).
        const STILL_ABSENT: u32 = u32::MAX;
        hostcalls::set_shared_data(key, Some(value), Some(cas.unwrap_or(STILL_ABSENT))).is_ok()
    }

    fn shared_put(&mut self, key: &str, value: &[u8]) {
        if hostcalls::set_shared_data(key, Some(value), None).is_err() {
            log::warn!("modelroute: shared data {key} could not be written");
        }
    }

    fn response_body(&self, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, len)
            .ok()
            .flatten()
    }

    fn replace_response_body(&mut self, old_len: usize, body: &[u8]) {
        if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, old_len, body).is_err() {
            log::warn!("modelroute: could not replace a response body piece");
        }
    }

    fn publish(&mut self, name: &str, value: &str) {
        if hostcalls::set_property(vec![name], Some(value.as_bytes())).is_err() {
            log::warn!("modelroute: could not publish {name}");
        }
    }

    fn add_to_metric(&mut self, kind: MetricKind, name: &str, delta: i64) {
        with_tally(|t| t.add(kind, name, delta));
    }

    fn count(&mut self, counter: Counter) {
        COUNTERS.with(|ids| {
            let mut ids = ids.borrow_mut();
            let slot = Counter::ALL
                .iter()
                .position(|c| *c == counter)
                .and_then(|i| ids.get_mut(i));
            let Some(slot) = slot else { return };
            if slot.is_none() {
                *slot = hostcalls::define_metric(MetricType::Counter, counter.name()).ok();
            }
            if let Some(id) = *slot {
                let _ = hostcalls::increment_metric(id, 1);
            }
        });
    }
}

/// Runs `f` on this VM's tally (skipped if it is already borrowed, which never happens).
fn with_tally(f: impl FnOnce(&mut Tally)) {
    TALLY.with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            f(&mut t);
        }
    });
}

/// Writes this VM's tally of Kthena's counters and gauges to Envoy's stats (the root tick).
fn flush_tally() {
    METRIC_IDS.with(|ids| {
        TALLY.with(|t| {
            let (Ok(mut ids), Ok(mut t)) = (ids.try_borrow_mut(), t.try_borrow_mut()) else {
                return;
            };
            t.flush(|kind, name, delta| {
                let key = (kind, name.to_string());
                let id = match ids.get(&key) {
                    Some(id) => *id,
                    None if ids.len() < crate::tally::MAX_METRICS => {
                        let metric_type = match kind {
                            MetricKind::Counter => MetricType::Counter,
                            MetricKind::Gauge => MetricType::Gauge,
                        };
                        let Ok(id) = hostcalls::define_metric(metric_type, name) else {
                            return;
                        };
                        ids.insert(key, id);
                        id
                    }
                    None => return,
                };
                if delta != 0 {
                    let _ = hostcalls::increment_metric(id, delta);
                }
            });
        })
    });
}

thread_local! {
    /// Kthena's counters and gauges changed since the last tick.
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
    /// What this VM last reported of its prefix indexes (outlives a configuration's root).
    static PREFIX_REPORT: RefCell<PrefixReport> = RefCell::new(PrefixReport::default());
    /// Stat ids by kind and name, defined on first use in this VM.
    static METRIC_IDS: RefCell<HashMap<(MetricKind, String), u32>> = RefCell::new(HashMap::new());
    /// This worker's in-flight releases not yet written to shared data (one per VM, so they
    /// outlive a configuration's root context).
    static IN_FLIGHT: RefCell<InFlight> = RefCell::new(InFlight::default());
    /// Metric ids, defined on first use in this VM (same name in every VM = one Envoy stat).
    static COUNTERS: RefCell<[Option<u32>; Counter::ALL.len()]> = const { RefCell::new([None; Counter::ALL.len()]) };
}

/// Per-callback VM time (benchmark builds).
mod timing;

/// This VM's linear-memory gauge.
mod vm;
