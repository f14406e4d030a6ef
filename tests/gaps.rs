//! Gap detection against the real binary and the fakes of Kommo and n8n: customer messages
//! Kommo received (its events list them) whose webhooks never reached conversa are reported
//! once each — a `message_missed` timeline entry, a note on the lead, a `missed` dispatch to
//! n8n — and the late webhooks, when they come, are applied once without a second report.
//! A message whose webhook came is never reported. The store is a real `redis-server`.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::fake_kommo::{
    FakeContact, FakeKommo, FakeLead, FakeMessage, message_add_form, wait_until,
};
use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

const ACCOUNT: u64 = support::fake_kommo::ACCOUNT_ID;
const CUSTOMERS: u64 = 20;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn contact(i: u64) -> u64 {
    5_000_000 + i
}

fn lead(i: u64) -> u64 {
    7_000_000 + i
}

struct World {
    kommo: FakeKommo,
    n8n: FakeN8n,
    service: Service,
    _redis: RedisServer,
}

async fn world() -> World {
    let kommo = FakeKommo::start().await;
    for i in 0..=CUSTOMERS {
        let mut c = FakeContact::new(contact(i), "Cliente");
        c.lead_ids = vec![lead(i)];
        kommo.add_contact(c);
        let mut l = FakeLead::new(lead(i));
        l.contact_ids = vec![contact(i)];
        kommo.add_lead(l);
    }
    let token = kommo.issue_long_lived_token(Duration::from_secs(86_400));
    let n8n = FakeN8n::start().await;
    let redis = RedisServer::start();
    let account = ACCOUNT.to_string();
    let service = Service::start(&[
        ("REDIS_URL", &redis.url()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("KOMMO_API_URL", &kommo.api_url()),
        ("KOMMO_ACCESS_TOKEN", &token),
        ("KOMMO_ACCOUNT_ID", &account),
        ("GAP_CHECK_SECS", "1"),
        ("GAP_GRACE_SECS", "1"),
        ("NOTE_TIME_ZONE", "UTC"),
        (
            "FICTITIOUS_SELLERS",
            r#"[{"name":"Ana Souza","contact_id":9001}]"#,
        ),
    ])
    .await;
    World {
        kommo,
        n8n,
        service,
        _redis: redis,
    }
}

fn missed_dispatches(w: &World) -> Vec<Value> {
    w.n8n
        .accepted()
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b["event"] == "missed")
        .collect()
}

fn missed_notes(w: &World) -> Vec<String> {
    w.kommo
        .notes()
        .into_iter()
        .map(|n| n.text)
        .filter(|t| t.contains("não chegou ao assistente"))
        .collect()
}

async fn gap_watch(w: &World) -> Value {
    w.service.get("/ready").await.1["gap_watch"].clone()
}

