//! The Kommo side end to end, against the fake Kommo: a customer message arrives as Kommo
//! sends it, n8n (fake, answering through the callback like a real workflow) replies, and the
//! reply reaches WhatsApp through the lead field + Salesbot (or only as a note in `note` mode);
//! a 5xx from the Salesbot run is never retried; decisions leave notes; connectivity endpoints,
//! seller sync and the token state.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fake_kommo::{FakeKommo, FakeLead, FakeMessage, FakeUser, message_add_form};
use support::fake_n8n::FakeN8n;
use support::service::Service;

const LEAD: u64 = 878244;
const CONTACT: u64 = 1298200;
const FIELD: u64 = 555;
const BOT: u64 = 84562;

struct World {
    kommo: FakeKommo,
    n8n: FakeN8n,
    service: Service,
    _dir: tempfile::TempDir,
}

async fn world(channel: &str) -> World {
    world_with(channel, &[]).await
}

async fn world_with(channel: &str, extra: &[(&str, &str)]) -> World {
    let kommo = FakeKommo::start().await;
    let mut lead = FakeLead::new(LEAD);
    lead.contact_ids = vec![CONTACT];
    lead.responsible_user_id = 7001;
    kommo.add_lead(lead);
    kommo.add_lead_field(FIELD);
    kommo.add_user(FakeUser::new(7001, "Carla Mendes"));
    kommo.add_user(FakeUser::new(7002, "Diego Alves"));
    let (access, refresh) = kommo.issue_tokens();
    let n8n = FakeN8n::start().await;
    n8n.set_auto_reply(Some("Olá! Como posso ajudar?".into()));
    let dir = tempfile::tempdir().unwrap();
    let api = kommo.api_url();
    let hook = n8n.url();
    let field = FIELD.to_string();
    let bot = BOT.to_string();
    let mut env = vec![
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &hook),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("KOMMO_API_URL", &api),
        ("KOMMO_ACCESS_TOKEN", &access),
        ("KOMMO_REFRESH_TOKEN", &refresh),
        ("KOMMO_CLIENT_ID", "client-id"),
        ("KOMMO_CLIENT_SECRET", "client-secret"),
        (
            "KOMMO_REDIRECT_URI",
            "https://conversa.example/oauth/callback",
        ),
        ("REPLY_CHANNEL", channel),
        ("KOMMO_REPLY_FIELD_ID", &field),
        ("KOMMO_REPLY_BOT_ID", &bot),
        ("KOMMO_ACCOUNT_ID", "33981183"),
        ("OUTBOX_CLAIM_SECS", "2"),
    ];
    env.extend_from_slice(extra);
    let service = Service::start(&env).await;
    World {
        kommo,
        n8n,
        service,
        _dir: dir,
    }
}

