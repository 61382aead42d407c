//! OpenAI-style error replies: `{"error":{"message","type","param","code"}}` with the status
//! Kthena uses for the same condition. Owns: status codes, error types and codes, JSON text.

use crate::router::RouteError;

/// An error the filter answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: u32,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl ErrorReply {
    pub fn new(status: u32, code: &'static str, message: impl Into<String>) -> Self {
        let kind = if status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        ErrorReply {
            status,
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}
        })
        .to_string()
    }

    pub fn invalid_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            "invalid_json",
            format!("request body is not valid JSON: {detail}"),
        )
    }

    pub fn model_missing() -> Self {
        Self::new(
            404,
            "model_not_found",
            "the request body has no \"model\" string",
        )
    }

    /// `GET /v1/models/{id}` for a model no route serves (`id` as the client sent it).
    pub fn model_missing_id(id: &str) -> Self {
        Self::new(404, "model_not_found", format!("model {id:?} not found"))
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            413,
            "request_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// PD: every pair's prefill leg failed to run; `what` completes "no prefill pod ...".
    pub fn prefill_unavailable(what: &str) -> Self {
        Self::new(503, "prefill_unavailable", format!("no prefill pod {what}"))
    }

    /// PD: the last prefill leg tried did not answer within `timeout_ms`.
    pub fn prefill_timeout(timeout_ms: u64) -> Self {
        Self::new(
            504,
            "prefill_timeout",
            format!("prefill did not answer within {timeout_ms} ms"),
        )
    }

    /// PD: the last prefill leg tried answered a non-2xx `status`.
    pub fn prefill_failed(status: u32) -> Self {
        Self::new(
            502,
            "prefill_failed",
            format!("prefill pod answered status {status}"),
        )
    }

    /// 429 with Kthena's message; the OpenAI shape's type for token limits is `tokens`.
    pub fn rate_limited(direction: crate::rate_limit::Direction) -> Self {
        ErrorReply {
            kind: "tokens",
            ..Self::new(429, "rate_limit_exceeded", direction.message())
        }
    }

    pub fn not_configured() -> Self {
        Self::new(
            503,
            "router_not_configured",
            "the model router has no valid configuration yet",
        )
    }

    pub fn from_route(err: &RouteError, model: &str) -> Self {
        match err {
            RouteError::ModelNotFound => {
                Self::new(404, "model_not_found", format!("model {model:?} not found"))
            }
            RouteError::NoRuleMatched => Self::new(
                404,
                "route_not_found",
                format!("no ModelRoute rule for model {model:?} matches this request"),
            ),
            RouteError::ServerNotFound(s) => Self::new(
                404,
                "model_server_not_found",
                format!("ModelServer {s} for model {model:?} not found"),
            ),
            RouteError::AllFiltered(s, p) => Self::new(
                503,
                "all_pods_filtered",
                format!("every ready pod of ModelServer {s} was filtered out by the {p:?} scheduler plugin"),
            ),
            RouteError::NoPdPair(s) => Self::new(
                503,
                "no_pd_pair",
                format!("ModelServer {s} has no group with both a ready prefill and decode pod"),
            ),
            // A bug of ours, never the client's: not a 4xx.
            RouteError::Internal(what) => Self::new(
                500,
                "internal_error",
                format!("the router failed to route model {model:?}: {what}"),
            ),
            // The flow asks the store on this; reaching a reply would be a bug of ours.
            RouteError::PlacementUnknown(..) | RouteError::SessionUnknown(..) => Self::new(
                500,
                "internal_error",
                format!("the router failed to route model {model:?}: shared store not asked"),
            ),
            RouteError::NoReadyEndpoints(s) => Self::new(
                503,
                "no_ready_endpoints",
                format!("ModelServer {s} has no ready pods"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped_and_escapes_the_message() {
        let e = ErrorReply::from_route(&RouteError::ModelNotFound, "a\"b");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(e.status, 404);
        assert_eq!(v["error"]["message"], "model \"a\\\"b\" not found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn statuses_follow_kthena() {
        assert_eq!(ErrorReply::invalid_json("x").status, 400);
        assert_eq!(ErrorReply::model_missing().status, 404);
        assert_eq!(ErrorReply::too_large(1).status, 413);
        let e = ErrorReply::from_route(&RouteError::Internal("x"), "m");
        assert_eq!((e.status, e.code), (500, "internal_error"));
        let e = ErrorReply::from_route(&RouteError::NoReadyEndpoints("s".into()), "m");
        assert_eq!((e.status, e.kind), (503, "server_error"));
        assert_eq!(
            ErrorReply::from_route(&RouteError::ServerNotFound("s".into()), "m").status,
            404
        );
    }
}
