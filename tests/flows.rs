//! The conversation flows end to end over HTTP, with the fake n8n and a real Redis: AI replies,
//! seller takeover (API and WhatsApp), lease expiry across a restart, proactive starts,
//! scheduling, the debounce buffer across `kill -9`, and n8n being down for a while.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fake_n8n::{FakeN8n, Received};
use support::redis_server::RedisServer;
use support::service::Service;

const SELLERS: &str = r#"[{"name":"Ana Souza","contact_id":9001,"areas":["Previdenciário"]},
                          {"name":"Bruno Lima","contact_id":9002}]"#;

struct World {
    _redis: RedisServer,
    n8n: FakeN8n,
    service: Service,
}

async fn world(extra: &[(&str, &str)]) -> World {
    let redis = RedisServer::start();
    let n8n = FakeN8n::start().await;
    let url = redis.url();
    let hook = n8n.url();
    let mut env = vec![
        ("REDIS_URL", url.as_str()),
        ("N8N_WEBHOOK_URL", hook.as_str()),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("FICTITIOUS_SELLERS", SELLERS),
        ("ELIGIBLE_AREAS", "previdenciario,Trabalhista"),
        ("DEBOUNCE_MS", "0"),
        ("TIMER_SWEEP_MS", "200"),
        ("OUTBOX_CLAIM_SECS", "2"),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v));
    }
    let service = Service::start(&env).await;
    World {
        _redis: redis,
        n8n,
        service,
    }
}

