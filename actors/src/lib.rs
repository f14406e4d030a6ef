//! The core of conversa: everything that decides, nothing that speaks a wire format.
//!
//! * [`conversation`] — the pure state machine of one contact's conversation (sans-IO).
//! * [`store`] — the persistence contract and its in-memory backend.
pub mod contact;
pub mod store;

pub use contact::{ContactKey, Millis};
