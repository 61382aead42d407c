//! The header block parser (`headers::Headers::parse`, proxy-wasm's serialized map) against a
//! reference decoder written here.
//!
//! Asserts: any buffer parses without a panic into at most `count` pairs; a well-formed buffer
//! (the reference decodes it) yields exactly the reference's pairs, in order, and `get_bytes`
//! answers each name's first value; a well-formed buffer built from the input's pairs and then
//! truncated anywhere yields a prefix of those pairs ("the pairs that were whole").
//! Why: the host's buffer is the one input the filter reads before anything is validated, and
//! a panic there aborts the VM for every request it serves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelroute::headers::Headers;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// `u32 count | count x (u32 name_len, u32 value_len) | name\0 value\0 ...`, little endian,
/// decoded only when every part is there, every NUL is in place and nothing follows.
fn reference(raw: &[u8]) -> Option<Pairs> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = raw.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::new();
    for i in 0..count {
        let (n, v) = (u32_at(4 + 8 * i)?, u32_at(8 + 8 * i)?);
        let name = raw.get(data..data.checked_add(n)?)?;
        data += n;
        (raw.get(data) == Some(&0)).then_some(())?;
        data += 1;
        let value = raw.get(data..data.checked_add(v)?)?;
        data += v;
        (raw.get(data) == Some(&0)).then_some(())?;
        data += 1;
        pairs.push((name.to_vec(), value.to_vec()));
    }
    (data == raw.len()).then_some(pairs)
}

fn encode(pairs: &Pairs) -> Vec<u8> {
    let mut raw = (pairs.len() as u32).to_le_bytes().to_vec();
    for (n, v) in pairs {
        raw.extend_from_slice(&(n.len() as u32).to_le_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        raw.extend_from_slice(n);
        raw.push(0);
        raw.extend_from_slice(v);
        raw.push(0);
    }
    raw
}

fn pairs_of(h: &Headers) -> Pairs {
    h.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
}

fn check_lookups(h: &Headers, pairs: &Pairs) {
    // The first names only: every lookup is a linear search, so all of them would be quadratic.
    for (name, _) in pairs.iter().take(16) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let first = pairs.iter().find(|(n, _)| n == name.as_bytes());
        assert_eq!(h.get_bytes(name), first.map(|(_, v)| v.as_slice()));
        assert!(h.contains(name));
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as the host's buffer.
    let h = Headers::parse(data.to_vec());
    let claimed = data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    assert!(h.len() <= claimed);
    for (n, v) in h.iter() {
        let _ = (n.len(), v.len(), h.get_lossy("x"), h.get(":path"));
    }
    if let Some(want) = reference(data) {
        assert_eq!(pairs_of(&h), want);
        check_lookups(&h, &want);
    }

    // The input as pairs: NUL-separated name, value, name, value... (names and values
    // without NULs, as in a real map); the last two bytes of the input choose a cut.
    let mut fields = data.split(|&b| b == 0);
    let mut pairs: Pairs = Vec::new();
    while let (Some(n), Some(v)) = (fields.next(), fields.next()) {
        pairs.push((n.to_vec(), v.to_vec()));
    }
    let raw = encode(&pairs);
    let h = Headers::parse(raw.clone());
    assert_eq!(pairs_of(&h), pairs);
    check_lookups(&h, &pairs);
    let cut = match data {
        [.., a, b] => usize::from(u16::from_le_bytes([*a, *b])) % (raw.len() + 1),
        _ => 0,
    };
    let got = pairs_of(&Headers::parse(raw[..cut].to_vec()));
    assert!(
        pairs.starts_with(&got),
        "cut at {cut}: {got:?} of {pairs:?}"
    );
});
