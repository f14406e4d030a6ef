//! Seller commands — `/assumir 12345`, `/liberar 12345`, `/status 12345` — parsed and carried
//! out. The same code serves `POST /vendedor/comandos` and a seller typing the command in
//! their own WhatsApp chat (it arrives through the Kommo webhook and never reaches n8n).
//!
//! Only registered, active sellers may command; a conversation held by another seller is
//! refused naming the holder.

use conversa_actors::{Event, PhaseName, Rejection, SellerRef};
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::flows::FlowError;
use crate::sellers::Seller;
use crate::state::AppState;

/// The commands, as the error for an unknown one lists them.
pub const COMMANDS: [&str; 3] = [
    "/assumir <contact_id>",
    "/liberar <contact_id>",
    "/status <contact_id>",
];

/// What a seller asks (the Portuguese words are the commands' and the JSON's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = CommandVerb)]
pub enum Verb {
    /// Take the conversation over (the bot goes silent).
    #[serde(rename = "assumir")]
    Takeover,
    /// Hand it back to the bot.
    #[serde(rename = "liberar")]
    Release,
    /// Only say the phase.
    #[serde(rename = "status")]
    Status,
}

/// The conversation after a command.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"ok": true, "command": "assumir", "contact_id": 1298200,
    "phase": "human_assigned", "bot_active": false,
    "vendedor": {"id": "custom-1", "name": "Ana Souza", "kommo_user_id": null,
        "contact_id": 99999, "phone": null, "areas": ["Previdenciário"], "active": true,
        "source": "custom"},
    "holder": {"id": "custom-1", "name": "Ana Souza"}}))]
pub struct CommandAnswer {
    pub ok: bool,
    pub command: Verb,
    /// The customer's contact the command is about.
    pub contact_id: u64,
    pub phase: PhaseName,
    pub bot_active: bool,
    /// The seller who gave the command.
    pub vendedor: Seller,
    /// Who holds the conversation now, if anyone.
    pub holder: Option<SellerRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    pub verb: Verb,
    pub contact_id: u64,
}

/// Whether a chat message looks like a command (so it is handled, not sent to the AI).
pub fn looks_like_command(text: &str) -> bool {
    text.trim_start().starts_with('/')
}

/// What a command looks like ([`parse`] takes exactly this): a verb, white space
/// (any Unicode white space, as WhatsApp users type it), the contact id, nothing after.
pub const PATTERN: &str = r"^[\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*/([Aa][Ss][Ss][Uu][Mm][Ii][Rr]|[Ll][Ii][Bb][Ee][Rr][Aa][Rr]|[Ss][Tt][Aa][Tt][Uu][Ss])[\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+#*0*[1-9][0-9]{0,14}[\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$";

/// Parses `/assumir 12345` (case-insensitive; `#12345` accepted).
pub fn parse(text: &str) -> Result<Command, FlowError> {
    let unknown = || FlowError::Invalid {
        field: "message".into(),
        code: "unknown_command",
        message: format!(
            "unknown command {:?}; commands: {}",
            text.trim(),
            COMMANDS.join(", ")
        ),
    };
    let mut words = text.split_whitespace();
    let verb = match words.next().map(str::to_lowercase).as_deref() {
        Some("/assumir") => Verb::Takeover,
        Some("/liberar") => Verb::Release,
        Some("/status") => Verb::Status,
        _ => return Err(unknown()),
    };
    let contact_id = words
        .next()
        .map(|w| w.trim_start_matches('#'))
        .and_then(crate::kommo::id::parse_id)
        .ok_or_else(|| {
            FlowError::invalid(
                "message",
                format!(
                    "{} needs a contact id, e.g. \"/assumir 12345\"",
                    text.trim()
                ),
            )
        })?;
    if words.next().is_some() {
        return Err(unknown());
    }
    Ok(Command { verb, contact_id })
}

/// The seller behind `contact_id` (their own WhatsApp contact), if registered and active.
pub async fn commanding_seller(app: &AppState, contact_id: u64) -> Result<Seller, FlowError> {
    let seller = app.sellers().by_contact_id(contact_id).await?;
    match seller {
        Some(s) if s.active => Ok(s),
        _ => {
            warn!(
                contact_id,
                "command from a contact that is not an active seller refused"
            );
            Err(FlowError::Forbidden {
                code: "not_a_seller",
                message: format!("contact {contact_id} is not a registered, active seller"),
            })
        }
    }
}

/// Carries out `command` for `seller`; the answer says the phase after it.
pub async fn execute(
    app: &AppState,
    seller: &Seller,
    command: Command,
    via: &str,
) -> Result<CommandAnswer, FlowError> {
    let key = app.contact(command.contact_id);
    let me = SellerRef {
        id: seller.id.clone(),
        name: seller.name.clone(),
    };
    let by = format!("{} via {via}", seller.name);
    let event = match command.verb {
        Verb::Takeover => Some(Event::Assume { seller: me, by }),
        Verb::Release => Some(Event::Release {
            seller: Some(me),
            by,
        }),
        Verb::Status => None,
    };
    let (phase, holder) = match event {
        Some(event) => {
            let applied = app.engine().apply(key, event).await?;
            if let Err(rejection) = applied.outcome {
                return Err(refused(rejection));
            }
            (applied.phase.kind(), applied.phase.seller().cloned())
        }
        None => match app.engine().conversation(&key).await? {
            Some((c, _)) => (c.phase().kind(), c.phase().seller().cloned()),
            None => (PhaseName::Idle, None),
        },
    };
    info!(contact = %key, seller = %seller.id, command = ?command.verb, phase = phase.as_str(), "seller command");
    Ok(CommandAnswer {
        ok: true,
        command: command.verb,
        contact_id: command.contact_id,
        phase,
        bot_active: phase.bot_active(),
        vendedor: seller.clone(),
        holder,
    })
}

fn refused(rejection: Rejection) -> FlowError {
    match rejection {
        Rejection::HeldBy(holder) => FlowError::Conflict {
            code: "held_by_another_seller",
            message: format!("conversation is held by {} ({})", holder.name, holder.id),
            holder: Some(holder),
        },
        other => FlowError::Conflict {
            code: "conflict",
            message: other.to_string(),
            holder: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_commands() {
        assert_eq!(
            parse("/assumir 12345").unwrap(),
            Command {
                verb: Verb::Takeover,
                contact_id: 12345
            }
        );
        assert_eq!(parse("  /LIBERAR #7 ").unwrap().verb, Verb::Release);
        assert_eq!(parse("/status 9").unwrap().contact_id, 9);
        let error = |text| crate::error::ApiError::from(parse(text).unwrap_err());
        assert_eq!(error("/voar 1").error, "unknown_command");
        assert_eq!(
            error("/assumir").status,
            axum::http::StatusCode::BAD_REQUEST
        );
        assert_eq!(error("/assumir 1 2").error, "unknown_command");
        assert!(looks_like_command(" /assumir 1"));
        assert!(!looks_like_command("olá /assumir"));
    }
}
