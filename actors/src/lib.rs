//! The core of conversa: everything that decides, nothing that speaks a wire format.
//!
//! * [`conversation`] — the pure state machine of one contact's conversation (sans-IO), with its
//!   [`event`]s, [`effect`]s, [`phase`]s and [`timeline`].
//! * [`store`] — the persistence contract, its in-memory backend and conformance suite.
//! * [`engine`] — contact actors ([`actor`]) on ractor: activation, supervision, passivation;
//!   `node` is what one engine node shares (the `Core`: store, executors, registry of live
//!   actors, counters) and how a message reaches a contact's actor; `mailbox` what an actor is
//!   sent; `timers` the timer service; [`executor`] is where effects leave the process.
//! * [`note`] — the notes for the seller as data (the service writes their words).

pub mod actor;
pub mod append_log;
pub mod clock;
mod compact;
pub mod contact;
pub mod conversation;
pub mod effect;
pub mod engine;
mod error;
pub mod event;
pub mod executor;
mod mailbox;
pub mod message;
mod node;
pub mod note;
pub mod phase;
pub mod policy;
mod registry;
mod snapshot;
pub mod store;
mod supervisor;
pub mod timeline;
mod timers;

pub use contact::{ContactKey, Millis};
pub use conversation::{Conversation, DropReason, Outcome, Rejection};
pub use effect::{Dispatch, DispatchKind, Effect, OutboxEntry, TimerKind};
pub use engine::{DeadLetterNotice, Engine, EngineConfig, EngineError, EngineStats, Progress};
pub use event::{BotCommand, Event};
pub use executor::{Commitment, ExecError, Executor, Executors, FoundLinks, Job};
pub use mailbox::Applied;
pub use message::{Attachment, InboundMessage, Links, SellerRef};
pub use phase::{Phase, PhaseName};
pub use policy::Policy;
