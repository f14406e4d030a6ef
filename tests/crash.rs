//! Crash tests: whatever was acknowledged survives a `kill -9`, on the embedded store and on
//! Redis. State changes go through the real binary over HTTP; a pending timer and a pending
//! outbox entry are set up through the engine's library API in a child process (the core's
//! HTTP surface has no endpoint that sets a timer yet), which is then really killed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use conversa::store::Store;
use conversa::store::embedded::EmbeddedStore;
use conversa::store::redis::{RedisSettings, RedisStore};
use conversa_actors::{
    ContactKey, Engine, EngineConfig, Event, Executors, InboundMessage, Links, Policy, TimerKind,
};
use serde_json::json;
use support::recorder::{Recorder, eventually};
use support::redis_server::RedisServer;
use support::service::Service;

async fn acknowledged_changes_survive_kill9(env: &[(&str, &str)]) {
    let mut service = Service::start(env).await;
    let mut acked = Vec::new();
    for contact in 1..=20u64 {
        let command = if contact % 3 == 0 { "status" } else { "pause" };
        let (status, body) = service
            .post(
                "/bot-control",
                json!({"contact_id": contact, "command": command}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if command == "pause" {
            acked.push(contact);
        }
    }
    // Resume a few again: the latest acknowledged state is what must survive.
    for contact in [1u64, 2] {
        let (status, _) = service
            .post(
                "/bot-control",
                json!({"contact_id": contact, "command": "resume"}),
            )
            .await;
        assert_eq!(status, 200);
    }
    service.kill9();
    service.restart().await;
    for contact in acked {
        let (status, body) = service.get(&format!("/conversations/{contact}")).await;
        assert_eq!(status, 200, "contact {contact}: {body}");
        let want = if contact <= 2 { "bot_active" } else { "paused" };
        assert_eq!(body["phase"], want, "contact {contact}: {body}");
    }
    let (status, _) = service.get("/conversations/3").await;
    assert_eq!(status, 404, "a status query stores nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill9_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_changes_survive_kill9(&[("DATA_DIR", dir.path().to_str().unwrap())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill9_on_redis() {
    let redis = RedisServer::start();
    acknowledged_changes_survive_kill9(&[("REDIS_URL", &redis.url())]).await;
}

// ---- timers and outbox across a real process kill ------------------------------------------

const CHILD_ENV: &str = "CONVERSA_CRASH_CHILD";
const DEBOUNCE_MS: u64 = 3_000;
const TIMER_CONTACT: ContactKey = ContactKey {
    account_id: 1,
    contact_id: 501,
};
const OUTBOX_CONTACT: ContactKey = ContactKey {
    account_id: 1,
    contact_id: 502,
};

async fn open(spec: &str) -> Arc<dyn Store> {
    match spec.split_once(':').unwrap() {
        ("embedded", dir) => Arc::new(EmbeddedStore::open(std::path::Path::new(dir)).unwrap()),
        ("redis", url) => Arc::new(
            RedisStore::connect(url, RedisSettings::default())
                .await
                .unwrap(),
        ),
        _ => panic!("bad spec {spec}"),
    }
}

fn message(id: &str) -> Event {
    Event::CustomerMessage(InboundMessage {
        id: id.into(),
        text: "quero saber o preço".into(),
        created_at: 0,
        attachment: None,
        links: Links::default(),
    })
}

fn engine_config(debounce_ms: u64) -> EngineConfig {
    EngineConfig {
        policy: Policy {
            debounce_ms,
            ..Policy::default()
        },
        sweep_interval: Duration::from_millis(200),
        ..EngineConfig::default()
    }
}

/// The doomed process: leaves a debounce timer pending for one contact and an unexecuted
/// dispatch in the outbox of another (it has no n8n executor), says READY, waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests as a child process"]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = open(&spec).await;
    let with_timer = Engine::start(
        store.clone(),
        Executors::default(),
        engine_config(DEBOUNCE_MS),
    )
    .await
    .unwrap();
    with_timer
        .apply(TIMER_CONTACT, message("timer-m1"))
        .await
        .unwrap();
    let immediate = Engine::start(store, Executors::default(), engine_config(0))
        .await
        .unwrap();
    immediate
        .apply(OUTBOX_CONTACT, message("outbox-m1"))
        .await
        .unwrap();
    println!("READY");
    std::future::pending::<()>().await;
}

async fn timer_and_outbox_survive_kill9(spec: String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--include-ignored", "--nocapture"])
        .env(CHILD_ENV, &spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.trim() == "READY" => break,
            Ok(_) => continue,
            Err(e) => panic!("child never got ready: {e}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = open(&spec).await;
    let recorder = Arc::new(Recorder::default());
    let executors = Executors {
        dispatch: Some(recorder.clone()),
        ..Executors::default()
    };
    let engine = Engine::start(store, executors, engine_config(DEBOUNCE_MS))
        .await
        .unwrap();
    eventually(20, "both dispatches after the restart", || {
        recorder.dispatches().len() >= 2
    })
    .await;
    let dispatches = recorder.dispatches();
    assert_eq!(dispatches.len(), 2, "{dispatches:?}");
    for (contact, msg) in [(TIMER_CONTACT, "timer-m1"), (OUTBOX_CONTACT, "outbox-m1")] {
        let d = dispatches
            .iter()
            .find(|d| {
                d.dispatch_id
                    .starts_with(&format!("{}-{}-", contact.account_id, contact.contact_id))
            })
            .unwrap_or_else(|| panic!("no dispatch for {contact}: {dispatches:?}"));
        assert_eq!(d.messages.len(), 1);
        assert_eq!(d.messages[0].id, msg);
    }
    // The timer fired at its time, not before: the dispatch was queued ≥ DEBOUNCE_MS after
    // the message arrived.
    let (c, _) = engine.conversation(&TIMER_CONTACT).await.unwrap().unwrap();
    let arrived = c
        .timeline()
        .entries()
        .find(|e| e.message_id.as_deref() == Some("timer-m1"))
        .unwrap()
        .at;
    let queued = c
        .timeline()
        .entries()
        .find(|e| e.what == conversa_actors::timeline::What::DispatchQueued)
        .unwrap()
        .at;
    assert!(
        queued >= arrived + DEBOUNCE_MS,
        "fired early: {arrived} → {queued}"
    );
    assert!(!c.timers().contains_key(&TimerKind::Debounce));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_timer_and_outbox_entry_survive_kill9_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    timer_and_outbox_survive_kill9(format!("embedded:{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_timer_and_outbox_entry_survive_kill9_on_redis() {
    let redis = RedisServer::start();
    timer_and_outbox_survive_kill9(format!("redis:{}", redis.url())).await;
}
