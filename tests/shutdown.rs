//! Graceful shutdown: SIGTERM under load stops the process within a bounded time, requests in
//! flight are answered, and everything acknowledged is there after a restart.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "60000"),
    ])
    .await;
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let url = service.url("/webhooks/kommo");
    let mut senders = Vec::new();
    for worker in 0..8u64 {
        let client = service.client.clone();
        let url = url.clone();
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..400u64 {
                let contact = 1000 + (worker * 400 + n) % 50;
                let id = format!("w{worker}-n{n}");
                let body = format!(
                    "message%5Badd%5D%5B0%5D%5Bid%5D={id}&message%5Badd%5D%5B0%5D%5Bcontact_id%5D={contact}&message%5Badd%5D%5B0%5D%5Btext%5D=oi"
                );
                let sent = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push((contact, id)),
                    // Refused or cut off during shutdown: not acknowledged, the sender retries.
                    _ => return,
                }
            }
        }));
    }
    // Let the load build up, then ask the process to stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = Instant::now();
    let code = service.terminate();
    let took = stopping.elapsed();
    assert_eq!(code, Some(0), "clean exit:\n{}", service.log());
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} messages acknowledged before the stop ({took:?} to stop)",
        acked.len()
    );

    service.restart().await;
    let mut by_contact: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (contact, id) in acked {
        by_contact.entry(contact).or_default().push(id);
    }
    for (contact, ids) in by_contact {
        let (status, c) = service.get(&format!("/conversations/{contact}")).await;
        assert_eq!(status, 200);
        let pending: Vec<String> = c["pending_messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        for id in ids {
            assert!(
                pending.contains(&id),
                "acknowledged {id} lost for contact {contact}"
            );
        }
    }
}
