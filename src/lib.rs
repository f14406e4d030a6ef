//! conversa: the stateful engine between Kommo CRM (WhatsApp conversations), n8n (AI
//! workflows) and sellers.
//!
//! The decisions live in the `conversa-actors` crate (the conversation state machine and its
//! actors); this crate is the edge around it:
//! * [`config`] — settings from environment variables and CLI flags; [`setup`] builds the store
//!   and the Kommo connection from them; [`cli`] — the subcommands beside serving
//!   (`conversa setup kommo`, `conversa check`); [`golive`] — what answering customers needs,
//!   checked (`check`, `/ready`) and set up (`setup kommo`);
//! * [`app`] — the router and the served OpenAPI document; [`state`] — what every handler and
//!   use case can reach; [`http`] — the handlers, one module per resource; [`error`] — the one
//!   JSON error type; [`openapi`] — the document's builders and Swagger UI (`/docs`);
//! * [`flows`] — the use cases the handlers adapt (webhook ingest, seller commands, n8n's
//!   reply, proactive openings, scheduling, who is responsible), HTTP-free;
//! * [`kommo`] — Kommo's webhooks in, its REST API out; [`n8n`] — dispatches to the AI workflow;
//!   [`reply`] — the reply channel; [`sellers`] — the sellers directory;
//! * [`store`] — the Redis and embedded (redb) backends; [`dead_letters`] — webhook items that
//!   could not be read;
//! * [`server`] — start-up, logging and graceful shutdown; [`serve`] — the listener (header-read
//!   timeout, connection cap, open-file limit); [`recorder`] — the Prometheus recorder;
//! * [`notes`] — the words of the notes left on leads (the core says which note); [`node`] —
//!   this process's unique names among the engine nodes;
//! * [`reply_token`] — the per-dispatch proof a reply must carry; [`redact`] — secrets kept out of
//!   logs and public answers, and compared in constant time; [`text`] — accent folding.

pub mod app;
pub mod cli;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod flows;
pub mod gaps;
pub mod golive;
pub mod http;
pub mod kommo;
pub mod n8n;
pub mod node;
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
