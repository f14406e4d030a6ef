//! Kommo's events feed (`GET /api/v4/events`), read by gap detection ([`crate::gaps`]) for the
//! customer messages Kommo received: `incoming_chat_message` events about contacts.
//!
//! A chat event carries the message id and no text (`value_after: [{"message": {"id": …}}]`),
//! the contact as `entity_id` (`entity_type: contact`; a talk's event names it as
//! `linked_talk_contact_id`) and `created_at` in Unix seconds; at most 100 per page
//! (docs/kommo.md, *Events*). Events conversa cannot place (no contact, no message id, an id
//! that is not a Kommo message id) are skipped.

use serde::Deserialize;

use super::error::KommoError;
use super::transport::KommoClient;
use super::wire::decode;

/// Events per page (Kommo's maximum for this list).
const PAGE: u32 = 100;
/// The most pages read for one window: 10 000 messages. Kommo blocks unbounded iteration.
pub const MAX_PAGES: u32 = 100;
/// The longest message id taken (Kommo's are UUIDs).
const MAX_ID_BYTES: usize = 128;

/// A customer message Kommo received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMessage {
    pub contact_id: u64,
    pub message_id: String,
    /// Unix seconds.
    pub at: u64,
}

/// The messages of one window, and whether it was read to its end.
#[derive(Debug, Default)]
pub struct IncomingMessages {
    pub messages: Vec<IncomingMessage>,
    /// [`MAX_PAGES`] were read and Kommo had more.
    pub truncated: bool,
    /// Requests made.
    pub pages: u32,
}

#[derive(Deserialize)]
struct Page {
    #[serde(rename = "_embedded", default)]
    embedded: Option<Events>,
    #[serde(rename = "_links", default)]
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Events {
    #[serde(default)]
    events: Vec<WireEvent>,
}

#[derive(Deserialize)]
struct Links {
    #[serde(default)]
    next: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    entity_id: Option<u64>,
    #[serde(default)]
    entity_type: Option<String>,
    #[serde(default)]
    linked_talk_contact_id: Option<u64>,
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    value_after: Vec<serde_json::Value>,
}

impl WireEvent {
    fn into_message(self) -> Option<IncomingMessage> {
        if self.kind != "incoming_chat_message" {
            return None;
        }
        let contact_id = match self.entity_type.as_deref() {
            Some("contact") => self.entity_id,
            _ => self.linked_talk_contact_id,
        }
        .filter(|id| *id > 0)?;
        let message_id = self
            .value_after
            .iter()
            .find_map(|v| v["message"]["id"].as_str())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_ID_BYTES
                    && id.bytes().all(|b| b.is_ascii_graphic())
            })?
            .to_owned();
        Some(IncomingMessage {
            contact_id,
            message_id,
            at: self.created_at,
        })
    }
}

impl KommoClient {
    /// The customer messages Kommo received from `from` to `to` (Unix seconds, inclusive),
    /// every page up to [`MAX_PAGES`].
    pub async fn incoming_messages(
        &self,
        from: u64,
        to: u64,
    ) -> Result<IncomingMessages, KommoError> {
        let mut out = IncomingMessages::default();
        for page in 1..=MAX_PAGES {
            let mut url = self.v4("events")?;
            url.query_pairs_mut()
                .append_pair("filter[type][]", "incoming_chat_message")
                .append_pair("filter[entity][]", "contact")
                .append_pair("filter[created_at][from]", &from.to_string())
                .append_pair("filter[created_at][to]", &to.to_string())
                .append_pair("page", &page.to_string())
                .append_pair("limit", &PAGE.to_string());
            out.pages = page;
            let Some(body) = self.get(url).await? else {
                break; // 204: no (more) events
            };
            let parsed: Page = decode("events", &body)?;
            out.messages.extend(
                parsed
                    .embedded
                    .map(|e| e.events)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(WireEvent::into_message),
            );
            if parsed.links.and_then(|l| l.next).is_none() {
                break;
            }
            if page == MAX_PAGES {
                out.truncated = true;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: serde_json::Value) -> Option<IncomingMessage> {
        serde_json::from_value::<WireEvent>(v)
            .unwrap()
            .into_message()
    }

    #[test]
    fn a_chat_event_names_the_contact_and_the_message() {
        let got = event(serde_json::json!({
            "id": "01pz58t6p04vbd0f6wg2p9nq8c", "type": "incoming_chat_message",
            "entity_id": 1298200, "entity_type": "contact", "created_by": 0,
            "created_at": 1767225600, "account_id": 33981183,
            "value_after": [{"message": {"id": "1508b51c-0e0b-4b1c-9c1c-3b1f6f0b2a11"}}],
            "value_before": []
        }));
        assert_eq!(
            got,
            Some(IncomingMessage {
                contact_id: 1298200,
                message_id: "1508b51c-0e0b-4b1c-9c1c-3b1f6f0b2a11".into(),
                at: 1767225600,
            })
        );
    }

    #[test]
    fn a_lead_event_names_the_contact_of_its_talk() {
        let got = event(serde_json::json!({
            "type": "incoming_chat_message", "entity_id": 5, "entity_type": "lead",
            "linked_talk_contact_id": 77, "created_at": 1,
            "value_after": [{"message": {"id": "m-1"}}]
        }));
        assert_eq!(got.map(|m| m.contact_id), Some(77));
    }

    #[test]
    fn events_that_cannot_be_placed_are_skipped() {
        for v in [
            serde_json::json!({"type": "outgoing_chat_message", "entity_id": 1,
                "entity_type": "contact", "value_after": [{"message": {"id": "m"}}]}),
            serde_json::json!({"type": "incoming_chat_message", "entity_id": 1,
                "entity_type": "contact", "value_after": []}),
            serde_json::json!({"type": "incoming_chat_message", "entity_id": 5,
                "entity_type": "lead", "value_after": [{"message": {"id": "m"}}]}),
            serde_json::json!({"type": "incoming_chat_message", "entity_id": 1,
                "entity_type": "contact", "value_after": [{"message": {"id": "a b"}}]}),
            serde_json::json!({"type": "incoming_chat_message", "entity_id": 1,
                "entity_type": "contact", "value_after": [{"message": {"id": "x".repeat(200)}}]}),
        ] {
            assert_eq!(event(v.clone()), None, "{v}");
        }
    }
}
