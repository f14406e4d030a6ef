//! Unit tests of the conversation state machine: one test per rule, each named after it.
//!
//! Every test drives a [`Conversation`] through [`Sim`], which keeps the clock and the policy and
//! checks the one rule that holds for every event: a rejection leaves the conversation exactly as
//! it was.

use conversa_actors::conversation::{InFlight, MissedMessage};
use conversa_actors::note::Note;
use conversa_actors::timeline::{Timeline, What};
use conversa_actors::*;

const T0: Millis = 1_700_000_000_000;
const KEY: ContactKey = ContactKey {
    account_id: 7,
    contact_id: 42,
};

// ---- the harness --------------------------------------------------------------------------

struct Sim {
    c: Conversation,
    p: Policy,
    now: Millis,
    /// The timers before the last event, to tell what it armed and cancelled.
    timers_before: std::collections::BTreeMap<TimerKind, Millis>,
}

impl Sim {
    fn new() -> Self {
        Self::with(Policy::default())
    }

    fn with(p: Policy) -> Self {
        Self {
            c: Conversation::new(KEY, T0),
            p,
            now: T0,
            timers_before: Default::default(),
        }
    }

    /// Held by "ana" under a 100 s lease, nudged 10 s before it ends.
    fn held_briefly() -> Self {
        let mut s = Self::with(Policy {
            human_lease_ms: Some(100_000),
            lease_nudge_ms: 10_000,
            ..Policy::default()
        });
        s.ok(assume("ana"));
        s
    }

    /// Debounce off: every customer message is dispatched at once.
    fn immediate() -> Self {
        Self::with(Policy {
            debounce_ms: 0,
            ..Policy::default()
        })
    }

    fn advance(&mut self, ms: Millis) -> &mut Self {
        self.now += ms;
        self
    }

    fn try_handle(&mut self, event: Event) -> Result<Outcome, Rejection> {
        let before = self.c.clone();
        self.timers_before = before.timers().clone();
        let result = self.c.handle(event, self.now, &self.p);
        if result.is_err() {
            assert_eq!(
                self.c, before,
                "a rejection must leave the conversation as it was"
            );
        }
        result
    }

    fn ok(&mut self, event: Event) -> Outcome {
        let name = event.name();
        self.try_handle(event)
            .unwrap_or_else(|r| panic!("{name} rejected: {r}"))
    }

    /// The decision timers (all but the idle end, which moves with every activity and has
    /// tests of its own) the last event armed or moved, with their due times, in kind order.
    /// Timers are the conversation's own state, not effects: see `Conversation::poll_timeout`.
    fn timers_set(&self) -> Vec<(TimerKind, Millis)> {
        let before = &self.timers_before;
        self.c
            .timers()
            .iter()
            .filter(|(kind, at)| **kind != TimerKind::IdleEnd && before.get(kind) != Some(at))
            .map(|(kind, at)| (*kind, *at))
            .collect()
    }

    /// The decision timers the last event cancelled, in kind order.
    fn timers_cancelled(&self) -> Vec<TimerKind> {
        let after = self.c.timers();
        self.timers_before
            .keys()
            .filter(|kind| **kind != TimerKind::IdleEnd && !after.contains_key(kind))
            .copied()
            .collect()
    }

    fn rejected(&mut self, event: Event) -> Rejection {
        let name = event.name();
        match self.try_handle(event) {
            Ok(out) => panic!("{name} accepted: {out:?}"),
            Err(r) => r,
        }
    }

    /// Applies `event` and asserts that it changed nothing at all.
    fn no_op(&mut self, event: Event) {
        let before = self.c.clone();
        let out = self.ok(event);
        assert!(!out.changed, "expected no change, got {out:?}");
        assert!(out.effects.is_empty(), "expected no effects, got {out:?}");
        assert_eq!(out.dropped, None);
        assert_eq!(self.c, before);
    }

    /// A customer message dispatched at once (debounce 0): returns the dispatch id.
    fn dispatched(&mut self, id: &str) -> String {
        let out = self.ok(customer(id));
        the_dispatch(&out, DispatchKind::Message).dispatch_id
    }

    /// Marks an outbox entry as taken by an executor (it is being sent).
    fn claim(&mut self, id: &str) {
        let until = self.now + 30_000;
        assert!(self.c.claim(id, "node-a", until), "entry in the outbox");
    }

    fn whats(&self) -> Vec<What> {
        self.c.timeline().entries().map(|e| e.what).collect()
    }

    fn last_what(&self) -> What {
        self.c.timeline().last().expect("a timeline entry").what
    }

    fn outbox_ids(&self) -> Vec<String> {
        self.c.outbox().entries().map(|e| e.id.clone()).collect()
    }

    fn outbox_has(&self, id: &str) -> bool {
        self.c.outbox().get(id).is_some()
    }

    /// The timers that are decisions (debounce, lease, scheduling), without the idle end that
    /// every activity moves.
    fn decision_timers(&self) -> Vec<TimerKind> {
        self.c
            .timers()
            .keys()
            .copied()
            .filter(|t| *t != TimerKind::IdleEnd)
            .collect()
    }

    fn pending_ids(&self) -> Vec<&str> {
        self.c.pending().iter().map(|m| m.id.as_str()).collect()
    }
}

// ---- events ---------------------------------------------------------------------------------

fn message(id: &str) -> InboundMessage {
    InboundMessage {
        id: id.into(),
        text: format!("text of {id}"),
        created_at: 1_700_000_000,
        attachment: None,
        links: Links::default(),
    }
}

fn voice(id: &str) -> InboundMessage {
    InboundMessage {
        attachment: Some(Attachment {
            kind: "voice".into(),
            link: format!("https://drive.example/{id}.ogg"),
            file_name: None,
        }),
        ..message(id)
    }
}

fn customer(id: &str) -> Event {
    Event::CustomerMessage(message(id))
}

fn customer_voice(id: &str) -> Event {
    Event::CustomerMessage(voice(id))
}

fn seller(id: &str) -> SellerRef {
    SellerRef {
        id: id.into(),
        name: format!("Seller {id}"),
    }
}

fn assume(by: &str) -> Event {
    Event::Assume {
        seller: seller(by),
        by: format!("/assumir from {by}"),
    }
}

fn release(by: &str) -> Event {
    Event::Release {
        seller: Some(seller(by)),
        by: format!("/liberar from {by}"),
    }
}

fn operator_release() -> Event {
    Event::Release {
        seller: None,
        by: "operator".into(),
    }
}

fn spoke(by: &str, message_id: &str) -> Event {
    Event::SellerSpoke {
        seller: seller(by),
        message_id: message_id.into(),
    }
}

fn reply(dispatch_id: &str) -> Event {
    Event::Reply {
        dispatch_id: Some(dispatch_id.into()),
        texts: vec![format!("answer to {dispatch_id}")],
    }
}

fn reply_without_id() -> Event {
    Event::Reply {
        dispatch_id: None,
        texts: vec!["an answer".into()],
    }
}

fn pause() -> Event {
    Event::BotControl {
        command: BotCommand::Pause,
        by: "operator".into(),
    }
}

fn resume() -> Event {
    Event::BotControl {
        command: BotCommand::Resume,
        by: "operator".into(),
    }
}

fn proactive(by: &str) -> Event {
    Event::ProactiveStart {
        trigger: "form_filled".into(),
        seller: seller(by),
        area: None,
        details: serde_json::json!({ "form": "contato", "lead_id": 991 }),
    }
}

fn scheduling(by: &str) -> Event {
    Event::SchedulingRequest {
        seller: Some(seller(by)),
        request: serde_json::json!({ "when": "tomorrow 10h" }),
    }
}

fn outcome(dispatch_id: Option<&str>, confirmed: bool) -> Event {
    Event::SchedulingOutcome {
        dispatch_id: dispatch_id.map(str::to_owned),
        confirmed,
        details: serde_json::json!("terça 10h"),
    }
}

fn fire(timer: TimerKind) -> Event {
    Event::TimerFired { timer }
}

fn done(id: &str) -> Event {
    Event::EffectDone { id: id.into() }
}

fn failed(id: &str, retryable: bool) -> Event {
    Event::EffectFailed {
        id: id.into(),
        error: "n8n: 502".into(),
        retryable,
    }
}

// ---- looking at outcomes ------------------------------------------------------------------

fn dispatches(out: &Outcome) -> Vec<Dispatch> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// The one dispatch of the outcome, which must be of `kind`.
fn the_dispatch(out: &Outcome, kind: DispatchKind) -> Dispatch {
    let all = dispatches(out);
    assert_eq!(all.len(), 1, "expected one dispatch, got {:?}", out.effects);
    assert_eq!(all[0].kind, kind);
    all[0].clone()
}

fn deliveries(out: &Outcome) -> Vec<(Option<String>, Vec<String>)> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeliverReply {
                dispatch_id, texts, ..
            } => Some((dispatch_id.clone(), texts.clone())),
            _ => None,
        })
        .collect()
}

fn notes(out: &Outcome) -> Vec<Note> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::AddNote { note } => Some(note.clone()),
            _ => None,
        })
        .collect()
}

fn ids(d: &Dispatch) -> Vec<&str> {
    d.messages.iter().map(|m| m.id.as_str()).collect()
}

// ---- customer messages and the debounce -----------------------------------------------------

#[test]
fn a_customer_message_in_idle_starts_the_bot_and_arms_the_debounce_timer() {
    let mut s = Sim::new();
    let mut m = message("m1");
    m.links.lead_id = Some(991);
    let out = s.ok(Event::CustomerMessage(m.clone()));

    assert!(out.changed);
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert!(out.effects.is_empty());
    assert_eq!(s.timers_set(), [(TimerKind::Debounce, T0 + 4_000)]);
    assert_eq!(*s.c.pending(), vec![m]);
    assert_eq!(s.c.in_flight(), None);
    assert_eq!(s.c.timers().get(&TimerKind::Debounce), Some(&(T0 + 4_000)));
    assert_eq!(s.c.burst_started_at(), Some(T0));
    assert_eq!(s.c.last_customer_at(), Some(T0));
    assert_eq!(s.c.links().lead_id, Some(991));
    assert!(s.c.outbox().is_empty());
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(entry.what, What::MessageIn);
    assert_eq!(entry.message_id.as_deref(), Some("m1"));
}

#[test]
fn with_no_debounce_a_customer_message_is_dispatched_at_once() {
    let mut s = Sim::immediate();
    let out = s.ok(customer("m1"));

    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert!(s.timers_set().is_empty());
    let d = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(d.messages, vec![message("m1")]);
    assert_eq!(d.epoch, 0);
    assert_eq!(d.seller, None);
    assert_eq!(d.dispatch_id, "7-42-1");
    assert_eq!(
        s.c.in_flight().cloned(),
        Some(InFlight {
            dispatch_id: d.dispatch_id.clone(),
            kind: DispatchKind::Message,
            superseded: false,
        })
    );
    // The dispatch is in the outbox under its dispatch id, due at once.
    let entry = s.c.outbox().get(&d.dispatch_id).unwrap();
    assert_eq!(entry.effect, Effect::Dispatch(d.clone()));
    assert_eq!((entry.attempts, entry.not_before), (0, T0));
    assert_eq!(
        s.c.recent_dispatches().back().unwrap().dispatch_id,
        d.dispatch_id
    );
    let queued = s.c.timeline().last().unwrap();
    assert_eq!(queued.what, What::DispatchQueued);
    assert_eq!(queued.dispatch_id.as_deref(), Some(d.dispatch_id.as_str()));
    assert_eq!(queued.detail.as_deref(), Some("message"));
}

#[test]
fn each_new_customer_message_pushes_the_debounce_back() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    let out = s.advance(1_000).ok(customer("m2"));
    assert_eq!(s.timers_set(), vec![(TimerKind::Debounce, T0 + 5_000)]);
    assert!(dispatches(&out).is_empty());
    assert_eq!(s.pending_ids(), ["m1", "m2"]);
    assert_eq!(s.c.burst_started_at(), Some(T0), "the burst began with m1");
}

