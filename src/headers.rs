//! A snapshot of the request headers, taken with one host call.
//!
//! Reading headers one by one costs a host call each (and, for a value, a second crossing
//! into the VM to allocate it). The filter instead fetches every request header at once in
//! proxy-wasm's serialized map format and looks names up here, without copying:
//!
//! ```text
//! u32 count | count x (u32 name_len, u32 value_len) | name\0 value\0 ...   (little endian)
//! ```
//!
//! Parsing never panics: a truncated or inconsistent buffer yields the pairs that were whole.

/// Request headers: the host's buffer and the spans of each name and value in it.
#[derive(Debug, Default, Clone)]
pub struct Headers {
    raw: Vec<u8>,
    /// (name start, name end, value start, value end) per header, in order.
    spans: Vec<[u32; 4]>,
}

fn read_u32(b: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes) as usize)
}

impl Headers {
    /// Takes ownership of a serialized header map.
    pub fn parse(raw: Vec<u8>) -> Headers {
        let spans = Self::index(&raw).unwrap_or_default();
        Headers { raw, spans }
    }

    fn index(raw: &[u8]) -> Option<Vec<[u32; 4]>> {
        // Every span must fit u32 offsets; the host's maps are far smaller.
        if raw.len() > u32::MAX as usize {
            return None;
        }
        let count = read_u32(raw, 0)?;
        let sizes_end = count.checked_mul(8)?.checked_add(4)?;
        if sizes_end > raw.len() {
            return None;
        }
        let mut spans = Vec::with_capacity(count);
        let mut p = sizes_end;
        for i in 0..count {
            let name_len = read_u32(raw, 4 + i * 8)?;
            let value_len = read_u32(raw, 8 + i * 8)?;
            let name_end = p.checked_add(name_len)?;
            let value_start = name_end.checked_add(1)?;
            let value_end = value_start.checked_add(value_len)?;
            // Each name and value is followed by a NUL.
            if value_end >= raw.len() {
                break;
            }
            spans.push([
                p as u32,
                name_end as u32,
                value_start as u32,
                value_end as u32,
            ]);
            p = value_end + 1;
        }
        Some(spans)
    }

    /// Serializes `pairs` in the host's format (tests and fakes).
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Headers {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (k, v) in pairs {
            raw.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
            raw.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            raw.extend_from_slice(k.as_ref());
            raw.push(0);
            raw.extend_from_slice(v.as_ref());
            raw.push(0);
        }
        Headers::parse(raw)
    }

    fn slice(&self, start: u32, end: u32) -> &[u8] {
        self.raw
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Every (name, value) pair in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|[a, b, c, d]| (self.slice(*a, *b), self.slice(*c, *d)))
    }

    /// The first value of `name` (names are lower case, as Envoy keeps them).
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first value of `name` as text; `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name`, non-UTF-8 bytes replaced (for matching rules).
    pub fn get_lossy(&self, name: &str) -> Option<String> {
        self.get_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Headers::from_pairs(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("x-empty", ""),
            ("x-tier", "premium"),
            ("x-tier", "second"),
        ]);
        assert_eq!(h.len(), 5);
        assert_eq!(h.get(":method"), Some("POST"));
        assert_eq!(h.get(":path"), Some("/v1/chat/completions"));
        assert_eq!(h.get("x-empty"), Some(""));
        assert_eq!(h.get("x-tier"), Some("premium"), "first value wins");
        assert_eq!(h.get("x-absent"), None);
        assert!(h.contains("x-empty"));
    }

    #[test]
    fn empty_and_garbage_never_panic() {
        assert!(Headers::parse(Vec::new()).is_empty());
        assert!(Headers::parse(vec![1, 2]).is_empty());
        // Claims a billion pairs.
        assert!(Headers::parse(vec![0, 0, 0, 64, 1, 2, 3]).is_empty());
        // Lengths that overflow.
        let mut raw = 1u32.to_le_bytes().to_vec();
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        raw.extend_from_slice(b"abc\0def\0");
        assert!(Headers::parse(raw).is_empty());
    }

    #[test]
    fn truncated_buffer_keeps_the_whole_pairs() {
        let full = Headers::from_pairs(&[("a", "1"), ("b", "22")]);
        for cut in 0..full.raw.len() {
            let h = Headers::parse(full.raw[..cut].to_vec());
            assert!(h.len() <= 2);
            for (n, v) in h.iter() {
                assert!(
                    matches!((n, v), (b"a", b"1") | (b"b", b"22")),
                    "{n:?} {v:?}"
                );
            }
        }
        assert_eq!(Headers::parse(full.raw.clone()).len(), 2);
    }

    #[test]
    fn non_utf8_values() {
        let h = Headers::from_pairs(&[("x-bin", &b"\xff\xfe"[..])]);
        assert_eq!(h.get("x-bin"), None);
        assert_eq!(h.get_bytes("x-bin"), Some(&b"\xff\xfe"[..]));
        assert_eq!(h.get_lossy("x-bin").as_deref(), Some("\u{fffd}\u{fffd}"));
    }
}
