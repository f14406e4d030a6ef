//! `POST /webhooks/kommo` over HTTP against the real binary: Kommo's form encoding, redelivery,
//! malformed bodies, the URL secret and the account check.

mod support;

use std::time::Duration;

use support::fake_kommo::form;
use support::fake_n8n::FakeN8n;
use support::service::Service;

/// The real WhatsApp Lite capture of docs/kommo.md (*Capture B*), as Kommo form-encodes it.
fn capture_b(message_id: &str, text: &str) -> String {
    let p = |k: &str| format!("message[add][0][{k}]");
    let keys = [
        ("id", message_id),
        ("chat_id", "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a"),
        ("talk_id", "109"),
        ("contact_id", "1298200"),
        ("text", text),
        ("created_at", "1736447224"),
        ("element_type", "2"),
        ("entity_type", "lead"),
        ("element_id", "878244"),
        ("entity_id", "878244"),
        ("type", "incoming"),
        ("author[id]", "d408292e-3376-4108-82e3-45cb200f62c3"),
        ("author[type]", "external"),
        ("author[name]", "Douglas Augusto"),
        ("origin", "com.amocrm.amocrmwa"),
    ];
    let mut pairs: Vec<(String, String)> = vec![
        ("account[subdomain]".into(), "adrianocamposadvogado".into()),
        ("account[id]".into(), "33981183".into()),
        (
            "account[_links][self]".into(),
            "https://adrianocamposadvogado.amocrm.com".into(),
        ),
    ];
    pairs.extend(keys.iter().map(|(k, v)| (p(k), v.to_string())));
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kommo_message_reaches_n8n_once_however_often_it_is_redelivered() {
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("KOMMO_ACCOUNT_ID", "33981183"),
    ])
    .await;
    let body = capture_b("c0925911-ce8f-4994-b117-542b5f28d036", "Oi");
    for _ in 0..20 {
        let (status, reply) = service.post_form("/webhooks/kommo", body.clone()).await;
        assert_eq!(status, 200, "{reply}");
    }
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let (_, conv) = service.get("/conversations/1298200").await;
    assert_eq!(conv["phase"], "bot_active", "{conv}");
    assert_eq!(conv["links"]["lead_id"], 878244);
    assert_eq!(conv["links"]["talk_id"], 109);
    assert_eq!(got[0].body["event"], "message");
    assert_eq!(got[0].body["messages"][0]["text"], "Oi");
    assert_eq!(got[0].body["contact_id"], 1298200);
    // Let the outbox settle, then prove no second dispatch went out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, conv) = service.get("/conversations/1298200").await;
        if conv["outbox"].as_array().is_some_and(|o| o.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained: {conv}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n8n.accepted().len(), 1, "20 redeliveries, one dispatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_item_never_blocks_the_others_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&[("DATA_DIR", dir.path().to_str().unwrap())]).await;
    // A body Kommo would resend whole: one good message, one without a usable contact_id,
    // one with contact_id 0.
    let body = form(&[
        ("message[add][0][id]", "good-1"),
        ("message[add][0][contact_id]", "5001"),
        ("message[add][0][text]", "Oi"),
        ("message[add][1][id]", "bad-1"),
        ("message[add][1][contact_id]", "not-a-number"),
        ("message[add][1][text]", "Oi"),
        ("message[add][2][id]", "bad-2"),
        ("message[add][2][contact_id]", "0"),
    ]);
    let (status, answer) = service.post_form("/webhooks/kommo", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["items"], 1, "{answer}");
    assert_eq!(answer["changed"], 1, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    let keys: Vec<&str> = rejected
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["message[add][1][contact_id]", "message[add][2][contact_id]"],
        "{answer}"
    );
    let (_, stats) = service.get("/stats").await;
    assert_eq!(stats["contacts"], 1, "the good item is stored: {stats}");
    // An operator can list what was rejected.
    let (status, dead) = service.get("/dead-letters?kind=webhook_item").await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["count"], 2, "{dead}");
    assert_eq!(
        dead["dead_letters"][0]["key"],
        "message[add][2][contact_id]"
    );
    assert!(
        service.log().contains("Kommo webhook item rejected"),
        "logged at WARN"
    );
    // A body with nothing usable is still refused, and changes nothing.
    let (status, err) = service
        .post_form("/webhooks/kommo", "account[id]=acme".into())
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["field"], "account[id]", "{err}");
    let (_, stats) = service.get("/stats").await;
    assert_eq!(stats["contacts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_is_required_in_the_query_or_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("WEBHOOK_SECRET", "s3cr3t-hook"),
    ])
    .await;
    let body = capture_b("m-secret-1", "Oi");
    for path in [
        "/webhooks/kommo",
        "/webhooks/kommo?token=wrong",
        "/webhooks/kommo/wrong",
    ] {
        let (status, err) = service.post_form(path, body.clone()).await;
        assert_eq!(status, 401, "{path}: {err}");
        assert_eq!(err["error"], "unauthorized");
    }
    let (_, stats) = service.get("/stats").await;
    assert_eq!(stats["contacts"], 0);
    let (status, _) = service
        .post_form("/webhooks/kommo?token=s3cr3t-hook", body.clone())
        .await;
    assert_eq!(status, 200);
    let (status, _) = service.post_form("/webhooks/kommo/s3cr3t-hook", body).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_from_another_account_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("KOMMO_ACCOUNT_ID", "1"),
    ])
    .await;
    let (status, err) = service
        .post_form("/webhooks/kommo", capture_b("m1", "Oi"))
        .await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["error"], "wrong_account");
    let (status, _) = service.get("/conversations/1298200").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_body_applies_every_item_and_counts_the_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&[("DATA_DIR", dir.path().to_str().unwrap())]).await;
    let body = form(&[
        ("account[id]", "33981183"),
        ("account[subdomain]", "conta"),
        ("message[add][0][id]", "mix-1"),
        ("message[add][0][contact_id]", "501"),
        ("message[add][0][text]", "Olá, tudo bem?"),
        ("message[add][0][type]", "incoming"),
        ("message[add][1][id]", "mix-2"),
        ("message[add][1][contact_id]", "502"),
        ("message[add][1][text]", ""),
        ("message[add][1][attachment][type]", "voice"),
        (
            "message[add][1][attachment][link]",
            "https://drive-c.kommo.com/download/x/data.m4a",
        ),
        ("message[add][1][attachment][file_name]", "data.m4a"),
        ("talk[add][0][talk_id]", "77"),
        ("talk[add][0][contact_id]", "501"),
        ("talk[add][0][chat_id]", "chat-501"),
        ("talk[add][0][entity_id]", "9001"),
        ("talk[add][0][entity_type]", "lead"),
        ("task[add][0][id]", "5"),
    ]);
    let (status, reply) = service.post_form("/webhooks/kommo", body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["items"], 3);
    assert_eq!(reply["unknown"][0], "task[add]");
    let (_, c501) = service.get("/conversations/501").await;
    assert_eq!(c501["phase"], "bot_active");
    assert_eq!(c501["links"]["talk_id"], 77);
    assert_eq!(c501["links"]["chat_id"], "chat-501");
    let (_, c502) = service.get("/conversations/502").await;
    assert_eq!(c502["pending_messages"][0], "mix-2");
}
