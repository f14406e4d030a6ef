//! The n8n client against a faithful fake n8n webhook: the payload for every dispatch kind, the
//! headers (idempotency key, HMAC signature), the callback URL, and how each kind of failure is
//! classified (retry or dead-letter).

#[path = "support/fake_n8n.rs"]
mod fake_n8n;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conversa::n8n::{N8nClient, N8nSettings, payload, sign};
use conversa::reply_token::ReplyTokens;
use conversa_actors::message::{Attachment, InboundMessage, Links, SellerRef};
use conversa_actors::timeline::{Entry, What};
use conversa_actors::{ContactKey, Dispatch, DispatchKind, Effect, ExecError, Executor, Job};
use fake_n8n::FakeN8n;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

fn settings(url: &str) -> N8nSettings {
    N8nSettings {
        webhook_url: url.to_owned(),
        shared_secret: None,
        public_url: None,
        reply_tokens: ReplyTokens::with_key(TOKEN_KEY),
        timeout: Duration::from_secs(5),
        max_concurrency: 8,
        max_body_bytes: 128 * 1024,
    }
}

const TOKEN_KEY: &[u8] = b"a key of thirty-two bytes or so!";

fn client(url: &str) -> N8nClient {
    N8nClient::new(settings(url)).expect("client")
}

fn dispatch(id: &str, kind: DispatchKind, details: Value) -> Dispatch {
    Dispatch {
        dispatch_id: id.to_owned(),
        kind,
        epoch: 2,
        messages: Vec::new(),
        seller: None,
        details,
    }
}

fn job(d: &Dispatch) -> Job {
    Job {
        key: ContactKey::new(33981183, 1298200),
        id: d.dispatch_id.clone(),
        effect: Effect::Dispatch(d.clone()),
        attempt: 1,
        links: Links {
            lead_id: Some(5551),
            talk_id: Some(88),
            chat_id: Some("a1b2-chat".into()),
        },
        phase: "bot_active",
        seller: None,
        history: vec![
            Entry {
                at: 1_700_000_000_000,
                what: What::MessageIn,
                message_id: Some("msg-1".into()),
                dispatch_id: None,
                detail: None,
            },
            Entry {
                at: 1_700_000_001_000,
                what: What::DispatchQueued,
                message_id: None,
                dispatch_id: Some(d.dispatch_id.clone()),
                detail: Some("message".into()),
            },
        ],
        committed: Default::default(),
        found: Default::default(),
    }
}

fn seller() -> SellerRef {
    SellerRef {
        id: "u-42".into(),
        name: "Bia Souza".into(),
    }
}

/// Executes one dispatch against `n8n` and returns the request it received.
async fn send(n8n: &FakeN8n, client: &N8nClient, d: &Dispatch) -> fake_n8n::Received {
    let before = n8n.received().len();
    client.execute(&job(d)).await.expect("dispatch accepted");
    n8n.wait_for(before + 1, WAIT).await.pop().unwrap()
}

#[tokio::test]
async fn message_dispatch_carries_messages_links_and_history() {
    let n8n = FakeN8n::start().await;
    let client = client(&n8n.url());
    let mut d = dispatch("d-msg", DispatchKind::Message, Value::Null);
    d.messages = vec![
        InboundMessage {
            id: "msg-1".into(),
            text: "Oi, quero saber o preço".into(),
            created_at: 1_700_000_000,
            attachment: None,
            links: Links::default(),
        },
        InboundMessage {
            id: "msg-2".into(),
            text: String::new(),
            created_at: 1_700_000_003,
            attachment: Some(Attachment {
                kind: "voice".into(),
                link: "https://amojo.kommo.com/x/voice.ogg".into(),
                file_name: None,
            }),
            links: Links::default(),
        },
    ];
    let r = send(&n8n, &client, &d).await;
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert_eq!(b["event"], "message");
    assert_eq!(b["dispatch_id"], "d-msg");
    assert_eq!(b["epoch"], 2);
    assert_eq!(b["attempt"], 1);
    assert_eq!(b["account_id"], 33981183);
    assert_eq!(b["contact_id"], 1298200);
    assert_eq!(b["lead_id"], 5551);
    assert_eq!(b["talk_id"], 88);
    assert_eq!(b["chat_id"], "a1b2-chat");
    assert_eq!(b["seller"], Value::Null);
    assert_eq!(b["area_atuacao"], Value::Null);
    assert_eq!(b["trigger_type"], Value::Null);
    assert_eq!(b["lead_data"], Value::Null);
    assert_eq!(b["callback_url"], Value::Null);
    assert_eq!(
        b["messages"],
        json!([
            {"id": "msg-1", "text": "Oi, quero saber o preço", "created_at": 1_700_000_000,
             "attachment": null},
            {"id": "msg-2", "text": "", "created_at": 1_700_000_003,
             "attachment": {"type": "voice", "link": "https://amojo.kommo.com/x/voice.ogg",
                            "file_name": null}},
        ])
    );
    let history = b["history"].as_array().expect("history is a list");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["what"], "message_in");
    assert_eq!(history[1]["dispatch_id"], "d-msg");
    assert!(b.get("scheduling").is_none() && b.get("released").is_none());
    // What went over the wire is exactly what `payload` builds.
    assert_eq!(*b, payload(&job(&d), &d, None));
}

