//! Two engine processes on one Redis (and three engines on a Redis Cluster), the same contacts
//! driven through them: the final state equals a serial application of the events
//! (compare-and-set on the snapshot version makes the nodes take turns), and no effect is
//! executed twice for one `dispatch_id`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

/// The expected result of applying `commands` in order from a fresh conversation:
/// (phase, epoch, released dispatches).
fn serial(commands: &[&str]) -> (&'static str, u64, usize) {
    let (mut phase, mut epoch, mut released) = ("idle", 0, 0);
    for c in commands {
        match (*c, phase) {
            ("pause", "paused") => {}
            ("pause", _) => {
                phase = "paused";
                epoch += 1;
            }
            ("resume", "paused") => {
                phase = "bot_active";
                epoch += 1;
                released += 1;
            }
            _ => {}
        }
    }
    (phase, epoch, released)
}

/// A small deterministic generator, so a failure can be replayed.
fn commands(seed: u64, n: usize) -> Vec<&'static str> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(2) {
                "pause"
            } else {
                "resume"
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_equal_a_serial_application() {
    let redis = RedisServer::start();
    let url = redis.url();
    let n8n = FakeN8n::start().await;
    let hook = n8n.url();
    let env = |name| {
        [
            ("REDIS_URL", url.clone()),
            ("NODE_NAME", String::from(name)),
            ("N8N_WEBHOOK_URL", hook.clone()),
        ]
    };
    let (env_a, env_b) = (env("a"), env("b"));
    let a = Service::start(&refs(&env_a)).await;
    let b = Service::start(&refs(&env_b)).await;
    let nodes = [&a, &b];

    // Contacts run concurrently; each contact's commands are sent one after another, each to
    // a node picked by the generator, so both nodes hold (stale) copies of every contact.
    let plans: Vec<(u64, Vec<&str>)> = (1..=12u64).map(|c| (c, commands(c, 30))).collect();
    let mut tasks = Vec::new();
    for (contact, plan) in plans.clone() {
        let urls: Vec<String> = nodes.iter().map(|n| n.url("/bot-control")).collect();
        let client = a.client.clone();
        tasks.push(tokio::spawn(async move {
            for (i, command) in plan.iter().enumerate() {
                let url = &urls[(contact as usize + i * 7 / 3) % 2];
                let r = client
                    .post(url)
                    .json(&json!({"contact_id": contact, "command": command}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut released_total = 0;
    for (contact, plan) in &plans {
        let (phase, epoch, released) = serial(plan);
        released_total += released;
        for node in nodes {
            let (status, body): (u16, Value) = node.get(&format!("/conversations/{contact}")).await;
            assert_eq!(status, 200);
            assert_eq!(body["phase"], phase, "contact {contact} via a node: {body}");
            assert_eq!(body["epoch"], epoch, "contact {contact}");
        }
    }
    // Every resume tells n8n the bot is back with a `released` dispatch; one not sent yet when
    // the next resume comes is replaced by the newer (it carries everything the older did), so
    // n8n gets at most one per resume and always the last one — and none twice, though both
    // nodes ran effects for the same contacts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (contact, _) in &plans {
        loop {
            let (_, body): (u16, Value) = a.get(&format!("/conversations/{contact}")).await;
            let waiting = body["outbox"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "dispatch");
            if !waiting {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "contact {contact}: a dispatch never left the outbox: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let received = n8n.accepted();
    assert!(received.iter().all(|r| r.body["event"] == "released"));
    let mut ids: Vec<_> = received.iter().filter_map(|r| r.dispatch_id()).collect();
    assert_eq!(ids.len(), received.len());
    assert!(
        ids.len() <= released_total,
        "{} > {released_total}",
        ids.len()
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "a dispatch_id reached n8n twice");
    for (contact, plan) in &plans {
        let resumes = serial(plan).2;
        let got = received
            .iter()
            .filter(|r| r.body["contact_id"] == *contact)
            .count();
        assert!(
            (resumes == 0 && got == 0) || (1..=resumes).contains(&got),
            "contact {contact}: {got} released dispatches for {resumes} resumes"
        );
    }
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The same through the engine's library API, with effects: two engines (each with its own
/// Redis connection and its own executor) take customer messages for the same contacts; every
/// message is applied once and every dispatch is executed by exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_redis_never_execute_a_dispatch_twice() {
    use conversa::store::redis::{RedisSettings, RedisStore};

    let redis = RedisServer::start();
    let mut stores: Vec<std::sync::Arc<dyn conversa::store::Store>> = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&redis.url(), RedisSettings::default())
            .await
            .unwrap();
        stores.push(std::sync::Arc::new(store));
    }
    engines_apply_each_message_once_and_execute_each_dispatch_once(stores).await;
}

/// Three engines on a Redis Cluster (3 masters, 3 replicas), messages routed to them at random:
/// the same guarantees as on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_on_a_redis_cluster_never_execute_a_dispatch_twice() {
    use conversa::store::redis::{RedisSettings, RedisStore, RedisTopology};

    let cluster = support::redis_cluster::RedisCluster::start(3, 1);
    let mut stores: Vec<std::sync::Arc<dyn conversa::store::Store>> = Vec::new();
    for seed in cluster.urls().into_iter().take(3) {
        // Each engine knows the cluster by a different node.
        let store = RedisStore::connect_to(
            &RedisTopology::Cluster(vec![seed]),
            RedisSettings::default(),
        )
        .await
        .unwrap();
        stores.push(std::sync::Arc::new(store));
    }
    engines_apply_each_message_once_and_execute_each_dispatch_once(stores).await;
}

/// One engine per store (each with its own executor), the same contacts' messages spread over
/// them: every message applied exactly once, every dispatch executed by exactly one engine,
/// and every engine executing work.
async fn engines_apply_each_message_once_and_execute_each_dispatch_once(
    stores: Vec<std::sync::Arc<dyn conversa::store::Store>>,
) {
    use std::sync::Arc;

    use conversa_actors::{
        ContactKey, Engine, EngineConfig, Event, Executors, InboundMessage, Links, Policy,
    };
    use support::recorder::{Recorder, eventually};

    let mut engines = Vec::new();
    let mut recorders = Vec::new();
    for (n, store) in stores.into_iter().enumerate() {
        let recorder = Arc::new(Recorder::default());
        let executors = Executors {
            dispatch: Some(recorder.clone()),
            reply: Some(recorder.clone()),
            note: Some(recorder.clone()),
        };
        let config = EngineConfig {
            policy: Policy {
                debounce_ms: 0,
                ..Policy::default()
            },
            node_name: format!("node-{n}"),
            ..EngineConfig::default()
        };
        engines.push(Engine::start(store, executors, config).await.unwrap());
        recorders.push(recorder);
    }
    let contacts: Vec<ContactKey> = (1..=6).map(|c| ContactKey::new(7, c)).collect();
    let mut tasks = Vec::new();
    for (n, key) in contacts.iter().copied().enumerate() {
        for i in 0..15usize {
            // Scattered over the engines, each contact's messages on all of them.
            let engine = engines[(n * 7 + i * 13 + i * i) % engines.len()].clone();
            tasks.push(tokio::spawn(async move {
                let msg = Event::CustomerMessage(InboundMessage {
                    id: format!("{key}-m{i}"),
                    text: format!("mensagem {i}"),
                    created_at: 0,
                    attachment: None,
                    links: Links::default(),
                });
                engine.apply(key, msg).await.unwrap();
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every message was applied exactly once, on whichever node.
    for key in &contacts {
        let (c, _) = engines[0].conversation(key).await.unwrap().unwrap();
        let mut seen: Vec<_> = c.seen().iter().map(|s| s.id.clone()).collect();
        seen.sort();
        let mut want: Vec<_> = (0..15).map(|i| format!("{key}-m{i}")).collect();
        want.sort();
        assert_eq!(seen, want);
    }
    // One more contact on each node alone: whatever the interleaving above left to whom, each
    // node executes work of its own.
    for (n, engine) in engines.iter().enumerate() {
        let key = ContactKey::new(7, 100 + n as u64);
        let msg = Event::CustomerMessage(InboundMessage {
            id: format!("{key}-solo"),
            text: "sozinho".into(),
            created_at: 0,
            attachment: None,
            links: Links::default(),
        });
        engine.apply(key, msg).await.unwrap();
    }
    let contacts: Vec<ContactKey> = contacts
        .into_iter()
        .chain((0..engines.len()).map(|n| ContactKey::new(7, 100 + n as u64)))
        .collect();
    // Let every outbox drain, then count executions per dispatch_id across both nodes.
    let mut drained = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !drained {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outboxes never drained"
        );
        drained = true;
        for key in &contacts {
            let (c, _) = engines[0].conversation(key).await.unwrap().unwrap();
            drained &= c.outbox().is_empty();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eventually(5, "executions recorded", || {
        recorders
            .iter()
            .map(|r| r.dispatches().len())
            .sum::<usize>()
            > 0
    })
    .await;
    let mut ids: Vec<String> = recorders
        .iter()
        .flat_map(|r| r.dispatches())
        .map(|d| d.dispatch_id)
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "a dispatch_id was executed twice");
    assert!(
        recorders.iter().all(|r| !r.dispatches().is_empty()),
        "every node executed work"
    );
}
