//! How a conversation is stored: a head and three logs saved by difference (`src/snapshot.rs`).
//! The proptest in `invariants.rs` checks that what is stored always reads back as the
//! conversation; these pin the two promises of issue #15 on concrete cases: a snapshot written
//! before the logs existed still loads, and one more message costs the same write whatever the
//! conversation's length.

use conversa_actors::store::{LogWrite, SnapshotWrite, StoredSnapshot, apply_log_write};
use conversa_actors::*;

const T0: Millis = 1_700_000_000_000;
const KEY: ContactKey = ContactKey {
    account_id: 7,
    contact_id: 42,
};

fn message(id: &str) -> Event {
    Event::CustomerMessage(InboundMessage {
        id: id.into(),
        text: format!("Olá, quero saber sobre aposentadoria ({id})"),
        created_at: 1_764_380_000,
        attachment: None,
        links: Links {
            lead_id: Some(500_042),
            talk_id: Some(42),
            chat_id: Some("54caee02-e383-46d8-a9b7-1fb43f07cffe".into()),
        },
    })
}

/// What the store does with a write: the head replaced, each log changed by difference.
fn store(stored: &mut StoredSnapshot, write: &SnapshotWrite) {
    stored.version += 1;
    stored.data = write.head.clone();
    for (log, change) in stored.logs.iter_mut().zip(&write.logs) {
        apply_log_write(log, change);
    }
}

fn save(c: &mut Conversation, stored: &mut StoredSnapshot) -> SnapshotWrite {
    let write = c.to_snapshot().unwrap();
    store(stored, &write);
    c.saved(&write);
    write
}

fn empty() -> StoredSnapshot {
    StoredSnapshot {
        version: 0,
        data: Vec::new(),
        logs: Default::default(),
    }
}

/// Written by conversa before the logs (session 8, 710d650): three messages from one customer
/// under a long debounce, everything in one JSON document (the Redis hash's `d` field).
const BEFORE_LOGS: &[u8] = include_bytes!("fixtures/snapshot-before-logs.json");

#[test]
fn a_snapshot_written_before_the_logs_loads_and_its_first_save_moves_into_them() {
    let mut stored = StoredSnapshot {
        version: 3,
        data: BEFORE_LOGS.to_vec(),
        logs: Default::default(),
    };
    let mut c = Conversation::from_snapshot(&stored).unwrap();
    let ids =
        |c: &Conversation| -> Vec<String> { c.pending().iter().map(|m| m.id.clone()).collect() };
    assert_eq!(ids(&c), ["old-m1", "old-m2", "old-m3"]);
    assert_eq!(c.seen().len(), 3);
    assert_eq!(c.timeline().len(), 3);
    assert_eq!(c.phase().name(), "bot_active");
    assert_eq!(c.links().lead_id, Some(9001));

    // Its first save writes the inline parts whole into the logs, and the head without them.
    let write = save(&mut c, &mut stored);
    for log in &write.logs {
        assert!(
            matches!(log, LogWrite::Replace(items) if items.len() == 3),
            "{log:?}"
        );
    }
    let head: serde_json::Value = serde_json::from_slice(&write.head).unwrap();
    for inline in ["pending", "seen", "timeline"] {
        assert!(head.get(inline).is_none(), "{inline} left in the head");
    }
    let back = Conversation::from_snapshot(&stored).unwrap();
    assert_eq!(back, c);

    // And it goes on as any conversation: a fourth message is one more item per log.
    let _ = c.handle(message("new-m4"), T0, &Policy::default());
    save(&mut c, &mut stored);
    let back = Conversation::from_snapshot(&stored).unwrap();
    assert_eq!(ids(&back), ["old-m1", "old-m2", "old-m3", "new-m4"]);
    assert_eq!(back, c);
}

/// Bytes of log items a write carries, and how many items it drops.
fn log_cost(write: &SnapshotWrite) -> (usize, usize) {
    let mut bytes = 0;
    let mut dropped = 0;
    for log in &write.logs {
        match log {
            LogWrite::Append { drop_front, items } => {
                dropped += drop_front;
                bytes += items.iter().map(Vec::len).sum::<usize>();
            }
            LogWrite::Replace(items) => panic!("a message rewrote a log of {} items", items.len()),
        }
    }
    (bytes, dropped)
}

#[test]
fn one_more_message_writes_the_same_whatever_the_conversations_length() {
    let policy = Policy::default();
    // A fresh conversation's second message...
    let mut fresh = Conversation::new(KEY, T0);
    let mut stored_fresh = empty();
    let _ = fresh.handle(message("f-0"), T0, &policy);
    save(&mut fresh, &mut stored_fresh);
    let _ = fresh.handle(message("f-1"), T0 + 1, &policy);
    let fresh_write = save(&mut fresh, &mut stored_fresh);

    // ...and a long one's: full timeline, full dedupe memory, the most unanswered messages.
    let mut long = Conversation::new(KEY, T0);
    let mut stored_long = empty();
    for n in 0..300 {
        let _ = long.handle(message(&format!("l-{n:03}")), T0 + n, &policy);
        save(&mut long, &mut stored_long);
    }
    assert_eq!(long.pending().len(), policy.max_pending_messages);
    assert_eq!(long.timeline().len(), 100);
    let _ = long.handle(message("l-300"), T0 + 300, &policy);
    let long_write = save(&mut long, &mut stored_long);

    let (fresh_bytes, _) = log_cost(&fresh_write);
    let (long_bytes, long_dropped) = log_cost(&long_write);
    // One pending message, one remembered id and the timeline's entries for it, in both. The
    // long one also drops the oldest of each full log (and the timeline's note of a dropped
    // message), which costs a count, not bytes.
    assert!(
        long_bytes <= fresh_bytes + 200,
        "log bytes: fresh {fresh_bytes}, long {long_bytes}"
    );
    assert!(long_dropped <= 4, "dropped {long_dropped}");
    assert!(
        long_write.head.len() <= fresh_write.head.len() + 100,
        "head: fresh {} B, long {} B",
        fresh_write.head.len(),
        long_write.head.len()
    );
    // Still the same conversation once stored.
    assert_eq!(Conversation::from_snapshot(&stored_long).unwrap(), long);
}