#[test]
fn the_debounce_cap_bounds_the_wait_while_the_customer_keeps_typing() {
    let mut s = Sim::new(); // debounce 4 s, cap 15 s
    s.ok(customer("m1"));
    let mut last_at = 0;
    for (i, id) in ["m2", "m3", "m4", "m5", "m6"].into_iter().enumerate() {
        s.advance(3_000).ok(customer(id));
        // Past the cap the timer stays where it is: read it, not what moved.
        let at = s.c.timers()[&TimerKind::Debounce];
        let elapsed = 3_000 * (i as u64 + 1);
        assert_eq!(at, (T0 + elapsed + 4_000).min(T0 + 15_000));
        assert!(at <= T0 + 15_000, "never later than the cap");
        last_at = at;
    }
    assert_eq!(last_at, T0 + 15_000);
    // The customer is still typing when the cap comes: the burst goes anyway.
    let out = s.advance(0).ok(fire(TimerKind::Debounce));
    assert!(out.changed, "at T0+15s the timer is due");
    let d = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(ids(&d), ["m1", "m2", "m3", "m4", "m5", "m6"]);
}

#[test]
fn a_message_after_the_cap_is_never_scheduled_in_the_past() {
    let mut s = Sim::with(Policy {
        debounce_ms: 4_000,
        debounce_max_ms: 1_000,
        ..Policy::default()
    });
    s.ok(customer("m1"));
    assert_eq!(s.timers_set(), vec![(TimerKind::Debounce, T0 + 1_000)]);
    // The actor was late: the timer did not fire and the customer wrote again.
    s.advance(5_000).ok(customer("m2"));
    assert_eq!(s.timers_set(), vec![(TimerKind::Debounce, T0 + 5_000)]);
}

#[test]
fn the_debounce_timer_dispatches_every_pending_message_once() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    s.advance(1_000).ok(customer("m2"));
    s.advance(1_000).ok(customer("m3"));
    let out = s.advance(4_000).ok(fire(TimerKind::Debounce));

    let d = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(ids(&d), ["m1", "m2", "m3"]);
    assert!(s.decision_timers().is_empty());
    assert_eq!(s.c.burst_started_at(), None);
    assert_eq!(s.c.in_flight().unwrap().dispatch_id, d.dispatch_id);
    assert_eq!(s.outbox_ids(), std::slice::from_ref(&d.dispatch_id));
    // The messages stay pending until a reply is delivered...
    assert_eq!(s.pending_ids(), ["m1", "m2", "m3"]);
    // ...and the timer, now unset, does nothing when it fires again.
    s.advance(10_000).no_op(fire(TimerKind::Debounce));
}

#[test]
fn a_redelivered_message_changes_nothing() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    s.advance(500).no_op(customer("m1"));
    // Kommo may redeliver with another text field; the id is what counts.
    let mut edited = message("m1");
    edited.text = "something else".into();
    s.no_op(Event::CustomerMessage(edited));
    // Still so after the burst has been dispatched and answered.
    let out = s.advance(5_000).ok(fire(TimerKind::Debounce));
    let d = the_dispatch(&out, DispatchKind::Message);
    s.no_op(customer("m1"));
    s.ok(reply(&d.dispatch_id));
    s.no_op(customer("m1"));
}

#[test]
fn the_same_id_again_with_an_attachment_is_merged_into_the_pending_message() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    let out = s.advance(1_000).ok(customer_voice("m1"));

    assert!(out.changed);
    assert_eq!(s.c.pending().len(), 1, "merged, not added");
    assert_eq!(s.c.pending()[0], voice("m1"));
    assert_eq!(s.timers_set(), vec![(TimerKind::Debounce, T0 + 5_000)]);
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(entry.what, What::AttachmentMerged);
    assert_eq!(entry.message_id.as_deref(), Some("m1"));
    // The merged message redelivered, with or without its attachment: nothing new.
    s.advance(1_000).no_op(customer_voice("m1"));
    s.no_op(customer("m1"));

    let out = s.advance(5_000).ok(fire(TimerKind::Debounce));
    let d = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(d.messages, vec![voice("m1")]);
}

#[test]
fn a_message_first_seen_with_its_attachment_ignores_a_later_resend() {
    let mut s = Sim::new();
    s.ok(customer_voice("m1"));
    s.advance(100).no_op(customer_voice("m1"));
    s.no_op(customer("m1"));
    assert_eq!(*s.c.pending(), vec![voice("m1")]);
}

#[test]
fn an_attachment_for_a_message_in_flight_supersedes_the_dispatch_and_resends_the_message_once() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    let out = s.advance(1_000).ok(customer_voice("m1"));

    assert!(!s.outbox_has(&d1), "d1 was not sent yet: cancelled");
    let d2 = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(d2.messages, vec![voice("m1")]);
    assert_eq!(*s.c.pending(), vec![voice("m1")]);
    let out = s.ok(reply(&d1));
    assert_eq!(out.dropped, Some(DropReason::Superseded));
}

#[test]
fn an_attachment_for_an_answered_message_is_recorded_but_not_dispatched() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(reply(&d1));
    let out = s.advance(1_000).ok(customer_voice("m1"));

    assert!(out.changed);
    assert!(out.effects.is_empty(), "answered already: {out:?}");
    assert!(s.c.pending().is_empty());
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(entry.what, What::AttachmentMerged);
    assert_eq!(entry.message_id.as_deref(), Some("m1"));
    s.no_op(customer_voice("m1"));
}

// ---- superseding and replies ----------------------------------------------------------------

#[test]
fn a_newer_message_supersedes_the_dispatch_in_flight() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.claim(&d1); // an executor is sending it
    let out = s.advance(1_000).ok(customer("m2"));

    let superseded =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::DispatchSuperseded)
            .expect("a dispatch_superseded entry");
    assert_eq!(superseded.dispatch_id.as_deref(), Some(d1.as_str()));
    assert!(
        s.outbox_has(&d1),
        "a claimed dispatch is being sent: it stays"
    );
    let d2 = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(ids(&d2), ["m1", "m2"], "every message since the last reply");

    // n8n answers the old dispatch: dropped, nothing delivered, nothing cleared.
    let out = s.advance(1_000).ok(reply(&d1));
    assert_eq!(out.dropped, Some(DropReason::Superseded));
    assert!(deliveries(&out).is_empty());
    assert_eq!(s.pending_ids(), ["m1", "m2"]);
    let dropped = s.c.timeline().last().unwrap();
    assert_eq!(dropped.what, What::ReplyDropped);
    assert_eq!(dropped.dispatch_id.as_deref(), Some(d1.as_str()));
    assert_eq!(dropped.detail.as_deref(), Some("superseded"));

    // The answer to the new one is delivered.
    let out = s.ok(reply(&d2.dispatch_id));
    assert_eq!(deliveries(&out).len(), 1);
    assert!(s.c.pending().is_empty());
}

#[test]
fn a_superseded_dispatch_not_yet_sent_is_cancelled() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    let out = s.advance(4_000).ok(fire(TimerKind::Debounce));
    let d1 = the_dispatch(&out, DispatchKind::Message).dispatch_id;
    let out = s.advance(1_000).ok(customer("m2"));

    assert!(!s.outbox_has(&d1));
    assert!(dispatches(&out).is_empty(), "debounced: nothing yet");
    assert!(s.c.in_flight().unwrap().superseded);
    let cancelled = s.c.timeline().last().unwrap();
    assert_eq!(cancelled.what, What::EffectCancelled);
    assert_eq!(cancelled.dispatch_id.as_deref(), Some(d1.as_str()));
    let out = s.advance(4_000).ok(fire(TimerKind::Debounce));
    let d2 = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(ids(&d2), ["m1", "m2"]);
}

#[test]
fn the_next_dispatch_carries_only_messages_since_the_last_delivered_reply() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(reply(&d1));
    let out = s.advance(1_000).ok(customer("m2"));
    assert_eq!(ids(&the_dispatch(&out, DispatchKind::Message)), ["m2"]);
}

#[test]
fn a_reply_for_the_dispatch_in_flight_is_delivered_and_clears_pending() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    let out = s.advance(2_000).ok(Event::Reply {
        dispatch_id: Some(d1.clone()),
        texts: vec!["Olá!".into(), "Como posso ajudar?".into()],
    });

    assert_eq!(out.dropped, None);
    assert_eq!(
        out.effects,
        vec![Effect::DeliverReply {
            dispatch_id: Some(d1.clone()),
            texts: vec!["Olá!".into(), "Como posso ajudar?".into()],
            sent: 0,
        }]
    );
    assert!(s.c.pending().is_empty());
    assert_eq!(s.c.in_flight(), None);
    // The reply is in the outbox under its own id.
    let entry =
        s.c.outbox()
            .entries()
            .find(|e| matches!(e.effect, Effect::DeliverReply { .. }))
            .unwrap();
    assert!(
        entry.id.starts_with("7-42-") && entry.id.ends_with('r'),
        "{}",
        entry.id
    );
    let accepted =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::ReplyAccepted)
            .unwrap();
    assert_eq!(accepted.dispatch_id.as_deref(), Some(d1.as_str()));
}

#[test]
fn a_reply_without_dispatch_id_answers_the_dispatch_in_flight() {
    let mut s = Sim::immediate();
    s.dispatched("m1");
    let out = s.advance(1_000).ok(reply_without_id());
    assert_eq!(deliveries(&out), vec![(None, vec!["an answer".to_owned()])]);
    assert!(s.c.pending().is_empty());
}

#[test]
fn a_reply_without_dispatch_id_is_dropped_when_the_dispatch_was_superseded() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    s.advance(4_000).ok(fire(TimerKind::Debounce));
    s.advance(1_000).ok(customer("m2"));
    let out = s.ok(reply_without_id());
    assert_eq!(out.dropped, Some(DropReason::Superseded));
    assert!(deliveries(&out).is_empty());
}

#[test]
fn a_reply_without_dispatch_id_is_dropped_when_nothing_is_in_flight() {
    // Messages still in the debounce: n8n has not seen them, so this cannot answer them.
    let mut s = Sim::new();
    s.ok(customer("m1"));
    let out = s.advance(1_000).ok(reply_without_id());
    assert_eq!(out.dropped, Some(DropReason::UnknownDispatch));
    assert!(deliveries(&out).is_empty());
    assert_eq!(
        s.pending_ids(),
        ["m1"],
        "the customer's message is not lost"
    );
    let out = s.advance(4_000).ok(fire(TimerKind::Debounce));
    assert_eq!(ids(&the_dispatch(&out, DispatchKind::Message)), ["m1"]);
}

#[test]
fn a_reply_for_an_unknown_dispatch_is_dropped() {
    let mut s = Sim::immediate();
    s.dispatched("m1");
    let out = s.ok(reply("7-42-999"));
    assert_eq!(out.dropped, Some(DropReason::UnknownDispatch));
    assert!(out.effects.is_empty());
    assert_eq!(s.pending_ids(), ["m1"]);
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(entry.what, What::ReplyDropped);
    assert_eq!(entry.detail.as_deref(), Some("unknown_dispatch"));
}

#[test]
fn a_second_reply_for_an_answered_dispatch_is_dropped() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(reply(&d1));
    // n8n retrying its callback: said so, not mistaken for a newer message's doing.
    let out = s.ok(reply(&d1));
    assert_eq!(out.dropped, Some(DropReason::AlreadyAnswered));
    assert!(deliveries(&out).is_empty());
}

#[test]
fn an_empty_reply_is_rejected() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    for texts in [vec![], vec![String::new()], vec!["  ".into(), "\n".into()]] {
        let r = s.rejected(Event::Reply {
            dispatch_id: Some(d1.clone()),
            texts,
        });
        assert_eq!(r, Rejection::EmptyReply);
    }
}

