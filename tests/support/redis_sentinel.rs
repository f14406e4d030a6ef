//! A real Redis Sentinel set for integration tests: one master, one replica and three
//! sentinels (`redis-server <conf> --sentinel`) on free ports, as an operator runs it.
//!
//! [`SentinelSet::start`] returns once the replica is linked and every sentinel knows the
//! master, its replica and the two other sentinels, so a failover can be voted (quorum 2). The
//! sentinels call the master down after one second without an answer.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_cluster::cli;
use super::redis_server::{RedisServer, free_port};

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "conversa";
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

pub struct SentinelSet {
    /// The master first, then the replica (their roles swap on a failover).
    pub servers: Vec<RedisServer>,
    sentinels: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
    passwords: Passwords,
}

/// The passwords of a set, as production runs it: the master's and replica's `requirepass`
/// (the sentinels log in with it too: `sentinel auth-pass`), and the sentinels' own.
#[derive(Clone, Default)]
pub struct Passwords {
    pub servers: Option<String>,
    pub sentinels: Option<String>,
}

impl SentinelSet {
    pub fn start() -> Self {
        Self::start_with(Passwords::default())
    }

    pub fn start_with(passwords: Passwords) -> Self {
        let auth: Vec<String> = match &passwords.servers {
            Some(p) => vec![
                "--requirepass".into(),
                p.clone(),
                "--masterauth".into(),
                p.clone(),
            ],
            None => Vec::new(),
        };
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let master = RedisServer::start_with(&auth);
        let master_port = master.port().to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &master_port];
        replica_args.extend(&auth);
        let replica = RedisServer::start_with(&replica_args);
        let dir = tempfile::Builder::new()
            .prefix("conversa-sentinel-")
            .tempdir()
            .expect("a temporary directory");
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n{server_auth}{own_auth}",
                        dir = dir.path().display(),
                        server_auth = passwords.servers.as_ref().map_or(String::new(), |p| {
                            format!("sentinel auth-pass {MASTER_NAME} {p}\n")
                        }),
                        own_auth = passwords
                            .sentinels
                            .as_ref()
                            .map_or(String::new(), |p| format!("requirepass {p}\n")),
                    ),
                )
                .expect("write sentinel.conf");
                let log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join(format!("sentinel-{i}.log")))
                    .expect("sentinel log");
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(log.try_clone().expect("clone log")))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .expect("run redis-server --sentinel");
                (port, child)
            })
            .collect();
        let set = Self {
            servers: vec![master, replica],
            sentinels,
            dir,
            passwords,
        };
        set.wait_settled();
        set
    }

    /// `redis://[:password@]127.0.0.1:<port>` of each sentinel (what `REDIS_SENTINEL_URLS`
    /// lists).
    pub fn sentinel_urls(&self) -> Vec<String> {
        let login = self
            .passwords
            .sentinels
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://{login}127.0.0.1:{port}"))
            .collect()
    }

    /// `redis-cli` against a sentinel, logged in.
    fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        cli_as(port, self.passwords.sentinels.as_deref(), args)
    }

    /// The port the sentinels name as master now.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.sentinel_cli(
            self.sentinels[0].0,
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }

    fn wait_settled(&self) {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let info = cli_as(
                self.servers[0].port(),
                self.passwords.servers.as_deref(),
                &["INFO", "replication"],
            );
            let linked = info.contains("connected_slaves:1") && info.contains("state=online");
            let known = self.sentinels.iter().all(|(port, _)| {
                let master = self.sentinel_cli(*port, &["SENTINEL", "master", MASTER_NAME]);
                field(&master, "num-slaves") == Some(1)
                    && field(&master, "num-other-sentinels") == Some(2)
            });
            if linked && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel set did not settle within {SETTLE_DEADLINE:?} (replica linked: \
                 {linked}); logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100)); // poll interval
        }
    }
}

/// [`cli`], logged in with `password` when there is one.
fn cli_as(port: u16, password: Option<&str>, args: &[&str]) -> String {
    match password {
        Some(p) => {
            let mut all = vec!["-a", p, "--no-auth-warning"];
            all.extend(args);
            cli(port, &all)
        }
        None => cli(port, args),
    }
}

/// A numeric field of `SENTINEL master`'s answer (name and value on alternate lines).
fn field(reply: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = reply.lines().collect();
    let at = lines.iter().position(|l| l.trim() == name)?;
    lines.get(at + 1)?.trim().parse().ok()
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
