//! Wall-clock time in [`Millis`]. Only the shell reads it; the state machine is handed `now`.
//! Wall time (not `Instant`) because timers are persisted and must mean the same after a restart.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::contact::Millis;

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}
