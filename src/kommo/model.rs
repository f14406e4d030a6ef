//! What Kommo's records mean to conversa: users, leads, contacts, talks, the account, and a
//! change to a lead. The client's endpoints (`client.rs`) return these; how Kommo spells them
//! on the wire is `wire.rs`'s business.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A Kommo user (seller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KommoUser {
    pub id: u64,
    pub name: String,
    pub email: String,
    /// `rights.is_active`.
    pub is_active: bool,
    pub phone: Option<String>,
    /// The user's id in the chat service (amojo).
    pub amojo_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    pub status_id: u64,
    pub pipeline_id: u64,
    /// From `_embedded.contacts` (present with `with_contacts`).
    pub contact_ids: Vec<u64>,
    /// `custom_fields_values` as Kommo sent it (`null` when the lead has none).
    pub custom_fields: Value,
    /// Tag names from `_embedded.tags`.
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    /// Values of the `PHONE` field.
    pub phones: Vec<String>,
    /// The contact's leads (`_embedded.leads`, present with `with=leads`), as Kommo lists them.
    pub lead_ids: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Talk {
    pub id: u64,
    pub contact_id: u64,
    pub chat_id: String,
    /// `entity_id` when `entity_type` is `lead`, else `_embedded.leads[0].id`.
    pub lead_id: Option<u64>,
    pub is_in_work: bool,
}

/// The Kommo account (`GET /api/v4/account`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = KommoAccount)]
pub struct Account {
    pub id: u64,
    pub name: String,
    pub subdomain: String,
}

/// A change to one lead (`PATCH /api/v4/leads/{id}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeadPatch {
    /// `(field_id, value)`. A scalar becomes `[{"value": v}]`; an object (e.g.
    /// `{"enum_id": 5}`) becomes `[object]`; an array is used as the `values` list as is.
    pub custom_fields: Vec<(u64, Value)>,
    pub tags_to_add: Vec<String>,
    pub tags_to_delete: Vec<String>,
}

impl LeadPatch {
    /// The JSON body Kommo expects (docs/kommo.md, *Writing*); empty parts are left out.
    pub fn body(&self) -> Value {
        let mut body = serde_json::Map::new();
        if !self.custom_fields.is_empty() {
            let fields: Vec<Value> = self
                .custom_fields
                .iter()
                .map(|(id, v)| {
                    let values = match v {
                        Value::Array(_) => v.clone(),
                        Value::Object(_) => json!([v]),
                        _ => json!([{ "value": v }]),
                    };
                    json!({ "field_id": id, "values": values })
                })
                .collect();
            body.insert("custom_fields_values".into(), Value::Array(fields));
        }
        let tags = |names: &[String]| -> Value {
            Value::Array(names.iter().map(|n| json!({ "name": n })).collect())
        };
        if !self.tags_to_add.is_empty() {
            body.insert("tags_to_add".into(), tags(&self.tags_to_add));
        }
        if !self.tags_to_delete.is_empty() {
            body.insert("tags_to_delete".into(), tags(&self.tags_to_delete));
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_body_shapes() {
        let patch = LeadPatch {
            custom_fields: vec![
                (3, json!("text")),
                (4, json!({"enum_id": 7})),
                (5, json!([{"value": true}])),
            ],
            tags_to_add: vec!["ia-off".into()],
            tags_to_delete: vec![],
        };
        assert_eq!(
            patch.body(),
            json!({
                "custom_fields_values": [
                    {"field_id": 3, "values": [{"value": "text"}]},
                    {"field_id": 4, "values": [{"enum_id": 7}]},
                    {"field_id": 5, "values": [{"value": true}]},
                ],
                "tags_to_add": [{"name": "ia-off"}],
            })
        );
        assert_eq!(LeadPatch::default().body(), json!({}));
    }
}
