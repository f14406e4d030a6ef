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

/// The longest message id, attachment kind or file name kept (Kommo's ids are 36-character
/// UUIDs); longer ones are cut.
pub const MAX_ID_BYTES: usize = 128;
/// The longest attachment link kept.
pub const MAX_LINK_BYTES: usize = 2048;
/// What marks a text that was cut.
pub const TRUNCATION_MARK: &str = " […]";

impl InboundMessage {
    /// Cuts what a sender could make arbitrarily long: the text to `max_text` bytes (marked
    /// with [`TRUNCATION_MARK`]), the id, attachment kind and file name to [`MAX_ID_BYTES`],
    /// the link to [`MAX_LINK_BYTES`]. Returns the text's original length when it was cut.
    pub fn bound(&mut self, max_text: usize) -> Option<usize> {
        cut(&mut self.id, MAX_ID_BYTES);
        if let Some(a) = &mut self.attachment {
            cut(&mut a.kind, MAX_ID_BYTES);
            cut(&mut a.link, MAX_LINK_BYTES);
            if let Some(name) = &mut a.file_name {
                cut(name, MAX_ID_BYTES);
            }
        }
        if let Some(chat) = &mut self.links.chat_id {
            cut(chat, MAX_ID_BYTES);
        }
        let original = self.text.len();
        let max_text = max_text.max(TRUNCATION_MARK.len() + 1);
        if original <= max_text {
            return None;
        }
        cut(&mut self.text, max_text - TRUNCATION_MARK.len());
        self.text.push_str(TRUNCATION_MARK);
        Some(original)
    }

    /// Roughly what the message costs in a snapshot and a dispatch, in bytes.
    pub fn weight(&self) -> usize {
        64 + self.id.len()
            + self.text.len()
            + self.attachment.as_ref().map_or(0, |a| {
                a.kind.len() + a.link.len() + a.file_name.as_ref().map_or(0, String::len)
            })
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
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
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(example = json!({"lead_id": 878244, "talk_id": 109}))
)]
pub struct Links {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lead_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub talk_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
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
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(example = json!({"id": "custom-1", "name": "Ana Souza"}))
)]
pub struct SellerRef {
    pub id: String,
    pub name: String,
}