#[tokio::test]
async fn proactive_dispatch_carries_seller_area_trigger_and_lead_data() {
    let n8n = FakeN8n::start().await;
    let client = client(&n8n.url());
    let mut d = dispatch(
        "d-pro",
        DispatchKind::Proactive,
        json!({
            "area_atuacao": "odontologia",
            "trigger_type": "form_filled",
            "lead_data": {"name": "Ana", "phone": "+5511999990000"},
        }),
    );
    d.seller = Some(seller());
    let b = send(&n8n, &client, &d).await.body;
    assert_eq!(b["event"], "proactive");
    assert_eq!(b["seller"], json!({"id": "u-42", "name": "Bia Souza"}));
    assert_eq!(b["area_atuacao"], "odontologia");
    assert_eq!(b["trigger_type"], "form_filled");
    assert_eq!(
        b["lead_data"],
        json!({"name": "Ana", "phone": "+5511999990000"})
    );
    assert_eq!(b["messages"], json!([]));
    assert!(b.get("scheduling").is_none() && b.get("released").is_none());
}

#[tokio::test]
async fn scheduling_dispatch_repeats_the_request_under_scheduling() {
    let n8n = FakeN8n::start().await;
    let client = client(&n8n.url());
    let details = json!({"requested": "amanhã às 10h", "area_atuacao": "estetica"});
    let mut d = dispatch("d-sch", DispatchKind::Scheduling, details.clone());
    d.seller = Some(seller());
    let b = send(&n8n, &client, &d).await.body;
    assert_eq!(b["event"], "scheduling");
    assert_eq!(b["scheduling"], details);
    assert_eq!(b["area_atuacao"], "estetica");
    assert_eq!(b["seller"]["id"], "u-42");
    assert!(b.get("released").is_none());
}

#[tokio::test]
async fn released_dispatch_repeats_the_reason_under_released() {
    let n8n = FakeN8n::start().await;
    let client = client(&n8n.url());
    let details = json!({"reason": "released", "by": "u-42"});
    let mut d = dispatch("d-rel", DispatchKind::Released, details.clone());
    d.seller = Some(seller());
    let b = send(&n8n, &client, &d).await.body;
    assert_eq!(b["event"], "released");
    assert_eq!(b["released"], details);
    assert_eq!(b["seller"]["name"], "Bia Souza");
    assert!(b.get("scheduling").is_none());
}

#[tokio::test]
async fn headers_carry_the_idempotency_key_and_a_verifiable_signature() {
    let n8n = FakeN8n::start().await;
    let signed = N8nClient::new(N8nSettings {
        shared_secret: Some("top-secret".into()),
        ..settings(&n8n.url())
    })
    .unwrap();
    let d = dispatch("d-sig", DispatchKind::Message, Value::Null);
    let r = send(&n8n, &signed, &d).await;
    assert_eq!(r.header("Idempotency-Key"), Some("d-sig"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let signature = r.header("X-Conversa-Signature").expect("signed");
    assert!(signature.starts_with("sha256="));
    assert_eq!(signature.len(), "sha256=".len() + 64);
    assert_eq!(signature, sign("top-secret", &r.raw));
    assert_ne!(signature, sign("another-secret", &r.raw));
    // The signature covers the body as sent: any change breaks it.
    let mut tampered = r.raw.clone();
    tampered.push(b' ');
    assert_ne!(signature, sign("top-secret", &tampered));

    let unsigned = client(&n8n.url());
    let r = send(
        &n8n,
        &unsigned,
        &dispatch("d-nosig", DispatchKind::Message, Value::Null),
    )
    .await;
    assert_eq!(r.header("idempotency-key"), Some("d-nosig"));
    assert_eq!(r.header("x-conversa-signature"), None);

    // A retry of the same entry keeps its key.
    let mut retry = job(&d);
    retry.attempt = 3;
    signed.execute(&retry).await.unwrap();
    let r = n8n.wait_for(3, WAIT).await.pop().unwrap();
    assert_eq!(r.header("idempotency-key"), Some("d-sig"));
    assert_eq!(r.body["attempt"], 3);
    assert_eq!(n8n.dispatch_ids(), ["d-sig", "d-nosig", "d-sig"]);
}

/// A stand-in for conversa's own `/send-response` endpoint: records what the workflow posts.
async fn callback_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/send-response",
        post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                axum::Json(json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, got)
}

#[tokio::test]
async fn callback_url_comes_from_the_public_url_and_the_workflow_can_use_it() {
    let n8n = FakeN8n::start().await;
    let (base, replies) = callback_receiver().await;
    let client = N8nClient::new(N8nSettings {
        public_url: Some(format!("{base}/")),
        ..settings(&n8n.url())
    })
    .unwrap();
    n8n.set_auto_reply(Some("Olá! Como posso ajudar?".into()));
    let r = send(
        &n8n,
        &client,
        &dispatch("d-cb", DispatchKind::Message, Value::Null),
    )
    .await;
    // The callback carries the dispatch's reply token: the proof `/send-response` asks for.
    let token = ReplyTokens::with_key(TOKEN_KEY).token(ContactKey::new(33981183, 1298200), "d-cb");
    assert_eq!(
        r.body["callback_url"],
        format!("{base}/send-response?contact_id=1298200&dispatch_id=d-cb&reply_token={token}")
    );

    let deadline = Instant::now() + WAIT;
    while replies.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no callback arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        replies.lock().unwrap()[0],
        json!({"contact_id": 1298200, "dispatch_id": "d-cb", "text": "Olá! Como posso ajudar?"})
    );
    assert_eq!(n8n.callbacks()[0].status, Some(200));
}

