//! Kommo CRM: the wire formats Kommo speaks to us and the client that speaks to Kommo.
//!
//! * [`webhook`] — a pure, allocation-light parser of Kommo's standard webhooks (form-urlencoded
//!   PHP bracket keys, or the same tree as JSON) into typed [`webhook::Webhook`] events.
//! * [`oauth`] — the OAuth token pair: stored, rotated single-flight, persisted before use.
//! * [`client`] — the REST endpoints conversa calls; [`model`] — what they return; `wire` — how
//!   Kommo spells it; [`transport`] — how a request goes out: ≤ 7 req/s per account, 429
//!   backoff, 403 circuit, typed errors ([`error::KommoError`]).
//! * [`admin`] — the account-setup endpoints (webhooks, lead custom fields) of
//!   `conversa setup kommo` and the go-live checks; [`events`] — the events feed gap detection
//!   reads;
//! * [`id`] — what a Kommo id looks like (1 to 15 digits), one rule for every input;
//! * [`sources`] — the client as the sellers directory's source of users, lead owners and talk
//!   contacts. (`crate::setup` builds the client from the configuration.)

pub mod admin;
pub mod client;
pub mod error;
pub mod events;
pub mod id;
pub mod model;
pub mod oauth;
pub mod sources;
pub mod transport;
pub mod webhook;
mod wire;
