//! The Redis store behind Redis Sentinel (one master, one replica, three sentinels, all real):
//! the shared conformance suite, a master killed (the store follows the promoted replica by
//! itself, and what was acknowledged while a replica confirmed it is all there), the old master
//! back as a replica (a store still pointed at it follows the sentinels on `READONLY`), and the
//! service started with `REDIS_SENTINEL_URLS`, with passwords on the servers and the sentinels.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conversa::store::redis::{RedisSettings, RedisStore, RedisTopology};
use conversa::store::{IndexUpdate, Store, StoreError};
use conversa_actors::contact::ContactKey;
use conversa_actors::phase::PhaseName;
use serde_json::json;
use support::redis_cluster::cli;
use support::redis_sentinel::{MASTER_NAME, Passwords, SentinelSet};
use support::service::Service;

/// How long a failover may take: the sentinels wait one second before calling the master down,
/// then vote and promote.
const FAILOVER: Duration = Duration::from_secs(30);

/// The response timeout of a store that waits for replicas.
const WAITING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(4);

async fn connect(set: &SentinelSet, wait_replicas: u32) -> RedisStore {
    let topology = RedisTopology::Sentinel {
        sentinels: set.sentinel_urls(),
        master: MASTER_NAME.to_owned(),
        master_auth: None,
    };
    let settings = RedisSettings {
        wait_replicas,
        // `WAIT` gets three quarters of the response timeout: under CI's load (a dozen servers
        // on two cores) a live replica was seen to need more than the 750 ms of the default.
        response_timeout: if wait_replicas > 0 {
            WAITING_RESPONSE_TIMEOUT
        } else {
            RedisSettings::default().response_timeout
        },
        ..RedisSettings::default()
    };
    RedisStore::connect_to(&topology, settings)
        .await
        .expect("connect through the sentinels")
}

fn index() -> IndexUpdate {
    IndexUpdate {
        wake_at: Some(1_000),
        outbox_pending: false,
        phase: PhaseName::parse("bot_active").unwrap(),
        previous: None,
    }
}

