//! Route precedence: the order in which the filter tries routes that share a model name.
//! Oldest first, like Kthena: creationTimestamp (RFC3339; routes without one are newer than
//! any with one and keep their input order), then resourceVersion (numeric when both are
//! numbers), then input order, then `namespace/name`. Pure.

use std::cmp::Ordering;

use crate::kthena::{ModelRouteSpec, Object};

/// Seconds and nanoseconds since the Unix epoch of an RFC3339 timestamp
/// (`2025-01-02T03:04:05Z`, `...05.123+02:00`), or `None` when malformed.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s.trim()[start..i];
        let padded: String = digits
            .chars()
            .chain(std::iter::repeat('0'))
            .take(9)
            .collect();
        nanos = padded.parse().ok()?;
    }
    let offset_s = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + se - offset_s, nanos))
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    Numeric(u128),
    Text(String),
    Missing,
}

fn version(rv: Option<&str>) -> Version {
    match rv {
        None | Some("") => Version::Missing,
        Some(v) => v
            .parse()
            .map(Version::Numeric)
            .unwrap_or_else(|_| Version::Text(v.to_string())),
    }
}

/// The precedence order of two routes (`Less` = tried first).
pub fn compare_routes(a: &Object<ModelRouteSpec>, b: &Object<ModelRouteSpec>) -> Ordering {
    let ts =
        |o: &Object<ModelRouteSpec>| o.meta.creation_timestamp.as_deref().and_then(parse_rfc3339);
    let by_name = || a.meta.key().cmp(&b.meta.key());
    match (ts(a), ts(b)) {
        (Some(ta), Some(tb)) => ta
            .cmp(&tb)
            .then_with(|| {
                version(a.meta.resource_version.as_deref())
                    .cmp(&version(b.meta.resource_version.as_deref()))
            })
            .then_with(|| a.order.cmp(&b.order))
            .then_with(by_name),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.order.cmp(&b.order).then_with(by_name),
    }
}

/// Sorts routes into precedence order (stable).
pub fn sort_routes(routes: &mut [&Object<ModelRouteSpec>]) {
    routes.sort_by(|a, b| compare_routes(a, b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kthena::ObjectMeta;

    fn r(name: &str, order: usize, ts: Option<&str>, rv: Option<&str>) -> Object<ModelRouteSpec> {
        Object {
            file: "f".into(),
            order,
            meta: ObjectMeta {
                name: name.into(),
                creation_timestamp: ts.map(str::to_string),
                resource_version: rv.map(str::to_string),
                ..Default::default()
            },
            spec: ModelRouteSpec::default(),
        }
    }

    fn sorted(objs: &[Object<ModelRouteSpec>]) -> Vec<&str> {
        let mut refs: Vec<&Object<ModelRouteSpec>> = objs.iter().collect();
        sort_routes(&mut refs);
        refs.into_iter().map(|o| o.meta.name.as_str()).collect()
    }

    #[test]
    fn rfc3339_parses_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00Z"),
            Some((1_709_208_000, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00+02:00"),
            Some((1_709_208_000, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.5Z"),
            Some((1_709_208_000, 500_000_000))
        );
        assert_eq!(parse_rfc3339("2024-02-29"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn older_creation_timestamp_goes_first() {
        let objs = [
            r("new", 0, Some("2025-01-02T00:00:00Z"), None),
            r("old", 1, Some("2025-01-01T00:00:00Z"), None),
            // Same instant, written with an offset: compared as instants, not strings.
            r("mid", 2, Some("2025-01-01T13:00:00+12:00"), None),
        ];
        assert_eq!(sorted(&objs), vec!["old", "mid", "new"]);
    }

    #[test]
    fn routes_without_timestamp_are_newest_in_input_order() {
        let objs = [
            r("b", 0, None, Some("1")),
            r("a", 1, None, None),
            r("dated", 2, Some("2030-01-01T00:00:00Z"), None),
        ];
        assert_eq!(sorted(&objs), vec!["dated", "b", "a"]);
    }

    #[test]
    fn resource_version_breaks_timestamp_ties_numerically() {
        let ts = Some("2025-01-01T00:00:00Z");
        let objs = [
            r("v10", 0, ts, Some("10")),
            r("v9", 1, ts, Some("9")),
            r("none", 2, ts, None),
        ];
        assert_eq!(sorted(&objs), vec!["v9", "v10", "none"]);
    }

    #[test]
    fn input_order_breaks_remaining_ties() {
        let ts = Some("2025-01-01T00:00:00Z");
        let objs = [r("z", 0, ts, Some("5")), r("a", 1, ts, Some("5"))];
        assert_eq!(sorted(&objs), vec!["z", "a"]);
    }
}
