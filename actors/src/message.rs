//! What a customer says, and who a seller is, as the core needs them.
//!
//! Wire formats (Kommo's bracket forms, n8n's JSON) are parsed at the edge into these types.

use serde::{Deserialize, Serialize};

/// A customer's message from WhatsApp (through a Kommo `message[add]` webhook).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Kommo's chat-message UUID: the deduplication key.
    pub id: String,
    #[serde(default)]
    pub text: String,
    /// Unix seconds, as Kommo sends it.
    #[serde(default)]
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// Where the message came from in Kommo, when known: kept current on the conversation.
    #[serde(default, skip_serializing_if = "Links::is_empty")]
    pub links: Links,
}

/// A voice note, picture or file carried by a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `voice`, `picture`, `file`, ... as Kommo names it.
    pub kind: String,
    pub link: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// The Kommo objects a conversation is attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talk_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
}

impl Links {
    pub fn is_empty(&self) -> bool {
        self.lead_id.is_none() && self.talk_id.is_none() && self.chat_id.is_none()
    }

    /// Takes every link `newer` knows, keeping ours where it knows nothing.
    pub fn update(&mut self, newer: &Links) {
        if newer.lead_id.is_some() {
            self.lead_id = newer.lead_id;
        }
        if newer.talk_id.is_some() {
            self.talk_id = newer.talk_id;
        }
        if newer.chat_id.is_some() {
            self.chat_id.clone_from(&newer.chat_id);
        }
    }
}

/// A seller as the conversation remembers them (the directory with areas, phones and Kommo
/// users lives at the edge).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerRef {
    pub id: String,
    pub name: String,
}
