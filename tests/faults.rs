//! Fault tests under load (issue "prove it"): the engine killed with `kill -9` while webhooks
//! pour in, Redis killed and restarted under load, and three engine nodes on one Redis (and on
//! a Redis Cluster) taking webhooks for the same contacts. In each: zero acknowledged messages lost — every message
//! that got a 2xx reaches n8n — and a `dispatch_id` never reaches n8n twice unless it was in
//! flight at a kill (then it is the same id, which n8n deduplicates with `Idempotency-Key`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

/// Message ids a sender got a 2xx for, and the statuses it saw.
#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<String>>,
    statuses: Mutex<BTreeMap<u16, usize>>,
}

/// Sends webhooks to the given node URLs (round robin with a per-message shift) until `stop`.
fn senders(
    urls: Vec<String>,
    workers: u64,
    contacts: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (0..workers)
        .map(|w| {
            let (client, urls, stop, ledger) = (client.clone(), urls.clone(), stop.clone(), ledger.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 5_000 {
                    let contact = 10_000 + (w * 7919 + n * 31) % contacts;
                    let id = format!("f-{w}-{n}");
                    let url = &urls[((w + n) as usize) % urls.len()];
                    let body = format!(
                        "message%5Badd%5D%5B0%5D%5Bid%5D={id}&message%5Badd%5D%5B0%5D%5Bcontact_id%5D={contact}&message%5Badd%5D%5B0%5D%5Btext%5D=oi"
                    );
                    let status = match client
                        .post(url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *ledger.statuses.lock().unwrap().entry(status).or_default() += 1;
                    if (200..300).contains(&status) {
                        ledger.acked.lock().unwrap().push(id);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

/// Waits until every acknowledged message id appears in some dispatch n8n accepted; returns
/// (missing ids, dispatch ids received more than once).
async fn reconcile(n8n: &FakeN8n, acked: &[String], secs: u64) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let received = n8n.accepted();
        let mut seen = BTreeSet::new();
        let mut per_dispatch: BTreeMap<String, usize> = BTreeMap::new();
        for r in &received {
            if let Some(d) = r.dispatch_id() {
                *per_dispatch.entry(d.to_owned()).or_default() += 1;
            }
            for m in r.body["messages"].as_array().into_iter().flatten() {
                if let Some(id) = m["id"].as_str() {
                    seen.insert(id.to_owned());
                }
            }
        }
        let missing: Vec<String> = acked
            .iter()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            let twice = per_dispatch
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(d, _)| d)
                .collect();
            return (missing, twice);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn load_until(ledger: &Ledger, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.acked.lock().unwrap().len() < at_least {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_engine_under_load_loses_no_acknowledged_message() {
    let n8n = FakeN8n::start().await;
    let redis = RedisServer::start();
    let mut node = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("OUTBOX_CLAIM_SECS", "2"),
        ("TIMER_SWEEP_MS", "200"),
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Ledger::default());
    let tasks = senders(
        vec![node.url("/webhooks/kommo")],
        8,
        200,
        stop.clone(),
        ledger.clone(),
    );
    load_until(&ledger, 300).await;
    node.kill9();
    node.restart().await;
    let so_far = ledger.acked.lock().unwrap().len();
    load_until(&ledger, so_far + 200).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = ledger.acked.lock().unwrap().clone();
    let (missing, twice) = reconcile(&n8n, &acked, 30).await;
    eprintln!(
        "kill -9 under load: {} acknowledged, statuses {:?}, {} dispatch ids seen twice (in flight at the kill)",
        acked.len(),
        ledger.statuses.lock().unwrap(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never dispatched: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_503s_then_recovers_with_no_loss() {
    let n8n = FakeN8n::start().await;
    let mut redis = RedisServer::start();
    let node = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_TIMEOUT_MS", "300"),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("TIMER_SWEEP_MS", "200"),
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Ledger::default());
    let tasks = senders(
        vec![node.url("/webhooks/kommo")],
        6,
        200,
        stop.clone(),
        ledger.clone(),
    );
    load_until(&ledger, 300).await;
    redis.stop();
    // While it is down, requests are refused with 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger
        .statuses
        .lock()
        .unwrap()
        .get(&503)
        .copied()
        .unwrap_or(0)
        < 20
    {
        assert!(
            Instant::now() < deadline,
            "no 503 while Redis is down: {:?}",
            ledger.statuses.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.restart();
    let back = Instant::now();
    let before = ledger.acked.lock().unwrap().len();
    load_until(&ledger, before + 1).await;
    let recovered_in = back.elapsed();
    load_until(&ledger, before + 200).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let statuses = ledger.statuses.lock().unwrap().clone();
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "only 200 and 503: {statuses:?}"
    );
    let acked = ledger.acked.lock().unwrap().clone();
    let (missing, twice) = reconcile(&n8n, &acked, 30).await;
    eprintln!(
        "Redis outage under load: recovered {recovered_in:?} after Redis returned; statuses {statuses:?}"
    );
    assert!(
        recovered_in < Duration::from_secs(2),
        "recovery took {recovered_in:?}"
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost",
        missing.len()
    );
    assert!(
        twice.is_empty(),
        "no kill of the engine, so no dispatch twice: {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_keep_the_invariants() {
    let redis = RedisServer::start();
    three_nodes_keep_the_invariants(("REDIS_URL", redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_redis_cluster_keep_the_invariants() {
    let cluster = support::redis_cluster::RedisCluster::start(3, 1);
    // Each node knows the cluster by another of its nodes.
    three_nodes_keep_the_invariants(("REDIS_CLUSTER_URLS", cluster.urls().join(","))).await;
}

/// Three engine processes on one store (`store`: the variable naming it) take webhooks for the
/// same few contacts, each webhook sent to a node in turn: nothing acknowledged is lost, no
/// dispatch reaches n8n twice, no message is applied twice.
async fn three_nodes_keep_the_invariants(store: (&str, String)) {
    let n8n = FakeN8n::start().await;
    let hook = n8n.url();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(
            Service::start(&[
                (store.0, store.1.as_str()),
                ("NODE_NAME", name),
                ("DEBOUNCE_MS", "0"),
                ("N8N_WEBHOOK_URL", hook.as_str()),
            ])
            .await,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Ledger::default());
    let urls = nodes.iter().map(|n| n.url("/webhooks/kommo")).collect();
    // Few contacts, so the nodes contend on the same conversations.
    let tasks = senders(urls, 6, 20, stop.clone(), ledger.clone());
    load_until(&ledger, 600).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = ledger.acked.lock().unwrap().clone();
    let (missing, twice) = reconcile(&n8n, &acked, 30).await;
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost",
        missing.len()
    );
    assert!(
        twice.is_empty(),
        "a dispatch reached n8n twice with no crash: {twice:?}"
    );
    // Each message was applied once: it is in exactly one conversation's seen list, once.
    for contact in 10_000..10_020u64 {
        let (status, c) = nodes[0].get(&format!("/conversations/{contact}")).await;
        if status == 404 {
            continue;
        }
        let pending: Vec<&str> = c["pending_messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let unique: BTreeSet<&str> = pending.iter().copied().collect();
        assert_eq!(
            unique.len(),
            pending.len(),
            "a message applied twice for {contact}"
        );
    }
    eprintln!(
        "three nodes on {}: {} acknowledged, statuses {:?}",
        store.0,
        acked.len(),
        ledger.statuses.lock().unwrap()
    );
}