// ---- pause and resume -------------------------------------------------------------------------

#[test]
fn pausing_silences_the_bot_and_bumps_the_epoch() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    let d1 = the_dispatch(
        &s.advance(4_000).ok(fire(TimerKind::Debounce)),
        DispatchKind::Message,
    );
    s.advance(1_000).ok(customer("m2")); // debounce armed again
    s.ok(pause());

    assert!(
        matches!(s.c.phase(), Phase::Paused { since, by } if *since == s.now && by == "operator")
    );
    assert_eq!(s.c.epoch(), 1);
    assert_eq!(s.timers_cancelled(), [TimerKind::Debounce]);
    // Unanswered, kept for the bot's return; nothing dispatches them while paused.
    assert_eq!(s.pending_ids(), ["m1", "m2"]);
    assert_eq!(s.c.in_flight(), None);
    assert!(s.decision_timers().is_empty());
    assert!(s.c.outbox().is_empty(), "{:?}", s.outbox_ids());
    assert_eq!(s.last_what(), What::Paused);
    // The reply to the old dispatch arrives while paused.
    let out = s.advance(1_000).ok(reply(&d1.dispatch_id));
    assert_eq!(out.dropped, Some(DropReason::Paused));
    assert!(out.effects.is_empty());
}

#[test]
fn resuming_hands_the_conversation_back_with_a_released_dispatch() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(pause());
    let out = s.advance(60_000).ok(resume());

    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.epoch(), 2);
    let d = the_dispatch(&out, DispatchKind::Released);
    assert_eq!(d.epoch, 2);
    // m1 was never answered: the bot gets it back, and the released dispatch awaits a reply.
    let ids: Vec<_> = d.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m1"]);
    assert_eq!(d.details["reason"], "resumed");
    assert_eq!(d.details["by"], "operator");
    assert_eq!(
        s.c.in_flight().map(|f| f.kind),
        Some(DispatchKind::Released)
    );
    assert_eq!(
        notes(&out),
        [Note::BotBack {
            lease_expired: false
        }]
    );
    assert!(s.whats().contains(&What::Resumed));
    // A reply to the dispatch made before the pause is stale now.
    let out = s.ok(reply(&d1));
    assert_eq!(out.dropped, Some(DropReason::StaleDispatch));
    assert!(out.effects.is_empty());
}

#[test]
fn pausing_twice_or_resuming_an_active_bot_changes_nothing() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    s.no_op(resume());
    s.ok(pause());
    s.advance(1_000).no_op(pause());
    s.ok(assume("ana"));
    s.no_op(pause());
}

#[test]
fn resuming_a_held_conversation_releases_it() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let out = s.advance(1_000).ok(resume());
    assert_eq!(*s.c.phase(), Phase::BotActive);
    let d = the_dispatch(&out, DispatchKind::Released);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["reason"], "released");
}

#[test]
fn customer_messages_while_paused_are_held_and_never_dispatched() {
    let mut s = Sim::immediate();
    s.ok(pause());
    let out = s.advance(1_000).ok(customer("m1"));
    assert!(out.effects.is_empty());
    // Kept for the bot (see the release tests), never dispatched while paused.
    assert_eq!(s.pending_ids(), ["m1"]);
    let held = s.c.timeline().last().unwrap();
    assert_eq!(held.what, What::MessageHeld);
    assert_eq!(held.message_id.as_deref(), Some("m1"));
    assert_eq!(held.detail.as_deref(), Some("paused"));
    assert_eq!(s.c.last_customer_at(), Some(s.now));
    let out = s.advance(1_000).ok(resume());
    // The resume hands the unanswered message to the bot, in the released dispatch...
    let released = the_dispatch(&out, DispatchKind::Released);
    assert_eq!(released.messages.len(), 1);
    assert_eq!(released.messages[0].id, "m1");
    // ...and the held id is not news afterwards.
    s.no_op(customer("m1"));
}

// ---- sellers: assume and release ---------------------------------------------------------------

#[test]
fn a_seller_assuming_silences_the_bot_and_bumps_the_epoch() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(reply(&d1)); // a reply waiting in the outbox to be delivered
    let d2 = s.advance(1_000).dispatched("m2"); // and a dispatch in flight
    assert_eq!(s.c.outbox().len(), 3);
    let out = s.advance(1_000).ok(assume("ana"));

    let p = &s.p;
    let expires = s.now + p.human_lease_ms.unwrap();
    assert_eq!(
        *s.c.phase(),
        Phase::HumanAssigned {
            seller: seller("ana"),
            since: s.now,
            by: "/assumir from ana".into(),
            expires_at: Some(expires),
        }
    );
    assert_eq!(s.c.epoch(), 1);
    assert_eq!(s.c.in_flight(), None);
    // Kept until the seller answers them or hands them back; never dispatched meanwhile.
    assert!(dispatches(&out).is_empty());
    assert_eq!(
        s.timers_set(),
        [
            (TimerKind::LeaseNudge, expires - p.lease_nudge_ms),
            (TimerKind::LeaseExpiry, expires)
        ]
    );
    // Every message dispatch and the undelivered reply are cancelled; only the note stays.
    let cancelled: Vec<_> =
        s.c.timeline()
            .entries()
            .filter(|e| e.what == What::EffectCancelled)
            .filter_map(|e| e.dispatch_id.clone())
            .collect();
    assert_eq!(cancelled.len(), 3, "{cancelled:?}");
    assert!(cancelled.contains(&d1) && cancelled.contains(&d2));
    assert_eq!(s.c.outbox().len(), 1);
    assert!(
        s.c.outbox()
            .entries()
            .all(|e| matches!(e.effect, Effect::AddNote { .. }))
    );
    assert_eq!(
        notes(&out),
        [Note::TakenOver {
            seller: seller("ana"),
            by: "/assumir from ana".into()
        }]
    );
    let takeover =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::Takeover)
            .unwrap();
    assert_eq!(
        takeover.detail.as_deref(),
        Some("Seller ana (ana) by /assumir from ana")
    );

    // n8n answers d2, which was in flight when ana took over: dropped.
    let out = s.advance(1_000).ok(reply(&d2));
    assert_eq!(out.dropped, Some(DropReason::HumanAssigned));
    assert!(out.effects.is_empty());
    let out = s.ok(reply_without_id());
    assert_eq!(out.dropped, Some(DropReason::HumanAssigned));
}

#[test]
fn a_second_seller_cannot_assume_a_held_conversation() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let r = s.advance(1_000).rejected(assume("bruno"));
    assert_eq!(r, Rejection::HeldBy(seller("ana")));
    assert_eq!(
        r.to_string(),
        "the conversation is held by seller Seller ana (ana)"
    );
}

#[test]
fn the_holder_assuming_again_extends_the_lease() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    s.advance(600_000).ok(assume("ana"));
    let expires = s.now + s.p.human_lease_ms.unwrap();
    assert_eq!(s.c.epoch(), 1, "no new takeover");
    assert!(
        matches!(*s.c.phase(), Phase::HumanAssigned { expires_at: Some(e), since, .. }
        if e == expires && since == T0)
    );
    assert_eq!(
        s.timers_set(),
        [
            (TimerKind::LeaseNudge, expires - s.p.lease_nudge_ms),
            (TimerKind::LeaseExpiry, expires)
        ]
    );
    assert_eq!(s.last_what(), What::LeaseExtended);
}

#[test]
fn release_by_the_holder_hands_the_conversation_back_to_the_bot() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let out = s.advance(60_000).ok(release("ana"));

    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.epoch(), 2);
    assert!(s.decision_timers().is_empty());
    assert_eq!(
        s.timers_cancelled(),
        [TimerKind::LeaseNudge, TimerKind::LeaseExpiry]
    );
    let d = the_dispatch(&out, DispatchKind::Released);
    assert_eq!(d.epoch, 2);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["reason"], "released");
    assert_eq!(d.details["by"], "/liberar from ana");
    assert_eq!(
        notes(&out),
        [Note::BotBack {
            lease_expired: false
        }]
    );
    assert!(s.whats().contains(&What::Released));
}

#[test]
fn a_reply_to_a_dispatch_made_before_the_takeover_is_stale_after_release() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(assume("ana"));
    s.advance(60_000).ok(release("ana"));
    let out = s.advance(1_000).ok(reply(&d1));
    assert_eq!(out.dropped, Some(DropReason::StaleDispatch));
    assert!(out.effects.is_empty());
    // Nor does an id-less reply speak: nothing is in flight.
    let out = s.ok(reply_without_id());
    assert!(deliveries(&out).is_empty());
    assert!(out.dropped.is_some());
}

#[test]
fn release_by_another_seller_is_rejected() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    assert_eq!(
        s.rejected(release("bruno")),
        Rejection::HeldBy(seller("ana"))
    );
}

#[test]
fn an_operator_may_release_any_hold() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let out = s.advance(1_000).ok(operator_release());
    assert_eq!(*s.c.phase(), Phase::BotActive);
    let d = the_dispatch(&out, DispatchKind::Released);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["by"], "operator");
}

#[test]
fn release_when_nobody_holds_the_conversation_changes_nothing() {
    let mut s = Sim::new();
    s.no_op(operator_release());
    s.ok(customer("m1"));
    s.no_op(release("ana"));
    s.ok(pause());
    s.no_op(release("ana"));
}

#[test]
fn lease_expiry_returns_the_conversation_to_the_bot() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let expires = T0 + s.p.human_lease_ms.unwrap();
    s.now = expires - 1;
    s.no_op(fire(TimerKind::LeaseExpiry));
    s.now = expires;
    let out = s.ok(fire(TimerKind::LeaseExpiry));

    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.epoch(), 2);
    let d = the_dispatch(&out, DispatchKind::Released);
    assert_eq!(d.details["reason"], "lease_expired");
    assert_eq!(d.details["by"], "lease");
    assert_eq!(
        notes(&out),
        [Note::BotBack {
            lease_expired: true
        }]
    );
    assert!(s.decision_timers().is_empty(), "the nudge went with it");
    assert!(s.whats().contains(&What::LeaseExpired));
}

#[test]
fn the_lease_nudge_reminds_the_seller_with_a_note() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let nudge_at = s.c.timers()[&TimerKind::LeaseNudge];
    s.now = nudge_at;
    let out = s.ok(fire(TimerKind::LeaseNudge));
    assert_eq!(notes(&out), [Note::LeaseEnding { minutes: 10 }]);
    assert!(s.c.phase().is_human());
    assert!(!s.c.timers().contains_key(&TimerKind::LeaseNudge));
    assert!(s.c.timers().contains_key(&TimerKind::LeaseExpiry));
}

#[test]
fn without_a_lease_a_hold_never_expires() {
    let mut s = Sim::with(Policy {
        human_lease_ms: None,
        ..Policy::default()
    });
    s.ok(assume("ana"));
    assert!(s.timers_set().is_empty());
    assert!(matches!(
        *s.c.phase(),
        Phase::HumanAssigned {
            expires_at: None,
            ..
        }
    ));
    assert_eq!(s.c.next_wake(), Some(T0), "only the note in the outbox");
}

#[test]
fn a_lease_shorter_than_the_nudge_sets_no_nudge() {
    let mut s = Sim::with(Policy {
        human_lease_ms: Some(60_000),
        lease_nudge_ms: 120_000,
        ..Policy::default()
    });
    s.ok(assume("ana"));
    assert_eq!(s.timers_set(), [(TimerKind::LeaseExpiry, T0 + 60_000)]);
}

