//! The 7 requests per second Kommo allows, as the fake Kommo measures them, through a 401 storm;
//! and every call counted in `conversa_kommo_calls_total`. Slow (~32 s: 200 calls at ≤ 7 req/s). A test
//! binary of its own: the call counters are the process's, and no other test may add to them.

mod support;

use std::time::{Duration, Instant};

use support::fake_kommo::FakeKommo;
use support::kommo_client::client;
use support::metrics;

#[tokio::test]
async fn limiter_200_calls_after_a_401_stay_under_7_per_second() {
    metrics::install();
    let fake = FakeKommo::start().await;
    let client = client(&fake);
    fake.expire_access_token();
    let started = Instant::now();
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.account().await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("every call succeeds");
    }
    let elapsed = started.elapsed();
    let max = fake.max_requests_in_any_second();
    assert!(max <= 7, "the fake saw {max} requests within one second");
    let requests = fake.api_requests();
    assert!(requests.iter().all(|r| r.status != 429), "no 429");
    assert_eq!(requests.iter().filter(|r| r.status == 200).count(), 200);
    assert_eq!(fake.refresh_count(), 1, "one refresh for the whole burst");
    assert!(client.limiter_waits() > 150, "{}", client.limiter_waits());
    // 201 requests at ≤ 7/s take at least 28 s.
    assert!(elapsed >= Duration::from_secs(28), "{elapsed:?}");
    let calls = metrics::rendered();
    assert_eq!(
        metrics::value(
            &calls,
            r#"conversa_kommo_calls_total{endpoint="GET /api/v4/account",status="200"}"#
        ),
        Some(200.0),
        "{calls}"
    );
}
