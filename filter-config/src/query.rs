//! Query strings as Go's `net/url` reads them (Kthena's router is Go): the filter reads a
//! sticky route's session parameter with it, the mock engines their KV-transfer requests.

/// `%XX` and `+` decoded, as Go's `url.QueryUnescape`; None on a bad escape. Never longer
/// than its input.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let digit = |at: usize| (*bytes.get(at)? as char).to_digit(16);
                out.push((digit(i + 1)? * 16 + digit(i + 2)?) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_plus_decode_and_a_bad_escape_is_refused() {
        assert_eq!(unescape("a+b%2Fc%e2%82%ac").unwrap(), "a b/c€".as_bytes());
        for bad in ["%", "%4", "%zz", "a%g1"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }
}
