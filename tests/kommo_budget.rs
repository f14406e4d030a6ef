//! One Kommo budget for every engine node on one Redis: three nodes (each its own Redis
//! connection, token manager and client, as three processes would have) calling the fake Kommo
//! at once stay within its 7 requests a second together, as the fake measures them; with Redis
//! gone, each keeps to its share. A test binary of its own: slow (≈ 12 s at ≤ 7 req/s).

mod support;

use std::time::{Duration, Instant};

use conversa::kommo::client::KommoClient;
use conversa::kommo::error::KommoError;
use conversa::store::Store;
use conversa::store::redis::{RedisSettings, RedisStore};
use support::fake_kommo::FakeKommo;
use support::kommo_client::{node_on_redis as node, node_on_redis_with_tokens, seed_pair};
use support::redis_server::RedisServer;

/// `calls` concurrent calls on each client; every one must succeed.
async fn call_all(nodes: &[KommoClient], calls: usize) {
    let mut all = Vec::new();
    for c in nodes {
        for _ in 0..calls {
            let c = c.clone();
            all.push(tokio::spawn(async move { c.account().await }));
        }
    }
    for call in all {
        call.await.unwrap().expect("every call succeeds");
    }
}

/// What the fake Kommo saw: `calls` requests (one per call: none refused with 429 and
/// retried), all answered 200, never more than 7 within one second. Returns the busiest second.
fn within_budget(fake: &FakeKommo, calls: usize) -> usize {
    let sent = fake.api_requests();
    assert_eq!(
        sent.len(),
        calls,
        "one request per call: none refused (429) and retried"
    );
    assert!(sent.iter().all(|r| r.status == 200));
    let max = fake.max_requests_in_any_second();
    assert!(max <= 7, "the fake saw {max} requests within one second");
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_seven_requests_a_second_and_keep_to_their_share_without_redis() {
    let mut redis = RedisServer::start();
    let fake = FakeKommo::start().await;
    let seed = seed_pair(&fake);
    let nodes = vec![
        node(&fake, &redis, &seed).await,
        node(&fake, &redis, &seed).await,
        node(&fake, &redis, &seed).await,
    ];

    // Another node took the schedule's next 2 seconds (its slots reserved in Redis): these
    // three wait for them, whatever their own limiters would allow.
    let mut redis_conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let schedule = format!("{{conversa:turns:kommo:127.0.0.1:{}}}", fake.addr().port());
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    let taken_until = secs * 1_000_000 + micros + 2_000_000;
    let _: () = redis::cmd("SET")
        .arg(format!("{schedule}:next"))
        .arg(taken_until)
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    let started = Instant::now();

    // 60 calls at once over three nodes: each alone would allow 7 a second.
    call_all(&nodes, 20).await;
    let first = fake.api_requests()[0].at;
    assert!(
        first >= started + Duration::from_millis(1_900),
        "the first request waited for the other node's slots: {:?}",
        first - started
    );
    let nodes_seen: u32 = redis::cmd("ZCARD")
        .arg(format!("{schedule}:nodes"))
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(nodes_seen, 3);
    let max = within_budget(&fake, 60);
    assert!(
        max >= 5,
        "the budget is used, not starved: {max} in the busiest second"
    );
    let waited: u64 = nodes.iter().map(KommoClient::limiter_waits).sum();
    assert!(waited >= 50, "most calls waited for their turn: {waited}");

    // Redis gone: each node keeps to a third of the budget (it saw three nodes taking turns).
    redis.stop();
    call_all(&nodes, 6).await;
    within_budget(&fake, 78);
}

/// Kommo's refresh tokens are single use: three nodes finding the access token expired must
/// rotate the pair once between them (the others take the stored pair), not lock the account
/// out by presenting a dead refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_an_expired_token_refresh_it_once() {
    let redis = RedisServer::start();
    let fake = FakeKommo::start().await;
    let seed = seed_pair(&fake);
    let nodes = vec![
        node(&fake, &redis, &seed).await,
        node(&fake, &redis, &seed).await,
        node(&fake, &redis, &seed).await,
    ];
    fake.expire_access_token();
    call_all(&nodes, 3).await;
    assert_eq!(fake.refresh_count(), 1, "one refresh for the three nodes");
    let refresh_grants = fake
        .token_requests()
        .iter()
        .filter(|r| r.body.contains("refresh_token"))
        .count();
    assert_eq!(
        refresh_grants, 1,
        "no node presented the dead refresh token"
    );
    // Every node now holds the rotated pair: later calls need no refresh at all.
    call_all(&nodes, 1).await;
    assert_eq!(fake.refresh_count(), 1);
}

