//! conversa: the stateful engine between Kommo CRM (WhatsApp conversations), n8n (AI
//! workflows) and sellers.
//!
//! The decisions live in the `conversa-actors` crate (the conversation state machine and its
//! actors); this crate is the edge around it:
//! * [`config`] — settings from environment variables and CLI flags;
//! * [`app`] and [`http`] — the axum router and its handlers; [`error`] — the JSON error type;
//! * [`flows`] — the use cases the handlers adapt (webhook ingest, seller commands, proactive
//!   openings, scheduling, who is responsible), HTTP-free;
//!   [`openapi`] — the OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`);
//! * [`store`] — the Redis and embedded (redb) backends;
//! * [`server`] — start-up, logging and graceful shutdown ([`setup`] builds the store and the
//!   Kommo connection from the configuration); [`serve`] — the listener (header-read
//!   timeout, connection cap, open-file limit);
//! * [`notes`] — the words of the notes left on leads (the core says which note);
//! * [`reply_token`] — the per-dispatch proof a reply must carry; [`redact`] — secrets kept out of
//!   logs and public answers.

pub mod app;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod flows;
pub mod http;
pub mod kommo;
pub mod n8n;
pub mod notes;
pub mod openapi;
pub mod recorder;
pub mod redact;
pub mod reply;
pub mod reply_token;
pub mod sellers;
pub mod serve;
pub mod server;
pub mod setup;
pub mod state;
pub mod store;
pub mod text;
