//! Hostile input against the real binary: one contact flooding with huge messages, forged n8n
//! replies, secrets hunted in logs and public answers, unknown keys aimed at the metrics,
//! a webhook naming many contacts at once, retries of every state-changing route after an
//! unknown outcome, and the edges of input. Kommo and n8n are the faithful fakes of
//! `tests/support/`; the store is a real `redis-server` where its contents are inspected.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_kommo::{FakeMessage, message_add_form, wait_until};
use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

const ACCOUNT: u64 = 33981183;
const SUBDOMAIN: &str = "adrianocamposadvogado";

/// A customer message webhook as Kommo sends it (form-encoded), for one or more contacts.
fn webhook(items: &[(&str, u64, &str)]) -> String {
    let messages: Vec<FakeMessage> = items
        .iter()
        .map(|(id, contact, text)| {
            FakeMessage::incoming(id, *contact, 900_000 + contact, 109, text)
        })
        .collect();
    message_add_form(ACCOUNT, SUBDOMAIN, &messages)
}

/// One customer message through the Kommo webhook, as Kommo posts it.
async fn says(s: &Service, id: &str, contact: u64, text: &str) -> (u16, Value) {
    s.post_form("/webhooks/kommo", webhook(&[(id, contact, text)]))
        .await
}

/// POSTs `body` as it is, with `content_type` and no credential; the status.
async fn post_raw(s: &Service, path: &str, content_type: &str, body: &str) -> u16 {
    let r = s
        .client
        .post(s.url(path))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// The stored snapshot's size in Redis, in bytes.
/// What Redis holds of a contact's snapshot, in bytes: its head (`d`) and every item of its
/// logs (`log0`..`log2`, see `src/store/redis.rs`).
fn stored_bytes(redis: &RedisServer, contact: u64) -> usize {
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("conversa:{{{ACCOUNT}:{contact}}}");
    let mut bytes: usize = cli(&["HSTRLEN", &format!("{base}:snap"), "d"])
        .trim()
        .parse()
        .unwrap();
    for n in 0..3 {
        // Items are JSON (one per line in the raw output); count their bytes, not the newlines.
        let items = cli(&["LRANGE", &format!("{base}:log{n}"), "0", "-1"]);
        bytes += items.lines().map(str::len).sum::<usize>();
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_contact_flooding_with_huge_messages_stays_bounded_and_answered() {
    let redis = RedisServer::start();
    let n8n = FakeN8n::start().await;
    n8n.set_delay(Duration::from_millis(300));
    let s = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("DEBOUNCE_MS", "0"),
        ("KOMMO_ACCOUNT_ID", &ACCOUNT.to_string()),
    ])
    .await;
    let huge = "a".repeat(200_000);
    for i in 0..40 {
        let (status, answer) = says(&s, &format!("flood-{i}"), 777, &huge).await;
        assert_eq!(status, 200, "bounded, not refused: {answer}");
        assert_eq!(answer["changed"], 1, "{answer}");
        // Another contact is answered alongside.
        let (status, _) = says(&s, &format!("calm-{i}"), 1000, "Oi").await;
        assert_eq!(status, 200);
    }
    let (_, c) = s.get("/conversations/777").await;
    let pending = c["pending_messages"].as_array().expect("pending listed");
    assert!(
        !pending.is_empty() && pending.len() < 40,
        "{}",
        pending.len()
    );
    let timeline = c["timeline"].to_string();
    assert!(timeline.contains("message_truncated"), "{timeline}");
    assert!(timeline.contains("message_dropped"), "{timeline}");
    let stored = stored_bytes(&redis, 777);
    assert!(stored < 2 * 1024 * 1024, "stored {stored} bytes");
    // Dispatches go one at a time, so the outbox holds at most one being sent and one waiting.
    assert!(
        stored < 200_000,
        "one message's worth is more than we keep: {stored}"
    );
    // Every dispatch n8n got stays under the dispatch cap, its messages cut and marked, the
    // unanswered text it carries within its bound.
    let received = n8n.wait_for_accepted(2, Duration::from_secs(20)).await;
    let mut flood_dispatches = 0;
    for r in &received {
        assert!(
            r.raw.len() <= 128 * 1024,
            "a dispatch of {} bytes",
            r.raw.len()
        );
        if r.body["contact_id"] != 777 {
            continue;
        }
        flood_dispatches += 1;
        let messages = r.body["messages"].as_array().unwrap();
        let mut text = 0;
        for m in messages {
            let t = m["text"].as_str().unwrap();
            assert!(t.len() <= 8 * 1024 && t.ends_with(" […]"), "{}", t.len());
            text += t.len();
        }
        assert!(text <= 64 * 1024, "{text} bytes of text in one dispatch");
    }
    assert!(flood_dispatches > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_its_hard_cap_is_trimmed_and_says_so() {
    let redis = RedisServer::start();
    let s = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("MAX_SNAPSHOT_BYTES", "65536"),
        // More unanswered text than the snapshot cap holds: the cap must bite.
        ("MAX_PENDING_BYTES", "200000"),
        ("KOMMO_ACCOUNT_ID", &ACCOUNT.to_string()),
    ])
    .await;
    let text = "b".repeat(8_000);
    for i in 0..12 {
        let (status, _) = says(&s, &format!("big-{i}"), 778, &text).await;
        assert_eq!(status, 200);
    }
    let stored = stored_bytes(&redis, 778);
    assert!(stored <= 65_536, "stored {stored} bytes over the cap");
    let (_, c) = s.get("/conversations/778").await;
    let trimmed = c["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["what"] == "trimmed");
    assert!(trimmed, "the trim is recorded: {}", c["timeline"]);
    assert!(s.log().contains("snapshot over its cap: trimmed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_accepted_only_with_its_dispatch_proof() {
    let n8n = FakeN8n::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("DEBOUNCE_MS", "0"),
        ("API_KEY", "an-operator-key-of-some-length"),
        // No callback token: only the reply token proves a reply.
        ("N8N_CALLBACK_TOKEN", ""),
    ])
    .await;
    let (status, _) = says(&s, "m1", 4242, "Oi").await;
    assert_eq!(status, 200);
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let dispatch = &got[0].body;
    let dispatch_id = dispatch["dispatch_id"].as_str().unwrap().to_owned();
    let callback_url = dispatch["callback_url"].as_str().unwrap().to_owned();
    let expected = format!("/send-response?contact_id=4242&dispatch_id={dispatch_id}&reply_token=");
    assert!(callback_url.contains(&expected), "{callback_url}");
    let token = callback_url
        .split("reply_token=")
        .nth(1)
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 32, "128 bits");

    let post = |url: String, body: Value| {
        let client = s.client.clone();
        async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let reply = json!({"contact_id": 4242, "dispatch_id": dispatch_id, "text": "Olá!"});
    // Forged: no proof, a made-up token, the token used for another dispatch or contact.
    let (status, err) = post(s.url("/send-response"), reply.clone()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("unauthorized")),
        "{err}"
    );
    let forged = s.url(&format!(
        "/send-response?contact_id=4242&dispatch_id={dispatch_id}&reply_token=00000000000000000000000000000000"
    ));
    let (status, _) = post(forged, reply.clone()).await;
    assert_eq!(status, 401);
    let moved = callback_url.replace(&dispatch_id, "0-4242-2");
    let (status, _) = post(moved, reply.clone()).await;
    assert_eq!(status, 401, "a token proves one dispatch");
    let other_contact = callback_url.replace("contact_id=4242", "contact_id=4243");
    let (status, _) = post(other_contact, reply.clone()).await;
    assert_eq!(status, 401, "a token proves one contact");
    // The right URL with a body naming another dispatch or contact.
    let other = json!({"contact_id": 4242, "dispatch_id": "0-4242-2", "text": "Olá!"});
    let (status, _) = post(callback_url.clone(), other).await;
    assert_eq!(status, 401, "the body must answer what the URL proves");
    let other = json!({"contact_id": 4243, "dispatch_id": dispatch_id, "text": "Olá!"});
    let (status, _) = post(callback_url.clone(), other).await;
    assert_eq!(status, 401, "the body must answer what the URL proves");
    // A bogus token is refused before the body is read, whatever the body.
    for (ct, body) in [("text/plain", "not json"), ("application/json", "[1]")] {
        let bogus = "/send-response?contact_id=4242&dispatch_id=x&reply_token=abc";
        assert_eq!(post_raw(&s, bogus, ct, body).await, 401, "{ct} {body}");
    }
    let r = s
        .client
        .post(s.url("/send-response"))
        .bearer_auth("an-operator-key-of-some-length")
        .json(&reply)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the API key is not a reply proof");
    let (_, c) = s
        .get_with_key("/conversations/4242", "an-operator-key-of-some-length")
        .await;
    assert!(
        !c["timeline"].to_string().contains("reply_accepted"),
        "nothing forged reached the conversation"
    );
    // The callback URL as conversa sent it: accepted by the conversation (a body without
    // `dispatch_id` answers the dispatch the URL names).
    let (status, answer) = post(callback_url, json!({"contact_id": 4242, "text": "Olá!"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dispatch_id"], dispatch_id.as_str(), "{answer}");
    assert_eq!(answer["reason"], "kommo_not_configured", "{answer}");

    // Credentials are checked before the body is read: a bad body without them is a 401.
    for (ct, body) in [
        ("text/plain", "not json"),
        ("application/json", "{\"contact_id\": \"x\"}"),
    ] {
        for path in ["/send-response", "/bot-control"] {
            assert_eq!(
                post_raw(&s, path, ct, body).await,
                401,
                "{path}: {ct} {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_tokens_survive_a_restart() {
    let n8n = FakeN8n::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_CALLBACK_TOKEN", ""),
    ])
    .await;
    says(&s, "m1", 4343, "Oi").await;
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let callback_url = got[0].body["callback_url"].as_str().unwrap().to_owned();
    let dispatch_id = got[0].body["dispatch_id"].clone();
    s.restart().await;
    let r = s
        .client
        .post(callback_url)
        .json(&json!({"contact_id": 4343, "dispatch_id": dispatch_id, "text": "Olá"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the key is kept in the store");
}

#[test]
fn exposed_binds_need_a_long_api_key_and_a_webhook_secret() {
    // A binary that starts where it must refuse is killed and reported, never hangs the test.
    let run = |env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_conversa"))
            .env("HOST", "0.0.0.0")
            .env("PORT", "0")
            .env("DATA_DIR", dir.path())
            .env_remove("API_KEY")
            .env_remove("WEBHOOK_SECRET")
            .env_remove("ALLOW_INSECURE")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{env:?} started listening instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{env:?} started");
        std::fs::read_to_string(&log).unwrap()
    };
    let long = "a-long-operator-key-0123";
    let err = run(&[("API_KEY", long)]);
    assert!(err.contains("WEBHOOK_SECRET"), "{err}");
    let err = run(&[
        ("API_KEY", "short-key"),
        ("WEBHOOK_SECRET", "s3cret-s3cret"),
    ]);
    assert!(err.contains("API_KEY of 9 characters"), "{err}");
    let err = run(&[
        ("API_KEY", "   "),
        ("WEBHOOK_SECRET", "s3cret-s3cret-s3cret"),
    ]);
    assert!(err.contains("without API_KEY"), "{err}");
    let err = run(&[("API_KEY", long), ("WEBHOOK_SECRET", "x")]);
    assert!(err.contains("WEBHOOK_SECRET of 1 characters"), "{err}");
    // Neither secret is ever printed in the refusal.
    assert!(!err.contains("s3cret-s3cret-s3cret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_or_a_public_answer() {
    let api_key = "operator-key-7f3a9c2e51";
    let webhook_secret = "webhook-secret-b81d4e";
    let callback_token = "callback-token-c0ffee42";
    let shared_secret = "shared-secret-9d2f11";
    let n8n_password = "n8n-password-e4a7";
    // n8n behind basic auth, and not there: every dispatch fails and is logged.
    let dead = support::redis_server::free_port();
    let n8n_url = format!("http://conversa:{n8n_password}@127.0.0.1:{dead}/webhook/conversa");
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("API_KEY", api_key),
        ("WEBHOOK_SECRET", webhook_secret),
        ("N8N_CALLBACK_TOKEN", callback_token),
        ("N8N_SHARED_SECRET", shared_secret),
        ("N8N_WEBHOOK_URL", &n8n_url),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("DEBOUNCE_MS", "0"),
        ("RETRY_BASE_MS", "50"),
        (
            "RUST_LOG",
            "debug,hyper=info,h2=info,reqwest=info,rustls=info",
        ),
    ])
    .await;
    let mut answers = Vec::new();
    let key = Some(api_key);
    let calls: Vec<(&str, String, Option<Value>, Option<&str>)> = vec![
        (
            "POST",
            format!("/webhooks/kommo/{webhook_secret}"),
            None,
            None,
        ),
        (
            "POST",
            format!("/webhooks/kommo?token={webhook_secret}"),
            None,
            None,
        ),
        ("POST", "/webhooks/kommo/wrong-secret".into(), None, None),
        ("POST", "/webhooks/kommo?token=wrong".into(), None, None),
        ("GET", "/health".into(), None, None),
        ("GET", "/ready".into(), None, None),
        ("GET", "/version".into(), None, None),
        ("GET", "/openapi.json".into(), None, None),
        ("GET", "/stats".into(), None, key),
        ("GET", "/metrics".into(), None, key),
        ("GET", "/conversations/5151".into(), None, key),
        ("GET", "/debug/conversations".into(), None, key),
        ("GET", "/dead-letters".into(), None, key),
        ("GET", "/conversations/5151".into(), None, Some("wrong-key")),
        (
            "POST",
            "/send-response".into(),
            Some(json!({"contact_id": 5151, "text": "x"})),
            Some(callback_token),
        ),
        (
            "POST",
            "/send-response?reply_token=abc".into(),
            Some(json!({"contact_id": 5151, "dispatch_id": "0-5151-1", "text": "x"})),
            None,
        ),
    ];
    for round in 0..2 {
        for (method, path, body, bearer) in &calls {
            let mut req = s.client.request(method.parse().unwrap(), s.url(path));
            if path.starts_with("/webhooks") {
                req = req
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(webhook(&[(&format!("s{round}"), 5151, "Oi")]));
            } else if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let headers = format!("{:?}", r.headers());
            // The answer only: the request's own path holds the secret on purpose.
            answers.push(format!(
                "{method} #{}: {headers} {}",
                answers.len(),
                r.text().await.unwrap()
            ));
        }
        // Let dispatches fail against the missing n8n (logged with their errors).
        wait_until(Duration::from_secs(10), "a failed dispatch logged", || {
            s.log().contains("n8n dispatch")
        })
        .await;
    }
    let log = s.log();
    for secret in [
        api_key,
        webhook_secret,
        callback_token,
        shared_secret,
        n8n_password,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        for a in &answers {
            assert!(!a.contains(secret), "{secret} in an answer: {a}");
        }
    }
    // What the operator sees instead.
    assert!(
        log.contains("/webhooks/kommo/{secret}"),
        "the route, not the path"
    );
    let ready = answers
        .iter()
        .find(|a| a.contains("\"n8n_webhook_url\""))
        .unwrap();
    assert!(
        ready.contains("conversa:***@") || ready.contains("***@127.0.0.1"),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_come_from_closed_sets() {
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[("DATA_DIR", data.path().to_str().unwrap())]).await;
    for round in 0..5 {
        let mut body = webhook(&[(&format!("l{round}"), 6161, "Oi")]);
        for i in 0..500 {
            body.push_str(&format!("&attacker{round}x{i}[add][0][id]=1"));
        }
        let (status, answer) = s.post_form("/webhooks/kommo", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // Made-up methods and paths.
    for m in ["BREW", "PROPFIND", "X-ATTACK-1"] {
        let _ = s
            .client
            .request(m.parse().unwrap(), s.url(&format!("/nowhere/{m}")))
            .send()
            .await
            .unwrap();
    }
    let text = s.metrics().await;
    for made_up in ["attacker", "BREW", "PROPFIND", "X-ATTACK", "nowhere"] {
        assert!(!text.contains(made_up), "{made_up} became a label:\n{text}");
    }
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("conversa_kommo_webhook_events_total"))
        .collect();
    assert!(
        events.iter().any(|l| l.contains("event=\"unknown\"} 2500")),
        "{events:?}"
    );
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 500, "{series} series");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_naming_many_contacts_queues_instead_of_stampeding() {
    let n8n = FakeN8n::start().await;
    n8n.set_delay(Duration::from_millis(100));
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("N8N_MAX_CONCURRENCY", "3"),
        ("DEBOUNCE_MS", "0"),
    ])
    .await;
    let ids: Vec<String> = (0..60).map(|i| format!("many-{i}")).collect();
    let items: Vec<(&str, u64, &str)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), 20_000 + i as u64, "Oi"))
        .collect();
    let (status, answer) = s.post_form("/webhooks/kommo", webhook(&items)).await;
    assert_eq!(status, 200, "{answer}");
    let got = n8n.wait_for_accepted(60, Duration::from_secs(60)).await;
    assert!(n8n.max_in_flight() <= 3, "{} at once", n8n.max_in_flight());
    let mut keys: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    let all = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), all, "a dispatch delivered twice");
    // The unauthenticated readiness probe asks n8n at most once per few seconds.
    let before = n8n.health_checks();
    for _ in 0..20 {
        let (status, ready) = s.get("/ready").await;
        assert_eq!(status, 200, "{ready}");
        assert_eq!(ready["n8n"]["ok"], true, "{ready}");
    }
    assert!(
        n8n.health_checks() - before <= 2,
        "{} probes",
        n8n.health_checks() - before
    );
}

/// A slow n8n (each answer 2 s) with one turn and a 3 s effect timeout: a dispatch whose turn
/// comes late is not sent with too little time left (to be cut off and sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_n8n_never_sees_more_than_its_turns_nor_a_dispatch_twice() {
    let n8n = FakeN8n::start().await;
    n8n.set_delay(Duration::from_secs(2));
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("N8N_MAX_CONCURRENCY", "1"),
        ("EFFECT_TIMEOUT_SECS", "3"),
        ("RETRY_BASE_MS", "200"),
        ("RETRY_MAX_SECS", "1"),
        ("DEBOUNCE_MS", "0"),
    ])
    .await;
    let items = [
        ("slow-1", 30_301, "Oi"),
        ("slow-2", 30_302, "Oi"),
        ("slow-3", 30_303, "Oi"),
    ];
    let (status, _) = s.post_form("/webhooks/kommo", webhook(&items)).await;
    assert_eq!(status, 200);
    n8n.wait_for_accepted(3, Duration::from_secs(60)).await;
    // Settled: nothing left in any of the three outboxes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for contact in [30_301, 30_302, 30_303] {
        loop {
            let (_, c) = s.get(&format!("/conversations/{contact}")).await;
            if c["outbox"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{c}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(n8n.max_in_flight(), 1);
    let all = n8n.received();
    let mut keys: Vec<&str> = all
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["0-30301-1", "0-30302-1", "0-30303-1"],
        "each dispatch once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_a_frozen_store_is_safe_to_retry() {
    let redis = RedisServer::start();
    let n8n = FakeN8n::start().await;
    let s = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_TIMEOUT_MS", "300"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("DEBOUNCE_MS", "0"),
    ])
    .await;
    let body = webhook(&[("frozen-1", 7171, "Oi")]);
    redis.pause();
    let (status, answer) = s.post_form("/webhooks/kommo", body.clone()).await;
    redis.resume();
    assert_eq!(status, 503, "{answer}");
    // Not known to be applied (the write may land once Redis thaws); the retry is safe.
    let (status, answer) = wait_for_200(&s, &body).await;
    assert_eq!(status, 200, "{answer}");
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let mut seen = 0;
    for r in n8n.accepted() {
        for m in r.body["messages"].as_array().unwrap() {
            if m["id"] == "frozen-1" {
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 1, "the message was applied once: {got:?}");
}

async fn wait_for_200(s: &Service, body: &str) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = s.post_form("/webhooks/kommo", body.to_owned()).await;
        if answer.0 == 200 || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every state-changing route, sent twice as a client retrying after an unknown outcome
/// (a 503, a lost answer): the second leaves the conversation as the first did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_changing_route_is_safe_to_retry() {
    let n8n = FakeN8n::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("DEBOUNCE_MS", "0"),
    ])
    .await;
    let (status, _) = s
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Ana Retry", "contact_id": 99990, "areas": ["Previdenciário"]}),
        )
        .await;
    assert_eq!(status, 201);
    let state = |c: &Value| {
        json!({
            "phase": c["phase"], "epoch": c["epoch"], "pending": c["pending_messages"],
            "seller": c["seller"], "links": c["links"],
        })
    };
    let twice = |path: &'static str, body: Value, contact: u64| {
        let s = &s;
        async move {
            let (first, a) = if path == "/webhooks/kommo" {
                s.post_form(path, body.as_str().unwrap().to_owned()).await
            } else {
                s.post(path, body.clone()).await
            };
            assert!(first < 300, "{path}: {first} {a}");
            let (_, after_first) = s.get(&format!("/conversations/{contact}")).await;
            let (second, b) = if path == "/webhooks/kommo" {
                s.post_form(path, body.as_str().unwrap().to_owned()).await
            } else {
                s.post(path, body).await
            };
            assert!(second < 500, "{path}: the retry answered {second} {b}");
            let (_, after_second) = s.get(&format!("/conversations/{contact}")).await;
            assert_eq!(
                state(&after_second),
                state(&after_first),
                "{path}: {a} then {b}"
            );
        }
    };
    twice(
        "/webhooks/kommo",
        json!(webhook(&[("r1", 8181, "Oi")])),
        8181,
    )
    .await;
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let dispatch_id = got[0].body["dispatch_id"].clone();
    twice(
        "/send-response",
        json!({"contact_id": 8181, "dispatch_id": dispatch_id, "text": "Olá"}),
        8181,
    )
    .await;
    twice(
        "/bot-control",
        json!({"contact_id": 8181, "command": "pause"}),
        8181,
    )
    .await;
    twice(
        "/bot-control",
        json!({"contact_id": 8181, "command": "resume"}),
        8181,
    )
    .await;
    twice(
        "/vendedor/comandos",
        json!({"message": "/assumir 8181", "contact_id": 99990}),
        8181,
    )
    .await;
    twice(
        "/vendedor/comandos",
        json!({"message": "/liberar 8181", "contact_id": 99990}),
        8181,
    )
    .await;
    twice(
        "/start-proactive",
        json!({"contact_id": 8282, "lead_id": 8282, "vendedor": "Ana Retry",
               "area_atuacao": "Previdenciário", "trigger_type": "formulario_preenchido"}),
        8282,
    )
    .await;
    twice(
        "/agendamento/request",
        json!({"contact_id": 8282, "preferencia": "amanhã"}),
        8282,
    )
    .await;
    // The sellers directory: a retried add is a 409 naming the seller it already made.
    let (status, err) = s
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Ana Retry", "contact_id": 99990, "areas": ["Previdenciário"]}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    let (_, list) = s.get("/vendedores").await;
    let anas = list["vendedores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "Ana Retry")
        .count();
    assert_eq!(anas, 1);
    // No retry made n8n hear the same thing twice.
    let mut keys: Vec<String> = n8n
        .accepted()
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    let all = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), all, "a dispatch sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_of_input_are_refused_by_name_or_read_by_shape() {
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("KOMMO_ACCOUNT_ID", &ACCOUNT.to_string()),
    ])
    .await;
    // contact_id 0 at the webhook: the item is refused, nothing is created.
    let (status, answer) = says(&s, "z0", 0, "Oi").await;
    assert!(
        status == 400 || answer["rejected"].as_array().is_some_and(|r| !r.is_empty()),
        "{status} {answer}"
    );
    let (status, _) = s.get("/conversations/0").await;
    assert_eq!(status, 400);
    // With the account configured, a body naming none is refused.
    let (status, err) = s.post_form(
        "/webhooks/kommo",
        "message[add][0][id]=x1&message[add][0][contact_id]=5&message[add][0][text]=Oi&message[add][0][type]=incoming"
            .into(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("account")),
        "{err}"
    );
    // A JSON body sent as a form is read for what it is.
    let json_body = json!({
        "account": {"id": ACCOUNT.to_string(), "subdomain": SUBDOMAIN},
        "message": {"add": [{"id": "j1", "contact_id": "9191", "talk_id": "1", "entity_id": "5",
            "entity_type": "lead", "text": "Oi", "type": "incoming", "created_at": "1700000000"}]}
    });
    let (status, answer) = s.post_form("/webhooks/kommo", json_body.to_string()).await;
    assert_eq!(
        (status, answer["items"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    // Query errors name their parameter.
    let (status, err) = s.get("/conversations/active?limit=abc").await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("limit")),
        "{err}"
    );
    // Replies and details over their bounds, by field.
    let (status, err) = s
        .post(
            "/send-response",
            json!({"contact_id": 9191, "text": "x".repeat(5_000)}),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("text")),
        "{err}"
    );
    let (status, err) = s
        .post(
            "/send-response",
            json!({"contact_id": 9191, "messages": vec!["a"; 11]}),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("messages")),
        "{err}"
    );
    let (status, err) = s
        .post(
            "/start-proactive",
            json!({"contact_id": 9292, "lead_id": 1, "vendedor": "x", "area_atuacao": "a",
                   "trigger_type": "formulario_preenchido", "lead_data": {"blob": "y".repeat(20_000)}}),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("lead_data")),
        "{err}"
    );
}
