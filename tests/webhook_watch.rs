//! The webhook watchdog, as Kommo would make it needed: the service registers its webhook by
//! itself, answers invalid deliveries until the fake Kommo disables the hook (as Kommo does
//! after too many invalid answers), then registers it again within an interval; `/ready` and
//! the metrics say so, and deliveries reach the service again.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake_kommo::{self, FakeKommo};
use support::service::Service;

const SECRET: &str = "watchdog-webhook-secret-0123";

async fn ready(s: &Service) -> Value {
    s.get("/ready").await.1
}

/// Polls `/ready` until `cond` holds (20 s at most).
async fn ready_until(s: &Service, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = ready(s).await;
        if cond(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:#}",
            r["webhook_watch"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_webhook_kommo_disabled_is_registered_again() {
    let fake = FakeKommo::start().await;
    fake.set_disable_after(3);
    let token = fake.issue_long_lived_token(Duration::from_secs(86_400));
    let data = tempfile::tempdir().unwrap();
    let account = fake_kommo::ACCOUNT_ID.to_string();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("KOMMO_API_URL", &fake.api_url()),
        ("KOMMO_ACCESS_TOKEN", &token),
        ("KOMMO_ACCOUNT_ID", &account),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_WATCH_SECS", "1"),
    ])
    .await;
    let destination = format!("{}/webhooks/kommo/{SECRET}", s.url(""));

    // No hook at start: the first look registers it.
    let r = ready_until(&s, "the missing hook registered", |r| {
        r["webhook_watch"]["repairs"] == 1
    })
    .await;
    assert_eq!(r["webhook_watch"]["last_repair"]["was"], "missing");
    assert_eq!(r["webhook_watch"]["last_repair"]["ok"], true);
    let hooks = fake.webhooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].destination, destination);
    assert!(!r.to_string().contains(SECRET), "no secret in /ready");

    // Bodies conversa must refuse (no account named while KOMMO_ACCOUNT_ID is set): after more
    // than three invalid answers the fake disables the hook, as Kommo does after 100.
    for _ in 0..4 {
        let answered = fake.deliver("foo=bar").await;
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].1, 400);
    }
    assert!(fake.webhooks()[0].disabled, "Kommo disabled the hook");
    assert!(
        fake.deliver("foo=bar").await.is_empty(),
        "a disabled hook gets nothing"
    );

    let r = ready_until(&s, "the disabled hook re-enabled", |r| {
        r["webhook_watch"]["repairs"] == 2
    })
    .await;
    let repair = &r["webhook_watch"]["last_repair"];
    assert_eq!(repair["was"], "disabled", "{r:#}");
    assert_eq!(repair["ok"], true, "{r:#}");
    assert_eq!(r["webhook_watch"]["state"], "ok");
    let hooks = fake.webhooks();
    assert_eq!(hooks.len(), 1);
    assert!(!hooks[0].disabled);
    assert!(!s.log().contains(SECRET), "no secret in the log");
    assert!(
        s.log()
            .contains("webhook watchdog: the Kommo webhook is not right")
    );

    // Customers reach conversa again.
    let body = fake_kommo::message_add_form(
        fake_kommo::ACCOUNT_ID,
        fake_kommo::SUBDOMAIN,
        &[fake_kommo::FakeMessage::incoming("wd-1", 4242, 77, 9, "Oi")],
    );
    let answered = fake.deliver(&body).await;
    assert_eq!(answered, [(destination, 200)]);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("conversa_webhook_repairs_total{was=\"disabled\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("conversa_webhook_ok 1"), "{metrics}");
}
