//! The contract between the filter and the store of placements (and of sticky sessions'
//! bindings, [`SESSION_PATH`]) shared by every gateway in front of the same pods (Settings'
//! `shared_placements`), which `modelroute-ratelimit` serves next to the global rate limits,
//! in Redis. One HTTP/2 `POST` per call: the record's
//! key and the Redis in headers; an empty body reads the record, a record in the body
//! writes it unless one placed on the same pod list is there. The answer (200) is always an
//! [`Answer`]: the record kept under the key (if any) and how many prompt blocks every
//! gateway has placed on each pod of the server, for the tie-break of a prompt placed anew.

/// The call's path.
pub const PATH: &str = "/modelroute.placements/v1";
/// The Redis the record is kept in (`host:port`).
pub const REDIS_HEADER: &str = "x-modelroute-redis";
/// The record's key.
pub const KEY_HEADER: &str = "x-modelroute-placement";
/// The key of the prompt blocks placed on each of the server's pods (counted when a record
/// is written).
pub const PLACED_BLOCKS_HEADER: &str = "x-modelroute-placed-blocks";
/// The prefixes of the store's keys; the service touches no other key.
pub const RECORD_KEY_PREFIX: &str = "modelroute:placed:";
pub const PLACED_BLOCKS_KEY_PREFIX: &str = "modelroute:placed-blocks:";
/// How long a written record is kept, seconds.
pub const TTL_HEADER: &str = "x-modelroute-placement-ttl";
/// The bytes of a record that name the pod list it was placed on: a record placed on
/// another list (pods came or went) is replaced by a write.
pub const POD_LIST_BYTES: std::ops::Range<usize> = 12..16;
/// The longest record written (the filter's are at most 16 + 256 x 8 bytes).
pub const MAX_RECORD: usize = 4096;
/// Families counted per pod at most (a pod index past it is not counted).
pub const MAX_PODS: usize = 65536;

/// Session bindings of routes with `sessionSticky`, shared by the gateways through the same
/// service: one `POST` to this path per call, the binding's key in [`KEY_HEADER`], the Redis in
/// [`REDIS_HEADER`], the binding's time to live in [`TTL_HEADER`]. An empty body reads the
/// binding; a pod's address binds the session to it: with [`SESSION_EXPECT_HEADER`] only if
/// the session is unbound or bound to the address that header names (compare-and-set), else
/// unconditionally. Either way the binding's time to live starts again. The answer (200) is
/// the address bound after the call, empty for none; 503 when Redis did not answer.
pub const SESSION_PATH: &str = "/modelroute.sessions/v1";
/// The binding a call to [`SESSION_PATH`] may replace: a gateway claiming a session names
/// its own proposal (bind it if the session is free, else learn the pod bound); one moving a
/// session off a pod it cannot use names that pod (another gateway's move meanwhile is kept).
/// Empty: only an unbound session is bound.
pub const SESSION_EXPECT_HEADER: &str = "x-modelroute-session-expect";
/// The prefix of session bindings' keys; the service touches no other key on that path.
pub const SESSION_KEY_PREFIX: &str = "modelroute:session:";
/// The longest pod address bound.
pub const MAX_SESSION_POD: usize = 256;

/// The store's answer: `record length (u32 LE) | record | blocks placed per pod (u32 LE each, by
/// pod index)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The record kept under the key; empty: none.
    pub record: Vec<u8>,
    /// Prompt blocks placed on each pod, by pod index (pods past the end: none).
    pub placed_blocks: Vec<u32>,
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.record.len()).unwrap_or(0);
        let mut out = Vec::with_capacity(4 + self.record.len() + 4 * self.placed_blocks.len());
        out.extend(len.to_le_bytes());
        out.extend(self.record.get(..len as usize).unwrap_or_default());
        for f in &self.placed_blocks {
            out.extend(f.to_le_bytes());
        }
        out
    }

    /// None when `bytes` is not an answer (an empty body, a cut one).
    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let record = bytes.get(4..4usize.checked_add(len)?)?.to_vec();
        let rest = bytes.get(4 + len..)?;
        if rest.len() % 4 != 0 || rest.len() / 4 > MAX_PODS {
            return None;
        }
        let placed_blocks = rest
            .chunks_exact(4)
            .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
            .collect();
        Some(Answer {
            record,
            placed_blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_cut_ones_are_none() {
        let a = Answer {
            record: vec![1, 2, 3],
            placed_blocks: vec![0, 2, 1],
        };
        assert_eq!(Answer::decode(&a.encode()), Some(a.clone()));
        let bytes = a.encode();
        for cut in 0..bytes.len() {
            let decoded = Answer::decode(&bytes[..cut]);
            // Whole answers: the record, then any number of whole counts.
            let whole = cut >= 7 && (cut - 7) % 4 == 0;
            assert_eq!(decoded.is_some(), whole, "{cut}: {decoded:?}");
        }
        assert_eq!(
            Answer::decode(&Answer::default().encode()),
            Some(Answer::default())
        );
    }
}
