//! What the router is told about one request ([`Request`]): its model, path, headers and
//! prompt, and how to read the state every worker shares (in-flight counts, load reports,
//! placement records, the gateways' placement store).

/// What the router needs to know about a request.
pub struct Request<'a> {
    pub model: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// The query string (after `?`; empty if none): a route's `sessionSticky` may read a
    /// parameter.
    pub query: &'a str,
    /// First value of a request header (lower-case name), if present.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The prompt text to hash for prefix-cache scoring (empty: none).
    pub prompt: &'a [u8],
    /// Requests in flight per pod of a ModelServer, from all workers (by in-flight key).
    pub in_flight: &'a dyn Fn(&str, usize) -> Vec<u32>,
    /// The pods' latest in-band load reports, from all workers (by load key).
    pub load_reports: &'a dyn Fn(&str, usize) -> Vec<Option<crate::load_report::Reported>>,
    /// A shared-data value by key: the workers' placement records of new prefixes
    /// ([`crate::prefix_sync::placement_key`]) and session bindings ([`crate::session`]).
    pub shared_data: &'a dyn Fn(&str) -> Option<Vec<u8>>,
    /// The gateways' shared placements, for a prompt no local record answers for.
    pub shared: SharedPlacement<'a>,
    /// The gateways' shared session bindings, for a sticky session this Envoy has not
    /// confirmed lately.
    pub session_store: SharedSession<'a>,
    /// The target a first decision for this request chose ([`super::RouteError`]'s
    /// `PlacementUnknown` / `SessionUnknown`), when deciding again after the store answered:
    /// a weighted choice is made once per request.
    pub target: Option<super::Target>,
    /// Host clock, for metrics freshness and session bindings' age.
    pub now_ms: u64,
}

/// Where the store of placements shared by every gateway stands for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedPlacement<'a> {
    /// No store: place on this gateway's knowledge alone.
    Off,
    /// Not asked yet: a prompt no local record answers for is not placed but returned as
    /// [`RouteError::PlacementUnknown`], for the caller to ask the store.
    Unasked,
    /// The store's answer: another gateway's record (used as a local one would be), or
    /// none (then this gateway places it, breaking ties by `placed`: the prompt blocks every
    /// gateway has placed on each pod, by pod index; None: the store did not answer).
    Answered {
        /// The keys the store was asked under: an answer is only used by the server and
        /// prompt it was asked for (a weighted pick may choose another server the second
        /// time).
        asked: Option<&'a crate::prefix_sync::SharedKeys>,
        record: Option<&'a [u8]>,
        placed: Option<&'a [u32]>,
    },
}

/// Where the gateways' store of sticky sessions' bindings stands for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedSession<'a> {
    /// No store: bindings are this Envoy's alone.
    Off,
    /// Not asked yet: a sticky session without a binding this Envoy confirmed lately is not
    /// placed but returned as [`super::RouteError::SessionUnknown`], for the caller to ask.
    Unasked,
    /// The store's answer: the pod address the session is bound to (None: no binding; the
    /// local binding, if any, then holds and is written there).
    Answered(Option<&'a str>),
    /// The store did not answer (in time, or with an error): this Envoy's binding holds, and
    /// nothing is written there (it may hold another gateway's binding).
    Unanswered,
}

/// A no-op in-flight source (tests, or no shared state).
pub fn no_in_flight(_: &str, n: usize) -> Vec<u32> {
    vec![0; n]
}

/// A no-op shared-data source: no placement records, no session bindings (tests, or no
/// shared state). With it, [`Request::shared`] is usually [`SharedPlacement::Off`].
pub fn no_shared_data(_: &str) -> Option<Vec<u8>> {
    None
}

/// A no-op load-report source (tests, or no shared state).
pub fn no_load_reports(_: &str, n: usize) -> Vec<Option<crate::load_report::Reported>> {
    vec![None; n]
}
