//! A real `redis-server` for integration tests, never a fake: the store's guarantees (Lua
//! compare-and-set, AOF durability, reconnection) are properties of Redis itself.
//!
//! [`RedisServer::start`] runs the `redis-server` found on `PATH` with a copy of the project's
//! `redis.conf` on a free port (never 6379, so a developer's own Redis is left alone) and a fresh
//! temporary directory, and returns once it answers `PING`. [`RedisServer::stop`] is a `kill -9`;
//! [`RedisServer::restart`] starts it again on the same port and directory, so what the AOF
//! holds survives, exactly like a crashed production Redis coming back. The server log is kept
//! in `redis.log` in that directory and printed when the server fails to come up.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The project's Redis configuration (AOF, noeviction), shared with docker-compose.
pub const REDIS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/redis.conf");

/// How long a server may take to answer `PING` after being started.
const READY_DEADLINE: Duration = Duration::from_secs(10);

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Given to `redis-server` after the project's configuration (e.g. cluster mode).
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers. Panics if it cannot.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with more `redis-server` arguments (`--cluster-enabled yes`...).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("conversa-redis-")
            .tempdir()
            .expect("create a temporary directory for redis");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        // Another process can take the port between our probe and redis binding it: try again
        // on a new port a few times.
        let mut last_error = String::new();
        for _ in 0..5 {
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    server.stop();
                    server.port = free_port();
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (holds `appendonlydir/` and `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the server and reap it. No shutdown, no final fsync: a crash. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (so it replays its AOF) and waits
    /// until it answers. Stops it first if it is running.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers, like a hung
    /// server or a network partition.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undoes [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, not yet
        // reaped (reaping only happens in `stop`), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert_ne!(self.port, 6379, "never touch the default redis port");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open redis.log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("clone redis.log: {e}"))?;
        // A copy of the project's configuration: a Sentinel reconfiguring this server rewrites
        // its configuration file (`CONFIG REWRITE`), which must not be the repository's.
        let conf = self.dir.path().join("redis.conf");
        if !conf.exists() {
            std::fs::copy(REDIS_CONF, &conf).map_err(|e| format!("copy redis.conf: {e}"))?;
        }
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"])
            .args(["--logfile", ""]) // to stdout, i.e. redis.log
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it on PATH?): {e}"))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no PONG within {READY_DEADLINE:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10)); // poll interval, not a wait for readiness
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // SIGKILL also ends a paused (SIGSTOPped) server.
            self.stop();
        }
    }
}

/// A port nothing listens on right now (the OS picks it; it is never 6379 while a Redis holds
/// that one, and we skip it anyway).
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port != 6379 {
            return port;
        }
    }
}

/// One `PING` over a fresh connection; true on `+PONG` (a server still loading its AOF answers
/// `-LOADING` and is not ready).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // A server with a password answers `-NOAUTH ...`: up all the same.
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
}