#[test]
fn customer_messages_while_a_seller_holds_the_conversation_are_held() {
    let mut s = Sim::immediate();
    s.ok(assume("ana"));
    for id in ["m1", "m2"] {
        let out = s.advance(1_000).ok(customer(id));
        assert!(out.effects.is_empty(), "{out:?}");
        let held = s.c.timeline().last().unwrap();
        assert_eq!(held.what, What::MessageHeld);
        assert_eq!(held.message_id.as_deref(), Some(id));
        assert_eq!(held.detail.as_deref(), Some("human_assigned"));
    }
    // An attachment re-sent for a held message is merged into it, nothing more.
    let out = s.ok(customer_voice("m1"));
    assert!(out.effects.is_empty());
    assert_eq!(s.pending_ids(), ["m1", "m2"]);
    assert!(s.c.pending()[0].attachment.is_some());
    // Nobody answered them: the bot gets them back with the release.
    let out = s.advance(1_000).ok(release("ana"));
    let ids: Vec<_> = the_dispatch(&out, DispatchKind::Released)
        .messages
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
}

#[test]
fn a_seller_writing_in_the_chat_extends_their_lease() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    s.advance(30 * 60_000).ok(spoke("ana", "s1"));
    let expires = s.now + s.p.human_lease_ms.unwrap();
    assert!(
        matches!(*s.c.phase(), Phase::HumanAssigned { expires_at: Some(e), .. } if e == expires)
    );
    assert!(s.timers_set().contains(&(TimerKind::LeaseExpiry, expires)));
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(entry.what, What::LeaseExtended);
    assert_eq!(entry.message_id.as_deref(), Some("s1"));
    // The same chat message redelivered does not extend it again.
    s.advance(1_000).no_op(spoke("ana", "s1"));
}

#[test]
fn a_seller_writing_to_a_bot_conversation_takes_it_over() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    let out = s.advance(1_000).ok(spoke("ana", "s1"));
    assert!(
        matches!(s.c.phase(), Phase::HumanAssigned { seller: who, by, .. }
        if *who == seller("ana") && by == "chat message s1")
    );
    assert_eq!(s.c.epoch(), 1);
    assert!(!s.outbox_has(&d1));
    assert_eq!(notes(&out).len(), 1);
    assert_eq!(s.ok(reply(&d1)).dropped, Some(DropReason::HumanAssigned));
}

#[test]
fn without_auto_takeover_a_seller_writing_does_not_take_over() {
    let mut s = Sim::with(Policy {
        debounce_ms: 0,
        auto_takeover_on_human_reply: false,
        ..Policy::default()
    });
    let d1 = s.dispatched("m1");
    let out = s.advance(1_000).ok(spoke("ana", "s1"));
    assert!(out.effects.is_empty());
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.epoch(), 0);
    assert!(s.outbox_has(&d1));
    assert_eq!(deliveries(&s.ok(reply(&d1))).len(), 1);
}

// ---- proactive conversations ------------------------------------------------------------------

#[test]
fn a_proactive_start_from_idle_opens_a_proactive_conversation() {
    let mut s = Sim::new();
    let out = s.ok(proactive("ana"));

    assert_eq!(
        *s.c.phase(),
        Phase::Proactive {
            since: T0,
            trigger: "form_filled".into()
        }
    );
    let d = the_dispatch(&out, DispatchKind::Proactive);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["form"], "contato");
    assert!(d.messages.is_empty());
    assert_eq!(s.c.in_flight().unwrap().kind, DispatchKind::Proactive);
    assert_eq!(
        notes(&out),
        [Note::ProactiveStarted {
            trigger: "form_filled".into(),
            seller: seller("ana")
        }]
    );
    assert!(s.c.is_live_at(s.now, &s.p));
    let started =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::ProactiveStarted)
            .unwrap();
    assert_eq!(started.detail.as_deref(), Some("form_filled"));
}

#[test]
fn a_second_proactive_start_is_rejected_while_one_is_live() {
    let mut s = Sim::new();
    s.ok(proactive("ana"));
    assert_eq!(
        s.advance(60_000).rejected(proactive("bruno")),
        Rejection::AlreadyLive
    );
}

#[test]
fn a_proactive_start_is_refused_while_a_seller_holds_or_the_bot_is_paused_or_scheduling() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    assert_eq!(s.rejected(proactive("ana")), Rejection::HumanAssigned);

    let mut s = Sim::new();
    s.ok(pause());
    assert_eq!(s.rejected(proactive("ana")), Rejection::Paused);

    let mut s = Sim::new();
    s.ok(scheduling("ana"));
    assert_eq!(s.rejected(proactive("ana")), Rejection::AlreadyLive);
}

#[test]
fn the_customer_answering_turns_a_proactive_conversation_into_a_bot_conversation() {
    let mut s = Sim::new();
    let pd = the_dispatch(&s.ok(proactive("ana")), DispatchKind::Proactive);
    s.ok(reply(&pd.dispatch_id)); // the opening message reaches the customer
    assert!(matches!(*s.c.phase(), Phase::Proactive { .. }));
    s.advance(60_000).ok(customer("m1"));
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.timers_set(), [(TimerKind::Debounce, s.now + 4_000)]);
}

#[test]
fn a_reply_to_the_proactive_dispatch_is_delivered() {
    let mut s = Sim::new();
    let pd = the_dispatch(&s.ok(proactive("ana")), DispatchKind::Proactive);
    let out = s.advance(2_000).ok(reply(&pd.dispatch_id));
    assert_eq!(deliveries(&out).len(), 1);
    assert_eq!(s.c.in_flight(), None);
}

#[test]
fn a_proactive_start_is_allowed_again_once_the_bot_conversation_is_quiet() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    let window = s.p.live_window_ms;
    // Awaiting a reply: live.
    assert_eq!(
        s.advance(window).rejected(proactive("ana")),
        Rejection::AlreadyLive
    );
    s.ok(reply(&d1));
    s.ok(done(&d1));
    // Replied, but the customer wrote within the window: live.
    s.now = T0 + window - 1;
    assert_eq!(s.rejected(proactive("ana")), Rejection::AlreadyLive);
    // Quiet for the whole window: a new proactive conversation may start.
    s.now = T0 + window;
    assert!(!s.c.is_live_at(s.now, &s.p));
    let out = s.ok(proactive("ana"));
    the_dispatch(&out, DispatchKind::Proactive);
    assert!(matches!(*s.c.phase(), Phase::Proactive { .. }));
}

#[test]
fn a_takeover_or_a_pause_cancels_a_proactive_opening_not_yet_sent() {
    for hold in [assume("ana"), pause()] {
        let mut s = Sim::new();
        let pd = the_dispatch(&s.ok(proactive("ana")), DispatchKind::Proactive);
        s.advance(1_000).ok(hold);
        assert!(!s.outbox_has(&pd.dispatch_id), "{:?}", s.outbox_ids());
        // Handed back, a new proactive conversation is a single one.
        s.advance(1_000).ok(resume());
        let out = s.ok(proactive("bruno"));
        the_dispatch(&out, DispatchKind::Proactive);
        let queued = s
            .c
            .outbox()
            .entries()
            .filter(
                |e| matches!(&e.effect, Effect::Dispatch(d) if d.kind == DispatchKind::Proactive),
            )
            .count();
        assert_eq!(queued, 1);
    }
}

#[test]
fn a_proactive_opening_still_in_the_outbox_keeps_the_conversation_live() {
    let mut s = Sim::immediate();
    let pd = the_dispatch(&s.ok(proactive("ana")), DispatchKind::Proactive).dispatch_id;
    s.claim(&pd); // being sent; n8n answers before the executor reports
    s.advance(1_000).ok(reply(&pd));
    let d1 = s.advance(1_000).dispatched("m1");
    s.ok(reply(&d1));
    s.ok(done(&d1));
    s.advance(s.p.live_window_ms);
    assert!(s.c.is_live_at(s.now, &s.p));
    assert_eq!(s.rejected(proactive("bruno")), Rejection::AlreadyLive);
    s.ok(done(&pd));
    assert!(!s.c.is_live_at(s.now, &s.p));
    the_dispatch(&s.ok(proactive("bruno")), DispatchKind::Proactive);
}

// ---- scheduling -------------------------------------------------------------------------------

#[test]
fn a_scheduling_request_starts_scheduling_with_a_timeout() {
    let mut s = Sim::new();
    s.ok(customer("m1")); // a burst being debounced is dropped
    let out = s.advance(1_000).ok(scheduling("ana"));

    assert!(matches!(s.c.phase(), Phase::Scheduling { since, request }
        if *since == s.now && request["when"] == "tomorrow 10h"));
    let d = the_dispatch(&out, DispatchKind::Scheduling);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["when"], "tomorrow 10h");
    let timeout = s.now + s.p.scheduling_timeout_ms;
    assert_eq!(s.timers_set(), [(TimerKind::SchedulingTimeout, timeout)]);
    assert_eq!(s.timers_cancelled(), [TimerKind::Debounce]);
    assert!(s.c.pending().is_empty());
    assert_eq!(s.c.in_flight().unwrap().dispatch_id, d.dispatch_id);
    assert!(s.whats().contains(&What::SchedulingStarted));
}

#[test]
fn scheduling_replies_are_delivered_and_keep_the_request_in_flight() {
    let mut s = Sim::new();
    let d = the_dispatch(&s.ok(scheduling("ana")), DispatchKind::Scheduling);
    for _ in 0..2 {
        let out = s.advance(1_000).ok(reply(&d.dispatch_id));
        assert_eq!(deliveries(&out).len(), 1);
        assert_eq!(s.c.in_flight().unwrap().dispatch_id, d.dispatch_id);
    }
}

#[test]
fn a_confirmed_scheduling_outcome_returns_to_the_bot_with_a_note() {
    let mut s = Sim::new();
    let d = the_dispatch(&s.ok(scheduling("ana")), DispatchKind::Scheduling);
    let out = s.advance(60_000).ok(outcome(Some(&d.dispatch_id), true));
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.in_flight(), None);
    assert_eq!(s.timers_cancelled(), [TimerKind::SchedulingTimeout]);
    assert_eq!(
        notes(&out),
        [Note::SchedulingSettled {
            confirmed: true,
            details: serde_json::json!("terça 10h")
        }]
    );
    let entry =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::SchedulingDone)
            .unwrap();
    assert_eq!(entry.dispatch_id.as_deref(), Some(d.dispatch_id.as_str()));
    assert_eq!(entry.detail.as_deref(), Some("confirmed"));
}

#[test]
fn a_failed_scheduling_outcome_returns_to_the_bot_with_a_note() {
    let mut s = Sim::new();
    s.ok(scheduling("ana"));
    let out = s.advance(60_000).ok(outcome(None, false));
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(
        notes(&out),
        [Note::SchedulingSettled {
            confirmed: false,
            details: serde_json::json!("terça 10h")
        }]
    );
    assert!(s.whats().contains(&What::SchedulingDone));
}

#[test]
fn a_scheduling_outcome_for_another_dispatch_is_dropped() {
    let mut s = Sim::new();
    s.ok(scheduling("ana"));
    let out = s.ok(outcome(Some("7-42-999"), true));
    assert_eq!(out.dropped, Some(DropReason::StaleDispatch));
    assert!(out.effects.is_empty());
    assert!(matches!(*s.c.phase(), Phase::Scheduling { .. }));
}

#[test]
fn a_scheduling_timeout_returns_to_the_bot() {
    let mut s = Sim::new();
    s.ok(scheduling("ana"));
    let due = T0 + s.p.scheduling_timeout_ms;
    s.now = due - 1;
    s.no_op(fire(TimerKind::SchedulingTimeout));
    s.now = due;
    let out = s.ok(fire(TimerKind::SchedulingTimeout));
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.in_flight(), None);
    assert_eq!(notes(&out), [Note::SchedulingTimedOut]);
    assert!(s.whats().contains(&What::SchedulingTimeout));
}

#[test]
fn a_scheduling_outcome_when_not_scheduling_is_rejected() {
    let mut s = Sim::new();
    assert_eq!(s.rejected(outcome(None, true)), Rejection::NotScheduling);
    s.ok(customer("m1"));
    assert_eq!(s.rejected(outcome(None, true)), Rejection::NotScheduling);
}

