//! A ModelRoute rule as the router matches it: its conditions compiled once (exact, prefix or
//! regex string matches on headers and the URI, the body's model) and its weighted targets.

use filter_config::StringMatch;

use super::{InvalidConfig, Request};
use crate::weights::Weighted;

#[derive(Debug)]
pub(super) enum Matcher {
    Any,
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

impl Matcher {
    pub(super) fn compile(m: &StringMatch, what: &str) -> Result<Self, InvalidConfig> {
        Ok(match m {
            StringMatch::Any {} => Matcher::Any,
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            StringMatch::Regex(r) => Matcher::Regex(
                regex_lite::Regex::new(r)
                    .map_err(|e| InvalidConfig(format!("{what}: invalid regex {r:?}: {e}")))?,
            ),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(s) => value.starts_with(s.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug)]
pub(super) struct Rule {
    pub headers: Vec<(String, Matcher)>,
    pub uri: Option<Matcher>,
    pub body_model: Option<String>,
    /// Per target: index into `Router::servers`, or the missing server's name.
    pub targets: Vec<Result<usize, String>>,
    pub weights: Weighted,
}

impl Rule {
    /// Whether the request meets all the rule's conditions (body model, URI, headers).
    pub(super) fn matches(&self, req: &Request<'_>) -> bool {
        if let Some(m) = &self.body_model {
            if m != req.model {
                return false;
            }
        }
        if let Some(u) = &self.uri {
            if !u.matches(req.path) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, m)| m.matches((req.header)(name).as_deref().unwrap_or("")))
    }
}
