//! Kommo's JSON as it arrives (docs/kommo.md, *REST calls out*), read into the models of
//! `model.rs`: HAL `_embedded` lists, `_links.next` pages, custom fields, and the problem+json
//! error bodies.

use serde::Deserialize;
use serde_json::Value;

use super::error::{KommoError, ValidationError};
use super::model::{Contact, KommoUser, Lead, Talk};
use super::oauth::excerpt;

#[derive(Deserialize)]
pub(super) struct RawUser {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) rights: Option<RawRights>,
    #[serde(default)]
    pub(super) phone_number: Option<String>,
    #[serde(default)]
    pub(super) amojo_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawRights {
    #[serde(default)]
    pub(super) is_active: Option<bool>,
}

#[derive(Deserialize, Default)]
pub(super) struct Links {
    #[serde(default)]
    pub(super) next: Option<Href>,
}

#[derive(Deserialize)]
pub(super) struct Href {
    pub(super) href: String,
}

#[derive(Deserialize)]
pub(super) struct UsersPage {
    #[serde(default, rename = "_links")]
    pub(super) links: Links,
    #[serde(default, rename = "_embedded")]
    pub(super) embedded: Option<UsersEmbedded>,
}

#[derive(Deserialize)]
pub(super) struct UsersEmbedded {
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
}

#[derive(Deserialize, Default)]
pub(super) struct IdRef {
    pub(super) id: u64,
}

#[derive(Deserialize)]
pub(super) struct NameRef {
    #[serde(default)]
    pub(super) name: String,
}

#[derive(Deserialize)]
pub(super) struct RawLead {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) responsible_user_id: Option<u64>,
    #[serde(default)]
    pub(super) status_id: Option<u64>,
    #[serde(default)]
    pub(super) pipeline_id: Option<u64>,
    #[serde(default)]
    pub(super) custom_fields_values: Value,
    #[serde(default, rename = "_embedded")]
    pub(super) embedded: Option<LeadEmbedded>,
}

#[derive(Deserialize)]
pub(super) struct LeadEmbedded {
    #[serde(default)]
    pub(super) contacts: Vec<IdRef>,
    #[serde(default)]
    pub(super) tags: Vec<NameRef>,
}

#[derive(Deserialize)]
pub(super) struct RawContact {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) responsible_user_id: Option<u64>,
    #[serde(default)]
    pub(super) custom_fields_values: Option<Vec<RawField>>,
    #[serde(default, rename = "_embedded")]
    pub(super) embedded: Option<TalkEmbedded>,
}

#[derive(Deserialize)]
pub(super) struct RawField {
    #[serde(default)]
    pub(super) field_code: Option<String>,
    #[serde(default)]
    pub(super) values: Vec<RawFieldValue>,
}

#[derive(Deserialize)]
pub(super) struct RawFieldValue {
    #[serde(default)]
    pub(super) value: Value,
}

#[derive(Deserialize)]
pub(super) struct RawTalk {
    pub(super) talk_id: u64,
    #[serde(default)]
    pub(super) contact_id: Option<u64>,
    #[serde(default)]
    pub(super) chat_id: Option<String>,
    #[serde(default)]
    pub(super) entity_id: Option<u64>,
    #[serde(default)]
    pub(super) entity_type: Option<String>,
    #[serde(default)]
    pub(super) is_in_work: Option<bool>,
    #[serde(default, rename = "_embedded")]
    pub(super) embedded: Option<TalkEmbedded>,
}

#[derive(Deserialize)]
pub(super) struct TalkEmbedded {
    #[serde(default)]
    pub(super) leads: Vec<IdRef>,
}

#[derive(Deserialize)]
pub(super) struct NotesResponse {
    #[serde(rename = "_embedded")]
    pub(super) embedded: NotesEmbedded,
}

#[derive(Deserialize)]
pub(super) struct NotesEmbedded {
    pub(super) notes: Vec<IdRef>,
}

