//! The store conformance suite. Every backend runs [`run`] in its own tests; each check uses
//! its own account id, so one fresh store serves the whole suite.

use super::{IndexUpdate, LogWrite, SnapshotWrite, Store, StoreError, StoredSnapshot};
use crate::contact::{ContactKey, Millis};
use crate::phase::PhaseName;
use std::sync::Arc;

fn index(wake_at: Option<Millis>, outbox_pending: bool, phase: &str) -> IndexUpdate {
    let phase = PhaseName::parse(phase).expect("a phase name");
    IndexUpdate {
        wake_at,
        outbox_pending,
        phase,
        previous: None,
    }
}

/// Runs every check against `store`, which must start empty.
pub async fn run(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    first_write_and_reload(&*store).await;
    compare_and_set(&*store).await;
    concurrent_writers_serialize(store.clone()).await;
    wake_index(&*store).await;
    outbox_index(&*store).await;
    phase_index(&*store).await;
    named_values(&*store).await;
    conditional_values(&*store).await;
    binary_data(&*store).await;
    logs_change_by_difference(&*store).await;
}

async fn conditional_values(store: &dyn Store) {
    let name = "conformance-conditional";
    assert!(store.put_value_if(name, None, b"one").await.unwrap());
    assert!(
        !store.put_value_if(name, None, b"again").await.unwrap(),
        "a value is there already"
    );
    assert!(
        !store
            .put_value_if(name, Some(b"other"), b"two")
            .await
            .unwrap(),
        "not the stored value"
    );
    assert_eq!(
        store.get_value(name).await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert!(
        store
            .put_value_if(name, Some(b"one"), b"two")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_value(name).await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    // Binary and empty values compare byte for byte.
    assert!(
        store
            .put_value_if(name, Some(b"two"), b"\0\xff")
            .await
            .unwrap()
    );
    assert!(!store.put_value_if(name, Some(b"\0"), b"x").await.unwrap());
    assert!(
        store
            .put_value_if(name, Some(b"\0\xff"), b"")
            .await
            .unwrap()
    );
    assert!(
        !store.put_value_if(name, None, b"x").await.unwrap(),
        "empty is a value"
    );
    assert!(store.put_value_if(name, Some(b""), b"three").await.unwrap());
}

async fn first_write_and_reload(store: &dyn Store) {
    let key = ContactKey::new(1, 10);
    assert_eq!(store.load(&key).await.unwrap(), None, "unknown contact");
    let v = store
        .save(&key, 0, b"one", &index(None, false, "idle"))
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(
        store.load(&key).await.unwrap(),
        Some(StoredSnapshot {
            version: 1,
            data: b"one".to_vec(),
            logs: Default::default(),
        })
    );
}

async fn compare_and_set(store: &dyn Store) {
    let key = ContactKey::new(2, 10);
    let ix = index(None, false, "idle");
    assert_eq!(store.save(&key, 0, b"a", &ix).await.unwrap(), 1);
    assert_eq!(store.save(&key, 1, b"b", &ix).await.unwrap(), 2);
    // A writer that read version 1 lost the race.
    assert_eq!(
        store.save(&key, 1, b"stale", &ix).await,
        Err(StoreError::Conflict { current: 2 })
    );
    // "Create" over an existing snapshot is a conflict too.
    assert_eq!(
        store.save(&key, 0, b"stale", &ix).await,
        Err(StoreError::Conflict { current: 2 })
    );
    // A version from the future is a conflict, not a jump.
    assert_eq!(
        store.save(&key, 7, b"stale", &ix).await,
        Err(StoreError::Conflict { current: 2 })
    );
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!((snap.version, snap.data.as_slice()), (2, &b"b"[..]));
}

async fn concurrent_writers_serialize(store: Arc<dyn Store>) {
    // 8 writers each add 10 increments with read-modify-CAS loops: no increment is lost.
    let key = ContactKey::new(3, 10);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let (version, n) = match store.load(&key).await.unwrap() {
                        None => (0, 0u64),
                        Some(s) => (
                            s.version,
                            String::from_utf8(s.data).unwrap().parse().unwrap(),
                        ),
                    };
                    let next = (n + 1).to_string();
                    match store
                        .save(&key, version, next.as_bytes(), &index(None, false, "idle"))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!(snap.data, b"80");
    assert_eq!(snap.version, 80);
}

async fn wake_index(store: &dyn Store) {
    let a = ContactKey::new(4, 1);
    let b = ContactKey::new(4, 2);
    let c = ContactKey::new(4, 3);
    store
        .save(&a, 0, b"a", &index(Some(5_000), false, "bot_active"))
        .await
        .unwrap();
    store
        .save(&b, 0, b"b", &index(Some(1_000), false, "bot_active"))
        .await
        .unwrap();
    store
        .save(&c, 0, b"c", &index(None, false, "idle"))
        .await
        .unwrap();
    let mine = |v: Vec<(ContactKey, Millis)>| -> Vec<(ContactKey, Millis)> {
        v.into_iter().filter(|(k, _)| k.account_id == 4).collect()
    };
    assert_eq!(mine(store.due(999, 100).await.unwrap()), vec![]);
    assert_eq!(mine(store.due(1_000, 100).await.unwrap()), vec![(b, 1_000)]);
    assert_eq!(
        mine(store.due(10_000, 100).await.unwrap()),
        vec![(b, 1_000), (a, 5_000)],
        "earliest first"
    );
    // Moving a wake time later after a successful write is exact, not "earliest ever".
    store
        .save(&b, 1, b"b2", &index(Some(8_000), false, "bot_active"))
        .await
        .unwrap();
    assert_eq!(
        mine(store.due(10_000, 100).await.unwrap()),
        vec![(a, 5_000), (b, 8_000)]
    );
    // A failed (conflicting) write may leave an earlier wake time, never a later or no one.
    let _ = store
        .save(&a, 99, b"x", &index(Some(9_000), false, "bot_active"))
        .await;
    let _ = store
        .save(&a, 99, b"x", &index(None, false, "bot_active"))
        .await;
    let a_due = mine(store.due(u64::MAX, 100).await.unwrap())
        .into_iter()
        .find(|(k, _)| *k == a)
        .expect("a's wake survives a failed write");
    assert!(a_due.1 <= 5_000, "a failed write must not postpone a timer");
    // Clearing removes it.
    store
        .save(&a, 1, b"a2", &index(None, false, "idle"))
        .await
        .unwrap();
    store
        .save(&b, 2, b"b3", &index(None, false, "idle"))
        .await
        .unwrap();
    assert_eq!(mine(store.due(u64::MAX, 100).await.unwrap()), vec![]);
    // The limit is honoured.
    for i in 10..20 {
        store
            .save(
                &ContactKey::new(4, i),
                0,
                b"n",
                &index(Some(i * 10), false, "bot_active"),
            )
            .await
            .unwrap();
    }
    assert_eq!(mine(store.due(u64::MAX, 3).await.unwrap()).len(), 3);
}

async fn outbox_index(store: &dyn Store) {
    let a = ContactKey::new(5, 1);
    let mine = |v: Vec<ContactKey>| -> Vec<ContactKey> {
        v.into_iter().filter(|k| k.account_id == 5).collect()
    };
    store
        .save(&a, 0, b"a", &index(None, true, "bot_active"))
        .await
        .unwrap();
    assert_eq!(mine(store.pending_outbox(1000).await.unwrap()), vec![a]);
    let listed = store.pending_outbox(usize::MAX).await.unwrap().len() as u64;
    assert_eq!(store.pending_outbox_count().await.unwrap(), listed);
    // A failed write never clears the mark.
    let _ = store
        .save(&a, 42, b"x", &index(None, false, "bot_active"))
        .await;
    assert_eq!(mine(store.pending_outbox(1000).await.unwrap()), vec![a]);
    store
        .save(&a, 1, b"a", &index(None, false, "bot_active"))
        .await
        .unwrap();
    assert_eq!(mine(store.pending_outbox(1000).await.unwrap()), vec![]);

    // A writer that names the entries of its own previous save (`previous`) gets indexes
    // that say exactly what the newest snapshot needs, whatever the store skips.
    let b = ContactKey::new(5, 2);
    let wake_of = |due: Vec<(ContactKey, Millis)>| -> Vec<Millis> {
        due.into_iter()
            .filter(|(k, _)| *k == b)
            .map(|(_, at)| at)
            .collect()
    };
    let after = |prev: &IndexUpdate, next: IndexUpdate| IndexUpdate {
        previous: Some(Box::new(prev.clone())),
        ..next
    };
    let idle = index(None, false, "bot_active");
    store.save(&b, 0, b"b", &idle).await.unwrap();
    // Work appears (wake + outbox), stays, moves earlier, moves later, then is done.
    let steps = [
        (Some(9_000), true),
        (Some(9_000), true),
        (Some(7_000), true),
        (Some(8_000), true),
        (None, true),
        (None, false),
        (Some(6_000), false),
    ];
    let mut prev = idle;
    for (n, (wake, pending)) in steps.into_iter().enumerate() {
        let next = after(&prev, index(wake, pending, "bot_active"));
        store.save(&b, n as u64 + 1, b"b", &next).await.unwrap();
        assert_eq!(
            wake_of(store.due(u64::MAX, 1000).await.unwrap()),
            wake.into_iter().collect::<Vec<_>>(),
            "wake index after step {n}"
        );
        let marked = mine(store.pending_outbox(1000).await.unwrap()).contains(&b);
        assert_eq!(marked, pending, "outbox index after step {n}");
        prev = IndexUpdate {
            previous: None,
            ..next
        };
    }
    let phase_change = after(&prev, index(Some(6_000), false, "paused"));
    store.save(&b, 8, b"b", &phase_change).await.unwrap();
    let phases = store.phases(10_000).await.unwrap();
    assert!(phases.contains(&(b, PhaseName::Paused)), "{phases:?}");
}

async fn phase_index(store: &dyn Store) {
    let a = ContactKey::new(6, 1);
    store
        .save(&a, 0, b"a", &index(None, false, "bot_active"))
        .await
        .unwrap();
    store
        .save(&a, 1, b"a", &index(None, false, "human_assigned"))
        .await
        .unwrap();
    let phases: Vec<_> = store
        .phases(1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.account_id == 6)
        .collect();
    assert_eq!(phases, vec![(a, PhaseName::HumanAssigned)]);
}

async fn named_values(store: &dyn Store) {
    assert_eq!(store.get_value("conformance:token").await.unwrap(), None);
    store.put_value("conformance:token", b"t1").await.unwrap();
    store.put_value("conformance:token", b"t2").await.unwrap();
    assert_eq!(
        store.get_value("conformance:token").await.unwrap(),
        Some(b"t2".to_vec())
    );
    // The first value stays; a later one is not written.
    let first = store.put_value_if_absent("conformance:key", b"k1").await;
    assert_eq!(first.unwrap(), b"k1".to_vec());
    let second = store.put_value_if_absent("conformance:key", b"k2").await;
    assert_eq!(second.unwrap(), b"k1".to_vec());
    assert_eq!(
        store.get_value("conformance:key").await.unwrap(),
        Some(b"k1".to_vec())
    );
}

async fn binary_data(store: &dyn Store) {
    let key = ContactKey::new(7, 1);
    let data: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    store
        .save(&key, 0, &data, &index(None, false, "idle"))
        .await
        .unwrap();
    assert_eq!(store.load(&key).await.unwrap().unwrap().data, data);
}

fn items(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

fn logs_of(snap: &StoredSnapshot) -> Vec<Vec<String>> {
    snap.logs
        .iter()
        .map(|log| {
            log.iter()
                .map(|i| String::from_utf8(i.clone()).unwrap())
                .collect()
        })
        .collect()
}

/// A save changes each log by difference: drop from the front, append; or replace it whole.
/// Logs change with the head and the version, never on a conflict.
async fn logs_change_by_difference(store: &dyn Store) {
    let key = ContactKey::new(10, 10);
    let ix = index(None, false, "bot_active");
    let first = SnapshotWrite {
        head: b"h1".to_vec(),
        logs: [
            LogWrite::Replace(items(&["a", "b"])),
            LogWrite::Append {
                drop_front: 3,
                items: items(&["s1"]),
            },
            LogWrite::UNCHANGED,
        ],
    };
    assert_eq!(store.write(&key, 0, &first, &ix).await.unwrap(), 1);
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!(snap.data, b"h1");
    assert_eq!(logs_of(&snap), [vec!["a", "b"], vec!["s1"], vec![]]);

    let second = SnapshotWrite {
        head: b"h2".to_vec(),
        logs: [
            LogWrite::Append {
                drop_front: 1,
                items: items(&["c", "d"]),
            },
            LogWrite::Replace(Vec::new()),
            LogWrite::Append {
                drop_front: 0,
                items: items(&["t1", "t2", "t3"]),
            },
        ],
    };
    assert_eq!(store.write(&key, 1, &second, &ix).await.unwrap(), 2);
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!((snap.version, snap.data.as_slice()), (2, &b"h2"[..]));
    assert_eq!(
        logs_of(&snap),
        [vec!["b", "c", "d"], vec![], vec!["t1", "t2", "t3"]]
    );

    // A conflict changes no log.
    let stale = SnapshotWrite {
        head: b"stale".to_vec(),
        logs: [
            LogWrite::Replace(items(&["x"])),
            LogWrite::Replace(items(&["x"])),
            LogWrite::Replace(items(&["x"])),
        ],
    };
    assert_eq!(
        store.write(&key, 1, &stale, &ix).await,
        Err(StoreError::Conflict { current: 2 })
    );
    assert_eq!(store.load(&key).await.unwrap().unwrap(), snap);

    // Dropping more than a log holds empties it; a head-only save keeps the logs.
    let third = SnapshotWrite {
        head: b"h3".to_vec(),
        logs: [
            LogWrite::Append {
                drop_front: 10,
                items: Vec::new(),
            },
            LogWrite::UNCHANGED,
            LogWrite::Append {
                drop_front: 2,
                items: items(&["t4"]),
            },
        ],
    };
    store.write(&key, 2, &third, &ix).await.unwrap();
    store.save(&key, 3, b"h4", &ix).await.unwrap();
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!((snap.version, snap.data.as_slice()), (4, &b"h4"[..]));
    assert_eq!(logs_of(&snap), [vec![], vec![], vec!["t3", "t4"]]);

    // Many items, binary ones among them, in one save and read back in order.
    let many: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let mut item = i.to_be_bytes().to_vec();
            item.extend_from_slice(&[0, 255, b'\r', b'\n']);
            item
        })
        .collect();
    let big = SnapshotWrite {
        head: vec![0, 1, 2],
        logs: [
            LogWrite::Replace(many.clone()),
            LogWrite::UNCHANGED,
            LogWrite::UNCHANGED,
        ],
    };
    store.write(&key, 4, &big, &ix).await.unwrap();
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!(snap.logs[0], many);
}

/// A snapshot stored in the one-document format of before the logs (version `version`, the
/// document `old`, no logs; the caller wrote it the way its backend did) loads as it is, reads
/// as a conversation, and its first save moves its parts into the logs.
pub async fn an_old_snapshot_moves_into_the_logs(
    store: &dyn Store,
    key: &ContactKey,
    version: u64,
    old: &[u8],
) {
    use crate::conversation::Conversation;
    let stored = store.load(key).await.unwrap().expect("the old snapshot");
    assert_eq!((stored.version, stored.data.as_slice()), (version, old));
    assert!(stored.logs.iter().all(Vec::is_empty));
    let mut conversation = Conversation::from_snapshot(&stored).unwrap();
    let parts = [
        conversation.pending().len(),
        conversation.seen().len(),
        conversation.timeline().len(),
    ];
    assert!(
        parts.iter().all(|n| *n > 0),
        "an old snapshot with every part: {parts:?}"
    );

    let write = conversation.to_snapshot().unwrap();
    let phase = conversation.phase().kind();
    store
        .write(key, version, &write, &index(None, false, phase.as_str()))
        .await
        .unwrap();
    conversation.saved(&write);
    let stored = store.load(key).await.unwrap().unwrap();
    assert_eq!(stored.version, version + 1);
    let held = stored.logs.each_ref().map(Vec::len);
    assert_eq!(held, parts, "every part moved into its log");
    assert_eq!(Conversation::from_snapshot(&stored).unwrap(), conversation);
}
