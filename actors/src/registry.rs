//! Finding a contact's actor: one [`Slot`] per live contact in a `dashmap`.
//!
//! A slot is created on the first message for a contact and its actor spawned once (concurrent
//! first messages share the activation). Passivation closes the slot *under its lock* before the
//! actor's last message, so no sender can enqueue into an actor that is about to stop; a sender
//! that finds a slot closing waits until its actor has stopped and then activates a fresh one.
//! That keeps one contact's messages in arrival order across passivation and restarts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ractor::ActorRef;
use tokio::sync::{Notify, OnceCell};

use crate::clock::now_millis;
use crate::contact::Millis;
use crate::mailbox::ContactMsg;

pub(crate) struct Slot {
    pub actor: OnceCell<ActorRef<ContactMsg>>,
    /// Set (under the lock) when the actor will take no more messages.
    closing: Mutex<bool>,
    /// Becomes true once the actor has stopped; `stop_notify` wakes whoever waits for it.
    /// (Both inline: a slot lives as long as its actor, so every byte here is per contact.)
    stopped: AtomicBool,
    stop_notify: Notify,
    pub last_active: AtomicU64,
    /// Outbox entries of this contact being executed right now (passivation waits for them).
    pub executing: AtomicU32,
}

pub(crate) enum Delivery {
    Sent,
    /// The actor is going away; wait for [`Slot::stopped`] and try a fresh slot.
    Closing(ContactMsg),
    /// The actor is gone (failed): the message comes back.
    Dead(ContactMsg),
    /// The message could not be handed over and is lost (cannot happen for local actors).
    Failed(String),
}

impl Slot {
    pub fn new() -> Self {
        Self {
            actor: OnceCell::new(),
            closing: Mutex::new(false),
            stopped: AtomicBool::new(false),
            stop_notify: Notify::new(),
            last_active: AtomicU64::new(now_millis()),
            executing: AtomicU32::new(0),
        }
    }

    /// Enqueues `msg` unless the slot is closing.
    pub fn deliver(&self, actor: &ActorRef<ContactMsg>, msg: ContactMsg) -> Delivery {
        let closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
        if *closing {
            return Delivery::Closing(msg);
        }
        self.last_active.store(now_millis(), Ordering::Relaxed);
        match actor.send_message(msg) {
            Ok(()) => Delivery::Sent,
            Err(ractor::MessagingErr::SendErr(msg)) => Delivery::Dead(msg),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }

    /// Takes no more messages; returns false if it was already closing.
    pub fn close(&self) -> bool {
        let mut closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
        !std::mem::replace(&mut *closing, true)
    }

    pub fn mark_stopped(&self) {
        self.close();
        self.stopped.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
    }

    pub async fn wait_stopped(&self) {
        loop {
            // Register before checking, so a `mark_stopped` in between is not missed.
            let notified = self.stop_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub fn idle_since(&self) -> Millis {
        self.last_active.load(Ordering::Relaxed)
    }
}
