//! Shared harness for the integration tests: spawn the real `meridian` binary on a free
//! loopback port (`--port 0`, port read from its `meridian listening on ...` line), talk to it
//! with the `redis` crate or raw RESP over TCP, and wait on conditions with deadlines.
//!
//! A [`Server`] kills its child (by its pid, through `Child::kill`) when dropped, so a
//! failing test never leaks a process. [`RedisRef`] does the same for a real `redis-server`
//! used as the reference implementation in differential tests.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a debug build on a loaded 2-core box may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Socket read/write timeout: a reply that never comes fails the test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline for [`wait_until`] conditions that depend on background work.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Process guards
// ---------------------------------------------------------------------------------------

/// A running `meridian` process; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// `tls-port`, when it has one (0: none; `port` is the same when it has no plain port).
    pub tls_port: u16,
    /// A TOML config written for this server (removed on drop).
    config_file: Option<std::path::PathBuf>,
}

impl Server {
    /// Start with default flags.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Start with extra command-line flags (e.g. `["--maxclients", "5"]`).
    pub fn start_with(extra: &[&str]) -> Server {
        // `--port 0` (any free port) unless the caller fixes the port.
        let port: &[&str] = if extra.contains(&"--port") {
            &[]
        } else {
            &["--port", "0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(port)
            .args(["--log-level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the meridian binary");
        let stdout = child.stdout.take().expect("piped stdout");
        // Own the child before waiting, so a failed start still kills it.
        let mut server = Server {
            child,
            port: 0,
            tls_port: 0,
            config_file: None,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stdout for the life of the child so it never blocks on a pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep reading to drain the pipe.
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix("meridian tls listening on ") {
                        server.tls_port = addr
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.parse::<u16>().ok())
                            .unwrap_or_else(|| panic!("cannot parse port from {line:?}"));
                    }
                    if let Some(addr) = line.trim().strip_prefix("meridian listening on ") {
                        let port = addr
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.parse::<u16>().ok())
                            .unwrap_or_else(|| panic!("cannot parse port from {line:?}"));
                        assert_ne!(port, 0, "server reported port 0");
                        server.port = port;
                        return server;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("meridian did not print its listening line within {START_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait();
                    panic!("meridian exited before listening: {status:?} (flags {extra:?})");
                }
            }
        }
    }

    /// Start with a TOML config file holding `toml` (for keys without a CLI flag), plus flags.
    pub fn start_with_config(toml: &str, extra: &[&str]) -> Server {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("meridian-it-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write the test config");
        let path_text = path.to_str().expect("UTF-8 temp path").to_string();
        let mut args = vec!["--config", path_text.as_str()];
        args.extend_from_slice(extra);
        let mut server = Server::start_with(&args);
        server.config_file = Some(path);
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client url")
    }

    /// A RESP2 connection from the `redis` crate.
    pub fn conn(&self) -> redis::Connection {
        let con = self.client().get_connection().expect("connect to meridian");
        con.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        con.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        con
    }

    /// A RESP3 connection from the `redis` crate (it sends `HELLO 3` on connect).
    pub fn conn_resp3(&self) -> redis::Connection {
        let url = format!("redis://127.0.0.1:{}/?protocol=resp3", self.port);
        let con = redis::Client::open(url)
            .expect("client url")
            .get_connection()
            .expect("connect to meridian with RESP3");
        con.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        con
    }

    /// Raw TCP access, for protocol-level tests.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }

    /// Still alive and answering? (used after abuse: malformed input, fuzzing)
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("meridian exited: {status}");
        }
        let mut raw = self.raw();
        assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
    }

    /// The INFO field `name` (e.g. "used_memory") as text.
    pub fn info_field(&self, con: &mut redis::Connection, name: &str) -> String {
        info_field(con, name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = &self.config_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A free loopback port for a server a test starts, below Linux' ephemeral range
/// (32768–60999). A port from that range could be taken, between this check and the
/// server's bind, as the source port of any outgoing connection of the tests running in
/// parallel, and a reconnect to a killed node's port could even connect to itself; both made
/// cluster tests flaky ("Address already in use" at a node's start or restart). Ports are
/// handed out in turn from a per-process starting point, and each is checked free (TCP and
/// UDP) before it is returned.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Is an external tool available? When it is not: fail under CI (the CI env var is set),
/// otherwise print a notice and let the caller skip.
pub fn tool_available(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()));
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is required in CI (install redis-tools / redis-server)");
        }
        eprintln!("NOTICE: {name} not found on PATH; skipping this test");
    }
    found
}

/// A real `redis-server` (persistence off) used as the reference for differential tests;
/// killed on drop.
pub struct RedisRef {
    child: Child,
    pub port: u16,
}

impl RedisRef {
    /// `None` (with a notice) when redis-server is not installed outside CI.
    pub fn start() -> Option<RedisRef> {
        if !tool_available("redis-server") {
            return None;
        }
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = RedisRef { child, port };
        wait_until(START_TIMEOUT, "redis-server answers PING", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| {
                let mut raw = Raw::from_stream(s);
                raw.try_cmd(&["PING"]) == Some(Resp::Simple("PONG".into()))
            })
        });
        Some(r)
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }
}

