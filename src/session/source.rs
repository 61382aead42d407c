//! A request's session key for a route's `spec.sessionSticky`: the first of the route's
//! sources that yields a non-empty value, trimmed, read as Kthena's router reads them
//! (Go's `net/http` and `net/url`): a header's first value; a query parameter's first value,
//! percent- and `+`-decoded (a pair with a `;` or a bad escape skipped; any bytes, as Go's
//! strings hold); the first cookie of that name (names trimmed; a cookie without `=` counts,
//! with an empty value), surrounding double quotes removed, cookies with bytes a cookie value
//! cannot hold skipped. The key is bytes: it is only ever hashed.

use filter_config::query::unescape;
use filter_config::{SessionKeyKind, SessionKeySource};

/// The session key of a request, or None when no source yields one. `header` gives a
/// request header's first value by lower-case name; `query` is the request path's query
/// string (after `?`, empty if none).
pub fn session_key(
    sources: &[SessionKeySource],
    header: &dyn Fn(&str) -> Option<String>,
    query: &str,
) -> Option<Vec<u8>> {
    sources.iter().find_map(|source| {
        let name = &source.name;
        let value = match source.kind {
            SessionKeyKind::Header => header(name)?.into_bytes(),
            SessionKeyKind::Query => query_value(query, name)?,
            SessionKeyKind::Cookie => cookie_value(&header("cookie")?, name)?.into_bytes(),
        };
        let value = trim(&value);
        (!value.is_empty()).then(|| value.to_vec())
    })
}

/// Go's `strings.TrimSpace`: Unicode white space off both ends (ASCII white space off bytes
/// that are not UTF-8).
fn trim(value: &[u8]) -> &[u8] {
    match std::str::from_utf8(value) {
        Ok(text) => text.trim().as_bytes(),
        Err(_) => value.trim_ascii(),
    }
}

/// The first value of parameter `name` in `query` (`a=1&b=2`).
fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        // Go skips a pair with a `;` (and reports it), and one that does not decode.
        if pair.contains(';') {
            return None;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if unescape(key)? != name.as_bytes() {
            return None;
        }
        unescape(value)
    })
}

/// The value of the first cookie named `name` in a `Cookie` header (`a=1; b="2"`).
fn cookie_value(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|part| {
        let part = part.trim();
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if key.trim() != name {
            return None;
        }
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // Go's validCookieValueByte: printable ASCII but `"`, `;` and `\`.
        let valid = value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b';' | b'\\'));
        valid.then(|| value.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionKeyKind::{Cookie, Header, Query};

    fn source(kind: SessionKeyKind, name: &str) -> SessionKeySource {
        SessionKeySource::new(kind, name)
    }

    fn key(sources: &[SessionKeySource], headers: &[(&str, &str)], query: &str) -> Option<String> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        session_key(sources, &header, query).map(|k| String::from_utf8_lossy(&k).into_owned())
    }

    #[test]
    fn the_first_source_that_yields_a_value_names_the_session() {
        let sources = [
            source(Header, "x-session-id"),
            source(Query, "session"),
            source(Cookie, "sid"),
        ];
        let all = [("x-session-id", "h"), ("cookie", "sid=c")];
        assert_eq!(key(&sources, &all, "session=q").as_deref(), Some("h"));
        // An empty or blank header counts as absent; trimmed values.
        let blank = [("x-session-id", "  "), ("cookie", "sid=c")];
        assert_eq!(
            key(&sources, &blank, "session=%20q%20").as_deref(),
            Some("q")
        );
        assert_eq!(key(&sources, &blank, "other=1").as_deref(), Some("c"));
        assert_eq!(key(&sources, &[], ""), None);
        assert_eq!(key(&[], &all, "session=q"), None);
    }

    #[test]
    fn query_parameters_decode_as_gos_url_package_does() {
        let q = |query: &str| key(&[source(Query, "s id")], &[], query);
        assert_eq!(
            q("a=1&s+id=x%2Fy+z&s%20id=second").as_deref(),
            Some("x/y z")
        );
        // A pair that does not decode is skipped, and so is one with ';' anywhere.
        assert_eq!(q("s+id=%zz&s+id=ok").as_deref(), Some("ok"));
        assert_eq!(q("s+id;=no&s+id=ok").as_deref(), Some("ok"));
        assert_eq!(q("s+id=a;b&s+id=ok").as_deref(), Some("ok"));
        assert_eq!(q("s+id").as_deref(), None, "no value");
        assert_eq!(q("S+id=x"), None, "names are exact");
        assert_eq!(q("s+id=%").as_deref(), None);
        // Bytes that are not UTF-8 name a session, as Go's strings hold any bytes; two such
        // names stay two sessions.
        let raw = |query: &str| session_key(&[source(Query, "s")], &|_: &str| None, query);
        assert_eq!(raw("s=%ff%fe"), Some(vec![0xff, 0xfe]));
        assert_ne!(raw("s=%ff"), raw("s=%fe"));
    }

    #[test]
    fn cookies_match_their_exact_name_without_quotes_and_skip_bad_values() {
        let c = |header: &str| key(&[source(Cookie, "sid")], &[("cookie", header)], "");
        assert_eq!(c("a=1; sid=abc; sid=second").as_deref(), Some("abc"));
        assert_eq!(c("a=1;sid=\"quoted\"").as_deref(), Some("quoted"));
        assert_eq!(c("SID=upper").as_deref(), None, "case-sensitive");
        assert_eq!(c("sid=a\\b; sid=ok").as_deref(), Some("ok"));
        assert_eq!(c("sidx=1; xsid=2"), None);
        // Names are trimmed; the first cookie of the name counts, even without a value.
        assert_eq!(c("sid =x").as_deref(), Some("x"));
        assert_eq!(c("sid; sid=x"), None);
    }
}