/// An authorization found dead on one node is dead for every node (none presents the revoked
/// refresh token again), and an admin re-authorizing through any node — even one that never
/// saw the later rotations — brings every node back within seconds, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reauthorization_through_one_node_brings_every_node_back() {
    let redis = RedisServer::start();
    let fake = FakeKommo::start().await;
    let seed = seed_pair(&fake);
    let (a, b, c) = (
        node(&fake, &redis, &seed).await,
        node(&fake, &redis, &seed).await,
        node(&fake, &redis, &seed).await,
    );
    let (idle, idle_client) = node_on_redis_with_tokens(&fake, &redis, &seed).await;
    let (late, late_client) = node_on_redis_with_tokens(&fake, &redis, &seed).await;
    // b rotates the pair once (generation 1) and c takes it; a and the idle node never hear
    // of it.
    fake.expire_access_token();
    b.account().await.expect("b refreshes");
    c.account().await.expect("c takes b's pair");
    // A callback with a bad code on a node behind the rotation changes nothing: it then takes
    // b's pair like any node (it does not present the seed's refresh token, which b used up).
    assert!(late.exchange_code("nonsense").await.is_err());
    late_client
        .account()
        .await
        .expect("the late node takes b's pair");
    assert_eq!(fake.refresh_count(), 1);
    // The integration is uninstalled: c finds its refresh token revoked.
    fake.revoke_refresh_token();
    fake.expire_access_token();
    let dead = |r: Result<_, KommoError>| matches!(r, Err(KommoError::ReauthorizeNeeded { .. }));
    assert!(dead(c.account().await), "c: re-authorization needed");
    // a and b learn it from the store, without a refresh request of their own.
    assert!(dead(a.account().await), "a learns it from the store");
    assert!(dead(b.account().await), "b learns it from the store");
    let refresh_grants = || {
        fake.token_requests()
            .iter()
            .filter(|r| r.body.contains("refresh_token"))
            .count()
    };
    assert_eq!(
        refresh_grants(),
        2,
        "b's rotation and c's attempt: nobody else presented the dead token"
    );
    // An admin authorizes again; the callback lands on the idle node.
    idle.exchange_code(&fake.issue_code())
        .await
        .expect("code exchanged");
    idle_client.account().await.expect("the idle node works");
    // Every other node takes the new pair from the store by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
        loop {
            match node.account().await {
                Ok(_) => break,
                Err(KommoError::ReauthorizeNeeded { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{name} never came back: {e}"),
            }
        }
    }
    assert_eq!(refresh_grants(), 2, "coming back took no refresh");
}

/// The two primitives on a real Redis: a lease has one holder at a time (renewed by it, given
/// up only by it, gone when it expires), and a schedule is never booked further ahead than
/// its longest wait (5 s), so callers cancelled while they wait hold no slot beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_and_a_schedule_is_booked_five_seconds_ahead_at_most() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), RedisSettings::default())
        .await
        .expect("redis");
    let ttl = Duration::from_secs(30);
    assert!(store.try_lease("rotation", "a", ttl).await.unwrap());
    assert!(!store.try_lease("rotation", "b", ttl).await.unwrap());
    assert!(
        store.try_lease("rotation", "a", ttl).await.unwrap(),
        "renewed"
    );
    store.release_lease("rotation", "b").await.unwrap();
    assert!(
        !store.try_lease("rotation", "b", ttl).await.unwrap(),
        "only the holder gives it up"
    );
    store.release_lease("rotation", "a").await.unwrap();
    assert!(store.try_lease("rotation", "b", ttl).await.unwrap());

    assert!(
        store
            .try_lease("short", "a", Duration::from_millis(100))
            .await
            .unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.try_lease("short", "b", ttl).await.unwrap() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let period = Duration::from_secs(1);
    let mut turns = Vec::new();
    for _ in 0..8 {
        turns.push(store.take_turn("s", "n", period).await.unwrap().unwrap());
    }
    assert!(turns[..6].iter().all(|t| t.reserved), "{turns:?}");
    assert!(turns[0].wait < Duration::from_millis(100), "{turns:?}");
    assert!(turns[5].wait > Duration::from_millis(4_500), "{turns:?}");
    assert!(!turns[6].reserved && !turns[7].reserved, "{turns:?}");
    // Not reserved: ask again once the schedule is within reach (the 7th slot, 6 s out).
    assert!(turns[6].wait <= Duration::from_secs(1), "{turns:?}");
    assert_eq!(turns[7].nodes, 1);
}
