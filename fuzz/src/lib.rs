//! What the fuzz targets share: splitting one input into parts, and serde_json as the
//! reference parser (with the two places where it cannot be one).
//! Owns: test-side helpers only; nothing here is part of the filter.


use serde_json::{Map, Value};

/// Separates the parts of a target's input. 0xFF never occurs in UTF-8, so a JSON body (the
/// first part, usually) never contains it; libFuzzer's comparison tracing finds it quickly.
pub const SEP: u8 = 0xFF;

/// Splits `data` at each [`SEP`] into exactly `N` parts (missing ones empty, the last one
/// keeps any further separators).
pub fn parts<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&data[..0]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        match rest.iter().position(|&b| b == SEP) {
            Some(k) => {
                *slot = &rest[..k];
                rest = &rest[k + 1..];
            }
            None => {
                *slot = rest;
                rest = &rest[rest.len()..];
                // The remaining parts stay empty.
            }
        }
    }
    out
}

/// serde_json stops at 128 nested containers (the scanner has no limit); below this depth
/// its verdict is the reference.
pub const SERDE_DEPTH: usize = 120;

/// The deepest container nesting in `b`, counted lexically (brackets outside strings). Exact
/// for valid JSON; for invalid JSON an upper bound of what a parser reaches before the error.
pub fn json_depth(b: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &c in b {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// serde_json's verdict on `body` as one top-level object, or `None` where it is no reference:
/// nesting past its recursion limit, or a [`known_divergence`].
pub fn serde_object(body: &[u8]) -> Option<Result<Map<String, Value>, serde_json::Error>> {
    if json_depth(body) >= SERDE_DEPTH {
        return None;
    }
    match serde_json::from_slice(body) {
        Err(e) if known_divergence(&e) => None,
        verdict => Some(verdict),
    }
}

/// Where serde_json is not the reference, by decision (each input is under fuzz/regressions/):
///
/// - serde_json refuses a number whose value overflows f64 (`1e400`, `-1e309`, 400 digits) as
///   "number out of range". The JSON grammar has no such limit and the engines' parser
///   (Python's `json`) reads `1e400` as infinity, so the scanner accepts the body and passes
///   it on untouched; only the engine decides what such a number means.
pub fn known_divergence(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("number out of range")
}

/// Parses one JSON value the filter produced; the message names the bytes.
pub fn must_parse<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> T {
    serde_json::from_slice(b).unwrap_or_else(|e| {
        panic!(
            "{what} is not valid JSON ({e}): {:?}",
            String::from_utf8_lossy(b)
        )
    })
}
