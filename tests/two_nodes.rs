//! Two engine processes on one Redis, the same contacts driven through both: the final state
//! equals a serial application of the events (compare-and-set on the snapshot version makes
//! the nodes take turns), and no effect is executed twice for one `dispatch_id`.

mod support;

use serde_json::{Value, json};
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
    let a = Service::start(&[("REDIS_URL", &url), ("NODE_NAME", "a")]).await;
    let b = Service::start(&[("REDIS_URL", &url), ("NODE_NAME", "b")]).await;
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
    for (contact, plan) in &plans {
        let (phase, epoch, _released) = serial(plan);
        for node in nodes {
            let (status, body): (u16, Value) = node.get(&format!("/conversations/{contact}")).await;
            assert_eq!(status, 200);
            assert_eq!(body["phase"], phase, "contact {contact} via a node: {body}");
            assert_eq!(body["epoch"], epoch, "contact {contact}");
        }
    }
}