#[test]
fn a_scheduling_request_is_refused_while_a_seller_holds_or_the_bot_is_paused_or_already_scheduling()
{
    let mut s = Sim::new();
    s.ok(assume("ana"));
    assert_eq!(s.rejected(scheduling("ana")), Rejection::HumanAssigned);

    let mut s = Sim::new();
    s.ok(pause());
    assert_eq!(s.rejected(scheduling("ana")), Rejection::Paused);

    let mut s = Sim::new();
    s.ok(scheduling("ana"));
    assert_eq!(s.rejected(scheduling("bruno")), Rejection::AlreadyLive);

    // A proactive opening may turn into scheduling (the customer asks for a meeting).
    let mut s = Sim::new();
    s.ok(proactive("ana"));
    s.ok(scheduling("ana"));
    assert_eq!(s.c.phase().name(), "scheduling");
}

#[test]
fn customer_messages_while_scheduling_are_held() {
    let mut s = Sim::immediate();
    s.ok(scheduling("ana"));
    let out = s.advance(1_000).ok(customer("m1"));
    assert!(out.effects.is_empty());
    assert!(s.c.pending().is_empty());
    let held = s.c.timeline().last().unwrap();
    assert_eq!(held.what, What::MessageHeld);
    assert_eq!(held.detail.as_deref(), Some("scheduling"));
    s.ok(outcome(None, true));
    // Back with the bot, the held message is not sent to n8n later either.
    let out = s.advance(1_000).ok(customer("m2"));
    assert_eq!(ids(&the_dispatch(&out, DispatchKind::Message)), ["m2"]);
}

// ---- the outbox -------------------------------------------------------------------------------

#[test]
fn effect_done_removes_the_outbox_entry() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.ok(reply(&d1));
    let reply_id =
        s.c.outbox()
            .entries()
            .find(|e| matches!(e.effect, Effect::DeliverReply { .. }))
            .unwrap()
            .id
            .clone();

    let out = s.ok(done(&d1));
    assert!(out.changed && out.effects.is_empty());
    assert!(!s.outbox_has(&d1));
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(
        (entry.what, entry.dispatch_id.as_deref()),
        (What::DispatchSent, Some(d1.as_str()))
    );

    s.ok(done(&reply_id));
    let entry = s.c.timeline().last().unwrap();
    assert_eq!(
        (entry.what, entry.dispatch_id.as_deref()),
        (What::ReplySent, Some(reply_id.as_str()))
    );
    assert!(s.c.outbox().is_empty());

    // A duplicate report, or one for a cancelled entry, changes nothing.
    s.no_op(done(&d1));
    s.no_op(done("nonsense"));
}

#[test]
fn a_sent_note_is_recorded() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let id = s.outbox_ids().pop().unwrap();
    assert!(id.ends_with('n'), "{id}");
    s.ok(done(&id));
    assert_eq!(s.last_what(), What::NoteAdded);
}

#[test]
fn a_retryable_failure_is_retried_with_backoff() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.claim(&d1);
    s.advance(500);
    let out = s.ok(failed(&d1, true));
    assert!(out.changed && out.effects.is_empty());
    let entry = s.c.outbox().get(&d1).unwrap();
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.not_before, s.now + s.p.retry_delay(1));
    assert_eq!(entry.claim, None);
    assert_eq!(entry.last_error.as_deref(), Some("n8n: 502"));
    assert_eq!(s.c.next_wake(), Some(s.now + 1_000));
    let retry = s.c.timeline().last().unwrap();
    assert_eq!(retry.what, What::DispatchRetry);
    assert_eq!(retry.dispatch_id.as_deref(), Some(d1.as_str()));
    assert_eq!(retry.detail.as_deref(), Some("attempt 1: n8n: 502"));

    s.advance(1_000).ok(failed(&d1, true));
    let entry = s.c.outbox().get(&d1).unwrap();
    assert_eq!(entry.attempts, 2);
    assert_eq!(entry.not_before, s.now + s.p.retry_delay(2));
    assert_eq!(s.p.retry_delay(2), 2_000);
    assert!(s.c.in_flight().is_some(), "still awaiting its reply");
}

#[test]
fn a_failure_that_cannot_be_retried_is_dead_lettered_with_a_note() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    let out = s.advance(500).ok(failed(&d1, false));
    assert!(!s.outbox_has(&d1));
    assert_eq!(s.c.in_flight(), None);
    assert_eq!(
        notes(&out),
        [Note::DispatchFailed {
            dispatch_id: d1.clone(),
            error: "n8n: 502".into()
        }]
    );
    let dead =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::DeadLettered)
            .unwrap();
    assert_eq!(dead.dispatch_id.as_deref(), Some(d1.as_str()));
    assert_eq!(dead.detail.as_deref(), Some("n8n: 502"));
    // The messages are still pending: the next customer message sends them again.
    assert_eq!(s.pending_ids(), ["m1"]);
    let out = s.advance(1_000).ok(customer("m2"));
    assert_eq!(
        ids(&the_dispatch(&out, DispatchKind::Message)),
        ["m1", "m2"]
    );
}

#[test]
fn a_failure_past_the_dead_letter_age_is_dead_lettered_even_if_retryable() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1");
    s.now = T0 + s.p.dead_letter_after_ms - 1;
    s.ok(failed(&d1, true));
    assert!(s.outbox_has(&d1));
    s.now = T0 + s.p.dead_letter_after_ms;
    let out = s.ok(failed(&d1, true));
    assert!(!s.outbox_has(&d1));
    assert_eq!(notes(&out).len(), 1);
    assert_eq!(s.c.in_flight(), None);
}

#[test]
fn a_failed_reply_or_note_is_dead_lettered_without_a_note() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let note_id = s.outbox_ids().pop().unwrap();
    let out = s.ok(failed(&note_id, false));
    assert!(out.effects.is_empty());
    assert!(s.c.outbox().is_empty());
    assert_eq!(s.last_what(), What::DeadLettered);
}

#[test]
fn a_failure_report_for_an_unknown_entry_changes_nothing() {
    let mut s = Sim::immediate();
    s.dispatched("m1");
    s.no_op(failed("7-42-999", true));
    s.no_op(failed("7-42-999", false));
}

#[test]
fn without_notes_no_note_is_queued() {
    let mut s = Sim::with(Policy {
        notes: false,
        ..Policy::default()
    });
    let out = s.ok(assume("ana"));
    assert!(notes(&out).is_empty());
    let out = s.ok(release("ana"));
    assert!(notes(&out).is_empty());
    assert!(
        s.c.outbox()
            .entries()
            .all(|e| !matches!(e.effect, Effect::AddNote { .. }))
    );
}

// ---- timers -----------------------------------------------------------------------------------

#[test]
fn timers_never_fire_early() {
    let mut s = Sim::new();
    // Unset timers: nothing.
    for kind in [
        TimerKind::Debounce,
        TimerKind::LeaseNudge,
        TimerKind::LeaseExpiry,
        TimerKind::SchedulingTimeout,
    ] {
        s.no_op(fire(kind));
    }
    s.ok(customer("m1"));
    s.advance(3_999).no_op(fire(TimerKind::Debounce));

    let mut s = Sim::new();
    s.ok(assume("ana"));
    s.advance(60_000);
    s.no_op(fire(TimerKind::LeaseNudge));
    s.no_op(fire(TimerKind::LeaseExpiry));

    let mut s = Sim::new();
    s.ok(scheduling("ana"));
    s.advance(60_000).no_op(fire(TimerKind::SchedulingTimeout));
}

#[test]
fn a_stale_lease_timer_after_release_does_nothing() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    s.advance(1_000).ok(release("ana"));
    s.now = T0 + s.p.human_lease_ms.unwrap() + 1;
    s.no_op(fire(TimerKind::LeaseExpiry));
    s.no_op(fire(TimerKind::LeaseNudge));
    assert_eq!(*s.c.phase(), Phase::BotActive);
}

#[test]
fn next_wake_is_the_earliest_timer_or_outbox_wake() {
    let mut s = Sim::new();
    assert_eq!(s.c.next_wake(), None);
    s.ok(customer("m1"));
    assert_eq!(s.c.next_wake(), Some(T0 + 4_000));
    let d1 = the_dispatch(
        &s.advance(4_000).ok(fire(TimerKind::Debounce)),
        DispatchKind::Message,
    );
    assert_eq!(
        s.c.next_wake(),
        Some(T0 + 4_000),
        "the dispatch is due at once"
    );
    s.claim(&d1.dispatch_id);
    assert_eq!(
        s.c.next_wake(),
        Some(s.now + 30_000),
        "claimed: its claim's expiry"
    );
    s.ok(failed(&d1.dispatch_id, true));
    assert_eq!(s.c.next_wake(), Some(s.now + 1_000), "its retry");
    s.ok(assume("ana")); // cancels the dispatch; a note and two lease timers
    let nudge = s.c.timers()[&TimerKind::LeaseNudge];
    let note_wake = s.c.outbox().entries().map(|e| e.wake_at()).min().unwrap();
    assert_eq!(s.c.next_wake(), Some(nudge.min(note_wake)));
    let id = s.outbox_ids().pop().unwrap();
    s.ok(done(&id));
    assert_eq!(s.c.next_wake(), Some(nudge));
}

#[test]
fn due_timers_lists_the_due_timers_earliest_first() {
    let s = Sim::held_briefly();
    assert!(s.c.due_timers(T0 + 89_999).is_empty());
    assert_eq!(s.c.due_timers(T0 + 90_000), [TimerKind::LeaseNudge]);
    assert_eq!(
        s.c.due_timers(T0 + 100_000),
        [TimerKind::LeaseNudge, TimerKind::LeaseExpiry]
    );
}

#[test]
fn the_driver_asks_for_its_next_wake_up_and_only_counts_work_it_can_run() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    let no_n8n = |e: &Effect| !matches!(e, Effect::Dispatch(_));
    assert_eq!(s.c.poll_timeout(no_n8n), Some(T0 + 4_000), "the debounce");
    s.advance(4_000);
    let out = s.c.handle_timeout(s.now, &s.p);
    assert!(out.changed);
    let d = the_dispatch(&out, DispatchKind::Message);
    // The dispatch is due at once for a driver with n8n; one without it is not woken for it.
    assert_eq!(s.c.poll_timeout(|_| true), Some(s.now));
    assert_eq!(
        s.c.poll_timeout(no_n8n),
        s.c.timers().values().copied().min()
    );
    assert!(s.c.has_due_work(s.now, |_| true));
    assert!(!s.c.has_due_work(s.now, no_n8n));
    assert!(
        s.c.poll_work("node-a", s.now, s.now + 30_000, no_n8n)
            .is_empty()
    );
    let claimed = s.c.poll_work("node-a", s.now, s.now + 30_000, |_| true);
    assert_eq!(claimed, std::slice::from_ref(&d.dispatch_id));
    assert_eq!(
        s.c.poll_timeout(|_| true),
        Some(s.now + 30_000),
        "the claim's expiry"
    );
    assert!(!s.c.has_due_work(s.now, |_| true), "claimed: not due again");
}

#[test]
fn handle_timeout_fires_every_due_timer_earliest_first_and_nothing_early() {
    let mut s = Sim::held_briefly();
    let before = s.c.clone();
    assert!(!s.c.handle_timeout(T0 + 89_999, &s.p).changed);
    assert_eq!(s.c, before, "woken early: nothing changes");
    let out = s.c.handle_timeout(T0 + 100_000, &s.p);
    assert!(out.changed);
    assert_eq!(*s.c.phase(), Phase::BotActive, "the lease expired");
    assert!(!s.c.timers().contains_key(&TimerKind::LeaseNudge));
    assert!(!s.c.timers().contains_key(&TimerKind::LeaseExpiry));
    assert_eq!(
        the_dispatch(&out, DispatchKind::Released).details["reason"],
        "lease_expired"
    );
}

