//! The contract between the filter and the store of placements shared by every gateway in
//! front of the same pods (Settings' `shared_placements`), which `modelroute-ratelimit`
//! serves next to the global rate limits, in Redis. One HTTP/2 `POST` per call: the record's
//! key and the Redis in headers; an empty body reads the record, a record in the body
//! writes it unless one placed on the same pod list is there. The answer (200) is always the
//! record kept under the key, or an empty body.

/// The call's path.
pub const PATH: &str = "/modelroute.placements/v1";
/// The Redis the record is kept in (`host:port`).
pub const REDIS_HEADER: &str = "x-modelroute-redis";
/// The record's key.
pub const KEY_HEADER: &str = "x-modelroute-placement";
/// How long a written record is kept, seconds.
pub const TTL_HEADER: &str = "x-modelroute-placement-ttl";
/// The bytes of a record that name the pod list it was placed on: a record placed on
/// another list (pods came or went) is replaced by a write.
pub const POD_LIST_BYTES: std::ops::Range<usize> = 12..16;
/// The longest record written (the filter's are at most 16 + 256 x 8 bytes).
pub const MAX_RECORD: usize = 4096;
