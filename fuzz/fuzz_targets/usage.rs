//! Token usage read from a response as it passes (`usage::UsageScanner`).
//!
//! Input: `mode (1 byte: even = JSON, odd = SSE) | split seed (1 byte) | body`. Asserts: no
//! panic on any bytes, and the body fed in pieces (cut where the seed says) gives the usage the
//! whole body gives; for a JSON body serde_json parses as an object, that usage is
//! serde_json's top-level `usage.prompt_tokens` / `usage.completion_tokens`.
//! Why: responses are engine-written but arrive split anywhere by the network, and the scanner
//! keeps only a few bytes of state between pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::usage::{Usage, UsageScanner};

fn scanner(sse: bool) -> UsageScanner {
    if sse {
        UsageScanner::sse()
    } else {
        UsageScanner::json()
    }
}

fuzz_target!(|data: &[u8]| {
    let (mode, seed, body) = match data {
        [m, s, body @ ..] => (*m, *s, body),
        _ => return,
    };
    let sse = mode % 2 == 1;
    let mut whole = scanner(sse);
    whole.feed(body);
    let mut pieces = scanner(sse);
    let step = usize::from(seed % 13) + 1;
    for piece in body.chunks(step) {
        pieces.feed(piece);
    }
    assert_eq!(whole.usage(), pieces.usage(), "split every {step} bytes");
    if sse {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) else {
        return;
    };
    let u = v.get("usage");
    let field = |name: &str| u.and_then(|u| u.get(name)).and_then(|n| n.as_u64());
    let want = Usage {
        prompt_tokens: field("prompt_tokens"),
        completion_tokens: field("completion_tokens"),
    };
    // Only plain non-negative integers are read; serde_json's other numbers (floats,
    // negatives) and escaped keys are outside what engines send.
    if want.prompt_tokens.is_some() || want.completion_tokens.is_some() {
        let got = whole.usage();
        assert!(
            got == want || body.contains(&b'\\'),
            "{got:?} != {want:?} for {:?}",
            String::from_utf8_lossy(body)
        );
    }
});
