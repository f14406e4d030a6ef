//! A sales team's real day, end to end against the real binary and the fakes of Kommo and n8n
//! (`tests/support/`, written from docs/kommo.md): what `/send-response` says is what happened,
//! leads are found when nobody gave one, a reply in parts is one WhatsApp message per part, what
//! the customer said during a hold reaches the bot when it is back, conversations end, commands
//! on unknown contacts behave, errors say what to fix, and a configuration that cannot work is
//! refused at start with the variable named. The store is a real `redis-server` (the stores'
//! conformance suite covers the embedded one).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_kommo::{
    FakeContact, FakeKommo, FakeLead, FakeMessage, message_add_form, wait_until,
};
use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

const ACCOUNT: u64 = 33981183;
const LEAD: u64 = 878244;
const CONTACT: u64 = 1298200;
const FIELD: u64 = 555;
const BOT: u64 = 84562;

struct World {
    kommo: FakeKommo,
    n8n: FakeN8n,
    service: Service,
    /// The durable store: a real `redis-server` with the project's `redis.conf`.
    _redis: RedisServer,
}

async fn world(extra: &[(&str, &str)]) -> World {
    let kommo = FakeKommo::start().await;
    let mut lead = FakeLead::new(LEAD);
    lead.contact_ids = vec![CONTACT];
    kommo.add_lead(lead);
    kommo.add_lead_field(FIELD);
    let (access, refresh) = kommo.issue_tokens();
    let n8n = FakeN8n::start().await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let (api, hook) = (kommo.api_url(), n8n.url());
    let (field, bot) = (FIELD.to_string(), BOT.to_string());
    let mut env = vec![
        ("REDIS_URL", redis_url.as_str()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &hook),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("KOMMO_API_URL", &api),
        ("KOMMO_ACCESS_TOKEN", &access),
        ("KOMMO_REFRESH_TOKEN", &refresh),
        ("KOMMO_REPLY_FIELD_ID", &field),
        ("KOMMO_REPLY_BOT_ID", &bot),
        ("KOMMO_ACCOUNT_ID", "33981183"),
        ("REPLY_PART_DELAY_MS", "100"),
    ];
    env.extend_from_slice(extra);
    let service = Service::start(&env).await;
    World {
        kommo,
        n8n,
        service,
        _redis: redis,
    }
}

/// A customer message as Kommo sends it, on `LEAD`; returns the dispatch n8n got for it.
async fn customer_says(w: &World, id: &str, text: &str) -> Value {
    let body = message_add_form(
        ACCOUNT,
        "adrianocamposadvogado",
        &[FakeMessage::incoming(id, CONTACT, LEAD, 109, text)],
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &body)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    dispatch_carrying(w, id).await
}

async fn dispatch_carrying(w: &World, message_id: &str) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(10), "the dispatch", || {
        found = w.n8n.accepted().into_iter().map(|r| r.body).find(|b| {
            b["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["id"] == message_id))
        });
        found.is_some()
    })
    .await;
    found.unwrap()
}

