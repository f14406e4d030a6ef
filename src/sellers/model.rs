//! What a seller is: the [`Seller`] record and its kinds ([`Source`]), the sources the
//! directory reads them from ([`UserSource`], [`LeadSource`]), how a responsible seller was found
//! ([`FoundBy`]), the directory's errors, and the rules a new seller must follow (a name, clean
//! areas, a phone of 8 to 15 digits, no contact or user already taken).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use conversa_actors::store::StoreError;
use serde::{Deserialize, Serialize};

/// Store value holding the last good list of real sellers (JSON list of [`Seller`]).
pub const REAL_KEY: &str = "sellers:real";
/// Store value holding the custom sellers (JSON list of [`Seller`]).
pub const CUSTOM_KEY: &str = "sellers:custom";

/// Store value holding the id of the seller assigned to a contact.
pub fn contact_key(contact_id: u64) -> String {
    format!("sellers:contact:{contact_id}")
}

/// A safety net around every call to a [`UserSource`] or [`LeadSource`] (whose own timeouts
/// should be shorter), so a hung Kommo never holds readers forever.
pub(super) const SOURCE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed refresh of the real sellers, the stale list is served this long (or the TTL,
/// if shorter) before the next attempt, so a Kommo outage is not hammered.
pub(super) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// The custom list is re-read from the store at least this often (or every TTL, if shorter),
/// so sellers added on another node show up.
pub(super) const CUSTOM_TTL: Duration = Duration::from_secs(10);
/// Cached lead and talk lookups kept at most (expired ones are dropped first).
pub(super) const LOOKUP_CACHE_MAX: usize = 10_000;
/// Longest accepted seller name, in characters.
pub(super) const NAME_MAX: usize = 120;

/// A seller of the directory, as every endpoint shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[schema(example = json!({"id": "custom-1", "name": "Ana Souza", "kommo_user_id": null,
    "contact_id": 99999, "phone": null, "areas": ["Previdenciário"], "active": true,
    "source": "custom"}))]
pub struct Seller {
    /// `kommo-<user id>`, `ficticio-<n>` or `custom-<n>`. Empty in configuration = assigned.
    #[serde(default)]
    #[schema(required = true)]
    pub id: String,
    pub name: String,
    /// The seller's Kommo user, when they have one.
    #[serde(default)]
    pub kommo_user_id: Option<u64>,
    /// The seller's own WhatsApp contact in Kommo, so their commands can be recognised.
    #[serde(default)]
    pub contact_id: Option<u64>,
    /// Digits only.
    #[serde(default)]
    pub phone: Option<String>,
    /// Practice areas ("áreas de atuação").
    #[serde(default)]
    #[schema(required = true)]
    pub areas: Vec<String>,
    #[serde(default = "yes")]
    #[schema(required = true)]
    pub active: bool,
    pub source: Source,
    /// A Kommo user's id in the chat service (amojo): the `author[id]` of the messages they
    /// write in a customer's chat, so a takeover by chat names the same seller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub amojo_id: Option<String>,
}

/// A Kommo-synced seller's own WhatsApp (`contact_id` and/or `phone`), attached by
/// configuration (`SELLER_WHATSAPP`) or `POST /vendedores/{id}/whatsapp`, so their commands are
/// recognised; kept across syncs and restarts (store value [`WHATSAPP_KEY`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WhatsApp {
    #[serde(default)]
    pub contact_id: Option<u64>,
    /// Digits only.
    #[serde(default)]
    pub phone: Option<String>,
}

/// Store value holding the WhatsApp attached to real sellers (JSON map: Kommo user id → it).
pub const WHATSAPP_KEY: &str = "sellers:whatsapp";

/// Kommo user id → the WhatsApp attached to that seller.
pub(super) type WhatsAppMap = HashMap<u64, WhatsApp>;

pub(super) fn yes() -> bool {
    true
}

