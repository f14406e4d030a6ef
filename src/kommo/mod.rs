//! Kommo CRM: the wire formats Kommo speaks to us and, later, the client that speaks to Kommo.
//!
//! * [`webhook`] — a pure, allocation-light parser of Kommo's standard webhooks (form-urlencoded
//!   PHP bracket keys, or the same tree as JSON) into typed [`webhook::Webhook`] events.

pub mod webhook;
