//! A real Redis Cluster for integration tests: `redis-server --cluster-enabled yes` on free
//! ports, joined by `redis-cli --cluster create`, exactly as an operator builds one.
//!
//! [`RedisCluster::start`] returns once every node reports `cluster_state:ok` and every
//! replica is attached to its master, so a test starts on a settled cluster. Each node is a
//! [`RedisServer`] (the project's `redis.conf`, its own directory and log), so a test can kill
//! one (`kill -9`) to make the cluster fail over.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, free_port};

/// How long forming the cluster (slots assigned, replicas attached) may take.
const FORM_DEADLINE: Duration = Duration::from_secs(60);
/// Milliseconds a master may be unreachable before its replica is promoted.
pub const NODE_TIMEOUT_MS: u64 = 2_000;

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each (e.g. 3 and 1: six servers).
    pub fn start(masters: usize, replicas: usize) -> Self {
        let node_timeout = NODE_TIMEOUT_MS.to_string();
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    &node_timeout,
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_settled(masters, replicas);
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node (what `REDIS_CLUSTER_URLS` lists).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The indexes of the nodes that are masters now (live nodes only).
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].pid().is_some())
            .filter(|&i| cli(self.nodes[i].port(), &["ROLE"]).starts_with("master"))
            .collect()
    }

    /// The node holding `key`'s slot as master now.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = cli(self.any_live_port(), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot number");
        let owner = self.owner_id(slot);
        self.masters()
            .into_iter()
            .find(|&i| cli(self.nodes[i].port(), &["CLUSTER", "MYID"]).trim() == owner)
            .expect("a live master owns every slot")
    }

    fn owner_id(&self, slot: u16) -> String {
        // CLUSTER SHARDS would be neater; CLUSTER NODES exists on every Redis with clusters.
        let nodes = cli(self.any_live_port(), &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                let (from, to) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
                    None => (range.parse::<u16>(), range.parse::<u16>()),
                };
                if let (Ok(from), Ok(to)) = (from, to)
                    && (from..=to).contains(&slot)
                {
                    return fields[0].to_owned();
                }
            }
        }
        panic!("no master owns slot {slot}:\n{nodes}");
    }

    fn any_live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a live node")
            .port()
    }

    /// Waits until every live node says the cluster is ok and `masters` masters each have
    /// `replicas` replicas connected.
    pub fn wait_settled(&self, masters: usize, replicas: usize) {
        let deadline = Instant::now() + FORM_DEADLINE;
        loop {
            let live: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
            let all_ok = live
                .iter()
                .all(|n| cli(n.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let roles: Vec<String> = live.iter().map(|n| cli(n.port(), &["ROLE"])).collect();
            let master_count = roles.iter().filter(|r| r.starts_with("master")).count();
            let linked = roles
                .iter()
                .filter(|r| r.starts_with("slave") && r.contains("connected"))
                .count();
            if all_ok && master_count == masters && linked == masters * replicas {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle within {FORM_DEADLINE:?}: {master_count} masters, \
                 {linked} replicas linked, all ok: {all_ok}"
            );
            std::thread::sleep(Duration::from_millis(100)); // poll interval
        }
    }
}

/// One `redis-cli` command against a node; its output (empty when the node does not answer).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
