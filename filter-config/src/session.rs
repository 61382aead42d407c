//! Session stickiness in the schema: a route's `sessionSticky` ([`SessionSticky`]) and the
//! `session-affinity` score plugin's arguments ([`SessionAffinity`]).

use serde::{Deserialize, Serialize};

/// Kthena's `spec.sessionSticky` (its session-sticky proposal): where a request's session key
/// comes from, and how long a session stays bound to its pod after its last request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSticky {
    /// Tried in order; the first non-empty value is the session key.
    pub sources: Vec<SessionKeySource>,
    /// `sessionAffinitySeconds` in ms (Kthena's default 600 s).
    pub ttl_ms: u64,
}

/// Kthena's default `sessionAffinitySeconds`.
pub const DEFAULT_STICKY_TTL_MS: u64 = 600 * 1000;

/// One place a session key may come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKeySource {
    #[serde(rename = "type")]
    pub kind: SessionKeyKind,
    /// A header's (lower-case), a query parameter's (exact, after percent-decoding) or a
    /// cookie's (exact, case-sensitive) name.
    pub name: String,
}

/// Where a [`SessionKeySource`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKeyKind {
    Header,
    Query,
    Cookie,
}

impl SessionKeySource {
    pub fn new(kind: SessionKeyKind, name: &str) -> Self {
        SessionKeySource {
            kind,
            name: name.to_string(),
        }
    }
}

/// Arguments of Kthena's `session-affinity` score plugin: requests carrying the same value
/// of `header` go to the pod the last one went to, for `ttl_ms` after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionAffinity {
    /// Request header naming the session, lower-case (Kthena's `headerName`, `X-Session-ID`).
    pub header: String,
    /// How long a session stays bound to its pod after its last request (Kthena's `ttl`).
    pub ttl_ms: u64,
}

/// Kthena's session-affinity defaults: `X-Session-ID`, 30 minutes.
pub const DEFAULT_SESSION_HEADER: &str = "x-session-id";
pub const DEFAULT_SESSION_TTL_MS: u64 = 30 * 60 * 1000;

impl Default for SessionAffinity {
    fn default() -> Self {
        SessionAffinity {
            header: DEFAULT_SESSION_HEADER.to_string(),
            ttl_ms: DEFAULT_SESSION_TTL_MS,
        }
    }
}