async fn reply(w: &World, contact: u64, dispatch_id: &Value, body: Value) -> Value {
    let mut body = body;
    body["contact_id"] = json!(contact);
    body["dispatch_id"] = dispatch_id.clone();
    let (status, answer) = w.service.post("/send-response", body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

fn field_texts(w: &World) -> Vec<String> {
    w.kommo
        .patches()
        .iter()
        .filter_map(|p| {
            p.body
                .pointer("/custom_fields_values/0/values/0/value")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// Adds a custom seller (its own WhatsApp `contact`, if any); returns it.
async fn add_seller(w: &World, name: &str, contact: Option<u64>) -> Value {
    let mut body = json!({ "nome": name });
    if let Some(c) = contact {
        body["contact_id"] = json!(c);
    }
    let (status, seller) = w.service.post("/vendedores/adicionar", body).await;
    assert_eq!(status, 201, "{seller}");
    seller
}

/// A contact Kommo knows (responsible user `owner`, 0 = nobody), with one lead (responsible
/// user `lead_owner`) when `lead` is given.
fn kommo_contact(w: &World, contact: u64, owner: u64, lead: Option<(u64, u64)>) {
    let mut c = FakeContact::new(contact, "Cliente");
    c.responsible_user_id = owner;
    if let Some((lead, lead_owner)) = lead {
        c.lead_ids = vec![lead];
        let mut l = FakeLead::new(lead);
        l.contact_ids = vec![contact];
        l.responsible_user_id = lead_owner;
        w.kommo.add_lead(l);
    }
    w.kommo.add_contact(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_means_the_salesbot_ran_and_a_reply_in_parts_is_one_message_per_part() {
    let w = world(&[]).await;
    let d = customer_says(&w, "m1", "Oi").await;
    let answer = reply(&w, CONTACT, &d["dispatch_id"], json!({"text": "Olá!"})).await;
    assert_eq!(answer["delivered"], true, "{answer}");
    assert_eq!(answer["channel"], "salesbot", "{answer}");
    // By the time n8n hears "delivered", Kommo ran the bot on the lead.
    assert_eq!(w.kommo.salesbot_runs().len(), 1);
    assert_eq!(w.kommo.salesbot_runs()[0].entity_id, LEAD);

    let d = customer_says(&w, "m2", "Quanto custa?").await;
    let answer = reply(
        &w,
        CONTACT,
        &d["dispatch_id"],
        json!({"messages": ["Parte 1", {"text": "Parte 2"}]}),
    )
    .await;
    assert_eq!(answer["delivered"], true, "{answer}");
    assert_eq!(w.kommo.salesbot_runs().len(), 3, "one run per part");
    assert_eq!(field_texts(&w), ["Olá!", "Parte 1", "Parte 2"], "in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_note_mode_delivered_says_note_and_without_a_lead_it_says_no_lead() {
    let w = world(&[("REPLY_CHANNEL", "note")]).await;
    let d = customer_says(&w, "m1", "Oi").await;
    let answer = reply(&w, CONTACT, &d["dispatch_id"], json!({"text": "Olá!"})).await;
    assert_eq!(answer["delivered"], true, "{answer}");
    assert_eq!(
        answer["channel"], "note",
        "nobody may believe WhatsApp got it: {answer}"
    );
    assert!(w.kommo.notes().iter().any(|n| n.text.contains("Olá!")));
    assert!(w.kommo.salesbot_runs().is_empty());

    // A contact Kommo knows no lead of, writing without a lead in the webhook.
    let lonely = 4242;
    w.kommo.add_contact(FakeContact::new(lonely, "Sem Lead"));
    let body = format!(
        "account%5Bid%5D={ACCOUNT}&message%5Badd%5D%5B0%5D%5Bid%5D=lonely-1\
         &message%5Badd%5D%5B0%5D%5Bcontact_id%5D={lonely}&message%5Badd%5D%5B0%5D%5Btext%5D=Oi\
         &message%5Badd%5D%5B0%5D%5Btype%5D=incoming"
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &body)
        .await;
    assert_eq!(r.status(), 200);
    let d = dispatch_carrying(&w, "lonely-1").await;
    let answer = reply(&w, lonely, &d["dispatch_id"], json!({"text": "Olá!"})).await;
    assert_eq!(answer["delivered"], false, "{answer}");
    assert_eq!(answer["reason"], "no_lead", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_are_found_through_kommo_and_a_contact_without_one_is_refused_before_n8n() {
    let w = world(&[]).await;
    add_seller(&w, "Asaf", Some(99999)).await;
    // Kommo knows this contact's lead; nobody tells conversa.
    let (contact, lead) = (5150, 9090);
    kommo_contact(&w, contact, 0, Some((lead, 0)));
    let start = json!({"contact_id": contact, "vendedor": "Asaf", "area_atuacao": "Previdenciário",
        "trigger_type": "formulario_preenchido"});
    let (status, started) = w.service.post("/start-proactive", start).await;
    assert_eq!(status, 201, "{started}");
    let (_, conv) = w.service.get(&format!("/conversations/{contact}")).await;
    assert_eq!(conv["links"]["lead_id"], lead, "{conv}");
    let asked = w
        .kommo
        .api_requests()
        .into_iter()
        .any(|r| r.path == format!("/api/v4/contacts/{contact}") && r.query.contains("leads"));
    assert!(asked, "asked Kommo with=leads");

    // No lead anywhere: 422 before anything reaches n8n.
    let before = w.n8n.received().len();
    w.kommo.add_contact(FakeContact::new(5151, "Sem Lead"));
    let start = json!({"contact_id": 5151, "vendedor": "Asaf", "area_atuacao": "Previdenciário",
        "trigger_type": "formulario_preenchido"});
    let (status, err) = w.service.post("/start-proactive", start).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"], "no_lead", "{err}");
    assert_eq!(err["field"], "lead_id", "{err}");
    assert_eq!(w.n8n.received().len(), before, "n8n was not called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_customer_said_during_a_hold_reaches_the_bot_when_it_is_released() {
    let w = world(&[]).await;
    add_seller(&w, "Ana Souza", Some(99999)).await;
    customer_says(&w, "m1", "Oi").await;
    let take = json!({"message": format!("/assumir {CONTACT}"), "contact_id": 99999});
    let (status, taken) = w.service.post("/vendedor/comandos", take).await;
    assert_eq!(status, 200, "{taken}");
    // The customer asks while the seller holds the conversation; nobody answers.
    let body = message_add_form(
        ACCOUNT,
        "adrianocamposadvogado",
        &[FakeMessage::incoming("m2", CONTACT, LEAD, 109, "Ainda aí?")],
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &body)
        .await;
    assert_eq!(r.status(), 200);
    let back = json!({"message": format!("/liberar {CONTACT}"), "contact_id": 99999});
    let (status, released) = w.service.post("/vendedor/comandos", back).await;
    assert_eq!(status, 200, "{released}");
    let d = dispatch_carrying(&w, "m2").await;
    assert_eq!(d["event"], "released", "{d}");
    let ids: Vec<&str> = d["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["m1", "m2"],
        "m1 was cut off by the takeover, unanswered: {d}"
    );
    let answer = reply(
        &w,
        CONTACT,
        &d["dispatch_id"],
        json!({"text": "Estou aqui!"}),
    )
    .await;
    assert_eq!(
        answer["delivered"], true,
        "the answer to it reaches the customer: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_conversation_ends_and_a_new_proactive_start_is_no_duplicate() {
    // 0.0005 h = 1.8 s.
    let w = world(&[
        ("CONVERSATION_IDLE_HOURS", "0.0005"),
        ("TIMER_SWEEP_MS", "100"),
    ])
    .await;
    add_seller(&w, "Asaf", None).await;
    let start = json!({"contact_id": CONTACT, "lead_id": LEAD, "vendedor": "Asaf",
        "area_atuacao": "Previdenciário", "trigger_type": "formulario_preenchido"});
    let (status, first) = w.service.post("/start-proactive", start.clone()).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = w.service.post("/start-proactive", start.clone()).await;
    assert_eq!((status, again["reason"].as_str()), (200, Some("duplicate")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
        if c["phase"] == "idle" {
            let ended = c["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["what"] == "conversation_ended");
            assert!(ended, "{c}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ended: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, later) = w.service.post("/start-proactive", start).await;
    assert_eq!(status, 201, "a new conversation: {later}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_on_unknown_contacts_and_errors_a_person_can_act_on() {
    let w = world(&[]).await;
    // Pausing before the customer ever wrote: a paused conversation, nothing to n8n.
    let (status, paused) = w
        .service
        .post(
            "/bot-control",
            json!({"contact_id": 7070, "command": "pause"}),
        )
        .await;
    assert_eq!((status, paused["phase"].as_str()), (200, Some("paused")));
    // Resuming something never held sends no `released`; status creates nothing.
    let (status, _) = w
        .service
        .post(
            "/bot-control",
            json!({"contact_id": 7071, "command": "resume"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = w
        .service
        .post(
            "/bot-control",
            json!({"contact_id": 7072, "command": "status"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = w.service.get("/conversations/7072").await;
    assert_eq!(status, 404, "status created nothing");
    assert!(w.n8n.received().is_empty(), "n8n heard nothing");

    // A missing field is named as missing; no Rust type names.
    let (status, err) = w
        .service
        .post("/bot-control", json!({"command": "pause"}))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["field"], "contact_id", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("missing"), "{err}");
    for leak in ["struct", "deserialize", "Failed to", "BotControl", "u64"] {
        assert!(!message.contains(leak), "{leak} in {err}");
    }
    // A JSON route without the JSON content type: 415, saying so.
    let r = w
        .service
        .client
        .post(w.service.url("/bot-control"))
        .body(r#"{"contact_id": 1, "command": "pause"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("Content-Type"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seller_names_are_unique_and_a_name_picks_that_seller_only() {
    let w = world(&[]).await;
    for (name, contact) in [("Asaf", 91), ("Asaf Lima", 92)] {
        let (status, s) = w
            .service
            .post(
                "/vendedores/adicionar",
                json!({"nome": name, "contact_id": contact}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
    }
    let (status, err) = w
        .service
        .post("/vendedores/adicionar", json!({"nome": "ásaf"}))
        .await;
    assert_eq!(
        status, 409,
        "case and accents do not make another name: {err}"
    );
    let start = |vendedor: &str| {
        json!({"contact_id": CONTACT, "lead_id": LEAD, "vendedor": vendedor,
            "area_atuacao": "Previdenciário", "trigger_type": "formulario_preenchido"})
    };
    let (status, err) = w.service.post("/start-proactive", start("Lima")).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["field"], "vendedor");
    assert!(
        err["message"].as_str().unwrap().contains("Asaf Lima"),
        "candidates: {err}"
    );
    let (status, started) = w.service.post("/start-proactive", start("Asaf")).await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["vendedor"]["name"], "Asaf", "{started}");
}

/// Runs the binary with `env`: it must refuse to start. Returns whether it exited by itself
/// (with a failure) within 15 s, and its output; a binary that starts instead is killed.
fn refused(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_conversa"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", dir.path())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("run conversa");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let refused = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break !status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (refused, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_configuration_that_cannot_work_is_refused_at_start_naming_the_variable() {
    let (ok, out) = refused(&[
        ("KOMMO_API_URL", "http://127.0.0.1:9/api/v4/"),
        ("KOMMO_ACCESS_TOKEN", "t"),
        ("REPLY_CHANNEL", "salesbot"),
        ("KOMMO_REPLY_BOT_ID", "1"),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("KOMMO_REPLY_FIELD_ID"), "{out}");
    let (ok, out) = refused(&[("N8N_WEBHOOK_URL", "http://127.0.0.1:9/webhook/x")]);
    assert!(ok, "{out}");
    assert!(out.contains("PUBLIC_URL"), "{out}");
    // Gap detection that could never read a window.
    let (ok, out) = refused(&[("GAP_LOOKBACK_MINUTES", "0")]);
    assert!(ok, "{out}");
    assert!(out.contains("GAP_LOOKBACK_MINUTES"), "{out}");
    let (ok, out) = refused(&[("GAP_CHECK_SECS", "18446744073709551615")]);
    assert!(ok, "{out}");
    assert!(out.contains("GAP_CHECK_SECS"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_taking_over_in_the_chat_is_the_same_seller_as_in_the_directory() {
    let mut w = world(&[]).await;
    let seller = support::fake_kommo::FakeUser::new(10004026, "Rita Campos");
    let amojo = seller.amojo_id.clone().unwrap();
    w.kommo.add_user(seller);
    let (status, synced) = w.service.post("/vendedores/sincronizar", json!({})).await;
    assert_eq!(status, 200, "{synced}");
    // Her own WhatsApp, attached to the synced seller so her commands are hers.
    let (status, rita) = w
        .service
        .post(
            "/vendedores/kommo-10004026/whatsapp",
            json!({"contact_id": 99999}),
        )
        .await;
    assert_eq!(status, 200, "{rita}");
    assert_eq!(rita["contact_id"], 99999, "{rita}");
    assert_eq!(rita["amojo_id"], amojo.as_str(), "{rita}");
    // Another seller cannot take the same contact.
    let (status, err) = w
        .service
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Outra", "contact_id": 99999}),
        )
        .await;
    assert_eq!(status, 409, "{err}");

    // The customer writes, then Rita answers in the Kommo chat: Kommo's author[id] is her amojo id.
    customer_says(&w, "m1", "Oi").await;
    let mut typed = FakeMessage::incoming("out-1", CONTACT, LEAD, 109, "Oi, aqui é a Rita");
    typed.kind = "outgoing".into();
    typed.author_id = amojo.clone();
    typed.author_type = "user".into();
    typed.author_name = "Rita Campos".into();
    let body = message_add_form(ACCOUNT, "adrianocamposadvogado", &[typed]);
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &body)
        .await;
    assert_eq!(r.status(), 200);
    let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
    assert_eq!(c["phase"], "human_assigned", "{c}");
    assert_eq!(
        c["seller"]["id"], "kommo-10004026",
        "the directory's id: {c}"
    );

    // The attachment survives a restart, and her /liberar from WhatsApp is hers: released.
    w.service.restart().await;
    let command = format!(
        "account%5Bid%5D={ACCOUNT}&message%5Badd%5D%5B0%5D%5Bid%5D=cmd-1\
         &message%5Badd%5D%5B0%5D%5Bcontact_id%5D=99999\
         &message%5Badd%5D%5B0%5D%5Btext%5D=%2Fliberar%20{CONTACT}\
         &message%5Badd%5D%5B0%5D%5Btype%5D=incoming"
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &command)
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["commands"][0]["phase"], "bot_active", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_is_responsible_follows_conversation_then_contact_then_lead() {
    let w = world(&[]).await;
    for (id, name) in [(7001, "Carla Mendes"), (7002, "Diego Alves")] {
        w.kommo
            .add_user(support::fake_kommo::FakeUser::new(id, name));
    }
    let (status, _) = w.service.post("/vendedores/sincronizar", json!({})).await;
    assert_eq!(status, 200);
    // Contact 3001 is Carla's in Kommo; its lead 4001 is Diego's.
    kommo_contact(&w, 3001, 7001, Some((4001, 7002)));
    w.kommo
        .add_talk(support::fake_kommo::FakeTalk::new(501, 3001, Some(4001)));
    let (status, r) = w.service.get("/vendedor/contato/3001").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["found_by"].as_str(), r["vendedor"]["name"].as_str()),
        (Some("contact"), Some("Carla Mendes"))
    );
    let (_, r) = w.service.get("/vendedor/lead/4001").await;
    assert_eq!(
        r["found_by"], "contact",
        "the lead's contact comes first: {r}"
    );
    let (_, r) = w.service.get("/vendedor/conversa/501").await;
    assert_eq!(r["found_by"], "contact", "{r}");
    // A contact nobody in the team owns: the lead's responsible user.
    kommo_contact(&w, 3002, 1, Some((4002, 7002)));
    let (_, r) = w.service.get("/vendedor/lead/4002").await;
    assert_eq!(
        (r["found_by"].as_str(), r["vendedor"]["name"].as_str()),
        (Some("lead"), Some("Diego Alves")),
        "{r}"
    );
    // A seller holding the conversation comes before both.
    add_seller(&w, "Ana Souza", Some(99999)).await;
    let take = json!({"message": "/assumir 3001", "contact_id": 99999});
    let (status, taken) = w.service.post("/vendedor/comandos", take).await;
    assert_eq!(status, 200, "{taken}");
    for path in [
        "/vendedor/contato/3001",
        "/vendedor/lead/4001",
        "/vendedor/conversa/501",
    ] {
        let (_, r) = w.service.get(path).await;
        assert_eq!(
            (r["found_by"].as_str(), r["vendedor"]["name"].as_str()),
            (Some("conversation"), Some("Ana Souza")),
            "{path}: {r}"
        );
    }
    // Scheduling by talk alone resolves its contact and lead; with no seller anywhere: 422.
    let (status, _) = w
        .service
        .post(
            "/bot-control",
            json!({"contact_id": 3001, "command": "resume"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, acc) = w
        .service
        .post("/agendamento/request", json!({"talk_id": 501}))
        .await;
    assert_eq!(status, 202, "{acc}");
    assert_eq!(
        (acc["contact_id"].as_u64(), acc["lead_id"].as_u64()),
        (Some(3001), Some(4001)),
        "{acc}"
    );
    assert_eq!(acc["found_by"], "contact", "{acc}");
    kommo_contact(&w, 3003, 1, None);
    let (status, err) = w
        .service
        .post("/agendamento/request", json!({"contact_id": 3003}))
        .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (422, Some("no_seller")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_three_examples_work_or_say_what_is_missing() {
    let w = world(&[]).await;
    let proactive = json!({"contact_id": 12345, "lead_id": LEAD, "vendedor": "Asaf",
        "area_atuacao": "Previdenciário", "trigger_type": "formulario_preenchido"});
    let take = json!({"message": "/assumir 12345", "contact_id": 99999});
    // No seller yet: each names what is missing.
    let (status, err) = w.service.post("/start-proactive", proactive.clone()).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("vendedor")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("Asaf"), "{err}");
    let (status, err) = w.service.post("/vendedor/comandos", take.clone()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (403, Some("not_a_seller")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("99999"), "{err}");
    let (status, err) = w
        .service
        .post("/vendedor/comandos", json!({"message": "/assumir 12345"}))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["field"], "contact_id", "{err}");
    // With the seller: all three work.
    add_seller(&w, "Asaf", Some(99999)).await;
    let (status, started) = w.service.post("/start-proactive", proactive).await;
    assert_eq!(status, 201, "{started}");
    let (status, paused) = w
        .service
        .post(
            "/bot-control",
            json!({"contact_id": 12345, "command": "pause"}),
        )
        .await;
    assert_eq!((status, paused["phase"].as_str()), (200, Some("paused")));
    let (status, taken) = w.service.post("/vendedor/comandos", take).await;
    assert_eq!(
        (status, taken["phase"].as_str()),
        (200, Some("human_assigned")),
        "{taken}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_state_is_good_for_one_callback() {
    use support::fake_kommo::{CLIENT_ID, CLIENT_SECRET, REDIRECT_URI};
    let w = world(&[
        ("KOMMO_CLIENT_ID", CLIENT_ID),
        ("KOMMO_CLIENT_SECRET", CLIENT_SECRET),
        ("KOMMO_REDIRECT_URI", REDIRECT_URI),
    ])
    .await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser
        .get(w.service.url("/oauth/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // The state is bound to this browser by a cookie (HttpOnly, SameSite=Lax, 10 minutes).
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    assert!(set_cookie.contains("Max-Age=600"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let state = location
        .split("state=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap()
        .to_owned();
    let callback = |code: String, cookie: Option<String>| {
        let mut req = browser.get(
            w.service
                .url(&format!("/oauth/callback?code={code}&state={state}")),
        );
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Another browser (no cookie, or another one's) cannot use the state.
    let (status, err) = callback(w.kommo.issue_code(), None).await;
    assert_eq!(status, 401, "{err}");
    let (status, err) = callback(
        w.kommo.issue_code(),
        Some("conversa_oauth=0123456789abcdef0123456789abcdef".into()),
    )
    .await;
    assert_eq!(status, 401, "{err}");
    let (status, done) = callback(w.kommo.issue_code(), Some(cookie.clone())).await;
    assert_eq!(status, 200, "{done}");
    // The same state again (a replayed or leaked redirect) is refused, whatever the code.
    let (status, err) = callback(w.kommo.issue_code(), Some(cookie)).await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("already used"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_log_at_warn_and_the_webhook_secret_is_never_logged() {
    let secret = "path-secret-4b1d9e";
    let w = world(&[("WEBHOOK_SECRET", secret)]).await;
    let (status, _) = w
        .service
        .post("/bot-control", json!({"command": "pause"}))
        .await;
    assert_eq!(status, 400);
    let body = message_add_form(
        ACCOUNT,
        "adrianocamposadvogado",
        &[FakeMessage::incoming("m1", CONTACT, LEAD, 109, "Oi")],
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url(&format!("/webhooks/kommo/{secret}")), &body)
        .await;
    assert_eq!(r.status(), 200);
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo/wrong-secret"), &body)
        .await;
    assert_eq!(r.status(), 401);
    let log = w.service.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(
        refused.iter().all(|l| l.contains("\"level\":\"WARN\"")),
        "{refused:?}"
    );
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    assert!(!log.contains(secret), "the secret reached the log");
    assert!(
        log.contains("/webhooks/kommo/{secret}"),
        "the route is logged instead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_callbacks_and_bodies_of_the_wrong_shape_say_what_they_are() {
    let w = world(&[]).await;
    let d = customer_says(&w, "m1", "Oi").await;
    let first = reply(&w, CONTACT, &d["dispatch_id"], json!({"text": "Olá!"})).await;
    assert_eq!(first["delivered"], true, "{first}");
    // n8n retrying the same callback: not sent again, and said why.
    let again = reply(&w, CONTACT, &d["dispatch_id"], json!({"text": "Olá!"})).await;
    assert_eq!(again["delivered"], false, "{again}");
    assert_eq!(again["reason"], "already_answered", "{again}");
    assert_eq!(w.kommo.salesbot_runs().len(), 1, "the customer got it once");
    // A JSON array is not an object's fields in order.
    let r = w
        .service
        .client
        .post(w.service.url("/bot-control"))
        .header("content-type", "application/json")
        .body(r#"[4242, "pause"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("JSON object"),
        "{err}"
    );
    let (status, _) = w.service.get("/conversations/4242").await;
    assert_eq!(status, 404, "nothing changed");
    // A webhook body with nothing of Kommo in it.
    for body in ["foo=bar", ""] {
        let r = w
            .kommo
            .send_webhook(&w.service.url("/webhooks/kommo"), body)
            .await;
        assert_eq!(r.status(), 400, "{body:?}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["field"], "body", "{err}");
    }
    // Query errors name the parameter.
    let (status, err) = w.service.get("/dead-letters?limit=abc").await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("limit")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_by_contact_alone_finds_and_links_its_lead() {
    let w = world(&[]).await;
    w.kommo
        .add_user(support::fake_kommo::FakeUser::new(7001, "Carla Mendes"));
    kommo_contact(&w, 3101, 0, Some((4101, 7001)));
    let (status, acc) = w
        .service
        .post("/agendamento/request", json!({"contact_id": 3101}))
        .await;
    assert_eq!(status, 202, "{acc}");
    assert_eq!(acc["lead_id"], 4101, "{acc}");
    assert_eq!(acc["found_by"], "lead", "{acc}");
    let (_, conv) = w.service.get("/conversations/3101").await;
    assert_eq!(conv["links"]["lead_id"], 4101, "linked: {conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_which_public_routes_take_no_credential() {
    let w = world(&[("API_KEY", "a-long-operator-key-1234")]).await;
    let (_, ready) = w.service.get("/ready").await;
    let open = ready["configured"]["unauthenticated_routes"].to_string();
    assert!(open.contains("/webhooks/kommo"), "{ready}");
    // n8n's callback always needs a proof (its reply token, or the callback token).
    assert!(!open.contains("/send-response"), "{ready}");
    assert_eq!(ready["configured"]["reply_channel"], "salesbot", "{ready}");
    assert!(
        w.service
            .log()
            .contains("API_KEY is set but these public routes take no credential")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proactive_conversation_shows_its_seller_and_a_foreign_talk_is_refused() {
    let w = world(&[]).await;
    add_seller(&w, "Asaf", None).await;
    let start = json!({"contact_id": CONTACT, "lead_id": LEAD, "vendedor": "Asaf",
        "area_atuacao": "Previdenciário", "trigger_type": "formulario_preenchido"});
    let (status, _) = w.service.post("/start-proactive", start).await;
    assert_eq!(status, 201);
    let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
    assert_eq!(c["seller"]["name"], "Asaf", "{c}");
    assert_eq!(c["area_atuacao"], "Previdenciário", "{c}");
    // Talk 300 is another contact's: refused, and not linked.
    w.kommo
        .add_talk(support::fake_kommo::FakeTalk::new(300, 9999, None));
    let (status, err) = w
        .service
        .post(
            "/agendamento/request",
            json!({"contact_id": CONTACT, "talk_id": 300}),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("talk_id")),
        "{err}"
    );
    let (_, c) = w.service.get(&format!("/conversations/{CONTACT}")).await;
    assert_ne!(c["links"]["talk_id"], 300, "{c}");
}