#[derive(Deserialize, Default)]
pub(super) struct Problem {
    #[serde(default)]
    pub(super) title: Option<String>,
    #[serde(default)]
    pub(super) detail: Option<String>,
    #[serde(default, rename = "validation-errors")]
    pub(super) validation_errors: Vec<ProblemRequest>,
}

#[derive(Deserialize, Default)]
pub(super) struct ProblemRequest {
    #[serde(default)]
    pub(super) errors: Vec<ValidationError>,
}

pub(super) fn user_from(raw: RawUser) -> KommoUser {
    KommoUser {
        id: raw.id,
        name: raw.name.unwrap_or_default(),
        email: raw.email.unwrap_or_default(),
        is_active: raw.rights.and_then(|r| r.is_active).unwrap_or(false),
        phone: raw.phone_number.filter(|p| !p.is_empty()),
        amojo_id: raw.amojo_id.filter(|p| !p.is_empty()),
    }
}

pub(super) fn lead_from(raw: RawLead) -> Lead {
    let (contact_ids, tags) = match raw.embedded {
        Some(e) => (
            e.contacts.into_iter().map(|c| c.id).collect(),
            e.tags.into_iter().map(|t| t.name).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Lead {
        id: raw.id,
        name: raw.name.unwrap_or_default(),
        responsible_user_id: raw.responsible_user_id.unwrap_or(0),
        status_id: raw.status_id.unwrap_or(0),
        pipeline_id: raw.pipeline_id.unwrap_or(0),
        contact_ids,
        custom_fields: raw.custom_fields_values,
        tags,
    }
}

pub(super) fn contact_from(raw: RawContact) -> Contact {
    let phones = raw
        .custom_fields_values
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.field_code.as_deref() == Some("PHONE"))
        .flat_map(|f| f.values)
        .filter_map(|v| match v.value {
            Value::String(s) if !s.is_empty() => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    Contact {
        id: raw.id,
        name: raw.name.unwrap_or_default(),
        responsible_user_id: raw.responsible_user_id.unwrap_or(0),
        phones,
        lead_ids: raw
            .embedded
            .map(|e| e.leads.into_iter().map(|l| l.id).collect())
            .unwrap_or_default(),
    }
}

pub(super) fn talk_from(raw: RawTalk) -> Talk {
    let lead_id = match (raw.entity_type.as_deref(), raw.entity_id) {
        (Some("lead" | "leads"), Some(id)) => Some(id),
        _ => raw
            .embedded
            .and_then(|e| e.leads.into_iter().next())
            .map(|l| l.id),
    };
    Talk {
        id: raw.talk_id,
        contact_id: raw.contact_id.unwrap_or(0),
        chat_id: raw.chat_id.unwrap_or_default(),
        lead_id,
        is_in_work: raw.is_in_work.unwrap_or(false),
    }
}

/// The typed error for a non-2xx answer that is not handled specially.
pub(super) fn api_error(status: u16, body: &[u8]) -> KommoError {
    if (500..=599).contains(&status) {
        return KommoError::Server {
            status,
            body_excerpt: excerpt(body),
        };
    }
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) => KommoError::Api {
            status,
            title: p.title.unwrap_or_else(|| format!("HTTP {status}")),
            detail: p.detail.unwrap_or_default(),
            validation_errors: p
                .validation_errors
                .into_iter()
                .flat_map(|r| r.errors)
                .collect(),
        },
        Err(_) => KommoError::Api {
            status,
            title: format!("HTTP {status}"),
            detail: excerpt(body),
            validation_errors: Vec::new(),
        },
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, KommoError> {
    serde_json::from_slice(body).map_err(|e| KommoError::Decode(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_with_validation_errors() {
        // Verbatim from docs/kommo.md, *Error bodies*.
        let body = br#"{"validation-errors":[{"request_id":"0","errors":[{"code":"NotSupportedChoice","path":"custom_fields_values.0.field_id","detail":"The value you selected is not a valid choice."}]}],"title":"Bad Request","type":"https://httpstatus.es/400","status":400,"detail":"Request validation failed"}"#;
        match api_error(400, body) {
            KommoError::Api {
                status,
                title,
                detail,
                validation_errors,
            } => {
                assert_eq!((status, title.as_str()), (400, "Bad Request"));
                assert_eq!(detail, "Request validation failed");
                assert_eq!(
                    validation_errors,
                    vec![ValidationError {
                        code: "NotSupportedChoice".into(),
                        path: "custom_fields_values.0.field_id".into(),
                        detail: "The value you selected is not a valid choice.".into(),
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            api_error(502, b"<html>bad gateway</html>"),
            KommoError::Server { status: 502, .. }
        ));
        assert!(matches!(
            api_error(404, b"<html>nope</html>"),
            KommoError::Api { status: 404, .. }
        ));
    }

    #[test]
    fn doc_samples_parse() {
        // docs/kommo.md, *Leads, contacts, talks*.
        let lead: RawLead = serde_json::from_str(
            r#"{"id":3912171,"name":"Example","price":12,"responsible_user_id":504141,"group_id":0,"status_id":143,"pipeline_id":3104455,"custom_fields_values":null,"_embedded":{"tags":[{"id":100667,"name":"тест","color":null}],"companies":[{"id":10971463}],"contacts":[{"id":10971465,"is_main":true}]}}"#,
        )
        .unwrap();
        let lead = lead_from(lead);
        assert_eq!(lead.contact_ids, vec![10971465]);
        assert_eq!(lead.tags, vec!["тест".to_owned()]);
        assert_eq!(lead.custom_fields, Value::Null);
        assert_eq!(
            (lead.responsible_user_id, lead.status_id, lead.pipeline_id),
            (504141, 143, 3104455)
        );

        let contact: RawContact = serde_json::from_str(
            r#"{"id":3,"name":"Иван Иванов","responsible_user_id":504141,"custom_fields_values":[{"field_id":3,"field_name":"Телефон","field_code":"PHONE","field_type":"multitext","values":[{"value":"+79123","enum_id":1,"enum":"WORK"}]}]}"#,
        )
        .unwrap();
        assert_eq!(contact_from(contact).phones, vec!["+79123".to_owned()]);

        let talk: RawTalk = serde_json::from_str(
            r#"{"talk_id":117,"created_at":1631018291,"updated_at":1631035929,"rate":0,"contact_id":3372695,"chat_id":"88278e98-2b8d-4ae2-a5f0-bfab511cd621","entity_id":667999637,"entity_type":"lead","is_in_work":true,"is_read":true,"origin":"telegram","missed_at":null,"account_id":17029541,"_embedded":{"contacts":[{"id":3372695}],"leads":[{"id":667999637}],"customers":[]}}"#,
        )
        .unwrap();
        assert_eq!(
            talk_from(talk),
            Talk {
                id: 117,
                contact_id: 3372695,
                chat_id: "88278e98-2b8d-4ae2-a5f0-bfab511cd621".into(),
                lead_id: Some(667999637),
                is_in_work: true,
            }
        );

        let users: UsersPage = serde_json::from_str(
            r#"{"_total_items":2,"_page":1,"_page_count":1,"_links":{"self":{"href":"https://example.amocrm.ru/api/v4/users/?with=role%2Cgroup"}},"_embedded":{"users":[{"id":123123,"name":"U","email":"example2@mail.com","lang":"en","rights":{"status_rights":null,"is_admin":false,"is_free":false,"is_active":true,"group_id":null,"role_id":null}}]}}"#,
        )
        .unwrap();
        assert!(users.links.next.is_none());
        let u = user_from(users.embedded.unwrap().users.remove(0));
        assert!(u.is_active);
        assert_eq!(u.phone, None);
    }
}
