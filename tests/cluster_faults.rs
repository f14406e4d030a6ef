//! conversa on a Redis Cluster (3 masters with replicas) under webhook load while the cluster
//! changes under it: a master killed (its replica promoted) and slots resharded. What must
//! hold is what holds on one Redis: answers are 200 or 503, never anything else; the service
//! recovers by itself; every message acknowledged with a 200 is in its conversation, exactly
//! once (with `REDIS_WAIT_REPLICAS=1`, also through the failover).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::fake_kommo::{ACCOUNT_ID, FakeMessage, SUBDOMAIN, message_add_form};
use support::redis_cluster::{RedisCluster, cli};
use support::service::Service;

/// Contacts written to, and messages per contact (under the 50 a conversation keeps pending).
const CONTACTS: u64 = 60;
const PER_CONTACT: u64 = 15;

fn message_id(contact: u64, n: u64) -> String {
    format!("c1a5e000-0000-4000-8000-{contact:06}{n:06}")
}

async fn send(client: &reqwest::Client, url: &str, contact: u64, n: u64) -> u16 {
    let body = message_add_form(
        ACCOUNT_ID,
        SUBDOMAIN,
        &[FakeMessage::incoming(
            &message_id(contact, n),
            contact,
            7_000_000 + contact,
            contact,
            "Oi, quero saber o preço",
        )],
    );
    let r = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .expect("the service answers within 10 s");
    r.status().as_u16()
}

/// What a load run saw: the status of every attempt, and the messages still refused.
#[derive(Default)]
struct Outcome {
    statuses: BTreeMap<u16, u64>,
    refused: Vec<(u64, u64)>,
}

/// Sends every contact's messages from four concurrent senders (each message once), calling
/// `during` (with the count of answered requests) once `after` messages have been answered.
/// Returns what the senders saw.
async fn load(
    service: &Service,
    after: usize,
    during: impl FnOnce(&AtomicUsize) + Send + 'static,
) -> Outcome {
    let all: Vec<(u64, u64)> = (0..PER_CONTACT)
        .flat_map(|n| (1..=CONTACTS).map(move |c| (c, n)))
        .collect();
    let all = Arc::new(all);
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let url = service.url("/webhooks/kommo");
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (all, next, answered, outcome) =
            (all.clone(), next.clone(), answered.clone(), outcome.clone());
        let (client, url) = (service.client.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(contact, n)) = all.get(i) else {
                    return;
                };
                let status = send(&client, &url, contact, n).await;
                let mut o = outcome.lock().unwrap();
                *o.statuses.entry(status).or_default() += 1;
                if status != 200 {
                    o.refused.push((contact, n));
                }
                drop(o);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let trigger = {
        let answered = answered.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while answered.load(Ordering::Relaxed) < after {
                assert!(Instant::now() < deadline, "the load never got going");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::task::spawn_blocking(move || during(&answered))
                .await
                .unwrap();
        })
    };
    for s in senders {
        s.await.unwrap();
    }
    trigger.await.unwrap();
    Arc::try_unwrap(outcome)
        .ok()
        .expect("senders done")
        .into_inner()
        .unwrap()
}

