//! The engine over a real (in-memory) store with recording executors: activation, ordering,
//! timers across passivation, supervision, the outbox and several nodes on one store.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use conversa_actors::store::{FaultyStore, MemoryStore, Store};
use conversa_actors::*;

/// Records every job; optionally fails the first `fail_first` attempts.
#[derive(Default)]
struct Recorder {
    jobs: Mutex<Vec<Job>>,
    fail_first: AtomicU32,
}

#[async_trait]
impl Executor for Recorder {
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ExecError::Retry("n8n down".into()));
        }
        self.jobs.lock().unwrap().push(job.clone());
        Ok(())
    }
}

impl Recorder {
    fn dispatches(&self) -> Vec<Dispatch> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|j| match &j.effect {
                Effect::Dispatch(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(debounce_ms: u64) -> EngineConfig {
    EngineConfig {
        policy: Policy {
            debounce_ms,
            retry_base_ms: 20,
            retry_max_ms: 50,
            ..Policy::default()
        },
        sweep_interval: Duration::from_millis(100),
        retry_delay: Duration::from_millis(20),
        ..EngineConfig::default()
    }
}

fn message(id: &str) -> Event {
    Event::CustomerMessage(InboundMessage {
        id: id.into(),
        text: format!("text {id}"),
        created_at: 0,
        attachment: None,
        links: Links::default(),
    })
}

async fn engine_with(store: Arc<dyn Store>, debounce_ms: u64) -> (Engine, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let executors = Executors {
        dispatch: Some(recorder.clone()),
        reply: Some(recorder.clone()),
        note: Some(recorder.clone()),
    };
    let engine = Engine::start(store, executors, config(debounce_ms))
        .await
        .unwrap();
    (engine, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_durable_on_return_and_dispatched_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (engine, rec) = engine_with(store.clone(), 0).await;
    let key = ContactKey::new(1, 42);
    let applied = engine.apply(key, message("m1")).await.unwrap();
    assert_eq!(applied.phase, Phase::BotActive);
    assert!(
        store.load(&key).await.unwrap().is_some(),
        "durable before the answer"
    );
    eventually("the dispatch", || rec.dispatches().len() == 1).await;
    eventually("the outbox to empty", || {
        futures_lite_block(engine.conversation(&key)).is_some_and(|(c, _)| c.outbox().is_empty())
    })
    .await;
    // A redelivery changes nothing and dispatches nothing.
    engine.apply(key, message("m1")).await.unwrap();
    assert_eq!(rec.dispatches().len(), 1);
    assert_eq!(rec.dispatches()[0].messages[0].id, "m1");
}

/// Polls a future once on a throwaway runtime-free executor (the memory store never awaits).
fn futures_lite_block<T>(
    f: impl std::future::Future<Output = Result<Option<T>, EngineError>>,
) -> Option<T> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.unwrap(),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_one_contact_apply_in_arrival_order() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (engine, _rec) = engine_with(store, 60_000).await;
    let key = ContactKey::new(1, 7);
    engine.apply(key, message("m0")).await.unwrap(); // activated
    // Enqueue 49 more without waiting for each answer: poll each future once, in order (an
    // active actor takes the message on the first poll), then collect the answers.
    let mut answers: Vec<_> = (1..50)
        .map(|i| Box::pin(engine.apply(key, message(&format!("m{i}")))))
        .collect();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut early = Vec::new();
    for a in answers.iter_mut() {
        // A fast actor may already have answered within this first poll.
        early.push(match a.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        });
    }
    let mut versions = vec![1];
    for (a, early) in answers.into_iter().zip(early) {
        let applied = match early {
            Some(r) => r,
            None => a.await,
        };
        versions.push(applied.unwrap().version);
    }
    assert_eq!(
        versions,
        (1..=50).collect::<Vec<_>>(),
        "applied in arrival order"
    );
    let (c, _) = engine.conversation(&key).await.unwrap().unwrap();
    let ids: Vec<_> = c.pending().iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_after_its_actor_was_passivated() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let recorder = Arc::new(Recorder::default());
    let executors = Executors {
        dispatch: Some(recorder.clone()),
        ..Executors::default()
    };
    let mut cfg = config(600);
    cfg.idle_timeout = Duration::from_millis(100);
    let engine = Engine::start(store, executors, cfg).await.unwrap();
    let key = ContactKey::new(1, 9);
    engine.apply(key, message("m1")).await.unwrap();
    assert_eq!(engine.active_actors(), 1);
    eventually("passivation", || engine.stats().passivations >= 1).await;
    assert!(
        recorder.dispatches().is_empty(),
        "not before the debounce time"
    );
    eventually("the debounced dispatch", || {
        recorder.dispatches().len() == 1
    })
    .await;
    assert!(engine.stats().activations >= 2, "re-activated by its timer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_without_an_executor_wait_in_the_outbox() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = Engine::start(store.clone(), Executors::default(), config(0))
        .await
        .unwrap();
    let key = ContactKey::new(1, 11);
    engine.apply(key, message("m1")).await.unwrap();
    let (c, _) = engine.conversation(&key).await.unwrap().unwrap();
    assert_eq!(c.outbox().len(), 1);
    assert_eq!(store.pending_outbox(10).await.unwrap(), vec![key]);
    // The only wake-up is the conversation's idle end, a day away.
    let an_hour = conversa_actors::clock::now_millis() + 3_600_000;
    assert_eq!(
        store.due(an_hour, 10).await.unwrap(),
        vec![],
        "no busy wake-up for work nobody can do"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_executor_is_retried_until_it_succeeds() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (engine, rec) = engine_with(store, 0).await;
    rec.fail_first.store(3, Ordering::SeqCst);
    let key = ContactKey::new(1, 12);
    engine.apply(key, message("m1")).await.unwrap();
    eventually("the dispatch after 3 failures", || {
        rec.dispatches().len() == 1
    })
    .await;
    eventually("the outbox to empty", || {
        futures_lite_block(engine.conversation(&key)).is_some_and(|(c, _)| c.outbox().is_empty())
    })
    .await;
    assert_eq!(engine.stats().effects_retried, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_contact_restarts_from_its_snapshot_and_others_are_untouched() {
    let victim = ContactKey::new(1, 13);
    let other = ContactKey::new(1, 14);
    let faulty = Arc::new(FaultyStore::new());
    let store: Arc<dyn Store> = faulty.clone();
    let engine = Engine::start(store, Executors::default(), config(60_000))
        .await
        .unwrap();
    engine.apply(victim, message("v1")).await.unwrap();
    engine.apply(other, message("o1")).await.unwrap();

    // Arm the panic for the victim's next write.
    faulty.panic_on_next_save(victim);
    let failed = engine.apply(victim, message("v2")).await;
    assert!(
        matches!(failed, Err(EngineError::ActorFailed(_))),
        "{failed:?}"
    );

    // Other contacts carry on; the victim comes back from its last snapshot.
    engine.apply(other, message("o2")).await.unwrap();
    eventually("the restart to be counted", || engine.stats().restarts == 1).await;
    let again = engine.apply(victim, message("v3")).await.unwrap();
    assert_eq!(again.version, 2, "v1 was durable, v2 never was");
    let (c, _) = engine.conversation(&victim).await.unwrap().unwrap();
    let ids: Vec<_> = c.pending().iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["v1", "v3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_store_serialize_and_never_execute_twice() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (a, rec_a) = engine_with(store.clone(), 0).await;
    let (b, rec_b) = engine_with(store.clone(), 0).await;
    let keys: Vec<_> = (0..5).map(|i| ContactKey::new(1, 100 + i)).collect();
    let mut tasks = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        for i in 0..20 {
            let node = if (i + n) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let key = *key;
            tasks.push(tokio::spawn(async move {
                node.apply(key, message(&format!("{key}-m{i}")))
                    .await
                    .unwrap()
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for key in &keys {
        let (c, version) = a.conversation(key).await.unwrap().unwrap();
        let mut ids: Vec<_> = c.seen().iter().map(|s| s.id.clone()).collect();
        ids.sort();
        let mut want: Vec<_> = (0..20).map(|i| format!("{key}-m{i}")).collect();
        want.sort();
        assert_eq!(ids, want, "every event applied exactly once");
        assert!(version >= 20);
    }
    eventually("all outboxes to drain", || {
        keys.iter().all(|k| {
            futures_lite_block(a.conversation(k)).is_some_and(|(c, _)| c.outbox().is_empty())
        })
    })
    .await;
    let mut ids: Vec<String> = rec_a
        .dispatches()
        .into_iter()
        .chain(rec_b.dispatches())
        .map(|d| d.dispatch_id)
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no dispatch_id executed twice");
}

/// Blocks every execution until released.
struct Gate {
    open: tokio::sync::Semaphore,
    started: AtomicU32,
}

#[async_trait]
impl Executor for Gate {
    async fn execute(&self, _job: &Job) -> Result<(), ExecError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _permit = self.open.acquire().await.unwrap();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_effect_never_blocks_the_contacts_mailbox() {
    let gate = Arc::new(Gate {
        open: tokio::sync::Semaphore::new(0),
        started: AtomicU32::new(0),
    });
    let executors = Executors {
        dispatch: Some(gate.clone()),
        ..Executors::default()
    };
    let engine = Engine::start(Arc::new(MemoryStore::new()), executors, config(0))
        .await
        .unwrap();
    let key = ContactKey::new(1, 15);
    engine.apply(key, message("m1")).await.unwrap();
    eventually("the dispatch to start", || {
        gate.started.load(Ordering::SeqCst) == 1
    })
    .await;
    // n8n hangs; the contact still takes events.
    let paused = tokio::time::timeout(
        Duration::from_secs(5),
        engine.apply(
            key,
            Event::BotControl {
                command: BotCommand::Pause,
                by: "test".into(),
            },
        ),
    )
    .await
    .expect("the mailbox is not blocked by the running effect")
    .unwrap();
    assert!(matches!(paused.phase, Phase::Paused { .. }));
    gate.open.add_permits(10);
    eventually("the effect to report back", || {
        engine.stats().effects_executed == 1
    })
    .await;
}
