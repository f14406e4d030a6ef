//! The Kommo client and token manager against the faithful fake Kommo (`support::fake_kommo`):
//! OAuth rotation that survives a restart, single-flight refresh, a dead authorization that
//! fails fast, long-lived tokens, 429 backoff, the 403 circuit, 204 = nothing, typed
//! problem+json errors, users pagination. The 7 req/s limit is `kommo_limiter.rs`; the write
//! calls are `kommo_writes.rs` (each its own binary: they read the process's call counters).
//!
//! The "100 concurrent callers hit a 401" check runs at the token-manager level, where all 100
//! really do hold the stale token at once (through the client, the limiter spaces calls 157 ms
//! apart and the token is read after the permit, so later calls already carry the new token).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conversa::kommo::client::{KommoSettings, LeadPatch};
use conversa::kommo::error::KommoError;
use conversa::kommo::oauth::{TokenState, Tokens};
use conversa::store::Store;
use conversa::store::embedded::EmbeddedStore;
use conversa_actors::Commitment;
use conversa_actors::store::{FaultyStore, MemoryStore};
use serde_json::json;
use support::fake_kommo::{self, FakeKommo, FakeLead, FakeMessage, FakeUser, wait_until};
use support::kommo_client::{
    KEY, client, client_with, manager, node_on_redis, now_unix, seed_pair, settings,
};

#[tokio::test]
async fn oauth_rotation_survives_a_restart() {
    let fake = FakeKommo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let old_seed = seed_pair(&fake);
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let tokens = manager(&fake, store, Some(old_seed.clone()));
        assert_eq!(tokens.load().await.unwrap(), TokenState::Ok);
        let client = client_with(tokens.clone(), settings(&fake));
        assert_eq!(client.account().await.unwrap().id, fake_kommo::ACCOUNT_ID);
        // Force a refresh: the seed's refresh token is now dead at the fake.
        fake.expire_access_token();
        client.account().await.unwrap();
        assert_eq!(fake.refresh_count(), 1);
        assert_eq!(client.refresh_count(), 1);
    } // client, manager and store dropped: the redb file is closed.

    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let tokens = manager(&fake, store, Some(old_seed.clone()));
    let client = client_with(tokens.clone(), settings(&fake));
    // The stored, rotated access token is used (not the stale seed's).
    client.account().await.unwrap();
    let last = fake.api_requests().pop().unwrap();
    assert_eq!(last.status, 200);
    assert_ne!(last.bearer.as_deref(), Some(old_seed.access_token.as_str()));
    // And the stored, rotated refresh token works where the seed's would be rejected.
    fake.expire_access_token();
    client.account().await.unwrap();
    assert_eq!(fake.refresh_count(), 2);
    assert!(
        fake.token_requests().iter().all(|r| r.status == 200),
        "the dead seed refresh token was never tried"
    );
    assert_eq!(tokens.state(), TokenState::Ok);
}

#[tokio::test]
async fn hundred_concurrent_401s_cause_one_refresh() {
    let fake = FakeKommo::start().await;
    let seed = seed_pair(&fake);
    let stale = seed.access_token.clone();
    let tokens = manager(&fake, Arc::new(MemoryStore::new()), Some(seed));
    assert_eq!(tokens.access_token().await.unwrap(), stale);
    fake.expire_access_token();
    // 100 callers all got 401 for the same token at once.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let tokens = tokens.clone();
        let stale = stale.clone();
        tasks.push(tokio::spawn(async move {
            tokens.refresh_after_401(&stale).await?;
            tokens.access_token().await
        }));
    }
    let mut fresh = Vec::new();
    for t in tasks {
        fresh.push(t.await.unwrap().expect("refreshed token"));
    }
    assert!(fresh.iter().all(|t| *t == fresh[0] && *t != stale));
    assert_eq!(fake.refresh_count(), 1);
    assert_eq!(fake.token_requests().len(), 1);
    assert_eq!(tokens.refresh_count(), 1);

    // Through the client: concurrent calls after the token went stale, one refresh.
    let client = client_with(tokens.clone(), settings(&fake));
    fake.expire_access_token();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.account().await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("call succeeds after the refresh");
    }
    assert_eq!(fake.refresh_count(), 2);
    assert_eq!(fake.token_requests().len(), 2);
    let statuses: Vec<u16> = fake.api_requests().iter().map(|r| r.status).collect();
    // Usually one 401: calls are spaced by the limiter and read the token after their permit.
    assert!(statuses.contains(&401));
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
}