// ---- the timeline and the snapshot ---------------------------------------------------------------

#[test]
fn the_timeline_keeps_the_last_hundred_entries_naming_message_and_dispatch_ids() {
    let mut s = Sim::immediate();
    let mut last_dispatch = String::new();
    for i in 0..80 {
        let id = format!("m{i}");
        last_dispatch = s.advance(1_000).dispatched(&id);
        s.ok(reply(&last_dispatch));
    }
    assert_eq!(s.c.timeline().len(), Timeline::CAPACITY);
    let entries: Vec<_> = s.c.timeline().entries().collect();
    let last_in = entries
        .iter()
        .rev()
        .find(|e| e.what == What::MessageIn)
        .unwrap();
    assert_eq!(last_in.message_id.as_deref(), Some("m79"));
    let accepted = entries.last().unwrap();
    assert_eq!(accepted.what, What::ReplyAccepted);
    assert_eq!(
        accepted.dispatch_id.as_deref(),
        Some(last_dispatch.as_str())
    );
    // The oldest entries are gone.
    assert!(
        entries
            .iter()
            .all(|e| e.message_id.as_deref() != Some("m0"))
    );
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn updated_at_moves_only_when_something_changed() {
    let mut s = Sim::new();
    s.advance(1_000).ok(customer("m1"));
    assert_eq!(s.c.updated_at(), T0 + 1_000);
    s.advance(1_000).no_op(customer("m1"));
    assert_eq!(s.c.updated_at(), T0 + 1_000);
    assert_eq!(s.c.created_at(), T0);
}

fn round_trip(c: &Conversation) {
    let json = serde_json::to_string(c).unwrap();
    let back: Conversation = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, c, "{json}");
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

#[test]
fn the_snapshot_round_trips_through_json_unchanged() {
    let mut s = Sim::new();
    round_trip(&s.c);
    let mut m = voice("m1");
    m.links = Links {
        lead_id: Some(991),
        talk_id: Some(12),
        chat_id: Some("chat-uuid".into()),
    };
    s.ok(Event::CustomerMessage(m));
    s.advance(4_000).ok(fire(TimerKind::Debounce));
    let d = s.c.in_flight().cloned().unwrap().dispatch_id;
    s.claim(&d);
    s.advance(100).ok(failed(&d, true));
    s.ok(customer("m2"));
    round_trip(&s.c); // bot_active: pending, superseded in-flight, retrying outbox entry, timer
    s.ok(assume("ana"));
    round_trip(&s.c); // human_assigned with lease timers
    s.ok(release("ana"));
    s.ok(scheduling("ana"));
    round_trip(&s.c); // scheduling with a JSON request
    s.ok(outcome(None, true));
    s.ok(pause());
    round_trip(&s.c);
    s.ok(resume());
    s.now += s.p.live_window_ms;
    s.ok(proactive("bruno"));
    round_trip(&s.c);
    // And the events and effects themselves.
    for e in [
        customer_voice("m1"),
        assume("ana"),
        scheduling("ana"),
        fire(TimerKind::LeaseNudge),
    ] {
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}

#[test]
fn an_unanswered_proactive_opening_stops_counting_as_live_after_the_live_window() {
    let mut s = Sim::new();
    s.ok(proactive("ana"));
    let id = s.c.in_flight().cloned().unwrap().dispatch_id;
    s.ok(Event::EffectDone { id }); // the opening went out
    assert_eq!(s.rejected(proactive("bruno")), Rejection::AlreadyLive);
    let window = s.p.live_window_ms;
    s.advance(window);
    let out = s.ok(proactive("bruno"));
    assert!(out.effects.iter().any(
        |e| matches!(e, Effect::Dispatch(d) if d.kind == DispatchKind::Proactive && d.seller.as_ref().unwrap().id == "bruno")
    ));
}

#[test]
fn a_scheduling_request_carries_the_unanswered_messages_instead_of_a_message_dispatch() {
    let mut s = Sim::immediate();
    s.ok(customer("m1"));
    let unsent = s.c.in_flight().cloned().unwrap().dispatch_id;
    let out = s.ok(scheduling("ana"));
    assert!(
        s.c.outbox().get(&unsent).is_none(),
        "the unsent message dispatch is cancelled"
    );
    let d = out
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Dispatch(d) if d.kind == DispatchKind::Scheduling => Some(d),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        d.messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m1"]
    );
    assert!(s.c.pending().is_empty());
}

fn outgoing(message_id: &str, text: &str) -> Event {
    Event::OutgoingMessage {
        message_id: message_id.into(),
        text: text.into(),
        author: seller("kommo-user-7"),
    }
}

#[test]
fn the_echo_of_a_sent_reply_is_only_recorded_but_a_human_message_takes_over() {
    let mut s = Sim::immediate();
    s.ok(customer("m1"));
    let d = s.c.in_flight().cloned().unwrap().dispatch_id;
    s.ok(Event::Reply {
        dispatch_id: Some(d),
        texts: vec!["Olá! Veja https://exemplo.com 😀 Posso ajudar?".into()],
    });
    // Kommo echoes our reply with the emoji stripped and the link rewritten.
    let out = s.ok(outgoing("out-1", "Olá! Veja kommo.cc/x1 Posso ajudar?"));
    assert!(
        out.effects
            .iter()
            .all(|e| !matches!(e, Effect::Dispatch(_) | Effect::AddNote { .. }))
    );
    assert_eq!(s.c.phase().name(), "bot_active");
    assert_eq!(s.c.timeline().last().unwrap().what, What::EchoSeen);
    // The same echo redelivered changes nothing.
    s.no_op(outgoing("out-1", "Olá! Veja kommo.cc/x1 Posso ajudar?"));
    // A text the bot never sent is a human speaking: with auto-takeover on, a takeover.
    s.ok(outgoing("out-2", "Oi, aqui é a Ana, vou te atender"));
    assert_eq!(s.c.phase().name(), "human_assigned");
    assert_eq!(s.c.seller().unwrap().id, "kommo-user-7");
}

#[test]
fn an_echo_is_matched_once_per_sent_reply() {
    let mut s = Sim::immediate();
    s.ok(customer("m1"));
    let d = s.c.in_flight().cloned().unwrap().dispatch_id;
    s.ok(Event::Reply {
        dispatch_id: Some(d),
        texts: vec!["Tudo bem".into()],
    });
    s.ok(outgoing("out-1", "Tudo bem"));
    assert_eq!(s.c.phase().name(), "bot_active");
    // A second identical text was not sent by the bot a second time: a human typed it.
    s.ok(outgoing("out-2", "Tudo bem"));
    assert_eq!(s.c.phase().name(), "human_assigned");
}

#[test]
fn links_seen_update_the_conversation_only_when_they_say_something_new() {
    let mut s = Sim::new();
    let links = Links {
        lead_id: Some(878244),
        talk_id: Some(109),
        chat_id: None,
    };
    s.ok(Event::LinksSeen(links.clone()));
    assert_eq!(*s.c.links(), links);
    s.no_op(Event::LinksSeen(Links {
        lead_id: Some(878244),
        talk_id: None,
        chat_id: None,
    }));
    s.ok(Event::LinksSeen(Links {
        chat_id: Some("7df3cc9c".into()),
        ..Links::default()
    }));
    assert_eq!(s.c.links().lead_id, Some(878244));
    assert_eq!(s.c.links().chat_id.as_deref(), Some("7df3cc9c"));
}

// ---- a real day: holds, parts, idle ends, late effects ------------------------------------------

#[test]
fn the_released_dispatch_carries_what_the_customer_said_after_the_sellers_last_message() {
    let mut s = Sim::immediate();
    s.ok(assume("ana"));
    s.advance(1_000).ok(customer("m1"));
    // The seller answers m1 in the chat...
    s.advance(1_000).ok(spoke("ana", "chat-1"));
    assert!(s.c.pending().is_empty(), "the seller answered m1");
    // ...then the customer asks again and the seller hands back without answering.
    s.advance(1_000).ok(customer("m2"));
    let out = s.advance(1_000).ok(release("ana"));
    let released = the_dispatch(&out, DispatchKind::Released);
    let ids: Vec<_> = released.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m2"]);
    assert_eq!(released.details["hold"]["phase"], "human_assigned");
    assert_eq!(released.details["hold"]["unanswered"], 1);
    // The AI's answer to it reaches the customer (it is the dispatch in flight).
    let out = s.advance(1_000).ok(reply(&released.dispatch_id));
    assert_eq!(out.dropped, None);
    assert_eq!(deliveries(&out).len(), 1);
    assert!(s.c.pending().is_empty());
}

#[test]
fn a_release_with_nothing_unanswered_awaits_no_reply() {
    let mut s = Sim::immediate();
    s.ok(assume("ana"));
    let out = s.advance(1_000).ok(release("ana"));
    let released = the_dispatch(&out, DispatchKind::Released);
    assert!(released.messages.is_empty());
    assert_eq!(s.c.in_flight(), None);
}

#[test]
fn unanswered_messages_are_bounded_and_what_falls_off_is_recorded() {
    let mut s = Sim::with(Policy {
        max_pending_messages: 3,
        ..Policy::default()
    });
    for id in ["m1", "m2", "m3", "m4", "m5"] {
        s.advance(100).ok(customer(id));
    }
    assert_eq!(s.pending_ids(), ["m3", "m4", "m5"]);
    let dropped: Vec<_> =
        s.c.timeline()
            .entries()
            .filter(|e| e.what == What::MessageDropped)
            .map(|e| e.message_id.clone().unwrap())
            .collect();
    assert_eq!(dropped, ["m1", "m2"]);
}

fn long_message(id: &str, bytes: usize) -> Event {
    let mut m = message(id);
    m.text = "ç".repeat(bytes / 2);
    Event::CustomerMessage(m)
}

#[test]
fn a_long_message_is_cut_marked_and_recorded() {
    let mut s = Sim::with(Policy {
        max_message_bytes: 1_000,
        ..Policy::default()
    });
    s.ok(long_message("m1", 200_000));
    let kept = &s.c.pending()[0].text;
    assert!(kept.len() <= 1_000, "{}", kept.len());
    assert!(kept.ends_with(" […]"), "the cut is marked");
    assert!(kept.starts_with("çç"), "cut on a character boundary");
    let entry =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::MessageTruncated);
    assert_eq!(
        entry.unwrap().detail.as_deref(),
        Some(format!("text of 200000 bytes cut to {}", kept.len()).as_str())
    );
}

#[test]
fn unanswered_messages_are_bounded_in_bytes_too_and_one_dispatch_carries_at_most_that() {
    let mut s = Sim::with(Policy {
        max_message_bytes: 8_192,
        max_pending_bytes: 20_000,
        debounce_ms: 0,
        ..Policy::default()
    });
    let mut biggest = 0;
    for i in 0..30 {
        let out = s.advance(100).ok(long_message(&format!("m{i}"), 200_000));
        for d in dispatches(&out) {
            let bytes: usize = d.messages.iter().map(InboundMessage::weight).sum();
            biggest = biggest.max(bytes);
        }
    }
    let bytes: usize = s.c.pending().iter().map(InboundMessage::weight).sum();
    assert!(bytes <= 20_000, "{bytes}");
    assert!(biggest > 0 && biggest <= 20_000, "{biggest}");
    assert_eq!(s.pending_ids().last().copied(), Some("m29"));
    let dropped = s.c.timeline().entries().filter(|e| {
        e.what == What::MessageDropped
            && e.detail.as_deref() == Some("unanswered messages too long")
    });
    assert!(dropped.count() > 0);
}

