//! Engine figures for the closing notes: activations per second, memory per active contact
//! actor, and snapshot writes per second, on a real store.
//!
//! ```sh
//! cargo run --release --example engine_bench -- activations 20000 [redis://127.0.0.1:PORT]
//! cargo run --release --example engine_bench -- memory 100000
//! cargo run --release --example engine_bench -- writes 10000 redis://127.0.0.1:PORT
//! cargo run --release --example engine_bench -- cold 5000 redis://127.0.0.1:PORT
//! cargo run --release --example engine_bench -- passivation 20000 redis://127.0.0.1:PORT
//! ```
//! Without a Redis URL the in-memory store is used for `activations` and `memory` (so the
//! figure is the engine's own cost); `writes` needs a URL or uses the embedded store in a temp
//! dir. Each mode prints one line.
//!
//! It uses the service binary's allocator (mimalloc), so memory figures are what `conversa`
//! itself would show.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conversa::store::Store;
use conversa::store::embedded::EmbeddedStore;
use conversa::store::redis::{RedisSettings, RedisStore};
use conversa_actors::store::MemoryStore;
use conversa_actors::{
    BotCommand, ContactKey, Engine, EngineConfig, Event, Executors, InboundMessage, Links, Policy,
};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

async fn store(url: Option<&String>, dir: &std::path::Path) -> Arc<dyn Store> {
    match url {
        Some(u) if u.starts_with("redis") => Arc::new(
            RedisStore::connect(u, RedisSettings::default())
                .await
                .expect("redis"),
        ),
        Some(u) if u == "embedded" => Arc::new(EmbeddedStore::open(dir).unwrap()),
        _ => Arc::new(MemoryStore::new()),
    }
}

fn message(id: u64) -> Event {
    Event::CustomerMessage(InboundMessage {
        id: format!("m{id}"),
        text: "Olá, quero saber mais sobre o plano".into(),
        created_at: 1_736_447_224,
        attachment: None,
        links: Links {
            lead_id: Some(878_244),
            talk_id: Some(109),
            chat_id: Some("7df3cc9c-26c0-4b30-b8c9-b9ac728b407a".into()),
        },
    })
}

/// Applies `make(i)` to contact `first + i + 1` for every i in 0..n with `concurrency` tasks.
async fn drive(
    engine: &Engine,
    first: u64,
    n: u64,
    concurrency: u64,
    make: impl Fn(u64) -> Event + Send + Sync + 'static + Clone,
) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let engine = engine.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                engine
                    .apply(ContactKey::new(1, first + i + 1), make(i))
                    .await
                    .expect("apply");
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("activations");
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let url = args.get(2);
    let dir = tempfile::tempdir().unwrap();
    let store = store(url, dir.path()).await;
    let backend = store.backend();
    let config = EngineConfig {
        policy: Policy {
            debounce_ms: 60_000, // a timer per contact, as in real traffic; never fires here
            ..Policy::default()
        },
        idle_timeout: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.clone(), Executors::default(), config)
        .await
        .unwrap();
    match mode {
        "activations" => {
            let took = drive(&engine, 0, n, 64, message).await;
            println!(
                "activations: {n} contacts activated and written ({backend}) in {took:.2?} = {:.0}/s",
                n as f64 / took.as_secs_f64()
            );
        }
        "memory" => {
            let before = rss_kib();
            let took = drive(&engine, 0, n, 64, message).await;
            let after = rss_kib();
            assert_eq!(engine.active_actors() as u64, n);
            println!(
                "memory: {n} active contact actors ({backend}): RSS {before} KiB -> {after} KiB, {:.2} KiB per actor (activated in {took:.2?})",
                (after - before) as f64 / n as f64
            );
        }
        "writes" => {
            // Activate first, then measure writes alone: pause/resume flips on warm actors.
            let contacts = n.min(1000);
            drive(&engine, 0, contacts, 64, message).await;
            let started = Instant::now();
            let rounds = n.div_ceil(contacts);
            for r in 0..rounds {
                let command = if r % 2 == 0 {
                    BotCommand::Pause
                } else {
                    BotCommand::Resume
                };
                drive(&engine, 0, contacts, 64, move |_| Event::BotControl {
                    command,
                    by: "bench".into(),
                })
                .await;
            }
            let took = started.elapsed();
            let writes = engine.stats().snapshot_writes - contacts;
            println!(
                "writes: {writes} snapshot writes ({backend}, 64 concurrent) in {took:.2?} = {:.0}/s",
                writes as f64 / took.as_secs_f64()
            );
        }
        "cold" => {
            // Store n contacts, drop the engine (no actor left), then time the first event of
            // each contact on a fresh engine: activation = snapshot load + apply + write.
            drive(&engine, 0, n, 64, message).await;
            drop(engine);
            let store2 = self::store(url, dir.path()).await;
            let fresh = Engine::start(store2, Executors::default(), EngineConfig::default())
                .await
                .unwrap();
            let mut samples = Vec::with_capacity(n as usize);
            for i in 0..n {
                let started = Instant::now();
                fresh
                    .apply(
                        ContactKey::new(1, i + 1),
                        Event::BotControl {
                            command: BotCommand::Pause,
                            by: "bench".into(),
                        },
                    )
                    .await
                    .expect("apply");
                samples.push(started.elapsed());
            }
            samples.sort();
            let pct =
                |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
            println!(
                "cold activation ({backend}, sequential, load + apply + write): p50 {:?} p99 {:?} max {:?} over {n} contacts",
                pct(0.50),
                pct(0.99),
                samples[samples.len() - 1]
            );
        }
        "passivation" => {
            // Waves of `n` new contacts each, 10 waves: every wave is activated, then left idle
            // until the engine has passivated it. Stored contacts grow tenfold; RSS should not.
            drop(engine);
            let config = EngineConfig {
                policy: Policy {
                    debounce_ms: 60_000,
                    ..Policy::default()
                },
                idle_timeout: Duration::from_millis(500),
                ..EngineConfig::default()
            };
            let engine = Engine::start(store, Executors::default(), config)
                .await
                .unwrap();
            const WAVES: u64 = 10;
            let base = rss_kib();
            let mut peaks = Vec::new();
            let mut after = Vec::new();
            for wave in 0..WAVES {
                let first = wave * n;
                drive(&engine, first, n, 64, move |i| message(first + i)).await;
                // `drive` numbers contacts 1..=n; shift each wave to fresh contacts.
                peaks.push(rss_kib());
                let deadline = Instant::now() + Duration::from_secs(60);
                while engine.active_actors() > 0 {
                    assert!(Instant::now() < deadline, "wave {wave} never passivated");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                after.push(rss_kib());
            }
            let stats = engine.stats();
            println!(
                "passivation: 10 waves of {n} contacts ({backend}), {} activations, {} passivations; \
                 RSS above the idle process with a wave active: wave 1 {} KiB, wave 10 {} KiB \
                 (max {} KiB); after each wave passivated: wave 1 {} KiB, wave 10 {} KiB",
                stats.activations,
                stats.passivations,
                peaks[0] - base,
                peaks[9] - base,
                peaks.iter().max().unwrap() - base,
                after[0] - base,
                after[9] - base,
            );
            let above = |v: &[u64]| v.iter().map(|r| r - base).collect::<Vec<_>>();
            println!(
                "  KiB with each wave active {:?}\n  KiB after each wave passivated {:?}",
                above(&peaks),
                above(&after)
            );
        }
        other => panic!("unknown mode {other}"),
    }
}
