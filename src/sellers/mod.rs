//! The sellers directory (the original system's "vendedores dinâmicos"): who may hold a
//! conversation, how a seller's own WhatsApp contact is recognised, and who is responsible for a
//! conversation.
//!
//! Three kinds of [`Seller`], listed together by [`SellerDirectory::all`]:
//! * **real** ([`Source::Real`]) — the active users of the Kommo account, read through a
//!   [`UserSource`] (the Kommo client implements it; this module does not depend on it). The list
//!   is cached for [`DirectorySettings::ttl`]; once stale it is still served at once while one
//!   background refresh (single-flight: however many readers notice, one call to the source)
//!   fetches a new one. [`SellerDirectory::sync`] forces a refresh. The last good list is
//!   persisted under the store value `sellers:real`, so a restart while Kommo is unreachable still
//!   knows the sellers. Ids are `kommo-<user id>`.
//! * **fictitious** ([`Source::Fictitious`]) — from configuration, for tests and demos
//!   (ids `ficticio-1`, `ficticio-2`, ... unless configured).
//! * **custom** ([`Source::Custom`]) — added through the API, persisted as one JSON list under
//!   the store value `sellers:custom`; ids `custom-<n>`, `n` one more than the largest stored.
//!
//! The "dynamic" sellers (`dinâmicos`) are real + custom.
//!
//! Who is responsible for a conversation ([`SellerDirectory::responsible`]) follows the original
//! order: the seller holding the conversation, else a contact-level assignment (store value
//! `sellers:contact:<contact id>` = seller id, see [`SellerDirectory::assign_contact`]), else the
//! Kommo user responsible for the lead, mapped to a seller. Lead → user and talk → contact
//! answers from Kommo are cached for the same TTL.
//!
//! Several nodes on one store: each node caches the real list itself (each refreshes from Kommo)
//! and re-reads the custom list from the store at least every 10 s. Adding a custom seller is a
//! read-modify-write of `sellers:custom`, serialised inside a process; the `Store` trait has no
//! compare-and-set for named values, so two nodes adding a seller in the same instant could lose
//! one. Adding sellers is a rare operator action, so this is accepted rather than engineered away.

mod directory;
mod model;
mod responsible;

pub use directory::{DirectorySettings, SellerDirectory};
pub use model::{
    CUSTOM_KEY, DirectoryError, FoundBy, LeadSource, NewSeller, REAL_KEY, Seller, Source,
    UserRecord, UserSource, WHATSAPP_KEY, WhatsApp, contact_key, normalize_phone, phones_match,
};