#[tokio::test]
async fn server_errors_and_outages_are_retried() {
    let n8n = FakeN8n::start().await;
    let client = client(&n8n.url());
    let d = dispatch("d-5xx", DispatchKind::Message, Value::Null);

    n8n.fail_next(1);
    match client.execute(&job(&d)).await {
        Err(ExecError::Retry(m)) => assert!(m.contains("500"), "{m}"),
        other => panic!("500 must be retried, got {other:?}"),
    }
    // The failure was one-off: the retry goes through.
    client.execute(&job(&d)).await.expect("second try accepted");

    n8n.set_down(true);
    match client.execute(&job(&d)).await {
        Err(ExecError::Retry(m)) => assert!(m.contains("503"), "{m}"),
        other => panic!("503 must be retried, got {other:?}"),
    }
    n8n.set_down(false);
    client.execute(&job(&d)).await.expect("back up");

    for status in [408, 429, 502] {
        n8n.fail_next_with(1, status);
        let r = client.execute(&job(&d)).await;
        assert!(matches!(r, Err(ExecError::Retry(_))), "{status}: {r:?}");
    }
    let statuses: Vec<u16> = n8n.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 200, 503, 200, 408, 429, 502]);
}

#[tokio::test]
async fn client_errors_are_permanent_except_a_webhook_not_registered() {
    let n8n = FakeN8n::start().await;
    let client = client(&n8n.url());
    let d = dispatch("d-4xx", DispatchKind::Message, Value::Null);

    n8n.fail_next_with(1, 400);
    match client.execute(&job(&d)).await {
        Err(ExecError::Permanent(m)) => {
            assert!(m.contains("400"), "{m}");
            assert!(m.contains("Bad Request"), "the body excerpt is kept: {m}");
        }
        other => panic!("400 must be permanent, got {other:?}"),
    }

    // A webhook that is not registered (n8n starting, workflow switched off, or a wrong path):
    // n8n's 404 is retried, so a restart of n8n loses no dispatch.
    let wrong = self::client(&n8n.url().replace("/conversa", "/other"));
    match wrong.execute(&job(&d)).await {
        Err(ExecError::Retry(m)) => {
            assert!(m.contains("404") && m.contains("not registered"), "{m}");
            assert!(m.len() < 300, "the body is cut short: {m}");
        }
        other => panic!("404 must be retried, got {other:?}"),
    }

    // An effect that is not a dispatch is not this executor's business.
    let mut note = job(&d);
    note.effect = Effect::AddNote {
        note: conversa_actors::note::Note::SchedulingTimedOut,
    };
    assert_eq!(
        client.execute(&note).await,
        Err(ExecError::Permanent("not a dispatch".into()))
    );
    assert_eq!(n8n.received().len(), 1, "the note was never sent");
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // A port that was just free: nothing listens there any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = client(&format!("http://127.0.0.1:{port}/webhook/conversa"));
    let d = dispatch("d-refused", DispatchKind::Message, Value::Null);
    match client.execute(&job(&d)).await {
        Err(ExecError::Retry(m)) => assert!(m.contains("connect"), "{m}"),
        other => panic!("connection refused must be retried, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_n8n_times_out_and_is_retried() {
    let n8n = FakeN8n::start().await;
    n8n.set_delay(Duration::from_secs(3));
    let client = N8nClient::new(N8nSettings {
        timeout: Duration::from_millis(300),
        ..settings(&n8n.url())
    })
    .unwrap();
    let d = dispatch("d-slow", DispatchKind::Message, Value::Null);
    let started = Instant::now();
    match client.execute(&job(&d)).await {
        Err(ExecError::Retry(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("a timeout must be retried, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "gave up after {took:?}");
    // It did reach n8n (which may run the workflow anyway: hence the idempotency key).
    assert_eq!(n8n.wait_for(1, WAIT).await[0].dispatch_id(), Some("d-slow"));
}
