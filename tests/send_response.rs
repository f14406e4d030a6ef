//! `POST /send-response`, n8n's callback, over HTTP: a current reply is accepted for delivery;
//! a late one is recorded and dropped with its reason; auth and bad input are refused.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_n8n::FakeN8n;
use support::service::Service;

async fn callback(service: &Service, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = service
        .client
        .post(service.url("/send-response"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn start(n8n: &FakeN8n, dir: &tempfile::TempDir) -> Service {
    Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("N8N_CALLBACK_TOKEN", "cb-token"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_to_the_current_dispatch_is_delivered_and_a_late_one_dropped() {
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let service = start(&n8n, &dir).await;
    service.customer_says(42, "m1", "Oi").await;
    let first = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let d1 = first[0].body["dispatch_id"].as_str().unwrap().to_owned();
    let callback_url = first[0].body["callback_url"].as_str().unwrap();
    assert!(
        callback_url.starts_with(&format!(
            "{}?contact_id=42&dispatch_id={d1}&reply_token=",
            service.url("/send-response")
        )),
        "n8n is told where to answer, with the reply's proof: {callback_url}"
    );

    // The customer writes again before n8n answers: the first dispatch is superseded.
    service.customer_says(42, "m2", "Quanto custa?").await;
    let second = n8n.wait_for_accepted(2, Duration::from_secs(10)).await;
    let d2 = second[1].body["dispatch_id"].as_str().unwrap().to_owned();
    let ids: Vec<_> = second[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["m1", "m2"],
        "every message since the last delivered reply"
    );

    let (status, late) = callback(
        &service,
        Some("cb-token"),
        json!({"contact_id": 42, "dispatch_id": d1, "text": "Olá!"}),
    )
    .await;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late["delivered"], false);
    assert_eq!(late["reason"], "superseded");

    let (status, ok) = callback(
        &service,
        Some("cb-token"),
        json!({"contact_id": "42", "dispatch_id": d2, "messages": ["Olá!", {"text": "Custa R$ 10."}]}),
    )
    .await;
    assert_eq!(status, 200, "{ok}");
    // Past the fence; with no Kommo configured here, truthfully not delivered.
    assert_eq!(ok["delivered"], false, "{ok}");
    assert_eq!(ok["reason"], "kommo_not_configured", "{ok}");
    let (_, conv) = service.get("/conversations/42").await;
    let whats: Vec<_> = conv["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_owned())
        .collect();
    assert!(whats.contains(&"reply_dropped".to_owned()), "{whats:?}");
    assert!(whats.contains(&"reply_accepted".to_owned()), "{whats:?}");
    assert!(conv["pending_messages"].as_array().unwrap().is_empty());

    // After a pause, even the current dispatch's reply is dropped.
    service.customer_says(42, "m3", "Oi de novo").await;
    let third = n8n.wait_for_accepted(3, Duration::from_secs(10)).await;
    let d3 = third[2].body["dispatch_id"].as_str().unwrap().to_owned();
    let (status, _) = service
        .post(
            "/bot-control",
            json!({"contact_id": 42, "command": "pause"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, paused) = callback(
        &service,
        Some("cb-token"),
        json!({"contact_id": 42, "dispatch_id": d3, "text": "Oi!"}),
    )
    .await;
    assert_eq!(paused["delivered"], false);
    assert_eq!(paused["reason"], "paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_are_refused_and_change_nothing() {
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let service = start(&n8n, &dir).await;
    service.customer_says(7, "m1", "Oi").await;
    let body = json!({"contact_id": 7, "text": "Olá"});
    let (status, err) = callback(&service, None, body.clone()).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("unauthorized")));
    let (status, _) = callback(&service, Some("wrong"), body.clone()).await;
    assert_eq!(status, 401);
    let (status, err) = callback(
        &service,
        Some("cb-token"),
        json!({"contact_id": 999, "text": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = callback(
        &service,
        Some("cb-token"),
        json!({"contact_id": 7, "text": "  "}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["field"], "text");
    let (status, err) = callback(&service, Some("cb-token"), json!({"text": "x"})).await;
    assert_eq!(status, 400, "{err}");
    let (_, conv) = service.get("/conversations/7").await;
    let whats: Vec<_> = conv["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["what"].as_str())
        .collect();
    assert!(!whats.iter().any(|w| w.starts_with("reply")), "{whats:?}");
}