/// Waits until gap detection has read Kommo's events up to `second`.
async fn checked_past(w: &World, second: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let g = gap_watch(w).await;
        if g["checked_until"].as_u64().is_some_and(|u| u >= second) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gap detection stuck: {g:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn webhook(i: u64, message_id: &str) -> String {
    message_add_form(
        ACCOUNT,
        support::fake_kommo::SUBDOMAIN,
        &[FakeMessage::incoming(
            message_id,
            contact(i),
            lead(i),
            100 + i,
            "Oi, quero saber o preço",
        )],
    )
}

#[tokio::test]
async fn messages_whose_webhooks_never_came_are_reported_once_and_the_late_webhooks_apply_once() {
    let w = world().await;

    // A message whose webhook arrives is never reported.
    let delivered = "0a7e44a8-0000-4000-8000-000000000000";
    w.kommo.customer_wrote(contact(0), delivered, now_unix());
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &webhook(0, delivered))
        .await;
    assert_eq!(r.status(), 200);

    // Twenty customers write; Kommo records each message, no webhook reaches conversa.
    let written = now_unix();
    let ids: Vec<String> = (1..=CUSTOMERS)
        .map(|i| format!("1508b51c-0000-4000-8000-{i:012}"))
        .collect();
    for (i, id) in (1..=CUSTOMERS).zip(&ids) {
        w.kommo.customer_wrote(contact(i), id, written);
    }

    wait_until(
        Duration::from_secs(20),
        "20 missed dispatches and notes",
        || {
            missed_dispatches(&w).len() >= CUSTOMERS as usize
                && missed_notes(&w).len() >= CUSTOMERS as usize
        },
    )
    .await;
    let dispatches = missed_dispatches(&w);
    let mut asked: Vec<String> = dispatches
        .iter()
        .flat_map(|d| d["missed"].as_array().cloned().unwrap_or_default())
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    asked.sort();
    assert_eq!(asked, ids, "one missed dispatch per message, naming it");
    for d in &dispatches {
        assert_eq!(d["missed"][0]["at"], written * 1000);
    }
    let notes = w.kommo.notes();
    for i in 1..=CUSTOMERS {
        assert!(
            notes
                .iter()
                .any(|n| n.lead_id == lead(i) && n.text.contains("não chegou ao assistente")),
            "the seller of lead {} is told",
            lead(i)
        );
    }
    let (_, conversation) = w
        .service
        .get(&format!("/conversations/{}", contact(1)))
        .await;
    assert_eq!(conversation["missed_messages"][0]["id"], ids[0].as_str());
    assert!(
        conversation["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "message_missed" && e["message_id"] == ids[0].as_str()),
        "{conversation:#}"
    );
    let g = gap_watch(&w).await;
    assert_eq!(g["missed"], CUSTOMERS, "{g:#}");

    // The late webhooks arrive: each message is applied once, as a message, and closes its entry.
    for (i, id) in (1..=CUSTOMERS).zip(&ids) {
        let r = w
            .kommo
            .send_webhook(&w.service.url("/webhooks/kommo"), &webhook(i, id))
            .await;
        assert_eq!(r.status(), 200);
    }
    wait_until(
        Duration::from_secs(20),
        "a message dispatch for each late message",
        || {
            let bodies: Vec<Value> = w.n8n.accepted().into_iter().map(|r| r.body).collect();
            ids.iter().all(|id| {
                bodies.iter().any(|b| {
                    b["event"] == "message"
                        && b["messages"]
                            .as_array()
                            .is_some_and(|m| m.iter().any(|m| m["id"] == id.as_str()))
                })
            })
        },
    )
    .await;
    // And the webhooks again (Kommo redelivers), and more looks at the same events: nothing new.
    for (i, id) in (1..=CUSTOMERS).zip(&ids) {
        let r = w
            .kommo
            .send_webhook(&w.service.url("/webhooks/kommo"), &webhook(i, id))
            .await;
        assert_eq!(r.status(), 200);
    }
    let after = now_unix();
    w.kommo.customer_wrote(contact(1), &ids[0], after); // listed again, even
    checked_past(&w, after + 1).await;
    assert_eq!(
        missed_dispatches(&w).len(),
        CUSTOMERS as usize,
        "no second missed dispatch"
    );
    assert_eq!(missed_notes(&w).len(), CUSTOMERS as usize, "no second note");
    let message_dispatches = w
        .n8n
        .accepted()
        .into_iter()
        .filter(|r| r.body["event"] == "message")
        .count();
    assert_eq!(
        message_dispatches,
        CUSTOMERS as usize + 1,
        "each late message dispatched once (and the one delivered in time)"
    );
    let (_, conversation) = w
        .service
        .get(&format!("/conversations/{}", contact(1)))
        .await;
    assert_eq!(conversation["missed_messages"], serde_json::json!([]));
    assert!(
        conversation["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "missed_arrived")
    );
    let (_, delivered_one) = w
        .service
        .get(&format!("/conversations/{}", contact(0)))
        .await;
    assert!(
        !delivered_one["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "message_missed")
    );
    assert_eq!(gap_watch(&w).await["missed"], CUSTOMERS);

    let metrics = w.service.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("conversa_messages_missed_total {CUSTOMERS}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_restart_reads_from_where_the_last_look_stopped() {
    // The cursor lives in the store: messages lost while conversa was down are found after a
    // restart, and the window already read is not reported twice.
    let w = world().await;
    let first = "aaaa0000-0000-4000-8000-000000000001";
    w.kommo.customer_wrote(contact(1), first, now_unix());
    wait_until(Duration::from_secs(20), "the first missed message", || {
        missed_dispatches(&w).len() == 1
    })
    .await;
    let kept = w.service.get("/ready").await.1["gap_watch"]["checked_until"]
        .as_u64()
        .unwrap();
    let redis_url = w._redis.url();
    let World {
        kommo,
        n8n,
        service,
        _redis,
    } = w;
    drop(service);

    let during_downtime = "bbbb0000-0000-4000-8000-000000000002";
    kommo.customer_wrote(contact(2), during_downtime, kept + 1);
    let account = ACCOUNT.to_string();
    let token = kommo.issue_long_lived_token(Duration::from_secs(86_400));
    let service = Service::start(&[
        ("REDIS_URL", &redis_url),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
        ("KOMMO_API_URL", &kommo.api_url()),
        ("KOMMO_ACCESS_TOKEN", &token),
        ("KOMMO_ACCOUNT_ID", &account),
        ("GAP_CHECK_SECS", "1"),
        ("GAP_GRACE_SECS", "1"),
    ])
    .await;
    let w = World {
        kommo,
        n8n,
        service,
        _redis,
    };
    wait_until(
        Duration::from_secs(20),
        "the message written during the downtime",
        || missed_dispatches(&w).len() == 2,
    )
    .await;
    checked_past(&w, now_unix()).await;
    let asked: Vec<Value> = missed_dispatches(&w)
        .iter()
        .map(|d| d["missed"][0]["message_id"].clone())
        .collect();
    assert_eq!(asked, [first, during_downtime]);
}

#[tokio::test]
async fn a_window_another_node_read_counts_as_read() {
    // The cursor is shared: when another node's look always comes first, this node finds
    // nothing new to read and its report follows the cursor instead of staying behind.
    let w = world().await;
    let ahead = now_unix() + 3_600;
    let mut redis = redis::Client::open(w._redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("conversa:value:gap-cursor")
        .arg(ahead.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    checked_past(&w, ahead - 1).await;
}

#[tokio::test]
async fn two_nodes_reading_the_same_events_report_each_message_once() {
    // Both nodes read Kommo's events; the conversation's compare-and-set in the shared store
    // decides which one reports a message: one note and one dispatch each, whichever node.
    let w = world().await;
    let token = w.kommo.issue_long_lived_token(Duration::from_secs(86_400));
    let account = ACCOUNT.to_string();
    let redis_url = w._redis.url();
    let other = Service::start(&[
        ("REDIS_URL", &redis_url),
        ("NODE_NAME", "other"),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &w.n8n.url()),
        ("KOMMO_API_URL", &w.kommo.api_url()),
        ("KOMMO_ACCESS_TOKEN", &token),
        ("KOMMO_ACCOUNT_ID", &account),
        ("GAP_CHECK_SECS", "1"),
        ("GAP_GRACE_SECS", "1"),
    ])
    .await;
    let written = now_unix();
    let ids: Vec<String> = (1..=5)
        .map(|i| format!("2c0f0000-0000-4000-8000-{i:012}"))
        .collect();
    for (i, id) in (1..=5).zip(&ids) {
        w.kommo.customer_wrote(contact(i), id, written);
    }
    wait_until(Duration::from_secs(20), "five missed dispatches", || {
        missed_dispatches(&w).len() >= 5 && missed_notes(&w).len() >= 5
    })
    .await;
    // Both nodes have read past the messages: nothing more comes.
    checked_past(&w, written + 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while other.get("/ready").await.1["gap_watch"]["checked_until"]
        .as_u64()
        .is_none_or(|u| u < written + 1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the other node never read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(missed_dispatches(&w).len(), 5);
    assert_eq!(missed_notes(&w).len(), 5);
    let by_this = gap_watch(&w).await["missed"].as_u64().unwrap();
    let by_other = other.get("/ready").await.1["gap_watch"]["missed"]
        .as_u64()
        .unwrap();
    assert_eq!(by_this + by_other, 5, "each message counted by one node");
}

#[tokio::test]
async fn a_sellers_command_typed_in_whatsapp_is_never_reported_missed() {
    // Kommo's events list the seller's `/status` as an incoming message of the seller's own
    // contact; it was delivered and carried out, so it is not missed.
    let w = world().await;
    let id = "5e11e400-0000-4000-8000-000000000001";
    let written = now_unix();
    w.kommo.customer_wrote(9001, id, written);
    let body = message_add_form(
        ACCOUNT,
        support::fake_kommo::SUBDOMAIN,
        &[FakeMessage::incoming(
            id,
            9001,
            7_009_001,
            9,
            "/status 5000001",
        )],
    );
    let r = w
        .kommo
        .send_webhook(&w.service.url("/webhooks/kommo"), &body)
        .await;
    assert_eq!(r.status(), 200);
    checked_past(&w, written + 1).await;
    assert!(
        missed_dispatches(&w).is_empty(),
        "{:?}",
        missed_dispatches(&w)
    );
    assert!(missed_notes(&w).is_empty());
    assert_eq!(gap_watch(&w).await["missed"], 0);
}
