//! `/metrics` exposes the promised families after a scripted conversation.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fake_n8n::FakeN8n;
use support::service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_http_actors_events_effects_replies_outbox_and_store() {
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
    ])
    .await;
    let r = s
        .client
        .post(s.url("/webhooks/kommo"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("message%5Badd%5D%5B0%5D%5Bid%5D=m1&message%5Badd%5D%5B0%5D%5Bcontact_id%5D=5&message%5Badd%5D%5B0%5D%5Btext%5D=Oi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let d = got[0].body["dispatch_id"].as_str().unwrap();
    let (status, _) = s
        .post("/bot-control", json!({"contact_id": 5, "command": "pause"}))
        .await;
    assert_eq!(status, 200);
    let (status, reply) = s
        .post(
            "/send-response",
            json!({"contact_id": 5, "dispatch_id": d, "text": "Olá"}),
        )
        .await;
    assert_eq!((status, reply["reason"].as_str()), (200, Some("paused")));

    let text = s.metrics().await;
    for family in [
        "http_requests_total{route=\"/webhooks/kommo\",method=\"POST\",status=\"200\"}",
        "http_request_duration_seconds_bucket",
        "conversa_actors_active",
        "conversa_actor_activations_total",
        "conversa_actor_passivations_total",
        "conversa_actor_restarts_total",
        "conversa_events_total{type=\"customer_message\"}",
        "conversa_effects_total{kind=\"dispatch_message\",result=\"ok\"}",
        "conversa_effect_seconds_bucket{kind=\"dispatch_message\"",
        "conversa_replies_total{result=\"dropped\",reason=\"paused\"}",
        "conversa_outbox_pending_contacts",
        "conversa_effects_running",
        "conversa_store_seconds_bucket{op=\"save\"",
        "conversa_store_seconds_bucket{op=\"load\"",
        "conversa_store_cas_conflicts_total",
        "kommo_webhook_events_total{event=\"message:incoming\"}",
        "kommo_limiter_waits_total",
        "kommo_token_refreshes_total",
    ] {
        assert!(text.contains(family), "missing {family} in:\n{text}");
    }
}