async fn customer_message(w: &World, id: &str, text: &str) {
    let body = message_add_form(
        33981183,
        "adrianocamposadvogado",
        &[FakeMessage::incoming(id, CONTACT, LEAD, 109, text)],
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &body)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Polls `check` with a deadline.
async fn until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the "may not have arrived" note on the lead and checks that the timeline records
/// the reply as dead-lettered with an unknown outcome; returns the conversation.
async fn reported_as_unknown(w: &World) -> serde_json::Value {
    until(15, "the unknown-outcome note", || {
        w.kommo
            .notes()
            .iter()
            .any(|n| n.text.contains("pode não ter chegado"))
    })
    .await;
    let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
    let dead = c["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"] == "dead_lettered")
        .cloned()
        .unwrap_or_default();
    assert!(
        dead["detail"]
            .as_str()
            .unwrap_or("")
            .contains("outcome unknown"),
        "{c}"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_reaches_whatsapp_through_the_lead_field_and_the_salesbot() {
    let w = world("salesbot").await;
    customer_message(&w, "c0925911-ce8f-4994-b117-542b5f28d036", "Oi").await;
    until(15, "the salesbot run", || {
        !w.kommo.salesbot_runs().is_empty()
    })
    .await;
    let runs = w.kommo.salesbot_runs();
    assert_eq!(
        (runs[0].bot_id, runs[0].entity_id, runs[0].entity_type),
        (BOT, LEAD, 2)
    );
    let lead = w.kommo.lead(LEAD).unwrap();
    assert_eq!(
        lead.custom_fields[&FIELD],
        json!([{"value": "Olá! Como posso ajudar?"}])
    );
    let patches = w.kommo.patches();
    assert_eq!(patches.len(), 1, "one write of the field before the run");
    // The timeline says it was sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
        let sent = c["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "reply_sent");
        if sent {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_note_mode_the_reply_is_only_a_note_on_the_lead() {
    let w = world("note").await;
    customer_message(&w, "n-1", "Oi").await;
    until(15, "the note", || {
        w.kommo
            .notes()
            .iter()
            .any(|n| n.lead_id == LEAD && n.text.contains("Olá! Como posso ajudar?"))
    })
    .await;
    assert!(w.kommo.salesbot_runs().is_empty());
    assert!(w.kommo.patches().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_from_the_salesbot_run_is_never_retried_and_is_reported() {
    let w = world("salesbot").await;
    w.kommo.set_server_error_on_salesbot(5);
    customer_message(&w, "x-1", "Oi").await;
    let c = reported_as_unknown(&w).await;
    assert_eq!(
        w.kommo.salesbot_runs().len(),
        1,
        "no second run: it could send twice: {c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesbot_run_answered_after_the_effect_timeout_is_never_run_again() {
    // The bot runs at once but Kommo answers after the engine's overall effect timeout: the
    // timeout must count as "outcome unknown", not as a retry that would run the bot again.
    let w = world_with("salesbot", &[("EFFECT_TIMEOUT_SECS", "1")]).await;
    w.kommo.set_salesbot_delay(Some(Duration::from_secs(3)));
    customer_message(&w, "slow-1", "Oi").await;
    let c = reported_as_unknown(&w).await;
    // Past the retry delay and the claim expiry (2 s): a retry would have run by now.
    let settled = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < settled {
        assert_eq!(w.kommo.salesbot_runs().len(), 1, "the bot ran twice: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
    let outbox = c["outbox"].as_array().expect("the outbox list");
    assert!(outbox.is_empty(), "nothing left to run: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_leave_notes_and_the_connection_can_be_checked() {
    let w = world("note").await;
    let s = &w.service;
    // Sellers come from the Kommo users.
    let (status, synced) = s.post("/vendedores/sincronizar", json!({})).await;
    assert_eq!(
        (status, synced["synced"].as_u64()),
        (200, Some(2)),
        "{synced}"
    );
    let (_, reais) = s.get("/vendedores/reais").await;
    assert_eq!(reais["total"], 2);
    // The lead's responsible user is the seller found for the lead.
    let (status, found) = s.get(&format!("/vendedor/lead/{LEAD}")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["vendedor"]["name"], "Carla Mendes");

    customer_message(&w, "d-1", "Oi").await;
    let (status, _) = s
        .post(
            "/bot-control",
            json!({"contact_id": CONTACT, "command": "pause"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            "/bot-control",
            json!({"contact_id": CONTACT, "command": "resume"}),
        )
        .await;
    assert_eq!(status, 200);
    until(15, "the release note", || {
        w.kommo
            .notes()
            .iter()
            .any(|n| n.text.contains("A IA voltou a responder"))
    })
    .await;

    let (status, conn) = s.get("/test-kommo-connectivity").await;
    assert_eq!(status, 200);
    assert_eq!(conn["ok"], true, "{conn}");
    assert_eq!(conn["token_state"]["state"], "ok");
    let (status, note) = s
        .post(&format!("/create-test-note/{LEAD}"), json!({}))
        .await;
    assert_eq!(status, 201, "{note}");
    let (_, all) = s.get("/test-integration").await;
    assert_eq!(all["kommo"]["ok"], true);
    assert_eq!(all["store"]["ok"], true);
    let (_, health) = s.get("/health").await;
    assert_eq!(health["kommo"]["state"], "ok");
    let _ = &w.n8n;
    // Kommo calls are in /metrics by endpoint and status.
    let metrics = s.metrics().await;
    for family in [
        "conversa_kommo_calls_total{endpoint=\"GET /api/v4/users\",status=\"200\"}",
        "conversa_kommo_call_seconds_bucket",
        "conversa_kommo_limiter_waits_total",
    ] {
        assert!(metrics.contains(family), "missing {family}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_shows_as_reauthorize_needed_without_a_retry_loop() {
    let w = world("note").await;
    w.kommo.expire_access_token();
    w.kommo.revoke_refresh_token();
    let (_, conn) = w.service.get("/test-kommo-connectivity").await;
    assert_eq!(conn["ok"], false);
    assert_eq!(conn["token_state"]["state"], "reauthorize_needed", "{conn}");
    let (_, health) = w.service.get("/health").await;
    assert_eq!(health["kommo"]["state"], "reauthorize_needed");
    let before = w.kommo.token_requests().len();
    for _ in 0..5 {
        w.service.get("/test-kommo-connectivity").await;
    }
    assert_eq!(w.kommo.token_requests().len(), before, "no refresh loop");
    // /oauth/authorize sends the admin to Kommo with a verifiable state.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(w.service.url("/oauth/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("client_id=client-id"), "{location}");
    // A callback with a forged state is refused.
    let (status, _) = w.service.get("/oauth/callback?code=abc&state=1.00").await;
    assert_eq!(status, 401);
}
