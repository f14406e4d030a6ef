//! A marketing event opens a conversation: the use case behind `POST /start-proactive`.
//!
//! The area must be eligible (`ELIGIBLE_AREAS`, compared ignoring case and accents), the seller
//! known and active (by id, else by a name that names exactly one seller), and the contact must
//! have a lead when Kommo is connected (the reply would have nowhere to go). The conversation
//! then decides: it opens (n8n gets `event: "proactive"`), or it refuses because one is already
//! live or a seller holds it.

use conversa_actors::{Effect, Event, Links, PhaseName, Rejection, SellerRef};
use serde::Serialize;
use serde_json::{Value, json};

use crate::flows::FlowError;
use crate::flows::responsibility::contact_lead;
use crate::sellers::Seller;
use crate::state::AppState;
use crate::text::fold;

/// What happened to the contact (the original's `trigger_type` words on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Trigger {
    #[serde(rename = "formulario_preenchido")]
    FormFilled,
    #[serde(rename = "material_baixado")]
    MaterialDownloaded,
    #[serde(rename = "agendamento")]
    MeetingBooked,
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [
        Trigger::FormFilled,
        Trigger::MaterialDownloaded,
        Trigger::MeetingBooked,
    ];

    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FormFilled => "formulario_preenchido",
            Trigger::MaterialDownloaded => "material_baixado",
            Trigger::MeetingBooked => "agendamento",
        }
    }

    /// Reads the wire word, ignoring case and surrounding white space.
    pub fn parse(text: &str) -> Option<Trigger> {
        let text = text.trim().to_lowercase();
        Trigger::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// Who the event names as the seller: an id or a name, or both.
pub struct WantedSeller<'a> {
    pub id: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// A marketing event, read and checked for shape by the edge.
pub struct Opening<'a> {
    pub contact_id: u64,
    pub lead_id: Option<u64>,
    pub seller: WantedSeller<'a>,
    pub area: &'a str,
    pub trigger: Trigger,
    pub lead_data: Value,
}

/// Why no conversation was opened although the event was fine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotOpened {
    /// A conversation is already live.
    Duplicate,
    /// A seller holds the conversation.
    HumanAssigned,
    Paused,
}

/// What became of the event.
pub enum Opened {
    Yes {
        contact_id: u64,
        phase: PhaseName,
        dispatch_id: Option<String>,
        seller: Seller,
        trigger: Trigger,
    },
    No {
        contact_id: u64,
        phase: PhaseName,
        reason: NotOpened,
    },
}

/// Opens the conversation of `event.contact_id`, or says why not.
pub async fn start(app: &AppState, event: Opening<'_>) -> Result<Opened, FlowError> {
    if !app.area_is_eligible(event.area) {
        return Err(FlowError::unprocessable(
            "area_atuacao",
            "area_not_eligible",
            format!("area {:?} is not in ELIGIBLE_AREAS", event.area),
        ));
    }
    let seller = find_seller(app, &event.seller).await?;
    let key = app.contact(event.contact_id);
    // No lead anywhere: refused before n8n is called (the reply would have nowhere to go).
    let lead_id = match event.lead_id {
        Some(lead) => Some(lead),
        None => match contact_lead(app, key.contact_id).await? {
            Some(lead) => Some(lead),
            None if app.kommo().is_none() => None,
            None => {
                return Err(FlowError::unprocessable(
                    "lead_id",
                    "no_lead",
                    format!(
                        "contact {} has no lead in Kommo: give lead_id, or create a lead for the contact",
                        key.contact_id
                    ),
                ));
            }
        },
    };
    if let Some(lead) = lead_id {
        let links = Links {
            lead_id: Some(lead),
            ..Links::default()
        };
        app.engine().apply(key, Event::LinksSeen(links)).await?;
    }
    let details = json!({
        "area_atuacao": event.area,
        "trigger_type": event.trigger,
        "lead_data": event.lead_data,
        "lead_id": lead_id,
        "seller": {"id": seller.id, "name": seller.name},
    });
    let start = Event::ProactiveStart {
        trigger: event.trigger.as_str().to_owned(),
        area: Some(event.area.trim().to_owned()).filter(|a| !a.is_empty()),
        seller: SellerRef {
            id: seller.id.clone(),
            name: seller.name.clone(),
        },
        details,
    };
    let applied = app.engine().apply(key, start).await?;
    let phase = applied.phase.kind();
    let outcome = match applied.outcome {
        Ok(o) => o,
        Err(rejection) => {
            let reason = match rejection {
                Rejection::HumanAssigned => NotOpened::HumanAssigned,
                Rejection::Paused => NotOpened::Paused,
                _ => NotOpened::Duplicate,
            };
            return Ok(Opened::No {
                contact_id: key.contact_id,
                phase,
                reason,
            });
        }
    };
    let dispatch_id = outcome.effects.iter().find_map(|e| match e {
        Effect::Dispatch(d) => Some(d.dispatch_id.clone()),
        _ => None,
    });
    Ok(Opened::Yes {
        contact_id: key.contact_id,
        phase,
        dispatch_id,
        seller,
        trigger: event.trigger,
    })
}

/// Finds the seller by id, else by name: the one active seller whose name is the given one
/// (ignoring case and accents). An ambiguous or unknown name is refused listing the candidates
/// (the sellers of that name, or those whose name contains it).
async fn find_seller(app: &AppState, wanted: &WantedSeller<'_>) -> Result<Seller, FlowError> {
    if let Some(id) = wanted.id.filter(|i| !i.is_empty())
        && let Some(s) = app.sellers().by_id(id).await?
        && s.active
    {
        return Ok(s);
    }
    let Some(name) = wanted.name.filter(|n| !n.is_empty()) else {
        return Err(FlowError::unprocessable(
            "vendedor",
            "unknown_seller",
            format!("no active seller {:?}", wanted.id.unwrap_or_default()),
        ));
    };
    let folded = fold(name);
    let active: Vec<Seller> = app
        .sellers()
        .all()
        .await?
        .into_iter()
        .filter(|s| s.active)
        .collect();
    let mut same: Vec<&Seller> = active.iter().filter(|s| fold(&s.name) == folded).collect();
    if same.len() == 1 {
        return Ok(same.remove(0).clone());
    }
    let listed = |sellers: Vec<&Seller>| {
        sellers
            .iter()
            .take(10)
            .map(|s| format!("{} ({})", s.name, s.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if same.len() > 1 {
        return Err(FlowError::unprocessable(
            "vendedor",
            "ambiguous_seller",
            format!(
                "{} active sellers are named {name:?}: {}; give the seller's id",
                same.len(),
                listed(same)
            ),
        ));
    }
    let similar: Vec<&Seller> = active
        .iter()
        .filter(|s| {
            fold(&s.name).split(' ').any(|w| w == folded) || fold(&s.name).contains(&folded)
        })
        .collect();
    let message = if similar.is_empty() {
        format!("no active seller {name:?}")
    } else {
        format!(
            "no active seller {name:?}; did you mean: {}?",
            listed(similar)
        )
    };
    Err(FlowError::unprocessable(
        "vendedor",
        "unknown_seller",
        message,
    ))
}