/// Where a seller comes from: an active Kommo user, configuration, or the API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = SellerSource)]
pub enum Source {
    /// An active Kommo user.
    Real,
    /// From configuration, for tests and demos (`ficticio`, the original's word).
    #[serde(rename = "ficticio")]
    Fictitious,
    /// Added through the API.
    Custom,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Real => "real",
            Source::Fictitious => "ficticio",
            Source::Custom => "custom",
        }
    }
}

/// A Kommo user as the directory needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub kommo_user_id: u64,
    pub name: String,
    pub phone: Option<String>,
    pub active: bool,
    /// The user's id in the chat service (`with=amojo_id`).
    pub amojo_id: Option<String>,
}

/// Where real sellers come from (the Kommo users API).
#[async_trait]
pub trait UserSource: Send + Sync + 'static {
    /// The account's users; inactive ones may be included (they are filtered out).
    async fn active_users(&self) -> Result<Vec<UserRecord>, String>;
}

/// What the directory asks Kommo about leads and talks.
#[async_trait]
pub trait LeadSource: Send + Sync + 'static {
    /// The Kommo user responsible for the lead (`None`: no such lead, or nobody responsible).
    async fn responsible_user(&self, lead_id: u64) -> Result<Option<u64>, String>;
    /// The contact a talk (conversation) belongs to (`None`: no such talk).
    async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, String>;
    /// The Kommo user responsible for the contact (`None`: no such contact, or nobody).
    async fn contact_user(&self, _contact_id: u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
    /// The lead a talk belongs to (`None`: no such talk, or not on a lead).
    async fn talk_lead(&self, _talk_id: u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
}

/// A custom seller to add ([`super::SellerDirectory::add_custom`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct NewSeller {
    pub name: String,
    #[serde(default)]
    pub contact_id: Option<u64>,
    /// Any formatting; kept as digits.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub areas: Vec<String>,
    #[serde(default)]
    pub kommo_user_id: Option<u64>,
}

/// How the responsible seller was found: the seller holding the conversation, the contact's
/// assignment (or its responsible Kommo user), or the lead's responsible Kommo user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    Conversation,
    Contact,
    Lead,
}

impl FoundBy {
    /// The name in JSON answers.
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::Conversation => "conversation",
            FoundBy::Contact => "contact",
            FoundBy::Lead => "lead",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// Bad input, naming the offending field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The value of `field` already belongs to seller `seller_id`.
    #[error("{field} {value} already belongs to seller {seller_id}")]
    Duplicate {
        field: &'static str,
        value: String,
        seller_id: String,
    },
    /// No such seller.
    #[error("seller {0:?} not found")]
    NotFound(String),
    /// The store cannot be reached.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// A stored sellers value cannot be read.
    #[error("stored sellers data corrupt: {0}")]
    Corrupt(String),
    /// No [`UserSource`] / [`LeadSource`] was configured.
    #[error("Kommo is not configured: real sellers and lead owners cannot be read")]
    NotConfigured,
    /// Kommo (the source) failed or did not answer.
    #[error("Kommo unavailable: {0}")]
    Upstream(String),
}

impl From<StoreError> for DirectoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => DirectoryError::Corrupt(m),
            other => DirectoryError::StoreUnavailable(other.to_string()),
        }
    }
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> DirectoryError {
    DirectoryError::Invalid {
        field,
        message: message.into(),
    }
}

/// Keeps only the digits of a phone number (`"+55 (11) 98765-4321"` → `"5511987654321"`).
pub fn normalize_phone(raw: &str) -> String {
    raw.chars().filter(char::is_ascii_digit).collect()
}

/// Whether two digit-only phones are the same number: equal, or one is the other with a
/// country code in front (the shorter must keep at least area code + number, 10 digits).
pub fn phones_match(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short == long || (short.len() >= 10 && long.ends_with(short))
}

