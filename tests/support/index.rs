//! An index update as a save carries it, built from plain values: the store tests' shorthand.

use conversa::store::IndexUpdate;
use conversa_actors::phase::PhaseName;

/// The index entries of a save: its wake-up (if any), whether its outbox waits, its phase.
pub fn index(wake_at: Option<u64>, outbox_pending: bool, phase: &str) -> IndexUpdate {
    IndexUpdate {
        wake_at,
        outbox_pending,
        phase: PhaseName::parse(phase).expect("a phase name"),
        previous: None,
    }
}
