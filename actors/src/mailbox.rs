//! What a contact's actor is sent ([`ContactMsg`]) and what it answers an applied event
//! ([`Applied`]): the vocabulary shared by the actor, the registry that routes to it and the
//! node that sends.

use tokio::sync::oneshot;

use crate::conversation::{Outcome, Rejection};
use crate::error::EngineError;
use crate::event::Event;
use crate::executor::ExecError;
use crate::phase::Phase;

/// A message to a contact's actor.
pub enum ContactMsg {
    /// Apply an event and answer once it is durable.
    Apply {
        event: Event,
        reply: oneshot::Sender<Result<Applied, EngineError>>,
    },
    /// Run whatever is due: timers, outbox retries, expired claims.
    Wake,
    /// An outbox entry finished; `found` are links the executor discovered.
    Executed {
        id: String,
        result: Result<(), ExecError>,
        found: Option<crate::message::Links>,
    },
    /// Stop if still idle (sent by the engine's passivation sweep).
    Passivate { idle_ms: u64 },
    /// The last message of a passivated actor.
    Stop,
}

/// The answer to an applied event.
#[derive(Clone, Debug)]
pub struct Applied {
    /// What the event did, or why it was refused (then nothing changed).
    pub outcome: Result<Outcome, Rejection>,
    /// The phase after the event.
    pub phase: Phase,
    /// The stored version after the event.
    pub version: u64,
}
