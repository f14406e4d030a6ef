//! Going live: what a deployment needs before a customer writing on WhatsApp gets an answer,
//! how to tell whether it has it, and how to get the Kommo side of it done.
//!
//! * [`target`] — the settings that matter for that, read once from the configuration, and the
//!   webhook address Kommo must call (`PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>`);
//! * [`checks`] — every condition, offline (the variables) and online (Kommo's token, webhook and
//!   reply field, n8n's workflow, `PUBLIC_URL` from outside), each named after the variable or
//!   the remote object at fault. `conversa check` prints them; `/ready` carries the same list;
//! * [`setup_kommo`] — `conversa setup kommo`: the reply field and the webhook created or put
//!   right, idempotently, and the one manual step (the Salesbot) spelled out;
//! * [`webhook`] — the webhook's standing in the account and its repair, one definition for the
//!   setup, the checks and the watchdog;
//! * [`watchdog`] — every `WEBHOOK_WATCH_SECS`, the webhook looked at and repaired when Kommo
//!   disabled or lost it;
//! * [`env_file`] — `--write-env`: the ids found, written into `.env` without touching the rest.

pub mod checks;
pub mod env_file;
pub mod setup_kommo;
pub mod target;
pub mod watchdog;
pub mod webhook;

pub use checks::{Check, CheckStatus, Report};
pub use target::Target;
