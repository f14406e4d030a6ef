//! The use cases: what conversa does when a webhook, a seller, n8n or an operator asks, with
//! typed results and typed errors, and no HTTP in sight.
//!
//! Each file is one use case the HTTP handlers (`src/http/`) adapt: they parse the request,
//! call a flow, and turn its result into a response type and its [`FlowError`] into the one
//! error of the edge ([`crate::error::ApiError`]). The flows reach the engine, the sellers
//! directory and Kommo through [`AppState`](crate::app::AppState).
//!
//! * [`ingest`] — a Kommo webhook body: account check, items that could not be read, seller
//!   commands taken out, every other item applied to its contact's conversation;
//! * [`commands`] — a seller's `/assumir`, `/liberar`, `/status`;
//! * [`dead_letters`] — an operator replays or drops a dead letter;
//! * [`reply`] — n8n's reply to a dispatch (and a scheduling outcome) reaches the conversation,
//!   and what became of it;
//! * [`proactive`] — a marketing event opens a conversation;
//! * [`scheduling`] — someone asks for a meeting with the responsible seller;
//! * [`responsibility`] — who is responsible for a talk, a contact or a lead, and the links
//!   between them (contact ↔ lead) asked of Kommo;
//! * [`limits`] — how much free-form text and JSON a request may hand to a conversation.

pub mod commands;
pub mod dead_letters;
pub mod ingest;
pub mod limits;
pub mod proactive;
pub mod reply;
pub mod responsibility;
pub mod scheduling;

use conversa_actors::{EngineError, SellerRef};

use crate::sellers::DirectoryError;

/// Why a use case did not happen. The variants say what kind of refusal it is; the edge maps
/// each to a status (`src/error.rs`): invalid 400, forbidden 403, not found 404, conflict 409,
/// unprocessable 422, the rest 503 or 500.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A value of the request is malformed (`code` is usually `bad_request`).
    #[error("{message}")]
    Invalid {
        field: String,
        code: &'static str,
        message: String,
    },
    /// Who asks may not.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The conversation's state refuses it (`holder`: the seller holding it, when that is why).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        holder: Option<SellerRef>,
    },
    /// Well-formed, but nothing can be done with it.
    #[error("{message}")]
    Unprocessable {
        field: Option<&'static str>,
        code: &'static str,
        message: String,
    },
    /// Kommo was needed and could not be asked.
    #[error("{0}")]
    KommoUnavailable(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

impl FlowError {
    /// A malformed `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        FlowError::Invalid {
            field: field.into(),
            code: "bad_request",
            message: message.into(),
        }
    }

    /// A well-formed request about `field` that cannot be acted on.
    pub fn unprocessable(
        field: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        FlowError::Unprocessable {
            field: Some(field),
            code,
            message: message.into(),
        }
    }

    /// Whether something conversa depends on (the store, Kommo) could not be reached: asking
    /// again later may work.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            FlowError::KommoUnavailable(_)
                | FlowError::Engine(EngineError::Unavailable(_) | EngineError::Contended)
                | FlowError::Directory(
                    DirectoryError::StoreUnavailable(_)
                        | DirectoryError::NotConfigured
                        | DirectoryError::Upstream(_)
                )
        )
    }
}

impl From<conversa_actors::store::StoreError> for FlowError {
    fn from(e: conversa_actors::store::StoreError) -> Self {
        FlowError::Engine(e.into())
    }
}