pub(super) fn clean_areas(areas: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(areas.len());
    for area in areas {
        let area = area.split_whitespace().collect::<Vec<_>>().join(" ");
        if !area.is_empty() && !out.iter().any(|a| a.to_lowercase() == area.to_lowercase()) {
            out.push(area);
        }
    }
    out
}

/// A custom seller from `new`, without its id yet.
pub(super) fn validate(new: NewSeller) -> Result<Seller, DirectoryError> {
    let name = new.name.split_whitespace().collect::<Vec<_>>().join(" ");
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.chars().count() > NAME_MAX {
        return Err(invalid(
            "name",
            format!("must be at most {NAME_MAX} characters"),
        ));
    }
    if new.contact_id == Some(0) {
        return Err(invalid("contact_id", "must be a positive integer"));
    }
    if new.kommo_user_id == Some(0) {
        return Err(invalid("kommo_user_id", "must be a positive integer"));
    }
    let phone = match new.phone.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => {
            let digits = normalize_phone(raw);
            if !(8..=15).contains(&digits.len()) {
                return Err(invalid(
                    "phone",
                    format!("must have 8 to 15 digits, got {raw:?}"),
                ));
            }
            Some(digits)
        }
    };
    Ok(Seller {
        id: String::new(),
        name,
        kommo_user_id: new.kommo_user_id,
        contact_id: new.contact_id,
        phone,
        areas: clean_areas(new.areas),
        active: true,
        source: Source::Custom,
        amojo_id: None,
    })
}

/// Rejects `seller` when its contact or phone belongs to another seller, or its Kommo user to
/// another custom seller (a custom seller may enrich a real one with a contact and areas).
pub(super) fn check_duplicates<'a>(
    seller: &Seller,
    custom: &[Seller],
    everyone: impl Iterator<Item = &'a Seller>,
) -> Result<(), DirectoryError> {
    let name = crate::text::fold(&seller.name);
    for other in everyone {
        // Names are how people (and the original's `"vendedor": "Asaf"`) pick a seller: unique
        // among active sellers, ignoring case and accents. A custom entry enriching a Kommo
        // user (same `kommo_user_id`) is the same person.
        let same_person =
            seller.kommo_user_id.is_some() && seller.kommo_user_id == other.kommo_user_id;
        if other.active && !same_person && crate::text::fold(&other.name) == name {
            return Err(DirectoryError::Duplicate {
                field: "name",
                value: seller.name.clone(),
                seller_id: other.id.clone(),
            });
        }
        if let Some(contact) = seller.contact_id.filter(|c| other.contact_id == Some(*c)) {
            return Err(DirectoryError::Duplicate {
                field: "contact_id",
                value: contact.to_string(),
                seller_id: other.id.clone(),
            });
        }
        let same_phone = |p: &&String| other.phone.as_ref().is_some_and(|o| phones_match(p, o));
        if let Some(phone) = seller.phone.as_ref().filter(same_phone) {
            return Err(DirectoryError::Duplicate {
                field: "phone",
                value: phone.clone(),
                seller_id: other.id.clone(),
            });
        }
    }
    let user = seller.kommo_user_id;
    if let Some(other) = custom
        .iter()
        .find(|s| user.is_some() && s.kommo_user_id == user)
    {
        return Err(DirectoryError::Duplicate {
            field: "kommo_user_id",
            value: user.unwrap_or_default().to_string(),
            seller_id: other.id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        assert_eq!(normalize_phone("+55 (11) 98765-4321"), "5511987654321");
        assert!(phones_match("5511987654321", "11987654321"));
        assert!(phones_match("11987654321", "11987654321"));
        assert!(!phones_match("987654321", "11987654321"));
        assert!(!phones_match("", ""));
    }

    #[test]
    fn areas_are_trimmed_and_deduplicated() {
        let areas = clean_areas(vec![
            " Trabalhista ".into(),
            "".into(),
            "trabalhista".into(),
            "Direito  de Família".into(),
        ]);
        assert_eq!(areas, ["Trabalhista", "Direito de Família"]);
    }
}