fn events(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.body["event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn phase(s: &Service, contact: u64) -> String {
    let (_, c) = s.get(&format!("/conversations/{contact}")).await;
    c["phase"].as_str().unwrap_or("none").to_owned()
}

/// Waits until `contact`'s phase is `want`.
async fn phase_becomes(s: &Service, contact: u64, want: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let p = phase(s, contact).await;
        if p == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phase stayed {p}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_reply_in_flight_when_a_seller_takes_over_never_reaches_the_customer() {
    let w = world(&[]).await;
    let s = &w.service;
    s.customer_says(42, "m1", "Quero saber do meu benefício")
        .await;
    let d = w.n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let dispatch_id = d[0].body["dispatch_id"].as_str().unwrap().to_owned();

    let (status, took) = s
        .post(
            "/vendedor/comandos",
            json!({"message": "/assumir 42", "contact_id": 9001}),
        )
        .await;
    assert_eq!(status, 200, "{took}");
    assert_eq!(took["phase"], "human_assigned");

    // n8n answers the dispatch it got before the takeover: dropped.
    let (status, late) = s
        .post(
            "/send-response",
            json!({"contact_id": 42, "dispatch_id": dispatch_id, "text": "Olá!"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (late["delivered"].as_bool(), late["reason"].as_str()),
        (Some(false), Some("human_assigned"))
    );

    // Customer messages while the seller holds it never go to n8n.
    s.customer_says(42, "m2", "Oi?").await;
    // Another seller is refused, naming the holder; a stranger is forbidden; nonsense is 400.
    let (status, err) = s
        .post(
            "/vendedor/comandos",
            json!({"message": "/assumir 42", "contact_id": 9002}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["holder"]["name"], "Ana Souza");
    let (status, _) = s
        .post(
            "/vendedor/comandos",
            json!({"message": "/assumir 42", "contact_id": 5555}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, err) = s
        .post(
            "/vendedor/comandos",
            json!({"message": "/voar 42", "contact_id": 9001}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["message"].as_str().unwrap().contains("/liberar"),
        "{err}"
    );
    let (_, st) = s
        .post(
            "/vendedor/comandos",
            json!({"message": "/status 42", "contact_id": 9002}),
        )
        .await;
    assert_eq!(st["phase"], "human_assigned");

    // Release: n8n hears that the bot is back.
    let (status, _) = s
        .post(
            "/vendedor/comandos",
            json!({"message": "/liberar 42", "contact_id": 9001}),
        )
        .await;
    assert_eq!(status, 200);
    let got = w.n8n.wait_for_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(events(&got), ["message", "released"]);
    assert_eq!(got[1].body["seller"]["name"], "Ana Souza");
    let (_, conv) = s.get("/conversations/42").await;
    assert_eq!(conv["phase"], "bot_active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_command_typed_in_whatsapp_acts_and_never_reaches_n8n() {
    let w = world(&[]).await;
    let s = &w.service;
    s.customer_says(43, "c1", "Oi").await;
    w.n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let reply = s.customer_says(9002, "s1", "/assumir 43").await;
    assert_eq!(reply["commands"][0]["phase"], "human_assigned", "{reply}");
    assert_eq!(phase(s, 43).await, "human_assigned");
    let (status, _) = s.get("/conversations/9002").await;
    assert_eq!(status, 404, "the seller's own chat is not a conversation");
    // A customer typing something that looks like a command is just a customer.
    s.customer_says(44, "c2", "/assumir 43").await;
    let got = w.n8n.wait_for_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].body["contact_id"], 44);
    assert_eq!(events(&w.n8n.accepted()), ["message", "message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expiry_after_a_restart_still_returns_the_conversation_to_the_bot() {
    let mut w = world(&[
        ("HUMAN_LEASE_MINUTES", "0.05"),
        ("LEASE_NUDGE_MINUTES", "0"),
    ])
    .await;
    let (status, _) = w
        .service
        .post(
            "/vendedor/comandos",
            json!({"message": "/assumir 45", "contact_id": 9001}),
        )
        .await;
    assert_eq!(status, 200);
    w.service.kill9();
    w.service.restart().await;
    assert_eq!(phase(&w.service, 45).await, "human_assigned");
    phase_becomes(&w.service, 45, "bot_active", 15).await;
    let got = w.n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(events(&got), ["released"]);
    assert_eq!(got[0].body["released"]["reason"], "lease_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_starts_are_eligible_personalised_and_never_duplicated() {
    let w = world(&[]).await;
    let s = &w.service;
    let start = |contact: u64, area: &str, seller: &str| {
        json!({"contact_id": contact, "lead_id": 777, "vendedor": seller, "area_atuacao": area,
               "trigger_type": "formulario_preenchido", "lead_data": {"nome": "Maria"}})
    };
    let (status, created) = s
        .post("/start-proactive", start(50, "Previdenciário", "ana souza"))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["phase"], "proactive");
    let got = w.n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body["event"], "proactive");
    assert_eq!(got[0].body["seller"]["name"], "Ana Souza");
    assert_eq!(got[0].body["area_atuacao"], "Previdenciário");
    assert_eq!(got[0].body["trigger_type"], "formulario_preenchido");
    assert_eq!(got[0].body["lead_data"]["nome"], "Maria");
    assert_eq!(got[0].body["dispatch_id"], created["dispatch_id"]);

    let (status, dup) = s
        .post("/start-proactive", start(50, "previdenciario", "Ana Souza"))
        .await;
    assert_eq!(
        (status, dup["created"].as_bool(), dup["reason"].as_str()),
        (200, Some(false), Some("duplicate"))
    );
    let (status, err) = s
        .post("/start-proactive", start(51, "Tributário", "Ana Souza"))
        .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (422, Some("area_not_eligible"))
    );
    let (status, err) = s
        .post("/start-proactive", start(51, "trabalhista", "Zé Ninguém"))
        .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (422, Some("unknown_seller"))
    );
    // Never over a seller's conversation.
    s.post(
        "/vendedor/comandos",
        json!({"message": "/assumir 52", "contact_id": 9002}),
    )
    .await;
    let (status, held) = s
        .post("/start-proactive", start(52, "trabalhista", "Bruno Lima"))
        .await;
    assert_eq!(
        (status, held["reason"].as_str()),
        (200, Some("human_assigned"))
    );

    // The customer's first answer moves it to the bot.
    s.customer_says(50, "p1", "Oi, pode falar").await;
    assert_eq!(phase(s, 50).await, "bot_active");
    let got = w.n8n.wait_for_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(events(&got), ["proactive", "message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduling_request_goes_to_n8n_and_its_outcome_ends_the_phase() {
    let w = world(&[]).await;
    let s = &w.service;
    // Nobody responsible (no seller opened or holds it, no Kommo to ask): 422, nothing sent.
    s.customer_says(61, "n1", "Quero marcar").await;
    w.n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let (status, err) = s
        .post("/agendamento/request", json!({"contact_id": 61}))
        .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (422, Some("no_seller")),
        "{err}"
    );
    // A conversation a seller opened: that seller is responsible.
    let (status, _) = s
        .post("/vendedores/adicionar", json!({"nome": "Bia Lima"}))
        .await;
    assert_eq!(status, 201);
    let start = json!({"contact_id": 60, "vendedor": "Bia Lima", "area_atuacao": "Trabalhista",
        "trigger_type": "material_baixado"});
    let (status, opened) = s.post("/start-proactive", start).await;
    assert_eq!(status, 201, "{opened}");
    s.customer_says(60, "s1", "Quero marcar uma reunião").await;
    w.n8n.wait_for_accepted(3, Duration::from_secs(10)).await;
    let (status, acc) = s
        .post(
            "/agendamento/request",
            json!({"contact_id": 60, "preferencia": "amanhã 10h"}),
        )
        .await;
    assert_eq!(status, 202, "{acc}");
    assert_eq!(acc["phase"], "scheduling");
    assert_eq!(acc["found_by"], "conversation", "{acc}");
    assert_eq!(acc["vendedor"]["name"], "Bia Lima", "{acc}");
    let got = w.n8n.wait_for_accepted(4, Duration::from_secs(10)).await;
    assert_eq!(got[3].body["event"], "scheduling");
    assert_eq!(got[3].body["scheduling"]["preferencia"], "amanhã 10h");
    let (status, again) = s
        .post("/agendamento/request", json!({"contact_id": 60}))
        .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (409, Some("already_scheduling"))
    );
    let (status, done) = s
        .post(
            "/send-response",
            json!({"contact_id": 60, "dispatch_id": acc["dispatch_id"], "text": "Agendado para amanhã 10h",
                   "scheduling": {"status": "confirmed", "when": "amanhã 10h"}}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    // Accepted by the conversation, but with no Kommo here nothing can deliver it: said so.
    assert_eq!(done["delivered"], false, "{done}");
    assert_eq!(done["reason"], "kommo_not_configured", "{done}");
    assert_eq!(done["scheduling"], "confirmed");
    assert_eq!(phase(s, 60).await, "bot_active");
    let (status, err) = s
        .post("/agendamento/request", json!({"talk_id": "abc"}))
        .await;
    assert_eq!((status, err["field"].as_str()), (400, Some("talk_id")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debounce_buffer_survives_kill9() {
    let mut w = world(&[("DEBOUNCE_MS", "1500")]).await;
    w.service.customer_says(70, "b1", "Oi").await;
    w.service.customer_says(70, "b2", "tudo bem?").await;
    w.service.kill9();
    assert!(
        w.n8n.accepted().is_empty(),
        "killed before the debounce elapsed"
    );
    w.service.restart().await;
    let got = w.n8n.wait_for_accepted(1, Duration::from_secs(15)).await;
    let ids: Vec<_> = got[0].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["b1", "b2"], "one dispatch with the whole burst");
    // Nothing more goes out for that burst.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, c) = w.service.get("/conversations/70").await;
        if c["outbox"].as_array().is_some_and(|o| o.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(w.n8n.accepted().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n8n_down_for_a_while_loses_nothing() {
    let w = world(&[]).await;
    let s = &w.service;
    w.n8n.set_down(true);
    for c in 80..85u64 {
        s.customer_says(c, &format!("d{c}"), "Oi").await;
    }
    // Retries are happening against the down n8n.
    w.n8n
        .wait_until(Duration::from_secs(10), "failed attempts", |r| {
            r.len() >= 10
        })
        .await;
    assert!(w.n8n.accepted().is_empty());
    w.n8n.set_down(false);
    let got = w.n8n.wait_for_accepted(5, Duration::from_secs(30)).await;
    let mut contacts: Vec<u64> = got
        .iter()
        .map(|r| r.body["contact_id"].as_u64().unwrap())
        .collect();
    contacts.sort();
    assert_eq!(contacts, (80..85).collect::<Vec<_>>());
}
