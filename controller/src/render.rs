//! Renderers: turn a [`crate::compile::Compiled`] into what a particular proxy deployment reads.
//! Only `envoy` (standalone Envoy with ECDS/CDS/EDS from files) exists today; an Istio renderer
//! (EnvoyFilter + cluster patches) belongs next to it. Renderers produce bytes, never write.

pub mod envoy;

/// FNV-1a 64-bit: a stable content hash for `version_info` and change detection
/// (`std`'s hasher is not guaranteed stable across releases).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
