//! Dead letters an operator can act on, end to end over HTTP and the CLI, with the fake n8n
//! and a real Redis: a dispatch n8n refuses for good is listed, replayed once after n8n is
//! fixed (under a new dispatch id, with the customer's messages), never replayed into a
//! conversation a seller holds, and dropped; `conversa dead-letters` does the same.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_kommo::wait_until;
use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

const SELLERS: &str = r#"[{"name":"Ana Souza","contact_id":9001}]"#;
const API_KEY: &str = "dead-letters-test-api-key-0123456789";

struct World {
    _redis: RedisServer,
    n8n: FakeN8n,
    service: Service,
}

async fn world() -> World {
    let redis = RedisServer::start();
    let n8n = FakeN8n::start().await;
    let service = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("FICTITIOUS_SELLERS", SELLERS),
        ("DEBOUNCE_MS", "0"),
        ("API_KEY", API_KEY),
    ])
    .await;
    World {
        _redis: redis,
        n8n,
        service,
    }
}

async fn call(w: &World, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = w
        .service
        .client
        .request(method, w.service.url(path))
        .bearer_auth(API_KEY);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let answer = r.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn says(w: &World, contact: u64, id: &str) {
    let body = support::fake_kommo::customer_message(contact, id, "Quero saber do meu benefício");
    let r = w
        .service
        .client
        .post(w.service.url("/webhooks/kommo"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A customer writes and n8n refuses the dispatch for good (a 400: trying the same body again
/// cannot help); returns the dead letter as listed.
async fn dead_dispatch(w: &World, contact: u64, message: &str) -> Value {
    w.n8n.fail_next_with(1, 400);
    says(w, contact, message).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, list) = call(
            w,
            reqwest::Method::GET,
            &format!("/dead-letters?contact_id={contact}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{list}");
        if let Some(d) = list["dead_letters"].as_array().and_then(|l| l.first()) {
            return d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_dispatch_is_replayed_once_after_n8n_returns_and_never_into_a_held_conversation() {
    let w = world().await;
    let dead = dead_dispatch(&w, 42, "m1").await;
    assert_eq!(dead["kind"], "dispatch_message");
    assert_eq!(dead["contact_id"], 42);
    assert!(dead["error"].as_str().unwrap().contains("400"), "{dead}");
    let id = dead["id"].as_str().unwrap().to_owned();
    let refused = w.n8n.received().len();
    assert_eq!(refused, 1);

    // n8n is fixed; the operator replays it: a new dispatch id, the same message, once.
    let (status, replayed) = call(
        &w,
        reqwest::Method::POST,
        &format!("/dead-letters/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    let new_id = replayed["replayed_as"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    let got = w.n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].dispatch_id(), Some(new_id.as_str()));
    assert_eq!(got[0].header("idempotency-key"), Some(new_id.as_str()));
    assert_eq!(got[0].body["messages"][0]["id"], "m1");
    let (status, again) = call(
        &w,
        reqwest::Method::POST,
        &format!("/dead-letters/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 404, "replayed once: {again}");
    let (_, list) = call(&w, reqwest::Method::GET, "/dead-letters", None).await;
    assert_eq!(list["count"], 0, "{list}");
    let (_, c) = call(&w, reqwest::Method::GET, "/conversations/42", None).await;
    assert!(
        c["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "replayed" && e["dispatch_id"] == id.as_str()),
        "{c}"
    );

    // Another conversation's dispatch dies, then a seller takes the conversation: no replay.
    let dead = dead_dispatch(&w, 43, "m2").await;
    let id = dead["id"].as_str().unwrap().to_owned();
    let (status, took) = call(
        &w,
        reqwest::Method::POST,
        "/vendedor/comandos",
        Some(json!({"message": "/assumir 43", "contact_id": 9001})),
    )
    .await;
    assert_eq!(status, 200, "{took}");
    let before = w.n8n.received().len();
    let (status, err) = call(
        &w,
        reqwest::Method::POST,
        &format!("/dead-letters/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"], "held_by_seller");
    assert_eq!(err["holder"]["name"], "Ana Souza");
    assert_eq!(w.n8n.received().len(), before, "nothing went to n8n");
    let (_, list) = call(
        &w,
        reqwest::Method::GET,
        "/dead-letters?contact_id=43",
        None,
    )
    .await;
    assert_eq!(list["count"], 1, "still listed: {list}");

    // The operator gives up on it.
    let (status, dropped) = call(
        &w,
        reqwest::Method::DELETE,
        &format!("/dead-letters/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{dropped}");
    assert_eq!(dropped["dropped"]["id"], id.as_str());
    let (_, list) = call(&w, reqwest::Method::GET, "/dead-letters", None).await;
    assert_eq!(list["count"], 0, "{list}");
    let (status, _) = call(
        &w,
        reqwest::Method::DELETE,
        &format!("/dead-letters/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Bad ids are 400 naming the field; without the key, 401.
    let (status, err) = call(
        &w,
        reqwest::Method::POST,
        "/dead-letters/a%20b/replay",
        None,
    )
    .await;
    assert_eq!((status, err["field"].as_str()), (400, Some("id")), "{err}");
    let r = w
        .service
        .client
        .get(w.service.url("/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let metrics = w
        .service
        .client
        .get(w.service.url("/metrics"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "conversa_dead_letters_replayed_total 1"),
        "{metrics}"
    );
}

async fn cli(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_conversa"))
        .arg("dead-letters")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONVERSA_URL", w.service.url(""))
        .env("API_KEY", API_KEY)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_lists_replays_and_drops() {
    let w = world().await;
    let first = dead_dispatch(&w, 51, "c1").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = dead_dispatch(&w, 52, "c2").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (code, out, err) = cli(&w, &["list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&first) && out.contains(&second), "{out}");
    assert!(out.contains("dispatch_message contact 51"), "{out}");
    let (code, out, _) = cli(&w, &["list", "--contact", "52", "--json"]).await;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["count"], 1);

    let (code, out, err) = cli(&w, &["replay", &first]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("Replayed {first} as ")), "{out}");
    wait_until(Duration::from_secs(10), "the replayed dispatch", || {
        w.n8n.accepted().iter().any(|r| r.body["contact_id"] == 51)
    })
    .await;
    let (code, _, err) = cli(&w, &["replay", &first]).await;
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    let (code, out, _) = cli(&w, &["drop", &second]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("Dropped {second}."));
    let (code, out, _) = cli(&w, &["list"]).await;
    assert_eq!((code, out.trim()), (0, "No dead letters."));
}