impl Drop for RedisRef {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Cluster slots (independent of the server's implementation)
// ---------------------------------------------------------------------------------------

/// CRC16-XMODEM, the cluster key hash.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: CRC16 of the first non-empty `{tag}` if any, else of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

/// One key name per slot: `{prefix}:{n}` names, the first found for each of the 16384 slots.
pub fn one_key_per_slot(prefix: &str) -> Vec<String> {
    let mut by_slot: Vec<Option<String>> = vec![None; 16384];
    let mut missing = by_slot.len();
    let mut n = 0u64;
    while missing > 0 {
        let k = format!("{prefix}:{n}");
        let slot = usize::from(key_slot(k.as_bytes()));
        if by_slot[slot].is_none() {
            by_slot[slot] = Some(k);
            missing -= 1;
        }
        n += 1;
    }
    by_slot.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Poll `cond` with a short pause between checks until it holds; panic with `what` once
/// `timeout` has passed. The only way tests wait for background work.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// `redis` crate helpers
// ---------------------------------------------------------------------------------------

/// A command from string arguments: `cmd(&["SET", "k", "v"])`.
pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Run a command and convert its reply; panics (with the command) on an error reply.
pub fn q<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    cmd(args)
        .query(con)
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// The raw reply value of a command (error replies panic).
pub fn v(con: &mut redis::Connection, args: &[&str]) -> redis::Value {
    q(con, args)
}

/// Run a command that must fail; returns the full error text as sent by the server
/// (`"ERR wrong number of arguments for 'get' command"`).
pub fn qerr(con: &mut redis::Connection, args: &[&str]) -> String {
    match cmd(args).query::<redis::Value>(con) {
        Ok(v) => panic!("{args:?} should fail, got {v:?}"),
        Err(e) => err_text(&e),
    }
}

/// Rebuild the server's error line from a `RedisError` (code + detail).
pub fn err_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => panic!("not a server error reply: {e}"),
    }
}

/// One field of INFO (all sections).
pub fn info_field(con: &mut redis::Connection, name: &str) -> String {
    let text: String = q(con, &["INFO", "everything"]);
    let prefix = format!("{name}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("INFO has no field {name}:\n{text}"))
        .trim()
        .to_string()
}

pub fn info_u64(con: &mut redis::Connection, name: &str) -> u64 {
    info_field(con, name)
        .parse()
        .unwrap_or_else(|e| panic!("INFO {name} is not a number: {e}"))
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Raw RESP access
// ---------------------------------------------------------------------------------------

/// A decoded reply, RESP2 and RESP3 types kept distinct (so tests see what was on the wire).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1`
    NilBulk,
    /// `*-1`
    NilArray,
    Array(Vec<Resp>),
    /// RESP3 `_`
    Null,
    Map(Vec<(Resp, Resp)>),
    Set(Vec<Resp>),
    Double(String),
    Bool(bool),
    Verbatim(String, String),
    BigNumber(String),
    Push(Vec<Resp>),
}

impl Resp {
    pub fn bulk(s: &str) -> Resp {
        Resp::Bulk(s.as_bytes().to_vec())
    }

    pub fn ok() -> Resp {
        Resp::Simple("OK".into())
    }

    pub fn err(s: &str) -> Resp {
        Resp::Error(s.into())
    }

    /// Text of a bulk/simple/verbatim reply.
    pub fn text(&self) -> String {
        match self {
            Resp::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Resp::Simple(s) | Resp::Error(s) | Resp::Double(s) | Resp::BigNumber(s) => s.clone(),
            Resp::Verbatim(_, t) => t.clone(),
            other => panic!("not a string reply: {other:?}"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }

    /// Parse one reply from the front of `buf`: `Some((reply, consumed))` or `None` when
    /// more bytes are needed.
    pub fn parse(buf: &[u8]) -> Option<(Resp, usize)> {
        let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[1..line_end]).expect("reply header is UTF-8");
        let after = line_end + 2;
        let int = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| panic!("bad length {s:?}")) };
        let blob = |len: i64| -> Option<(Vec<u8>, usize)> {
            let len = len as usize;
            if buf.len() < after + len + 2 {
                return None;
            }
            assert_eq!(
                &buf[after + len..after + len + 2],
                b"\r\n",
                "blob terminator"
            );
            Some((buf[after..after + len].to_vec(), after + len + 2))
        };
        let seq = |n: i64, per: usize| -> Option<(Vec<Resp>, usize)> {
            let mut items = Vec::new();
            let mut pos = after;
            for _ in 0..(n as usize * per) {
                let (r, used) = Resp::parse(&buf[pos..])?;
                items.push(r);
                pos += used;
            }
            Some((items, pos))
        };
        Some(match buf[0] {
            b'+' => (Resp::Simple(line.to_string()), after),
            b'-' => (Resp::Error(line.to_string()), after),
            b':' => (Resp::Int(int(line)), after),
            b'_' => (Resp::Null, after),
            b',' => (Resp::Double(line.to_string()), after),
            b'(' => (Resp::BigNumber(line.to_string()), after),
            b'#' => (Resp::Bool(line == "t"), after),
            b'$' => match int(line) {
                -1 => (Resp::NilBulk, after),
                n => {
                    let (b, used) = blob(n)?;
                    (Resp::Bulk(b), used)
                }
            },
            b'=' => {
                let (b, used) = blob(int(line))?;
                let text = String::from_utf8(b).expect("verbatim is UTF-8");
                let (fmt, body) = text.split_at(4);
                (
                    Resp::Verbatim(fmt.trim_end_matches(':').to_string(), body.to_string()),
                    used,
                )
            }
            b'*' => match int(line) {
                -1 => (Resp::NilArray, after),
                n => {
                    let (items, used) = seq(n, 1)?;
                    (Resp::Array(items), used)
                }
            },
            b'~' => {
                let (items, used) = seq(int(line), 1)?;
                (Resp::Set(items), used)
            }
            b'>' => {
                let (items, used) = seq(int(line), 1)?;
                (Resp::Push(items), used)
            }
            b'%' => {
                let (items, used) = seq(int(line), 2)?;
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                (Resp::Map(pairs), used)
            }
            other => panic!("unexpected reply type byte {:?}", other as char),
        })
    }
}

/// Encode a request as a RESP multibulk.
pub fn encode_cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A plain TCP connection speaking RESP by hand.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("raw connect");
        Raw::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let _ = stream.set_nodelay(true);
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw write");
    }

    /// Send a command (multibulk) and read its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.send(&encode_cmd(args));
        self.read()
    }

    /// Like `cmd`, but `None` instead of panicking when the connection fails.
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Option<Resp> {
        self.stream.write_all(&encode_cmd(args)).ok()?;
        self.try_read()
    }

    /// Read one reply; panics on EOF or timeout.
    pub fn read(&mut self) -> Resp {
        self.try_read()
            .expect("connection closed (or timed out) before a full reply arrived")
    }

    /// Read one reply; `None` on EOF, error or timeout.
    pub fn try_read(&mut self) -> Option<Resp> {
        loop {
            if let Some((r, used)) = Resp::parse(&self.buf) {
                self.buf.drain(..used);
                return Some(r);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The server closed the connection: reading reaches EOF (or a reset) with no further
    /// reply bytes. Panics if a reply arrives instead, or nothing happens within the timeout.
    pub fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread reply bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the server to close the connection, got {e}"),
            Ok(n) => panic!(
                "expected the server to close the connection, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
        }
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

// ---------------------------------------------------------------------------------------
// Differential testing against redis-server
// ---------------------------------------------------------------------------------------

/// Commands whose array reply has no defined order: compared as sorted.
const UNORDERED: [&str; 9] = [
    "smembers", "sinter", "sunion", "sdiff", "keys", "hkeys", "hvals", "hgetall", "config",
];

fn normalize(name: &str, r: Resp) -> Resp {
    let name = name.to_ascii_lowercase();
    match r {
        Resp::Array(mut items) if UNORDERED.contains(&name.as_str()) => {
            // Flat field/value pairs: HGETALL, and CONFIG GET (Redis answers a glob in its
            // dict's order, which differs between processes).
            if name == "hgetall" || name == "config" {
                let mut pairs: Vec<Vec<Resp>> = items.chunks(2).map(|c| c.to_vec()).collect();
                pairs.sort_by_key(|p| format!("{p:?}"));
                Resp::Array(pairs.into_iter().flatten().collect())
            } else {
                items.sort_by_key(|i| format!("{i:?}"));
                Resp::Array(items)
            }
        }
        other => other,
    }
}

/// Run `script` against meridian and against a fresh redis-server (one connection each) and
/// assert every reply is identical. Skips (with a notice) when redis-server is missing
/// outside CI.
pub fn assert_same_as_redis(server: &Server, script: &[&[&str]]) {
    let Some(reference) = RedisRef::start() else {
        return;
    };
    let mut ours = server.raw();
    let mut theirs = reference.raw();
    for args in script {
        let a = normalize(args[0], ours.cmd(args));
        let b = normalize(args[0], theirs.cmd(args));
        assert_eq!(
            a, b,
            "reply to {args:?} differs (left: meridian, right: redis-server)"
        );
    }
}

/// Wall-clock milliseconds since the epoch (for absolute TTL arguments).
#[allow(dead_code)]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------
// Prometheus endpoint
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET: (status line, headers, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(String, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header/body separator: {text:?}")))?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((status.to_string(), headers.to_string(), body.to_string()))
}

/// Prometheus sample lines (`name{labels} value`) → map; comments skipped.
pub fn metric_samples(body: &str) -> std::collections::HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value = value.parse().unwrap_or_else(|_| panic!("bad value {l:?}"));
            (name.to_string(), value)
        })
        .collect()
}

/// `GET /metrics` on `port`, which must answer 200, as samples.
pub fn scrape_metrics(port: u16) -> std::collections::HashMap<String, f64> {
    let (status, _, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    metric_samples(&body)
}