#[tokio::test]
async fn revoked_refresh_token_needs_reauthorization_without_a_loop() {
    let fake = FakeKommo::start().await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let seed = seed_pair(&fake);
    let tokens = manager(&fake, store.clone(), Some(seed.clone()));
    let client = client_with(tokens.clone(), settings(&fake));
    client.account().await.unwrap();

    fake.revoke_refresh_token();
    fake.expire_access_token();
    let err = client.account().await.unwrap_err();
    assert!(
        matches!(&err, KommoError::ReauthorizeNeeded { reason } if reason.contains("Token has been revoked")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(matches!(
        tokens.state(),
        TokenState::ReauthorizeNeeded { .. }
    ));
    let (api_before, token_before) = (fake.api_requests().len(), fake.token_requests().len());
    assert_eq!(token_before, 1);
    for _ in 0..20 {
        assert!(matches!(
            client.account().await,
            Err(KommoError::ReauthorizeNeeded { .. })
        ));
    }
    assert_eq!(fake.api_requests().len(), api_before, "calls fail fast");
    assert_eq!(fake.token_requests().len(), token_before, "no refresh loop");

    // The state is stored: a restart with the same seed does not try again.
    let restarted = manager(&fake, store.clone(), Some(seed));
    assert!(matches!(
        restarted.load().await.unwrap(),
        TokenState::ReauthorizeNeeded { .. }
    ));
    assert!(matches!(
        restarted.access_token().await,
        Err(KommoError::ReauthorizeNeeded { .. })
    ));
    assert_eq!(fake.token_requests().len(), token_before);

    // A bad or expired code does not help; a fresh one does.
    assert!(matches!(
        tokens.exchange_code("nonsense").await,
        Err(KommoError::OAuth { status: 400, ref hint, .. }) if hint == "Cannot decrypt the authorization code"
    ));
    assert!(matches!(
        tokens.exchange_code(&fake.issue_expired_code()).await,
        Err(KommoError::OAuth { status: 400, ref hint, .. }) if hint == "Authorization code has expired"
    ));
    assert!(matches!(
        tokens.state(),
        TokenState::ReauthorizeNeeded { .. }
    ));
    let code = fake.issue_code();
    tokens.exchange_code(&code).await.unwrap();
    assert_eq!(tokens.state(), TokenState::Ok);
    client.account().await.unwrap();
    // Codes are single use.
    assert!(matches!(
        tokens.exchange_code(&code).await,
        Err(KommoError::OAuth { status: 400, .. })
    ));
    // The new pair is stored: a restart uses it.
    let again = manager(&fake, store, None);
    assert_eq!(again.load().await.unwrap(), TokenState::Ok);
}

#[tokio::test]
async fn long_lived_token_works_and_its_rejection_needs_a_new_one() {
    let fake = FakeKommo::start().await;
    let token = fake.issue_long_lived_token(Duration::from_secs(365 * 86_400));
    let tokens = manager(
        &fake,
        Arc::new(MemoryStore::new()),
        Some(Tokens {
            access_token: token,
            refresh_token: None,
            expires_at: None,
        }),
    );
    let client = client_with(tokens.clone(), settings(&fake));
    assert_eq!(client.account().await.unwrap().subdomain, "fakeconta");
    assert_eq!(tokens.state(), TokenState::Ok);

    fake.expire_access_token();
    assert!(matches!(
        client.account().await,
        Err(KommoError::ReauthorizeNeeded { .. })
    ));
    assert!(fake.token_requests().is_empty(), "nothing to refresh with");
    assert!(matches!(
        tokens.state(),
        TokenState::ReauthorizeNeeded { .. }
    ));
}

#[tokio::test]
async fn refreshes_ahead_of_expiry() {
    let fake = FakeKommo::start().await;
    let (access, refresh) = fake.issue_tokens();
    let tokens = manager(
        &fake,
        Arc::new(MemoryStore::new()),
        Some(Tokens {
            access_token: access.clone(),
            refresh_token: Some(refresh),
            expires_at: Some(now_unix() + 120), // inside the 5-minute margin
        }),
    );
    assert_eq!(tokens.state(), TokenState::Expiring);
    let client = client_with(tokens.clone(), settings(&fake));
    client.account().await.unwrap();
    assert_eq!(fake.refresh_count(), 1);
    let req = fake.api_requests().pop().unwrap();
    assert_eq!(req.status, 200, "no 401 needed");
    assert_ne!(req.bearer.as_deref(), Some(access.as_str()));
    assert_eq!(tokens.state(), TokenState::Ok);
}

#[tokio::test]
async fn rotated_pair_is_persisted_before_use_and_never_lost() {
    let fake = FakeKommo::start().await;
    let store = Arc::new(FaultyStore::new());
    let seed = seed_pair(&fake);
    let tokens = manager(&fake, store.clone(), Some(seed.clone()));
    let client = client_with(tokens.clone(), settings(&fake));
    client.account().await.unwrap();

    store.fail_puts(true);
    fake.expire_access_token();
    let err = client.account().await.unwrap_err();
    assert!(matches!(err, KommoError::TokenStore(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(fake.refresh_count(), 1);
    // Not durable yet: not used, and no second refresh (the old refresh token is dead).
    assert!(matches!(
        client.account().await,
        Err(KommoError::TokenStore(_))
    ));
    assert_eq!(fake.token_requests().len(), 1);
    let stored: serde_json::Value =
        serde_json::from_slice(&store.get_value(KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["tokens"]["access_token"], json!(seed.access_token));

    // The store heals: the background task stores the pending pair, which then works.
    store.fail_puts(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.account().await {
            Ok(_) => break,
            Err(KommoError::TokenStore(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let stored: serde_json::Value =
        serde_json::from_slice(&store.get_value(KEY).await.unwrap().unwrap()).unwrap();
    let last = fake.api_requests().pop().unwrap();
    assert_eq!(
        stored["tokens"]["access_token"],
        json!(last.bearer.unwrap())
    );
    assert_eq!(fake.token_requests().len(), 1, "still one refresh");
}

#[tokio::test]
async fn rate_limited_429_backs_off_and_succeeds() {
    let fake = FakeKommo::start().await;
    let client = client(&fake);
    fake.fail_next("/api/v4/account", 429, 2);
    client.account().await.unwrap();
    let reqs = fake.api_requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 200]);
    let gap1 = reqs[1].at.duration_since(reqs[0].at);
    let gap2 = reqs[2].at.duration_since(reqs[1].at);
    assert!(gap1 >= Duration::from_millis(500), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(1000), "{gap2:?}");
    assert!(gap1 <= Duration::from_secs(8) + Duration::from_millis(500));

    // 429 on every attempt: a typed, retryable error after the configured attempts.
    let quick = client_with(
        client.tokens().clone(),
        KommoSettings {
            max_attempts_429: 3,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..settings(&fake)
        },
    );
    fake.fail_next("/api/v4/leads", 429, 10);
    let err = quick.lead(1, false).await.unwrap_err();
    assert!(
        matches!(err, KommoError::RateLimited { attempts: 3 }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        fake.api_requests()
            .iter()
            .filter(|r| r.path.starts_with("/api/v4/leads"))
            .count(),
        3
    );
}

#[tokio::test]
async fn blocked_403_opens_the_circuit() {
    let fake = FakeKommo::start().await;
    let cooldown = Duration::from_millis(1500);
    let client = client_with(
        manager(&fake, Arc::new(MemoryStore::new()), Some(seed_pair(&fake))),
        KommoSettings {
            block_cooldown: cooldown,
            ..settings(&fake)
        },
    );
    fake.set_blocked(true);
    let err = client.account().await.unwrap_err();
    assert!(matches!(err, KommoError::Blocked { .. }), "{err:?}");
    assert!(err.is_retryable(), "the outbox keeps it for later");
    assert!(client.circuit_open());
    assert_eq!(fake.api_requests().len(), 1);
    for _ in 0..10 {
        let e = client.lead(1, false).await.unwrap_err();
        assert!(e.retry_after().unwrap() <= cooldown);
    }
    assert_eq!(fake.api_requests().len(), 1, "fails fast while open");

    fake.set_blocked(false);
    // Keep calling: nothing reaches the fake until the cooldown is over, then a probe succeeds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.account().await {
            Ok(_) => break,
            Err(KommoError::Blocked { .. }) if Instant::now() < deadline => {
                assert_eq!(fake.api_requests().len(), 1);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let reqs = fake.api_requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at.duration_since(reqs[0].at) >= cooldown);
    assert!(!client.circuit_open());
}

#[tokio::test]
async fn no_content_is_none() {
    let fake = FakeKommo::start().await;
    let client = client(&fake);
    assert_eq!(client.lead(404_404, true).await.unwrap(), None);
    assert_eq!(client.contact(404_404).await.unwrap(), None);
    assert_eq!(client.talk(404_404).await.unwrap(), None);
    let statuses: Vec<u16> = fake.api_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![204, 204, 404]);

    // The fake itself: an empty notes list is a 204 with an empty body.
    fake.add_lead(FakeLead::new(5));
    let (token, _) = fake.issue_tokens();
    let resp = reqwest::Client::new()
        .get(format!("{}leads/5/notes", fake.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn problem_json_400_is_typed_with_validation_errors() {
    let fake = FakeKommo::start().await;
    let client = client(&fake);
    fake.add_lead(FakeLead::new(10));
    let patch = LeadPatch {
        custom_fields: vec![(999_999, json!("x"))],
        ..LeadPatch::default()
    };
    let err = client.patch_lead(10, &patch).await.unwrap_err();
    match &err {
        KommoError::Api {
            status,
            title,
            detail,
            validation_errors,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(title, "Bad Request");
            assert_eq!(detail, "Request validation failed");
            assert_eq!(validation_errors.len(), 1);
            assert_eq!(validation_errors[0].code, "NotSupportedChoice");
            assert_eq!(validation_errors[0].path, "custom_fields_values.0.field_id");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(fake.patches().is_empty());
}

#[tokio::test]
async fn users_come_from_every_page() {
    let fake = FakeKommo::start().await;
    for id in 1..=600 {
        let mut u = FakeUser::new(id, &format!("Vendedor {id}"));
        u.is_active = id % 10 != 0;
        fake.add_user(u);
    }
    let client = client(&fake);
    let users = client.users().await.unwrap();
    assert_eq!(users.len(), 600);
    assert_eq!(users.iter().filter(|u| !u.is_active).count(), 60);
    let u7 = users.iter().find(|u| u.id == 7).unwrap();
    assert_eq!(u7.name, "Vendedor 7");
    assert_eq!(u7.email, "user7@example.com");
    assert_eq!(u7.phone.as_deref(), Some("+5511900000007"));
    assert!(u7.amojo_id.is_some());
    let pages: Vec<String> = fake
        .api_requests()
        .iter()
        .filter(|r| r.path == "/api/v4/users")
        .map(|r| r.query.clone())
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[2].contains("page=3") && pages[2].contains("limit=250"));
}

#[tokio::test]
async fn emits_webhooks_like_kommo() {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    seen.lock()
                        .unwrap()
                        .push((h("content-type"), h("user-agent"), body));
                    "ok"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let fake = FakeKommo::start().await;
    let items = [
        FakeMessage::incoming(
            "c0925911-ce8f-4994-b117-542b5f28d036",
            1_298_200,
            878_244,
            109,
            "Oi, tudo bem?",
        ),
        FakeMessage::incoming(
            "55dd912f-0000-4000-8000-000000000001",
            1_298_200,
            878_244,
            109,
            "",
        )
        .with_voice("https://drive-c.kommo.com/download/x/data.m4a"),
    ];
    let body = fake_kommo::message_add_form(33_981_183, "adrianocamposadvogado", &items);
    assert!(
        body.starts_with("account%5Bsubdomain%5D=adrianocamposadvogado&account%5Bid%5D=33981183&")
    );
    assert!(body.contains("message%5Badd%5D%5B0%5D%5Bid%5D=c0925911-ce8f-4994-b117-542b5f28d036"));
    assert!(body.contains("message%5Badd%5D%5B0%5D%5Btext%5D=Oi%2C+tudo+bem%3F"));
    assert!(body.contains("message%5Badd%5D%5B1%5D%5Battachment%5D%5Btype%5D=voice"));
    assert!(body.contains("message%5Badd%5D%5B0%5D%5Bauthor%5D%5Btype%5D=external"));
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert!(pairs.contains(&("message[add][1][text]".into(), String::new())));
    assert!(pairs.contains(&("message[add][0][talk_id]".into(), "109".into())));

    let resp = fake
        .send_webhook(&format!("http://{addr}/hook"), &body)
        .await;
    assert_eq!(resp.status(), 200);
    wait_until(Duration::from_secs(5), "the webhook", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let (ct, ua, got) = seen.lock().unwrap()[0].clone();
    assert_eq!(ct, "application/x-www-form-urlencoded");
    assert_eq!(ua, "amoCRM-WebHook-client/1.0");
    assert_eq!(got, body);
    server.abort();
}

#[tokio::test]
async fn requests_in_flight_never_exceed_the_concurrency_limit() {
    let fake = FakeKommo::start().await;
    fake.set_salesbot_delay(Some(Duration::from_millis(600)));
    let tokens = manager(&fake, Arc::new(MemoryStore::new()), Some(seed_pair(&fake)));
    let client = client_with(
        tokens,
        KommoSettings {
            max_concurrency: 2,
            ..settings(&fake)
        },
    );
    // At 7 req/s, six runs answered 600 ms late would overlap four deep without the limit.
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..6 {
        let client = client.clone();
        runs.spawn(async move {
            client
                .run_salesbot(84_562, 878_000 + i, &Commitment::default())
                .await
        });
    }
    while let Some(result) = runs.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(fake.salesbot_runs().len(), 6);
    assert_eq!(fake.max_salesbot_runs_in_flight(), 2);
}

/// One node blocked by Kommo (HTML 403) stops the others: they fail fast with `Blocked` and send
/// nothing, instead of each earning its own 403 (a retry storm is what prolongs a block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_403_block_stops_every_node() {
    use conversa::kommo::error::KommoError;

    let redis = support::redis_server::RedisServer::start();
    let fake = FakeKommo::start().await;
    let seed = seed_pair(&fake);
    let nodes = vec![
        node_on_redis(&fake, &redis, &seed).await,
        node_on_redis(&fake, &redis, &seed).await,
        node_on_redis(&fake, &redis, &seed).await,
    ];
    for n in &nodes {
        n.account().await.unwrap();
    }
    fake.set_blocked(true);
    let first = nodes[0].account().await;
    assert!(
        matches!(first, Err(KommoError::Blocked { .. })),
        "{first:?}"
    );
    let sent = fake.api_requests().len();
    for other in &nodes[1..] {
        let r = other.account().await;
        assert!(matches!(r, Err(KommoError::Blocked { .. })), "{r:?}");
        assert!(other.circuit_open(), "the block reached this node");
    }
    assert_eq!(
        fake.api_requests().len(),
        sent,
        "the other nodes sent nothing to a blocked account"
    );
}