#[test]
fn a_snapshot_over_its_cap_is_trimmed_and_says_what_went() {
    let mut s = Sim::new();
    for i in 0..40 {
        s.advance(100).ok(customer(&format!("m{i}")));
    }
    let (phase, epoch, timers) = (s.c.phase().clone(), s.c.epoch(), s.c.timers().clone());
    s.c.trim(s.now, 1024 * 1024);
    assert_eq!(
        s.c.pending().len(),
        10,
        "the newest unanswered messages stay"
    );
    assert_eq!(s.pending_ids().last().copied(), Some("m39"));
    assert!(s.c.timeline().len() <= 21);
    assert!(s.c.seen().len() <= 64);
    assert_eq!(
        (s.c.phase().clone(), s.c.epoch(), s.c.timers().clone()),
        (phase, epoch, timers)
    );
    let last = s.c.timeline().last().unwrap();
    assert_eq!(last.what, What::Trimmed);
    assert!(
        last.detail
            .as_deref()
            .unwrap()
            .contains("30 unanswered messages")
    );
    // A message seen before the trim and forgotten since is new again, not lost.
    assert!(s.advance(100).ok(customer("m41")).changed);
    // Large messages: only what fits in half the cap stays (the newest always does).
    for i in 0..5 {
        s.advance(100).ok(long_message(&format!("big{i}"), 6_000));
    }
    s.c.trim(s.now, 30_000);
    assert_eq!(s.pending_ids(), ["big3", "big4"]);
}

#[test]
fn what_waits_in_the_outbox_stays_bounded_however_often_the_bot_is_toggled() {
    let mut s = Sim::immediate();
    s.ok(customer("m1"));
    for _ in 0..200 {
        s.advance(1_000).ok(assume("ana"));
        s.advance(1_000).ok(release("ana"));
    }
    let released = s
        .c
        .outbox()
        .entries()
        .filter(|e| matches!(&e.effect, Effect::Dispatch(d) if d.kind == DispatchKind::Released))
        .count();
    assert_eq!(released, 1, "the newest release replaces the ones not sent");
    let notes =
        s.c.outbox()
            .entries()
            .filter(|e| matches!(e.effect, Effect::AddNote { .. }))
            .count();
    assert!(notes <= 20, "{notes} notes waiting");
    // The release that waits still carries what nobody answered.
    let waiting =
        s.c.outbox()
            .entries()
            .find_map(|e| match &e.effect {
                Effect::Dispatch(d) if d.kind == DispatchKind::Released => Some(d.clone()),
                _ => None,
            })
            .unwrap();
    assert_eq!(ids(&waiting), ["m1"]);
    assert!(s.c.outbox().len() <= 25, "{}", s.c.outbox().len());
}

#[test]
fn a_long_reply_is_remembered_by_a_bounded_key() {
    let long = "palavra ".repeat(5_000);
    let key = conversa_actors::conversation::echo_key(&long);
    assert!(key.len() < 300, "{}", key.len());
    assert_eq!(key, conversa_actors::conversation::echo_key(&long));
    assert_ne!(
        key,
        conversa_actors::conversation::echo_key(&"palavra ".repeat(5_001))
    );
}

#[test]
fn a_reply_in_parts_goes_out_one_part_at_a_time_under_one_entry() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.ok(done(&d));
    let out = s.advance(1_000).ok(Event::Reply {
        dispatch_id: Some(d.clone()),
        texts: vec!["Parte 1".into(), "Parte 2".into(), "Parte 3".into()],
    });
    assert_eq!(out.queued.len(), 1, "one outbox entry for the whole reply");
    let id = out.queued[0].clone();
    assert_eq!(
        s.c.outbox().get(&id).unwrap().effect.next_part(),
        Some("Parte 1")
    );
    s.claim(&id);
    s.advance(500).ok(done(&id));
    let entry = s.c.outbox().get(&id).expect("two parts still to go");
    assert_eq!(entry.effect.next_part(), Some("Parte 2"));
    assert_eq!(entry.claim, None);
    assert_eq!(entry.not_before, s.now + s.p.reply_part_delay_ms);
    assert_eq!(s.last_what(), What::PartSent);
    // A failure of part 2 is retried as part 2, never part 1 again.
    s.claim(&id);
    s.advance(2_000).ok(failed(&id, true));
    assert_eq!(
        s.c.outbox().get(&id).unwrap().effect.next_part(),
        Some("Parte 2")
    );
    s.claim(&id);
    s.advance(2_000).ok(done(&id));
    s.claim(&id);
    s.advance(2_000).ok(done(&id));
    assert!(!s.outbox_has(&id));
    assert_eq!(s.last_what(), What::ReplySent);
}

#[test]
fn a_takeover_between_parts_stops_the_later_parts() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.ok(done(&d));
    let out = s.advance(1_000).ok(Event::Reply {
        dispatch_id: Some(d),
        texts: vec!["Parte 1".into(), "Parte 2".into()],
    });
    let id = out.queued[0].clone();
    s.claim(&id);
    s.advance(500).ok(done(&id));
    assert!(s.outbox_has(&id));
    s.advance(100).ok(assume("ana"));
    assert!(!s.outbox_has(&id), "part 2 is never sent over the seller");
}

#[test]
fn a_quiet_bot_conversation_ends_after_the_idle_time() {
    let idle = 24 * 3_600_000;
    let mut s = Sim::immediate();
    let out = s.ok(proactive("ana"));
    let opening = the_dispatch(&out, DispatchKind::Proactive).dispatch_id;
    s.ok(done(&opening));
    assert_eq!(s.c.proactive().unwrap().seller, seller("ana"));
    // Due at the idle time at the earliest (rounded up to a tenth of it, at most 5 minutes).
    let end = s.c.timers()[&TimerKind::IdleEnd];
    assert!(end >= s.now + idle && end < s.now + idle + 300_000, "{end}");
    // Not early.
    s.advance(end - s.now - 1).ok(fire(TimerKind::IdleEnd));
    assert!(matches!(*s.c.phase(), Phase::Proactive { .. }));
    s.advance(1).ok(fire(TimerKind::IdleEnd));
    assert_eq!(*s.c.phase(), Phase::Idle);
    assert_eq!(s.last_what(), What::ConversationEnded);
    assert_eq!(s.c.proactive(), None);
    // A new proactive start is no duplicate.
    let out = s.advance(1_000).ok(proactive("bia"));
    the_dispatch(&out, DispatchKind::Proactive);
}

#[test]
fn work_in_the_outbox_postpones_the_idle_end_and_a_hold_is_never_ended_by_it() {
    let idle = 24 * 3_600_000;
    let mut s = Sim::immediate();
    s.dispatched("m1"); // never acknowledged by n8n's executor
    let end = s.c.timers()[&TimerKind::IdleEnd];
    let out = s.advance(end - s.now).ok(fire(TimerKind::IdleEnd));
    assert!(out.changed, "the timer fired");
    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert!(
        s.c.timers()[&TimerKind::IdleEnd] >= s.now + idle,
        "re-armed"
    );

    let mut s = Sim::with(Policy {
        human_lease_ms: None,
        ..Policy::default()
    });
    s.ok(assume("ana"));
    s.advance(1_000).ok(customer("m1"));
    let end = s.c.timers()[&TimerKind::IdleEnd];
    let out = s.advance(end - s.now).ok(fire(TimerKind::IdleEnd));
    assert!(out.changed, "the timer fired");
    assert!(s.c.phase().is_human());
}

#[test]
fn the_scheduling_dispatch_of_a_proactive_conversation_carries_its_seller_and_area() {
    let mut s = Sim::immediate();
    s.ok(Event::ProactiveStart {
        trigger: "formulario_preenchido".into(),
        seller: seller("ana"),
        area: Some("Previdenciário".into()),
        details: serde_json::json!({}),
    });
    let out = s.advance(1_000).ok(Event::SchedulingRequest {
        seller: None,
        request: serde_json::json!({ "preferencia": "amanhã" }),
    });
    let d = the_dispatch(&out, DispatchKind::Scheduling);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["area_atuacao"], "Previdenciário");
    assert_eq!(d.details["seller"]["id"], "ana");
}

#[test]
fn dispatches_and_replies_that_waited_too_long_are_dropped_with_a_note() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    let max = s.p.max_effect_age_ms.unwrap();
    s.advance(max - 1);
    assert!(
        !s.c.expire_effects(s.now, &s.p).changed,
        "not before the age"
    );
    s.advance(1);
    let out = s.c.expire_effects(s.now, &s.p);
    assert!(out.changed);
    assert!(!s.outbox_has(&d));
    assert_eq!(s.c.in_flight(), None);
    let expired =
        s.c.timeline()
            .entries()
            .find(|e| e.what == What::EffectExpired)
            .unwrap();
    assert_eq!(expired.dispatch_id.as_deref(), Some(d.as_str()));
    assert_eq!(notes(&out), [Note::MessageExpired { minutes: 60 }]);
    // One being executed right now is left to finish.
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.claim(&d);
    s.advance(max);
    assert!(s.c.claim(&d, "node-a", s.now + 1_000));
    assert!(!s.c.expire_effects(s.now, &s.p).changed);
    assert!(s.outbox_has(&d));
}

#[test]
fn a_message_right_after_the_release_keeps_the_released_dispatch_and_every_unanswered_message() {
    let mut s = Sim::immediate();
    s.ok(assume("ana"));
    s.advance(1_000).ok(customer("m1"));
    let out = s.advance(1_000).ok(release("ana"));
    let released = the_dispatch(&out, DispatchKind::Released).dispatch_id;
    // The customer writes again before n8n got the release.
    let out = s.advance(100).ok(customer("m2"));
    assert!(
        s.outbox_has(&released),
        "n8n still learns that the bot is back"
    );
    let ids: Vec<_> = the_dispatch(&out, DispatchKind::Message)
        .messages
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(
        ids,
        ["m1", "m2"],
        "m1 is not lost with the superseded release"
    );
}

#[test]
fn message_dispatches_of_a_proactive_conversation_name_its_seller_and_area() {
    let mut s = Sim::immediate();
    s.ok(Event::ProactiveStart {
        trigger: "material_baixado".into(),
        seller: seller("ana"),
        area: Some("Trabalhista".into()),
        details: serde_json::json!({}),
    });
    let out = s.advance(1_000).ok(customer("m1"));
    let d = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(d.seller, Some(seller("ana")));
    assert_eq!(d.details["area_atuacao"], "Trabalhista");
}

#[test]
fn a_question_cut_off_by_a_takeover_is_handed_back_and_an_idless_reply_cannot_answer_it() {
    let mut s = Sim::immediate();
    let d1 = s.dispatched("m1"); // the bot was about to answer
    s.advance(1_000).ok(assume("ana"));
    // The seller never wrote: m1 is still unanswered when the bot is back.
    let out = s.advance(1_000).ok(release("ana"));
    let released = the_dispatch(&out, DispatchKind::Released);
    let ids: Vec<_> = released.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m1"]);
    // A reply without an id may have been written before the takeover: not delivered.
    let out = s.advance(100).ok(reply_without_id());
    assert_eq!(out.dropped, Some(DropReason::UnknownDispatch));
    // Nor the old dispatch's own reply.
    let out = s.ok(reply(&d1));
    assert_eq!(out.dropped, Some(DropReason::StaleDispatch));
    // The reply to the released dispatch is.
    let out = s.ok(reply(&released.dispatch_id));
    assert_eq!(out.dropped, None);
    assert!(s.c.pending().is_empty());
}

#[test]
fn the_chat_message_that_takes_over_answers_what_the_customer_said() {
    let mut s = Sim::immediate();
    s.dispatched("m1");
    s.advance(1_000).ok(spoke("ana", "chat-1"));
    assert!(s.c.phase().is_human());
    assert!(
        s.c.pending().is_empty(),
        "the seller answered m1 by writing"
    );
    let out = s.advance(1_000).ok(release("ana"));
    assert!(
        the_dispatch(&out, DispatchKind::Released)
            .messages
            .is_empty()
    );
}