/// Saves `key` at `expected` until it succeeds within [`FAILOVER`]; the time it took. A save
/// answered `Unavailable` may have landed (a replica had not confirmed it yet): the retry then
/// meets its own write, as a caller that reloads would.
async fn save_until_taken(store: &RedisStore, key: ContactKey, expected: u64) -> Duration {
    let started = Instant::now();
    loop {
        match store.save(&key, expected, b"after", &index()).await {
            Ok(_) => return started.elapsed(),
            Err(StoreError::Conflict { current }) if current == expected + 1 => {
                let stored = store.load(&key).await.unwrap().unwrap();
                assert_eq!(stored.data, b"after", "the earlier attempt's write");
                return started.elapsed();
            }
            Err(StoreError::Unavailable(e)) => {
                assert!(
                    started.elapsed() < FAILOVER,
                    "no recovery within {FAILOVER:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_behind_sentinel() {
    let set = SentinelSet::start();
    let store = connect(&set, 1).await;
    conversa_actors::store::conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_to_its_promoted_replica_and_nothing_confirmed_is_lost() {
    let mut set = SentinelSet::start();
    // Acknowledged only once the replica holds them (REDIS_WAIT_REPLICAS=1).
    let durable = connect(&set, 1).await;
    let contacts: Vec<ContactKey> = (1..=20).map(|c| ContactKey::new(3, c)).collect();
    for key in &contacts {
        assert_eq!(durable.save(key, 0, b"before", &index()).await, Ok(1));
    }
    durable.put_value("token", b"pair").await.unwrap();
    // Another node that will be idle through the failover.
    let idle = connect(&set, 0).await;
    let store = connect(&set, 0).await;

    set.servers[0].stop(); // kill -9 of the master
    let took = save_until_taken(&store, ContactKey::new(3, 100), 0).await;
    eprintln!("writes taken again {took:?} after the master was killed");
    assert_eq!(
        set.master_port(),
        Some(set.servers[1].port()),
        "the replica was promoted"
    );
    for key in &contacts {
        let snapshot = store
            .load(key)
            .await
            .unwrap()
            .expect("acknowledged before the kill");
        assert_eq!(
            (snapshot.version, snapshot.data.as_slice()),
            (1, &b"before"[..])
        );
    }
    assert_eq!(
        store.get_value("token").await.unwrap().as_deref(),
        Some(&b"pair"[..])
    );

    // The old master comes back; the sentinels make it a replica of the new one. The idle
    // node's connection finds its old address answering again, but read-only: it asks the
    // sentinels and follows the master.
    set.servers[0].restart();
    let old_port = set.servers[0].port();
    let deadline = Instant::now() + FAILOVER;
    while !cli(old_port, &["ROLE"]).starts_with("slave") {
        assert!(
            Instant::now() < deadline,
            "the old master never became a replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = save_until_taken(&idle, ContactKey::new(3, 101), 0).await;
    eprintln!("the idle node wrote again {took:?} after the old master came back");
    assert_eq!(
        idle.load(&ContactKey::new(3, 100))
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_behind_sentinel() {
    let set = SentinelSet::start();
    let sentinels = set.sentinel_urls().join(",");
    let service = Service::start(&[
        ("REDIS_SENTINEL_URLS", &sentinels),
        ("REDIS_SENTINEL_MASTER", MASTER_NAME),
    ])
    .await;
    let (status, body) = service
        .post(
            "/bot-control",
            json!({"contact_id": 42, "command": "pause"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, conv) = service.get("/conversations/42").await;
    assert_eq!((status, &conv["phase"]), (200, &json!("paused")), "{conv}");
    let (_, ready) = service.get("/ready").await;
    assert_eq!(ready["store"]["backend"], "redis", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_demoted_by_a_manual_failover_is_left_for_the_new_one() {
    // `SENTINEL FAILOVER`: nothing dies; the master becomes a replica and answers writes with
    // READONLY on the same connection. The store asks the sentinels and moves. Its writes wait
    // for the replica: Sentinel promotes at once, and a write the replica had not received yet
    // would be lost with the old master's data (seen in CI with no wait: Conflict { current: 0 }).
    let set = SentinelSet::start();
    let store = connect(&set, 1).await;
    let key = ContactKey::new(4, 1);
    assert_eq!(store.save(&key, 0, b"one", &index()).await, Ok(1));
    let sentinel = set.sentinel_urls()[0]
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let answer = cli(sentinel, &["SENTINEL", "FAILOVER", MASTER_NAME]);
    assert!(answer.starts_with("OK"), "{answer}");
    let deadline = Instant::now() + FAILOVER;
    while set.master_port() != Some(set.servers[1].port())
        || !cli(set.servers[0].port(), &["ROLE"]).starts_with("slave")
    {
        assert!(Instant::now() < deadline, "the failover never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = save_until_taken(&store, key, 1).await;
    eprintln!("writes taken again {took:?} after the manual failover");
    // On the new master, as a node connecting now sees it.
    let fresh = connect(&set, 0).await;
    assert_eq!(fresh.load(&key).await.unwrap().unwrap().version, 2);
}

/// As production runs it: the master and replica with a password (`requirepass`), the sentinels
/// with their own. The sentinels' password rides in their URLs; the master's is
/// `REDIS_SENTINEL_MASTER_PASSWORD` (the sentinels give its address, not how to log in). Without
/// it the store is refused with a clear reason; neither password is ever printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_set_is_reached_with_the_masters_password() {
    let set = SentinelSet::start_with(Passwords {
        servers: Some("master-s3cret".into()),
        sentinels: Some("sentinel-s3cret".into()),
    });
    let topology = |master_auth| RedisTopology::Sentinel {
        sentinels: set.sentinel_urls(),
        master: MASTER_NAME.to_owned(),
        master_auth,
    };
    let refused = RedisStore::connect_to(&topology(None), RedisSettings::default()).await;
    let reason = match refused {
        Ok(_) => panic!("a store without the master's password"),
        Err(e) => e.to_string(),
    };
    assert!(reason.contains("NOAUTH"), "{reason}");
    assert!(!reason.contains("s3cret"), "{reason}");

    let sentinels = set.sentinel_urls().join(",");
    let service = Service::start(&[
        ("REDIS_SENTINEL_URLS", &sentinels),
        ("REDIS_SENTINEL_MASTER", MASTER_NAME),
        ("REDIS_SENTINEL_MASTER_PASSWORD", "master-s3cret"),
    ])
    .await;
    let (status, body) = service
        .post(
            "/bot-control",
            json!({"contact_id": 43, "command": "pause"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, conv) = service.get("/conversations/43").await;
    assert_eq!((status, &conv["phase"]), (200, &json!("paused")), "{conv}");
    for route in ["/ready", "/stats", "/test-integration"] {
        let (_, answer) = service.get(route).await;
        assert!(!answer.to_string().contains("s3cret"), "{route}: {answer}");
    }
    assert!(!service.log().contains("s3cret"), "{}", service.log());
}
