//! The Redis store on a real Redis Cluster (3 masters, 3 replicas, formed by `redis-cli
//! --cluster create`): the shared conformance suite, the indexes' buckets spread over the
//! masters, and a save's index writes landing before its snapshot when the two live on
//! different nodes.

mod support;

use std::sync::Arc;

use conversa::store::Store;
use conversa::store::redis::{RedisSettings, RedisStore, RedisTopology};
use conversa_actors::contact::ContactKey;
use support::index::index;
use support::redis_cluster::{RedisCluster, cli};

async fn connect(cluster: &RedisCluster) -> RedisStore {
    // One seed node is enough: the client learns the others.
    let seeds = cluster.urls()[..1].to_vec();
    RedisStore::connect_to(&RedisTopology::Cluster(seeds), RedisSettings::default())
        .await
        .expect("connect to the test cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_on_a_cluster() {
    // Without REDIS_WAIT_REPLICAS: under CI's load (twelve servers on two cores) a replica
    // starved of CPU confirmed nothing within the wait and a save answered Unavailable, as
    // designed; waiting is exercised by tests/cluster_faults.rs under load.
    let cluster = RedisCluster::start(3, 1);
    let settings = RedisSettings::default();
    let store = RedisStore::connect_to(&RedisTopology::Cluster(cluster.urls()), settings)
        .await
        .expect("connect to the test cluster");
    assert_eq!(store.backend(), "redis");
    conversa_actors::store::conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_their_index_entries_spread_over_every_master() {
    let cluster = RedisCluster::start(3, 1);
    let store = connect(&cluster).await;
    for contact in 0..300u64 {
        let key = ContactKey::new(7, contact);
        store
            .save(
                &key,
                0,
                b"head",
                &index(Some(1_000 + contact), true, "bot_active"),
            )
            .await
            .unwrap();
    }
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        let port = cluster.nodes()[m].port();
        let keys = cli(port, &["KEYS", "*"]);
        let snapshots = keys.lines().filter(|k| k.ends_with(":snap")).count();
        let wake = keys.lines().filter(|k| k.ends_with(":wake")).count();
        let outbox = keys.lines().filter(|k| k.ends_with(":outbox")).count();
        // 16 buckets over three even slot ranges: 5 or 6 each; 300 contacts: about 100 each.
        assert!((5..=6).contains(&wake), "master {m}: {wake} wake buckets");
        assert!(
            (5..=6).contains(&outbox),
            "master {m}: {outbox} outbox buckets"
        );
        assert!(snapshots > 50, "master {m}: {snapshots} snapshots");
    }
    // Read back through every bucket, on every master.
    let due = store.due(u64::MAX, 1_000).await.unwrap();
    assert_eq!(due.len(), 300);
    assert!(due.windows(2).all(|w| w[0].1 <= w[1].1), "earliest first");
    assert_eq!(due[0], (ContactKey::new(7, 0), 1_000));
    assert_eq!(store.pending_outbox_count().await.unwrap(), 300);
    assert_eq!(store.pending_outbox(1_000).await.unwrap().len(), 300);
    assert_eq!(store.pending_outbox(10).await.unwrap().len(), 10);
    assert_eq!(store.phases(1_000).await.unwrap().len(), 300);
    assert_eq!(store.due(u64::MAX, 7).await.unwrap(), due[..7]);
    // A cluster node given as one server is refused with what to set instead.
    let refused = RedisStore::connect(&cluster.urls()[0], RedisSettings::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("REDIS_CLUSTER_URLS"), "{refused}");
}

/// `/ready`'s store check: every master must answer, so one master down (and no replica to take
/// over) makes the service not ready, although the other masters serve their contacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_master_not_answering_fails_the_readiness_check() {
    let mut cluster = RedisCluster::start(3, 0);
    let store = connect(&cluster).await;
    store.ping().await.expect("every master answers");
    // Replicas asked for and none there: every save would be refused, so not ready either.
    let waiting = RedisStore::connect_to(
        &RedisTopology::Cluster(cluster.urls()[..1].to_vec()),
        RedisSettings {
            wait_replicas: 1,
            ..RedisSettings::default()
        },
    )
    .await
    .expect("connect");
    let not_ready = waiting.ping().await;
    assert!(
        matches!(&not_ready, Err(conversa::store::StoreError::Unavailable(m)) if m.contains("REDIS_WAIT_REPLICAS=1")),
        "{not_ready:?}"
    );
    let frozen = cluster.masters()[1];
    cluster.nodes()[frozen].pause();
    let pinged = store.ping().await;
    cluster.nodes()[frozen].resume();
    assert!(
        matches!(pinged, Err(conversa::store::StoreError::Unavailable(_))),
        "{pinged:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Err(e) = store.ping().await {
        assert!(std::time::Instant::now() < deadline, "still not ready: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Killed rather than frozen: its connection is refused and the client leaves it out of
    // the `PING`, but the cluster, once it calls the node failed, refuses its slots
    // (`cluster_state:fail`): not ready.
    cluster.node_mut(frozen).stop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match store.ping().await {
            Err(conversa::store::StoreError::Unavailable(_)) => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "still ready with a master dead: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_whose_index_bucket_is_unreachable_writes_no_snapshot() {
    // The wake-up must be in the index before the snapshot that needs it exists: with the
    // bucket's master frozen, the compare-and-set on another master is never sent.
    let cluster = RedisCluster::start(3, 1);
    let store = connect(&cluster).await;
    let keys = conversa::store::redis::index::IndexKeys::new("conversa");
    let (key, bucket_master) = (0..1_000u64)
        .map(|c| ContactKey::new(9, c))
        .find_map(|key| {
            let member = key.to_string();
            let wake = &keys.wake[conversa::store::redis::index::bucket_of(&member)];
            let snap = format!("conversa:{{{key}}}:snap");
            let (w, s) = (cluster.master_of(wake), cluster.master_of(&snap));
            (w != s).then_some((key, w))
        })
        .expect("a contact whose bucket and snapshot live on two masters");
    cluster.nodes()[bucket_master].pause();
    let saved = store
        .save(&key, 0, b"head", &index(Some(5_000), false, "bot_active"))
        .await;
    cluster.nodes()[bucket_master].resume();
    assert!(
        matches!(saved, Err(conversa::store::StoreError::Unavailable(_))),
        "{saved:?}"
    );

    assert_eq!(
        store.load(&key).await.unwrap(),
        None,
        "no snapshot without its wake-up"
    );
    // And once the bucket answers again, the same save goes through, wake-up first.
    let mut saved = store
        .save(&key, 0, b"head", &index(Some(5_000), false, "bot_active"))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while saved.is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        saved = store
            .save(&key, 0, b"head", &index(Some(5_000), false, "bot_active"))
            .await;
    }
    assert_eq!(saved, Ok(1));
    assert!(store.due(5_000, 10).await.unwrap().contains(&(key, 5_000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_masters_contacts_move_to_its_promoted_replica() {
    // A master that hangs (not dies) is failed over by the cluster; the client, which learns
    // a new slot map on MOVED and refused connections but not on silence, must still find the
    // promoted replica while the old master is frozen.
    let cluster = RedisCluster::start(3, 1);
    let store = connect(&cluster).await;
    let key = ContactKey::new(11, 1);
    assert_eq!(
        store
            .save(&key, 0, b"one", &index(None, false, "idle"))
            .await,
        Ok(1)
    );
    let master = cluster.master_of(&format!("conversa:{{{key}}}:snap"));
    // Other contacts keep being served meanwhile (their masters answer): the client is not
    // silent as a whole, only for this master's slots.
    let store = Arc::new(store);
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let elsewhere = (2..200u64)
        .map(|c| ContactKey::new(11, c))
        .find(|k| cluster.master_of(&format!("conversa:{{{k}}}:snap")) != master)
        .unwrap();
    let background = {
        let (store, busy) = (store.clone(), busy.clone());
        tokio::spawn(async move {
            let mut version = 0;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(v) = store
                    .save(&elsewhere, version, b"x", &index(None, false, "idle"))
                    .await
                {
                    version = v;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            version
        })
    };
    cluster.nodes()[master].pause();
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(30);
    // Without REDIS_WAIT_REPLICAS the first write may not have reached the replica before the
    // freeze: a conflict says what the promoted replica holds, as a reload would.
    let mut expected = 1;
    let saved = loop {
        match store
            .save(&key, expected, b"two", &index(None, false, "idle"))
            .await
        {
            Ok(v) => break v,
            Err(conversa::store::StoreError::Conflict { current }) => expected = current,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "still refused while the old master hangs: {e}"
            ),
        }
    };
    let took = started.elapsed();
    cluster.nodes()[master].resume();
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let served = background.await.unwrap();
    eprintln!(
        "saved on the promoted replica {took:?} after the master hung; {served} saves elsewhere"
    );
    assert_eq!(saved, expected + 1);
    assert!(served > 10, "the other master kept answering");
}
