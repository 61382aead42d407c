//! vLLM's error answers: the `type` it names for each status and the JSON body it sends.

use serde::Serialize;

use super::{to_json, Reply};

#[derive(Serialize)]
struct ErrorBody<'a> {
    object: &'a str,
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: u16,
}

/// vLLM's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        405 => "MethodNotAllowedError",
        408 => "RequestTimeoutError",
        413 => "RequestEntityTooLargeError",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        501 => "NotImplementedError",
        503 => "ServiceUnavailableError",
        504 => "GatewayTimeoutError",
        500..=599 => "InternalServerError",
        _ => "Error",
    }
}

/// vLLM's error body: `{"object":"error","message":..,"type":..,"param":null,"code":status}`.
pub fn error_body(status: u16, message: &str) -> String {
    to_json(&ErrorBody {
        object: "error",
        message,
        kind: error_type(status),
        param: None,
        code: status,
    })
}

/// A JSON error reply.
pub fn error_reply(status: u16, message: &str) -> Reply {
    Reply::Json {
        status,
        body: error_body(status, message),
    }
}
