//! Just enough of Redis's protocol (RESP2) to run one Lua script: `SCRIPT LOAD` once, then
//! `EVALSHA` (reloading after a Redis restart flushed the script), over a small pool of
//! connections per Redis. Every call is bounded by a timeout; a connection that failed is
//! dropped, the next call dials again, so a Redis that comes back is used again at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Idle connections kept per Redis; more run at once when needed, the rest are closed.
const POOL: usize = 16;
/// Bounds on what a bulk reply may hold (a placement record is a few KB).
const MAX_BULK: usize = 1 << 16;
/// Redis servers one script talks to, by address (bounded: addresses come from the
/// controller's configuration, never from clients, but a mistake must not exhaust sockets).
const MAX_REDIS: usize = 64;

/// A client per Redis address for one script.
pub struct Clients {
    script: &'static str,
    timeout: Duration,
    /// The Redis every call goes to, whatever address it names (`--redis`).
    redis_override: Option<String>,
    by_addr: Mutex<HashMap<String, Arc<Redis>>>,
}

impl Clients {
    pub fn new(script: &'static str, timeout: Duration, redis_override: Option<String>) -> Clients {
        Clients {
            script,
            timeout,
            redis_override,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// The address a call naming the Redis at `named` goes to.
    pub fn address<'a>(&'a self, named: &'a str) -> &'a str {
        self.redis_override.as_deref().unwrap_or(named)
    }

    /// The client of the Redis a call naming `named` goes to ([`Clients::address`]); None
    /// past [`MAX_REDIS`] addresses.
    pub async fn get(&self, named: &str) -> Option<Arc<Redis>> {
        let addr = self.address(named);
        let mut clients = self.by_addr.lock().await;
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        if clients.len() >= MAX_REDIS {
            return None;
        }
        let c = Arc::new(Redis::new(addr, self.script, self.timeout));
        clients.insert(addr.to_string(), c.clone());
        Some(c)
    }
}
/// Items of an array reply at most: the placement script answers with a count per pod, pod
/// number and count by turns.
const MAX_ITEMS: usize = 2 * filter_config::placement_store::MAX_PODS + 2;

/// A reply, as far as this client reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    Timeout,
    Protocol(&'static str),
    Redis(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Timeout => write!(f, "timed out"),
            Error::Protocol(what) => write!(f, "protocol error: {what}"),
            Error::Redis(msg) => write!(f, "{msg}"),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

type Conn = BufReader<TcpStream>;

/// One Redis server and the script it runs.
pub struct Redis {
    addr: String,
    script: &'static str,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
    sha: Mutex<Option<String>>,
}

impl Redis {
    pub fn new(addr: &str, script: &'static str, timeout: Duration) -> Redis {
        Redis {
            addr: addr.to_string(),
            script,
            timeout,
            idle: Mutex::new(Vec::new()),
            sha: Mutex::new(None),
        }
    }

    /// Runs the script with `keys` and `args`, within the timeout.
    pub async fn eval(&self, keys: &[&str], args: &[String]) -> Result<Reply, Error> {
        tokio::time::timeout(self.timeout, self.eval_unbounded(keys, args))
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    async fn eval_unbounded(&self, keys: &[&str], args: &[String]) -> Result<Reply, Error> {
        let mut conn = match self.idle.lock().await.pop() {
            Some(c) => c,
            None => BufReader::new(TcpStream::connect(&self.addr).await?),
        };
        let result = self.eval_on(&mut conn, keys, args).await;
        // A connection is reused only after a whole exchange (a Redis error reply included).
        if matches!(result, Ok(_) | Err(Error::Redis(_))) {
            let mut idle = self.idle.lock().await;
            if idle.len() < POOL {
                idle.push(conn);
            }
        }
        result
    }

    async fn eval_on(
        &self,
        conn: &mut Conn,
        keys: &[&str],
        args: &[String],
    ) -> Result<Reply, Error> {
        let sha = self.sha.lock().await.clone();
        let sha = match sha {
            Some(sha) => sha,
            None => self.load(conn).await?,
        };
        let mut words: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes()];
        let n = keys.len().to_string();
        words.push(n.as_bytes());
        words.extend(keys.iter().map(|k| k.as_bytes()));
        words.extend(args.iter().map(|a| a.as_bytes()));
        match command(conn, &words).await? {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                // Redis restarted (or flushed its scripts): load it again, once.
                let sha = self.load(conn).await?;
                if let Some(w) = words.get_mut(1) {
                    *w = sha.as_bytes();
                }
                into_result(command(conn, &words).await?)
            }
            reply => into_result(reply),
        }
    }

    async fn load(&self, conn: &mut Conn) -> Result<String, Error> {
        match command(conn, &[b"SCRIPT", b"LOAD", self.script.as_bytes()]).await? {
            Reply::Bulk(Some(sha)) => {
                let sha = String::from_utf8(sha).map_err(|_| Error::Protocol("script id"))?;
                *self.sha.lock().await = Some(sha.clone());
                Ok(sha)
            }
            Reply::Error(e) => Err(Error::Redis(e)),
            _ => Err(Error::Protocol("SCRIPT LOAD reply")),
        }
    }
}

fn into_result(reply: Reply) -> Result<Reply, Error> {
    match reply {
        Reply::Error(e) => Err(Error::Redis(e)),
        r => Ok(r),
    }
}

/// Sends one command (an array of bulk strings) and reads its reply.
async fn command(conn: &mut Conn, words: &[&[u8]]) -> Result<Reply, Error> {
    conn.get_mut().write_all(&encode(words)).await?;
    read_reply(conn, 0).await
}

/// A command in RESP: `*N` then `$len` + bytes for each word.
pub fn encode(words: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply (`depth`: of nested arrays, bounded).
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin + Send>(
    r: &mut R,
    depth: usize,
) -> Result<Reply, Error> {
    if depth > 4 {
        return Err(Error::Protocol("nested too deep"));
    }
    let line = read_line(r).await?;
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or(Error::Protocol("empty line"))?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| Error::Protocol("not a number"))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(number()?),
        "$" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| Error::Protocol("length"))?;
            if n > MAX_BULK {
                return Err(Error::Protocol("bulk string too long"));
            }
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data).await?;
            data.truncate(n);
            Reply::Bulk(Some(data))
        }
        "*" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Array(Vec::new()));
            }
            let n = usize::try_from(n).map_err(|_| Error::Protocol("length"))?;
            if n > MAX_ITEMS {
                return Err(Error::Protocol("array too long"));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(Box::pin(read_reply(r, depth + 1)).await?);
            }
            Reply::Array(items)
        }
        _ => return Err(Error::Protocol("unknown reply type")),
    })
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<String, Error> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_BULK as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(Error::Protocol("line not ended by CRLF"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| Error::Protocol("line not UTF-8"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply, Error> {
        let mut r = BufReader::new(bytes);
        read_reply(&mut r, 0).await
    }

    #[tokio::test]
    async fn the_placement_scripts_count_per_pod_is_read_for_thousands_of_pods() {
        // 2,000 pods with counts: 4,000 items, pod number and count by turns.
        let mut bytes = b"*4000\r\n".to_vec();
        for i in 0..2000 {
            bytes.extend(format!("$4\r\n{i:04}\r\n$1\r\n7\r\n").into_bytes());
        }
        let Reply::Array(items) = parse(&bytes).await.unwrap() else {
            panic!("an array");
        };
        assert_eq!(items.len(), 4000);
    }

    #[tokio::test]
    async fn replies_of_every_kind() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Status("OK".into()));
        assert_eq!(
            parse(b"-NOSCRIPT no\r\n").await.unwrap(),
            Reply::Error("NOSCRIPT no".into())
        );
        assert_eq!(parse(b":-12\r\n").await.unwrap(), Reply::Int(-12));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"*4\r\n:0\r\n$6\r\noutput\r\n:3\r\n:1500\r\n")
                .await
                .unwrap(),
            Reply::Array(vec![
                Reply::Int(0),
                Reply::Bulk(Some(b"output".to_vec())),
                Reply::Int(3),
                Reply::Int(1500)
            ])
        );
    }

    #[tokio::test]
    async fn garbage_and_hostile_replies_are_errors() {
        for bad in [
            &b""[..],
            b"OK\r\n",
            b"+OK\n",
            b":x\r\n",
            b"$5\r\nab",
            b"$99999999\r\n",
            b"*99999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                parse(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"EVALSHA", b"ab", b"0"]),
            b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n".to_vec()
        );
    }
}
