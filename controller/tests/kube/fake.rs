//! A fake Kubernetes API server for the controller's tests: HTTP/1.1 on 127.0.0.1:0 (one
//! request per connection, `Connection: close`), objects as JSON in memory, and just what the
//! controller calls: list, watch (newline-delimited events from a resourceVersion), get,
//! create, server-side apply (`application/apply-patch+yaml`, also on `/status`), JSON merge
//! patch with a resourceVersion precondition, delete. Records every (verb, group, resource)
//! and every apply with its field manager; can fail every request with 500 for a while.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `(group, plural)` of a collection, e.g. `("", "pods")`.
pub type Coll = (String, String);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub verb: String,
    pub group: String,
    /// Plural, with `/subresource` when there is one.
    pub resource: String,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub resource: String,
    pub field_manager: String,
}

#[derive(Default)]
pub struct World {
    rv: u64,
    objects: BTreeMap<(Coll, String, String), Value>,
    log: Vec<(u64, Coll, String, &'static str, Value)>,
    pub calls: Vec<Call>,
    pub applies: Vec<Applied>,
    fail_until: Option<Instant>,
    /// Bumped to cut every open watch.
    epoch: u64,
}

#[derive(Clone)]
pub struct Fake {
    pub url: String,
    world: Arc<Mutex<World>>,
    tick: watch::Sender<u64>,
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Vec<u8>,
}

struct Target {
    coll: Coll,
    api_version: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (p.to_string(), None, None),
        [p, n] => (p.to_string(), Some(n.to_string()), None),
        [p, n, s] => (p.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let api_version = if group.is_empty() {
        version
    } else {
        format!("{group}/{version}")
    };
    Some(Target {
        coll: (group, plural),
        api_version,
        ns,
        name,
        sub,
    })
}

fn status(code: u16, reason: &str, msg: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": msg, "reason": reason, "code": code}),
    )
}

/// RFC 7386.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl World {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn store(&mut self, coll: &Coll, ns: &str, name: &str, mut obj: Value) -> Value {
        let rv = self.bump();
        let key = (coll.clone(), ns.to_string(), name.to_string());
        let existed = self.objects.contains_key(&key);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["name"] = json!(name);
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if obj["metadata"].get("creationTimestamp").is_none() {
            obj["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        if obj["metadata"].get("uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        self.log
            .push((rv, coll.clone(), ns.to_string(), kind, obj.clone()));
        self.objects.insert(key, obj.clone());
        obj
    }

    fn remove(&mut self, coll: &Coll, ns: &str, name: &str) -> Option<Value> {
        let key = (coll.clone(), ns.to_string(), name.to_string());
        let mut obj = self.objects.remove(&key)?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.log
            .push((rv, coll.clone(), ns.to_string(), "DELETED", obj.clone()));
        Some(obj)
    }

    pub fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (
            (group.to_string(), plural.to_string()),
            ns.to_string(),
            name.to_string(),
        );
        self.objects.get(&key).cloned()
    }

    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((c, _, _), _)| c.0 == group && c.1 == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tick, _) = watch::channel(0);
        let fake = Fake {
            url,
            world: Arc::default(),
            tick,
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = f.serve(conn).await;
                });
            }
        });
        fake
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn changed(&self) {
        let rv = self.world().rv;
        self.tick.send_replace(rv);
    }

    /// Creates or replaces an object (as a user would), emitting a watch event.
    pub fn put(&self, group: &str, plural: &str, obj: Value) {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.world()
            .store(&(group.into(), plural.into()), &ns, &name, obj);
        self.changed();
    }

    pub fn delete(&self, group: &str, plural: &str, ns: &str, name: &str) {
        self.world()
            .remove(&(group.into(), plural.into()), ns, name);
        self.changed();
    }

    pub fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.world().get(group, plural, ns, name)
    }

    /// Every request fails with 500 for `d`; open watches are cut.
    pub fn outage(&self, d: Duration) {
        {
            let mut w = self.world();
            w.fail_until = Some(Instant::now() + d);
            w.epoch += 1;
        }
        self.changed();
    }

    async fn serve(&self, mut conn: TcpStream) -> std::io::Result<()> {
        let Some(req) = read_request(&mut conn).await? else {
            return Ok(());
        };
        let target = parse_target(&req.path);
        let watching = req
            .query
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1");
        let failing = {
            let mut w = self.world();
            if let Some(t) = &target {
                let verb = match (req.method.as_str(), &t.name) {
                    ("GET", None) if watching => "watch",
                    ("GET", None) => "list",
                    ("GET", Some(_)) => "get",
                    ("POST", _) => "create",
                    ("PATCH", _) => "patch",
                    ("PUT", _) => "update",
                    ("DELETE", _) => "delete",
                    (m, _) => m,
                };
                let resource = match &t.sub {
                    Some(s) => format!("{}/{s}", t.coll.1),
                    None => t.coll.1.clone(),
                };
                w.calls.push(Call {
                    verb: verb.into(),
                    group: t.coll.0.clone(),
                    resource,
                });
            }
            w.fail_until.is_some_and(|t| Instant::now() < t)
        };
        let (code, body) = match target {
            _ if failing => status(500, "InternalError", "injected failure"),
            None => status(404, "NotFound", "unknown path"),
            Some(t) if watching => return self.watch(conn, t, &req).await,
            Some(t) => self.handle(&req, &t),
        };
        if code < 300 {
            self.changed();
        }
        let text = body.to_string();
        let head = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            text.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(text.as_bytes()).await?;
        conn.shutdown().await
    }

    fn handle(&self, req: &Request, t: &Target) -> (u16, Value) {
        let mut w = self.world();
        let ns = t.ns.clone().unwrap_or_default();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        match (req.method.as_str(), &t.name) {
            ("GET", None) => {
                let items: Vec<Value> = w
                    .objects
                    .iter()
                    .filter(|((c, n, _), _)| *c == t.coll && (t.ns.is_none() || *n == ns))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": t.api_version, "kind": "List",
                           "metadata": {"resourceVersion": w.rv.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => match w.get(&t.coll.0, &t.coll.1, &ns, name) {
                Some(o) => (200, o),
                None => status(404, "NotFound", &format!("{} {name} not found", t.coll.1)),
            },
            ("POST", None) => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                if w.get(&t.coll.0, &t.coll.1, &ns, &name).is_some() {
                    return status(409, "AlreadyExists", "exists");
                }
                (201, w.store(&t.coll, &ns, &name, body))
            }
            ("PATCH", Some(name)) => {
                let existing = w.get(&t.coll.0, &t.coll.1, &ns, name);
                if req.content_type.contains("apply-patch") {
                    let manager = req.query.get("fieldManager").cloned().unwrap_or_default();
                    let resource = match &t.sub {
                        Some(s) => format!("{}/{s}", t.coll.1),
                        None => t.coll.1.clone(),
                    };
                    w.applies.push(Applied {
                        resource,
                        field_manager: manager,
                    });
                    let obj = match (&t.sub, existing) {
                        (Some(_), None) => return status(404, "NotFound", "no such object"),
                        (Some(_), Some(mut o)) => {
                            o["status"] = body["status"].clone();
                            o
                        }
                        (None, Some(o)) => {
                            // Our SSA: the applied fields replace ours; metadata is kept.
                            let mut new = body.clone();
                            new["metadata"] = o["metadata"].clone();
                            new
                        }
                        (None, None) => body.clone(),
                    };
                    return (200, w.store(&t.coll, &ns, name, obj));
                }
                let Some(mut o) = existing else {
                    return status(404, "NotFound", "no such object");
                };
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
                    if o["metadata"]["resourceVersion"].as_str() != Some(rv) {
                        return status(409, "Conflict", "resourceVersion mismatch");
                    }
                }
                merge(&mut o, &body);
                (200, w.store(&t.coll, &ns, name, o))
            }
            ("DELETE", Some(name)) => match w.remove(&t.coll, &ns, name) {
                Some(o) => (200, o),
                None => status(404, "NotFound", "no such object"),
            },
            _ => status(405, "MethodNotAllowed", "not implemented by the fake"),
        }
    }

    async fn watch(&self, mut conn: TcpStream, t: Target, req: &Request) -> std::io::Result<()> {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
        conn.write_all(head.as_bytes()).await?;
        let mut from: u64 = req
            .query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let epoch = self.world().epoch;
        let timeout = req
            .query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = self.tick.subscribe();
        loop {
            let lines: Vec<String> = {
                let w = self.world();
                if w.epoch != epoch {
                    break;
                }
                let out = w
                    .log
                    .iter()
                    .filter(|(rv, c, n, _, _)| {
                        *rv > from && *c == t.coll && t.ns.as_ref().is_none_or(|ns| ns == n)
                    })
                    .map(|(_, _, _, kind, obj)| {
                        format!("{}\n", json!({"type": kind, "object": obj}))
                    })
                    .collect();
                from = w.rv;
                out
            };
            for l in lines {
                conn.write_all(l.as_bytes()).await?;
            }
            conn.flush().await?;
            tokio::select! {
                r = tick.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        conn.shutdown().await
    }
}

async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    let mut content_type = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = buf[header_end..].to_vec();
    while body.len() < content_length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        content_type,
        body,
    }))
}