/// Sends each refused message again until it is taken (as Kommo retries a failed delivery),
/// within `deadline`.
async fn redeliver(service: &Service, refused: &[(u64, u64)], deadline: Duration) -> Duration {
    let started = Instant::now();
    let url = service.url("/webhooks/kommo");
    for &(contact, n) in refused {
        loop {
            let status = send(&service.client, &url, contact, n).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "a refusal is a 503");
            assert!(
                started.elapsed() < deadline,
                "message {n} of contact {contact} still refused after {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed()
}

/// Every contact's conversation holds each of its messages once.
async fn every_message_once(service: &Service) {
    for contact in 1..=CONTACTS {
        let (status, conv) = service.get(&format!("/conversations/{contact}")).await;
        assert_eq!(status, 200, "contact {contact}: {conv}");
        let pending: Vec<String> = conv["pending_messages"]
            .as_array()
            .unwrap_or_else(|| panic!("contact {contact}: {conv}"))
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &pending {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        for n in 0..PER_CONTACT {
            let id = message_id(contact, n);
            assert_eq!(
                counts.get(id.as_str()).copied(),
                Some(1),
                "contact {contact}, message {n}: {pending:?}"
            );
        }
        assert_eq!(pending.len() as u64, PER_CONTACT, "contact {contact}");
    }
}

async fn start_service(urls: &[String]) -> Service {
    let urls = urls.join(",");
    let account = ACCOUNT_ID.to_string();
    Service::start(&[
        ("REDIS_CLUSTER_URLS", &urls),
        ("REDIS_WAIT_REPLICAS", "1"),
        // `WAIT` gets three quarters of it: under CI's load (nine servers on two cores) a live
        // replica was seen to need more than 750 ms to confirm.
        ("REDIS_TIMEOUT_MS", "3000"),
        ("KOMMO_ACCOUNT_ID", &account),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_answers_503_recovers_by_itself_and_loses_nothing() {
    // Two replicas per master: once one is promoted, the other still confirms every write
    // (REDIS_WAIT_REPLICAS=1). With one replica per master the promoted shard would have none
    // left and refuse writes until the failed node is back (docs/operating.md).
    let cluster = Arc::new(Mutex::new(RedisCluster::start(3, 2)));
    let urls = cluster.lock().unwrap().urls();
    let service = start_service(&urls).await;
    // The master holding contact 1's conversation dies a third of the way through.
    let victim = cluster
        .lock()
        .unwrap()
        .master_of(&format!("conversa:{{{ACCOUNT_ID}:1}}:snap"));
    let killed_at = Arc::new(Mutex::new(None));
    let outcome = {
        let (cluster, killed_at) = (cluster.clone(), killed_at.clone());
        load(&service, 300, move |_| {
            cluster.lock().unwrap().node_mut(victim).stop();
            *killed_at.lock().unwrap() = Some(Instant::now());
        })
        .await
    };
    let killed_at = killed_at.lock().unwrap().expect("the master was killed");
    eprintln!("statuses under load: {:?}", outcome.statuses);
    assert!(
        outcome.statuses.keys().all(|s| [200, 503].contains(s)),
        "only 200 and 503: {:?}",
        outcome.statuses
    );
    let took = redeliver(&service, &outcome.refused, Duration::from_secs(30)).await;
    eprintln!(
        "{} refused messages taken on redelivery within {took:?} ({:?} after the kill)",
        outcome.refused.len(),
        killed_at.elapsed()
    );
    // The replica took over: three masters again, without the killed node.
    let masters = cluster.lock().unwrap().masters();
    assert_eq!(masters.len(), 3, "a replica was promoted");
    assert!(!masters.contains(&victim));
    // Acknowledged before, during and after the failover: all there, none twice.
    every_message_once(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_load_cost_no_request() {
    let cluster = RedisCluster::start(3, 1);
    let service = start_service(&cluster.urls()).await;
    let masters = cluster.masters();
    let port = |i: usize| cluster.nodes()[i].port();
    let from = cli(port(masters[0]), &["CLUSTER", "MYID"])
        .trim()
        .to_owned();
    let to = cli(port(masters[1]), &["CLUSTER", "MYID"])
        .trim()
        .to_owned();
    let seed = format!("127.0.0.1:{}", port(masters[0]));
    let resharded = Arc::new(Mutex::new(String::new()));
    let outcome = {
        let resharded = resharded.clone();
        load(&service, 100, move |answered| {
            // Moves 2,000 slots (a third of the first master's), their keys with them.
            let before = answered.load(Ordering::Relaxed);
            let out = std::process::Command::new("redis-cli")
                .args(["--cluster", "reshard", &seed])
                .args(["--cluster-from", &from, "--cluster-to", &to])
                .args(["--cluster-slots", "2000", "--cluster-yes"])
                .output()
                .expect("run redis-cli --cluster reshard");
            assert!(
                out.status.success(),
                "reshard failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let during = answered.load(Ordering::Relaxed) - before;
            eprintln!("{during} requests answered while the slots moved");
            assert!(during > 0, "the load went on while the slots moved");
            *resharded.lock().unwrap() = String::from_utf8_lossy(&out.stdout).into_owned();
        })
        .await
    };
    assert!(
        resharded.lock().unwrap().contains("Moving slot"),
        "slots were moved"
    );
    eprintln!("statuses under load: {:?}", outcome.statuses);
    assert_eq!(
        outcome.statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "every request taken while slots moved: {:?}",
        outcome.statuses
    );
    every_message_once(&service).await;
}
