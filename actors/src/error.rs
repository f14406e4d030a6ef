//! What can go wrong when the engine is asked to apply an event, as callers see it.

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The store is down: answer 503, nothing changed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Too many concurrent writers on one contact: answer 503, nothing changed.
    #[error("contact too contended; try again")]
    Contended,
    /// The contact's actor failed while handling the request: answer 500.
    #[error("contact actor failed: {0}")]
    ActorFailed(String),
    #[error("stored data corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => EngineError::Unavailable(m),
            StoreError::Conflict { .. } => EngineError::Contended,
            StoreError::Corrupt(m) => EngineError::Corrupt(m),
        }
    }
}
