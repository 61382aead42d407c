//! A recording fake [`Host`] for the flow tests.
use super::*;

/// A recording host: request headers and body in, mutations and local replies out.
/// A side call: (token, cluster, headers, body, timeout ms).
pub type Call = (u32, String, Vec<(String, String)>, Vec<u8>, u64);

#[derive(Default, Debug)]
pub struct FakeHost {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub reply: Option<(u32, String)>,
    /// The local reply's headers.
    pub reply_headers: Vec<(String, String)>,
    pub replaced: usize,
    /// Side calls sent: (token, cluster, headers, body, timeout ms).
    pub calls: Vec<Call>,
    /// The side call answer being delivered: (status, body).
    pub call_answer: Option<(Option<u32>, Vec<u8>)>,
    /// Refuse every dispatch (as a host without the cluster would).
    pub refuse_dispatch: bool,
    pub resumed: usize,
    pub now: u64,
    /// The upstream host that answered (`upstream.address`).
    pub upstream: Option<String>,
    pub counters: Vec<Counter>,
    /// Shared data: key -> (value, cas).
    pub shared: std::collections::HashMap<String, (Vec<u8>, u32)>,
    /// Another worker's write (key, value) that lands between this host's next read of that
    /// key and its write: a race, played on demand.
    pub racing_write: Option<(String, Vec<u8>)>,
    /// Shared-data reads (host calls), by key.
    pub shared_gets: std::cell::RefCell<Vec<String>>,
    /// The lengths side-call answer bodies were read with.
    pub call_body_reads: std::cell::RefCell<Vec<usize>>,
    /// How often the flow read the request headers (one host call each).
    pub header_reads: std::cell::Cell<usize>,
    /// Headers removed, in order (each a host call).
    pub removed: Vec<String>,
    /// The response body piece being delivered, and what the flow replaced it with.
    pub response_chunk: Vec<u8>,
    pub response_replaced: Option<Vec<u8>>,
    /// Published filter state, in order.
    pub published: Vec<(String, String)>,
    /// Gauge name -> value, counter name -> value.
    pub gauges: std::collections::BTreeMap<String, i64>,
    pub counted: std::collections::BTreeMap<String, i64>,
}

impl FakeHost {
    /// A header of the local reply.
    pub fn reply_header(&self, name: &str) -> Option<&str> {
        self.reply_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A published value.
    pub fn published(&self, name: &str) -> Option<&str> {
        self.published
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// JSON body of side call `i`.
    pub fn call_json(&self, i: usize) -> serde_json::Value {
        serde_json::from_slice(&self.calls[i].3).expect("call body is JSON")
    }
    /// A header of side call `i`.
    pub fn call_header(&self, i: usize, name: &str) -> Option<&str> {
        self.calls[i]
            .2
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    pub fn post(path: &str, body: &str, extra: &[(&str, &str)]) -> Self {
        let mut h = FakeHost {
            body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        h.headers.push((":method".into(), "POST".into()));
        h.headers.push((":path".into(), path.into()));
        h.headers
            .push(("content-length".into(), body.len().to_string()));
        for (k, v) in extra {
            h.headers.push((k.to_string(), v.to_string()));
        }
        h
    }
    pub fn request(method: impl Into<String>, path: impl Into<String>) -> Self {
        FakeHost {
            headers: vec![
                (":method".into(), method.into()),
                (":path".into(), path.into()),
            ],
            ..Default::default()
        }
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn reply_json(&self) -> (u32, serde_json::Value) {
        let (s, b) = self.reply.clone().expect("no local reply");
        (s, serde_json::from_str(&b).expect("reply is JSON"))
    }
}

impl Host for FakeHost {
    fn request_headers(&self) -> Headers {
        self.header_reads.set(self.header_reads.get() + 1);
        Headers::from_pairs(&self.headers)
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.into(), value.into()));
    }
    fn remove_header(&mut self, name: &str) {
        self.removed.push(name.to_string());
        self.headers.retain(|(k, _)| k != name);
    }
    fn body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        self.body.get(start..start + len).map(<[u8]>::to_vec)
    }
    fn replace_body(&mut self, old_len: usize, body: &[u8]) {
        assert_eq!(
            old_len,
            self.body.len(),
            "must replace the whole buffered body"
        );
        self.body = body.to_vec();
        self.replaced += 1;
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        if self.refuse_dispatch {
            return None;
        }
        let token = self.calls.len() as u32 + 100;
        let h = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.calls
            .push((token, cluster.into(), h, body.to_vec(), timeout_ms));
        Some(token)
    }
    fn call_status(&self) -> Option<u32> {
        self.call_answer.as_ref().and_then(|(s, _)| *s)
    }
    fn call_body(&self, len: usize) -> Option<Vec<u8>> {
        self.call_body_reads.borrow_mut().push(len);
        self.call_answer
            .as_ref()
            .map(|(_, b)| b[..len.min(b.len())].to_vec())
    }
    fn resume(&mut self) {
        self.resumed += 1;
    }
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn upstream_address(&self) -> Option<String> {
        self.upstream.clone()
    }
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared_gets.borrow_mut().push(key.to_string());
        match self.shared.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if let Some((_, other)) = self.racing_write.take_if(|(k, _)| k == key) {
            self.shared_put(key, &other);
        }
        // As Envoy (with the glue's create-only token for `None`): a key present must still
        // hold the token read; an absent one is created whatever the token.
        let current = self.shared.get(key).map(|(_, c)| *c);
        if current.is_some() && cas != current {
            return false;
        }
        self.shared_put(key, value);
        true
    }
    fn shared_put(&mut self, key: &str, value: &[u8]) {
        let next = self.shared.get(key).map_or(0, |(_, c)| *c) + 1;
        self.shared.insert(key.to_string(), (value.to_vec(), next));
    }
    fn count(&mut self, counter: Counter) {
        self.counters.push(counter);
    }
    fn response_body(&self, len: usize) -> Option<Vec<u8>> {
        self.response_chunk.get(..len).map(<[u8]>::to_vec)
    }
    fn replace_response_body(&mut self, old_len: usize, body: &[u8]) {
        assert_eq!(
            old_len,
            self.response_chunk.len(),
            "must replace the whole piece"
        );
        self.response_replaced = Some(body.to_vec());
    }
    fn publish(&mut self, name: &str, value: &str) {
        self.published.push((name.into(), value.into()));
    }
    fn add_to_metric(&mut self, kind: MetricKind, name: &str, delta: i64) {
        let map = match kind {
            MetricKind::Gauge => &mut self.gauges,
            MetricKind::Counter => &mut self.counted,
        };
        *map.entry(name.into()).or_default() += delta;
    }
    fn respond(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        assert!(self.reply.is_none(), "answered twice");
        self.reply_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.reply = Some((status, String::from_utf8_lossy(body).into_owned()));
    }
}