#[test]
fn a_burst_of_messages_leaves_the_idle_end_where_it_was() {
    let mut s = Sim::with(Policy::default());
    s.ok(customer("m1"));
    let end = s.c.timers()[&TimerKind::IdleEnd];
    // The store's wake index need not be rewritten for every message of a burst.
    let stays = (end - (s.now + s.p.conversation_idle_ms.unwrap())).min(2_000);
    s.advance(stays).ok(customer("m2"));
    assert_eq!(s.c.timers()[&TimerKind::IdleEnd], end);
}

// ---- messages Kommo has and conversa never received (gap detection) ----------------------

fn missed(id: &str, at: Millis) -> Event {
    Event::MessagesMissed {
        messages: vec![MissedMessage { id: id.into(), at }],
    }
}

fn missed_ids(d: &Dispatch) -> Vec<String> {
    d.details["missed"]
        .as_array()
        .expect("details.missed")
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_missed_message_is_recorded_told_to_the_seller_and_sent_to_n8n_to_ask_again() {
    let mut s = Sim::new();
    let out = s.ok(missed("m1", T0 - 90_000));

    assert_eq!(*s.c.phase(), Phase::BotActive);
    assert_eq!(s.c.missed().len(), 1);
    assert_eq!(s.c.missed()[0].at, T0 - 90_000);
    assert_eq!(
        notes(&out),
        [Note::MessagesMissed {
            at: T0 - 90_000,
            count: 1
        }]
    );
    let d = the_dispatch(&out, DispatchKind::Missed);
    assert_eq!(missed_ids(&d), ["m1"]);
    assert_eq!(d.details["missed"][0]["at"], T0 - 90_000);
    assert_eq!(
        s.c.in_flight().map(|f| f.kind),
        Some(DispatchKind::Missed),
        "its reply is awaited like any other"
    );
    assert!(s.whats().contains(&What::MessageMissed));
}

#[test]
fn a_message_already_received_or_already_reported_is_not_missed() {
    let mut s = Sim::new();
    s.ok(customer("m1"));
    s.no_op(missed("m1", T0));
    s.ok(missed("m2", T0));
    s.no_op(missed("m2", T0));
}

#[test]
fn the_missed_dispatch_carries_the_unanswered_messages_and_supersedes_the_one_in_flight() {
    let mut s = Sim::immediate();
    let first = s.dispatched("m1");
    s.claim(&first);
    let out = s.ok(missed("m2", T0));
    let d = the_dispatch(&out, DispatchKind::Missed);
    assert_eq!(ids(&d), ["m1"], "the AI sees what it was answering");
    assert!(
        s.c.in_flight()
            .is_some_and(|f| f.dispatch_id == d.dispatch_id)
    );
    // The reply to the first dispatch would answer without the missing message.
    let out = s.ok(reply(&first));
    assert_eq!(out.dropped, Some(DropReason::Superseded));
    let out = s.ok(reply(&d.dispatch_id));
    assert_eq!(deliveries(&out).len(), 1);
    assert!(s.c.pending().is_empty());
}

#[test]
fn several_missed_messages_share_one_dispatch_not_sent_yet() {
    let mut s = Sim::new();
    let out = s.ok(missed("m1", T0));
    let d = the_dispatch(&out, DispatchKind::Missed);
    let out = s.ok(missed("m2", T0 + 1));
    assert!(dispatches(&out).is_empty());
    assert_eq!(
        notes(&out).len(),
        1,
        "each missed message is told to the seller"
    );
    let Some(Effect::Dispatch(queued)) = s.c.outbox().get(&d.dispatch_id).map(|e| &e.effect) else {
        panic!("the missed dispatch waits in the outbox");
    };
    assert_eq!(missed_ids(queued), ["m1", "m2"]);
    // Once it is being sent, the next missed message gets a dispatch of its own, naming every
    // message still missing.
    s.claim(&d.dispatch_id);
    let out = s.ok(missed("m3", T0 + 2));
    assert_eq!(
        missed_ids(&the_dispatch(&out, DispatchKind::Missed)),
        ["m1", "m2", "m3"]
    );
}

#[test]
fn the_messages_one_look_finds_make_one_note_and_one_dispatch() {
    let mut s = Sim::new();
    let batch = |ids: &[&str]| Event::MessagesMissed {
        messages: ids
            .iter()
            .enumerate()
            .map(|(i, id)| MissedMessage {
                id: (*id).into(),
                at: T0 + i as u64,
            })
            .collect(),
    };
    let out = s.ok(batch(&["m1", "m2", "m2", "m3"]));
    assert_eq!(notes(&out), [Note::MessagesMissed { at: T0, count: 3 }]);
    assert_eq!(
        missed_ids(&the_dispatch(&out, DispatchKind::Missed)),
        ["m1", "m2", "m3"]
    );
    s.no_op(batch(&["m1", "m3"]));
}

#[test]
fn a_missed_dispatch_is_not_replayed_once_its_messages_arrived() {
    let mut s = Sim::immediate();
    let out = s.ok(missed("m1", T0));
    let d = the_dispatch(&out, DispatchKind::Missed).dispatch_id;
    s.ok(failed(&d, false));
    s.ok(customer("m1"));
    assert!(s.c.missed().is_empty());
    assert_eq!(s.rejected(replay(&d)), Rejection::NothingToReplay);
}

#[test]
fn a_missed_message_that_arrives_after_all_is_applied_once_and_closes_the_entry() {
    let mut s = Sim::immediate();
    let out = s.ok(missed("m1", T0));
    let asked = the_dispatch(&out, DispatchKind::Missed).dispatch_id;
    s.advance(1_000);
    let out = s.ok(customer("m1"));
    let d = the_dispatch(&out, DispatchKind::Message);
    assert_eq!(ids(&d), ["m1"]);
    assert!(s.c.missed().is_empty());
    assert!(s.whats().contains(&What::MissedArrived));
    assert!(
        !s.outbox_has(&asked),
        "the request to repeat, not sent yet, is not needed any more"
    );
    // Kommo's events still list it: nothing more happens.
    s.no_op(missed("m1", T0));
    s.no_op(customer("m1"));
}

#[test]
fn while_a_seller_holds_the_conversation_a_missed_message_is_only_told_to_the_seller() {
    let mut s = Sim::new();
    s.ok(assume("ana"));
    let out = s.ok(missed("m1", T0));
    assert!(dispatches(&out).is_empty());
    assert_eq!(notes(&out), [Note::MessagesMissed { at: T0, count: 1 }]);
    assert!(s.c.phase().is_human());
}

#[test]
fn a_conversation_remembers_a_bounded_number_of_missed_messages() {
    let mut s = Sim::new();
    for i in 0..50 {
        s.ok(missed(&format!("m{i}"), T0 + i));
    }
    assert_eq!(s.c.missed().len(), 20);
    assert_eq!(s.c.missed()[0].id, "m30");
}

// ---- dead letters an operator can replay or drop ----------------------------------------------

fn replay(id: &str) -> Event {
    Event::Replay {
        id: id.into(),
        by: "operator".into(),
    }
}

#[test]
fn an_effect_given_up_on_is_kept_without_its_messages_for_an_operator() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.ok(failed(&d, false));
    let dead = s.c.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, d);
    let Effect::Dispatch(kept) = &dead[0].effect else {
        panic!("a dispatch")
    };
    assert!(
        kept.messages.is_empty(),
        "the messages stay pending instead"
    );
    assert_eq!(s.pending_ids(), ["m1"]);
}

#[test]
fn a_replayed_dispatch_goes_again_under_a_new_id_with_the_unanswered_messages() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.ok(failed(&d, false));
    s.ok(customer("m2")); // dispatched, and failing too
    let d2 = s.c.in_flight().unwrap().dispatch_id.clone();
    s.ok(failed(&d2, false));
    let out = s.ok(replay(&d));
    let again = the_dispatch(&out, DispatchKind::Message);
    assert_ne!(again.dispatch_id, d, "a new idempotency key");
    assert_eq!(ids(&again), ["m1", "m2"]);
    assert_eq!(out.queued, std::slice::from_ref(&again.dispatch_id));
    assert_eq!(s.last_what(), What::Replayed);
    assert_eq!(
        s.c.dead_letters().len(),
        1,
        "only the replayed one left the list"
    );
    // Once: it is no longer kept.
    assert_eq!(s.rejected(replay(&d)), Rejection::NoSuchDeadLetter);
    // Its reply is delivered like any other.
    let out = s.ok(reply(&again.dispatch_id));
    assert_eq!(deliveries(&out).len(), 1);
}

#[test]
fn nothing_the_bot_says_is_replayed_into_a_held_or_paused_conversation() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.ok(failed(&d, false));
    s.ok(assume("ana"));
    assert!(matches!(s.rejected(replay(&d)), Rejection::HeldBy(_)));
    s.ok(release("ana"));
    s.ok(pause());
    assert_eq!(s.rejected(replay(&d)), Rejection::Paused);
}

#[test]
fn a_reply_from_before_a_change_of_hands_is_not_replayed() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    let out = s.ok(reply(&d));
    assert_eq!(deliveries(&out).len(), 1);
    let r = out.queued[0].clone();
    s.ok(failed(&r, false));
    assert_eq!(s.c.dead_letters()[0].id, r);
    s.ok(assume("ana"));
    s.ok(release("ana"));
    assert_eq!(s.rejected(replay(&r)), Rejection::StaleReply);
}

#[test]
fn a_reply_replayed_in_the_same_hands_sends_only_the_parts_not_sent() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    let out = s.ok(Event::Reply {
        dispatch_id: Some(d.clone()),
        texts: vec!["um".into(), "dois".into()],
    });
    let r = out.queued[0].clone();
    s.ok(done(&r)); // part 1 of 2 went out
    s.ok(failed(&r, false));
    let out = s.ok(replay(&r));
    assert_eq!(deliveries(&out), [(Some(d), vec!["dois".to_owned()])]);
}

#[test]
fn a_message_dispatch_whose_messages_were_answered_since_is_not_replayed() {
    let mut s = Sim::immediate();
    let d = s.dispatched("m1");
    s.ok(failed(&d, false));
    s.ok(spoke("ana", "chat-1")); // a seller answered (auto takeover) ...
    s.ok(release("ana")); // ... and handed back
    assert!(s.c.pending().is_empty());
    assert_eq!(s.rejected(replay(&d)), Rejection::NothingToReplay);
}

#[test]
fn a_dropped_dead_letter_is_gone_and_a_conversation_keeps_a_bounded_number() {
    let mut s = Sim::immediate();
    let mut dead = Vec::new();
    for i in 0..12 {
        let d = s.dispatched(&format!("m{i}"));
        s.ok(failed(&d, false));
        dead.push(d);
    }
    assert_eq!(s.c.dead_letters().len(), 10);
    assert_eq!(s.c.dead_letters()[0].id, dead[2]);
    s.ok(Event::DropDeadLetter {
        id: dead[5].clone(),
        by: "operator".into(),
    });
    assert_eq!(s.c.dead_letters().len(), 9);
    assert_eq!(s.last_what(), What::DeadLetterDropped);
    assert_eq!(
        s.rejected(Event::DropDeadLetter {
            id: dead[5].clone(),
            by: "operator".into()
        }),
        Rejection::NoSuchDeadLetter
    );
}

#[test]
fn a_proactive_opening_is_not_replayed_while_another_one_waits() {
    let mut s = Sim::immediate();
    let out = s.ok(proactive("ana"));
    let first = the_dispatch(&out, DispatchKind::Proactive).dispatch_id;
    s.ok(failed(&first, false));
    s.advance(s.p.live_window_ms + 1); // the live window passed: a new opening is allowed
    let out = s.ok(proactive("ana"));
    the_dispatch(&out, DispatchKind::Proactive);
    assert_eq!(s.rejected(replay(&first)), Rejection::AlreadyLive);
}
