//! The production surface: the API key on operator endpoints, refusing to expose the API
//! without one, JSON errors from the middleware (413, 405), request ids, and `/ready`.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::redis_server::RedisServer;
use support::service::Service;

/// Every operation of the OpenAPI document — which lists every route the router has (see
/// `tests/openapi.rs`) — as (method, concrete path, body): path parameters become `1`,
/// operations with a request body get `{}`. A new route is in this list without anyone
/// having to remember to add it.
fn documented_operations() -> Vec<(String, String, Option<Value>)> {
    let doc = serde_json::to_value(conversa::app::openapi()).unwrap();
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let body = op.get("requestBody").map(|_| json!({}));
            ops.push((
                method.to_uppercase(),
                conversa::openapi::concrete(template),
                body,
            ));
        }
    }
    ops
}

async fn call(
    s: &Service,
    method: &str,
    path: &str,
    body: &Option<Value>,
    key: Option<&str>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.client.request(method, s.url(path));
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_need_the_api_key_and_public_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("API_KEY", "k3y"),
    ])
    .await;
    let ops = documented_operations();
    let (public, protected): (Vec<_>, Vec<_>) = ops
        .into_iter()
        .partition(|(_, path, _)| conversa::http::layers::is_public(path));
    assert!(protected.len() >= 20, "{protected:?}");
    assert!(public.len() >= 8, "{public:?}");
    // Unknown paths are behind the key too (the fallback is protected).
    let unknown = ("GET".to_owned(), "/no-such-route".to_owned(), None);
    for (method, path, body) in protected.iter().chain([&unknown]) {
        for key in [None, Some("wrong")] {
            let (status, err) = call(&s, method, path, body, key).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {err}");
            assert_eq!(
                err["error"], "unauthorized",
                "JSON 401 body: {method} {path}"
            );
        }
        let (status, err) = call(&s, method, path, body, Some("k3y")).await;
        assert_ne!(status, 401, "{method} {path} with the key: {err}");
    }
    for (method, path, body) in &public {
        // n8n's callback has its own proof (the callback token or a reply token), not the key.
        let own = (path == "/send-response").then_some(support::service::CALLBACK_TOKEN);
        let (status, err) = call(&s, method, path, body, own).await;
        assert_ne!(status, 401, "{method} {path} is public: {err}");
    }
    for path in ["/health", "/ready", "/version", "/openapi.json", "/docs"] {
        let (status, _) = call(&s, "GET", path, &None, None).await;
        assert_eq!(status, 200, "{path} is public");
    }
    // Endpoints with their own secret are not behind the API key.
    let (status, _) = call(
        &s,
        "POST",
        "/send-response",
        &Some(json!({"contact_id": 1, "text": "x"})),
        Some(support::service::CALLBACK_TOKEN),
    )
    .await;
    assert_eq!(status, 404, "reaches the handler (unknown contact)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_not_exposed_beyond_loopback_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_conversa"))
        .env("HOST", "0.0.0.0")
        .env("PORT", "0")
        .env("DATA_DIR", dir.path())
        .env_remove("API_KEY")
        .env_remove("ALLOW_INSECURE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("API_KEY"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_errors_are_json_and_requests_carry_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("MAX_BODY_BYTES", "1024"),
    ])
    .await;
    let big = "x".repeat(4096);
    let r = s
        .client
        .post(s.url("/webhooks/kommo"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("message%5Badd%5D%5B0%5D%5Btext%5D={big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    let r = s.client.delete(s.url("/bot-control")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let made = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
    let again = s.client.get(s.url("/health")).send().await.unwrap();
    let other = again.headers()["x-request-id"].to_str().unwrap();
    assert!(
        made.len() >= 18 && other != made,
        "ids are made, each its own: {made} {other}"
    );
    let r = s
        .client
        .get(s.url("/health"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "req-123",
        "a given id is echoed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let s = Service::start(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "300")]).await;
    let (status, body) = s.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"]["backend"], "redis");
    assert_eq!(body["configured"]["api_key"], false);
    redis.stop();
    let (status, body) = s.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200, "liveness does not depend on the store");
}
