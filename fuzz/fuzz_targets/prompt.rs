//! The prompt text prefix-cache scoring hashes (`prompt::prompt_text`).
//!
//! Input: `cap (2 bytes, little endian) | body`. For every body the scanner accepts, asserts:
//! no panic; the text is at most `cap` bytes; and it is a prefix of the uncapped text (the cap
//! cuts, it never changes what is rendered, and an escape is never half-decoded).
//! Why: the walker reads validated but client-written JSON without a DOM; the cap is what keeps
//! a long chat from costing its full length on every request, and hashes of a capped prompt
//! must match the same conversation's hashes when it comes back longer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::prompt::prompt_text;
use modelroute::scan::scan;

fuzz_target!(|data: &[u8]| {
    let (cap, body) = match data {
        [a, b, body @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), body),
        _ => return,
    };
    let Ok(s) = scan(body) else { return };
    let full = prompt_text(body, &s, usize::MAX);
    let capped = prompt_text(body, &s, cap);
    assert!(
        capped.len() <= cap,
        "{} bytes for a cap of {cap}",
        capped.len()
    );
    assert!(
        full.starts_with(&capped),
        "cap {cap}: {:?} is not a prefix of {:?}",
        String::from_utf8_lossy(&capped),
        String::from_utf8_lossy(&full)
    );
});
