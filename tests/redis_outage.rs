//! Redis dies while requests arrive: those requests get 503 (never 500, never a false 200),
//! nothing acknowledged is lost, and the service recovers by itself when Redis returns.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::redis_server::RedisServer;
use support::service::Service;

#[derive(Clone, Debug)]
struct Ack {
    version: u64,
    phase: String,
}

/// Sends a pause or resume for `contact`; records what was acknowledged.
async fn drive(service: &Service, contact: u64, n: u64, acks: &mut HashMap<u64, Ack>) -> u16 {
    let command = if n.is_multiple_of(2) {
        "pause"
    } else {
        "resume"
    };
    let (status, body) = service
        .post(
            "/bot-control",
            json!({"contact_id": contact, "command": command}),
        )
        .await;
    match status {
        200 => {
            acks.insert(
                contact,
                Ack {
                    version: body["version"].as_u64().unwrap(),
                    phase: body["phase"].as_str().unwrap().to_owned(),
                },
            );
        }
        503 => assert_eq!(body["error"], "store_unavailable", "{body}"),
        other => panic!("unexpected status {other}: {body}"),
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_redis_outage_get_503_and_nothing_acknowledged_is_lost() {
    let mut redis = RedisServer::start();
    let service = Service::start(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "300")]).await;
    let contacts: Vec<u64> = (1..=10).collect();
    let mut acks = HashMap::new();
    let mut n = 0;
    for round in 0..3 {
        for &c in &contacts {
            assert_eq!(drive(&service, c, n + round, &mut acks).await, 200);
        }
        n += 1;
    }

    redis.stop(); // kill -9
    let mut unavailable = 0;
    for &c in &contacts {
        if drive(&service, c, n, &mut acks).await == 503 {
            unavailable += 1;
        }
    }
    assert_eq!(
        unavailable,
        contacts.len(),
        "every request during the outage is refused"
    );
    let (status, _) = service.get("/stats").await;
    assert_eq!(status, 503, "reads that need the store say so too");

    redis.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(15);
    loop {
        if drive(&service, contacts[0], n + 1, &mut acks).await == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = back.elapsed();
    eprintln!("recovered {recovered_in:?} after Redis returned");
    for &c in &contacts[1..] {
        assert_eq!(drive(&service, c, n + 1, &mut acks).await, 200);
    }
    // Everything acknowledged is there, exactly as acknowledged (each contact's last request
    // was acknowledged).
    for &c in &contacts {
        let (status, body) = service.get(&format!("/conversations/{c}")).await;
        assert_eq!(status, 200);
        let ack = &acks[&c];
        assert_eq!(
            body["version"].as_u64().unwrap(),
            ack.version,
            "contact {c}: {body}"
        );
        assert_eq!(body["phase"], ack.phase.as_str(), "contact {c}");
    }
}
