//! Criterion benches of the pure state machine, `Conversation::handle`, and of the snapshot
//! serialisation that follows every change.
//!
//! Every case clones a prepared conversation and event outside the timed part
//! (`iter_batched`) and hands the conversation back so its drop is not timed either: the
//! figures are the cost of one `handle` call (its outcome is dropped outside the timing too):
//!
//! * `message/fresh_debounce_0`: the first customer message on a new conversation, dispatched
//!   at once (`DEBOUNCE_MS=0`).
//! * `message/fresh_debounce_4000`: the same with the default debounce (a timer is set).
//! * `message/duplicate`: Kommo redelivers a message already seen: nothing changes.
//! * `reply/in_flight`: n8n answers the dispatch in flight: the reply goes to the outbox.
//! * `assume`: a seller takes a bot conversation over (epoch bump, outbox cleared, note).
//! * `message/full_timeline`: a long-lived conversation (100 timeline entries, many seen ids)
//!   receives a message.
//! * `snapshot/to_vec_*`: `serde_json::to_vec` of a typical and of a full conversation.
//!
//! Run with `cargo bench -p conversa-actors --bench conversation`.

use std::hint::black_box;

use conversa_actors::timeline::Timeline;
use conversa_actors::{
    ContactKey, Conversation, Event, InboundMessage, Links, Millis, Policy, SellerRef,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const T0: Millis = 1_736_447_224_000;

fn message(n: u64) -> InboundMessage {
    InboundMessage {
        id: format!("c0925911-ce8f-4994-b117-{n:012}"),
        text: "Boa tarde! Gostaria de saber mais sobre o processo de aposentadoria".into(),
        created_at: (T0 / 1_000 + n) as i64,
        attachment: None,
        links: Links {
            lead_id: Some(878_244),
            talk_id: Some(109),
            chat_id: Some("7df3cc9c-26c0-4b30-b8c9-b9ac728b407a".into()),
        },
    }
}

fn seller() -> SellerRef {
    SellerRef {
        id: "42".into(),
        name: "Ana Souza".into(),
    }
}

fn instant() -> Policy {
    Policy {
        debounce_ms: 0,
        ..Policy::default()
    }
}

/// The dispatch id the conversation waits a reply for.
fn in_flight(c: &Conversation) -> String {
    c.in_flight()
        .as_ref()
        .expect("a dispatch in flight")
        .dispatch_id
        .clone()
}

/// Marks every outbox entry as executed, as the actor does after running them.
fn run_outbox(c: &mut Conversation, now: Millis, policy: &Policy) {
    let ids: Vec<String> = c.outbox().entries().map(|e| e.id.clone()).collect();
    for id in ids {
        c.handle(Event::EffectDone { id }, now, policy)
            .expect("effect done");
    }
}

/// A conversation after `exchanges` message → dispatch → reply cycles, outbox executed.
fn conversation_with(exchanges: u64) -> Conversation {
    let policy = instant();
    let mut c = Conversation::new(ContactKey::new(1, 2), T0);
    for n in 0..exchanges {
        let now = T0 + n * 60_000;
        c.handle(Event::CustomerMessage(message(n)), now, &policy)
            .expect("message");
        let dispatch_id = Some(in_flight(&c));
        run_outbox(&mut c, now + 100, &policy);
        c.handle(
            Event::Reply {
                dispatch_id,
                texts: vec!["Olá! Claro, posso ajudar. Qual é a sua dúvida?".into()],
            },
            now + 2_000,
            &policy,
        )
        .expect("reply");
        run_outbox(&mut c, now + 2_100, &policy);
    }
    c
}

fn handle(c: &mut Criterion) {
    let fresh = Conversation::new(ContactKey::new(1, 2), T0);
    let first = Event::CustomerMessage(message(1));
    let mut group = c.benchmark_group("conversation_handle");

    let policy = instant();
    group.bench_function("message/fresh_debounce_0", |b| {
        b.iter_batched(
            || (fresh.clone(), first.clone()),
            |(mut conv, event)| {
                let outcome = conv.handle(event, T0, &policy);
                // Returned, so dropping the conversation is not timed.
                black_box((conv, outcome))
            },
            BatchSize::SmallInput,
        )
    });

    let debounced = Policy::default();
    assert_eq!(debounced.debounce_ms, 4_000);
    group.bench_function("message/fresh_debounce_4000", |b| {
        b.iter_batched(
            || (fresh.clone(), first.clone()),
            |(mut conv, event)| {
                let outcome = conv.handle(event, T0, &debounced);
                // Returned, so dropping the conversation is not timed.
                black_box((conv, outcome))
            },
            BatchSize::SmallInput,
        )
    });

    let mut seen = fresh.clone();
    seen.handle(first.clone(), T0, &policy).expect("message");
    let outcome = seen.clone().handle(first.clone(), T0 + 1, &policy);
    assert!(
        !outcome.expect("duplicate").changed,
        "a redelivery changes nothing"
    );
    group.bench_function("message/duplicate", |b| {
        b.iter_batched(
            || (seen.clone(), first.clone()),
            |(mut conv, event)| {
                let outcome = conv.handle(event, T0 + 1, &policy);
                // Returned, so dropping the conversation is not timed.
                black_box((conv, outcome))
            },
            BatchSize::SmallInput,
        )
    });

    let reply = Event::Reply {
        dispatch_id: Some(in_flight(&seen)),
        texts: vec!["Olá! Claro, posso ajudar. Qual é a sua dúvida?".into()],
    };
    let outcome = seen.clone().handle(reply.clone(), T0 + 2_000, &policy);
    assert!(
        outcome.expect("reply").dropped.is_none(),
        "the reply is delivered"
    );
    group.bench_function("reply/in_flight", |b| {
        b.iter_batched(
            || (seen.clone(), reply.clone()),
            |(mut conv, event)| {
                let outcome = conv.handle(event, T0 + 2_000, &policy);
                // Returned, so dropping the conversation is not timed.
                black_box((conv, outcome))
            },
            BatchSize::SmallInput,
        )
    });

    let assume = Event::Assume {
        seller: seller(),
        by: "whatsapp".into(),
    };
    group.bench_function("assume", |b| {
        b.iter_batched(
            || (seen.clone(), assume.clone()),
            |(mut conv, event)| {
                let outcome = conv.handle(event, T0 + 3_000, &policy);
                // Returned, so dropping the conversation is not timed.
                black_box((conv, outcome))
            },
            BatchSize::SmallInput,
        )
    });

    let full = conversation_with(60);
    assert_eq!(full.timeline().len(), Timeline::CAPACITY);
    let next = Event::CustomerMessage(message(1_000));
    let later = T0 + 61 * 60_000;
    group.bench_function("message/full_timeline", |b| {
        b.iter_batched(
            || (full.clone(), next.clone()),
            |(mut conv, event)| {
                let outcome = conv.handle(event, later, &policy);
                // Returned, so dropping the conversation is not timed.
                black_box((conv, outcome))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    // Typical: a few exchanges done, a new message dispatched and awaiting its reply.
    let mut typical = conversation_with(3);
    typical
        .handle(
            Event::CustomerMessage(message(100)),
            T0 + 3 * 60_000,
            &instant(),
        )
        .expect("message");
    let full = conversation_with(60);
    let mut group = c.benchmark_group("conversation_snapshot");
    group.bench_function("to_vec_typical", |b| {
        b.iter(|| serde_json::to_vec(black_box(&typical)).expect("serialisable"))
    });
    group.bench_function("to_vec_full_timeline", |b| {
        b.iter(|| serde_json::to_vec(black_box(&full)).expect("serialisable"))
    });
    group.finish();
}

criterion_group!(benches, handle, snapshot);
criterion_main!(benches);
