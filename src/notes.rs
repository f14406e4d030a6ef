//! The words of the notes conversa leaves on a lead for the seller. The conversation decides
//! which note ([`Note`], in the core); this file writes it, in the language of
//! `NOTE_LANGUAGE` (Portuguese by default, as the sellers of the original system read them),
//! with times in `NOTE_TIME_ZONE` (`America/Sao_Paulo` by default).

use conversa_actors::note::Note;
use jiff::tz::TimeZone;
use serde_json::Value;

/// Reads `NOTE_TIME_ZONE`: an IANA name (`America/Sao_Paulo`, `UTC`), from the time zone data
/// built into the binary (a slim container image has none).
pub fn parse_time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!(
            "{name:?} is not a time zone name (want an IANA name such as America/Sao_Paulo or UTC)"
        )
    })
}

/// `dd/mm HH:MM` of a Unix-millisecond time in `tz`.
fn local_time(at: u64, tz: &TimeZone) -> String {
    i64::try_from(at)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || "?".to_owned(),
            |t| {
                t.to_zoned_datetime(tz.clone())
                    .strftime("%d/%m %H:%M")
                    .to_string()
            },
        )
}

/// The language of the notes on leads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Portuguese (Brazil).
    #[default]
    Pt,
    /// English.
    En,
}

/// The note's text for the seller.
pub fn render(note: &Note, language: Language, tz: &TimeZone) -> String {
    match language {
        Language::Pt => portuguese(note, tz),
        Language::En => english(note, tz),
    }
}

fn portuguese(note: &Note, tz: &TimeZone) -> String {
    let minutes = |m: u64| match m {
        0 | 1 => "1 minuto".to_owned(),
        m if m < 120 => format!("{m} minutos"),
        m => format!("{} horas", m / 60),
    };
    match note {
        Note::TakenOver { seller, by } => {
            format!("Atendimento assumido por {} ({by}).", seller.name)
        }
        Note::BotBack {
            lease_expired: true,
        } => "Tempo de atendimento humano esgotado: a IA voltou a responder.".to_owned(),
        Note::BotBack {
            lease_expired: false,
        } => "A IA voltou a responder nesta conversa.".to_owned(),
        Note::LeaseEnding { minutes: m } => format!(
            "A conversa volta para a IA em {} se ninguém responder.",
            minutes(*m)
        ),
        Note::ProactiveStarted { trigger, seller } => {
            format!(
                "Conversa proativa iniciada ({trigger}) para {}.",
                seller.name
            )
        }
        Note::SchedulingSettled {
            confirmed: true,
            details,
        } => format!(
            "Agendamento confirmado{}.",
            details_words(details, "sim", "não")
        ),
        Note::SchedulingSettled {
            confirmed: false,
            details,
        } => format!(
            "Agendamento não concluído{}.",
            details_words(details, "sim", "não")
        ),
        Note::SchedulingTimedOut => "Agendamento sem resposta: a IA voltou a responder.".to_owned(),
        Note::DispatchFailed { dispatch_id, error } => {
            format!("Falha ao enviar para a IA ({dispatch_id}): {error}")
        }
        Note::ReplyFailed { error, texts } => format!(
            "A resposta da IA pode não ter chegado ao cliente ({error}): {}",
            texts.join(" / ")
        ),
        Note::MessageExpired { minutes: m } => format!(
            "A mensagem do cliente não chegou à IA a tempo (ficou {} na fila): responda pelo chat.",
            minutes(*m)
        ),
        Note::MessagesMissed { at, count: 0 | 1 } => format!(
            "Uma mensagem do cliente de {} não chegou ao assistente (o Kommo não a entregou): leia-a no chat do Kommo.",
            local_time(*at, tz)
        ),
        Note::MessagesMissed { at, count } => format!(
            "{count} mensagens do cliente, a partir de {}, não chegaram ao assistente (o Kommo não as entregou): leia-as no chat do Kommo.",
            local_time(*at, tz)
        ),
        Note::ReplyExpired { minutes: m, texts } => format!(
            "A resposta da IA não foi enviada porque ficou {} na fila: {}",
            minutes(*m),
            texts.join(" / ")
        ),
        Note::Written { text } => text.clone(),
    }
}

fn english(note: &Note, tz: &TimeZone) -> String {
    let minutes = |m: u64| match m {
        0 | 1 => "1 minute".to_owned(),
        m if m < 120 => format!("{m} minutes"),
        m => format!("{} hours", m / 60),
    };
    match note {
        Note::TakenOver { seller, by } => format!("Taken over by {} ({by}).", seller.name),
        Note::BotBack {
            lease_expired: true,
        } => "The seller's time ran out: the AI answers again.".to_owned(),
        Note::BotBack {
            lease_expired: false,
        } => "The AI answers this conversation again.".to_owned(),
        Note::LeaseEnding { minutes: m } => format!(
            "The conversation returns to the AI in {} unless someone answers.",
            minutes(*m)
        ),
        Note::ProactiveStarted { trigger, seller } => {
            format!(
                "Proactive conversation started ({trigger}) for {}.",
                seller.name
            )
        }
        Note::SchedulingSettled {
            confirmed: true,
            details,
        } => format!("Meeting confirmed{}.", details_words(details, "yes", "no")),
        Note::SchedulingSettled {
            confirmed: false,
            details,
        } => format!("Meeting not booked{}.", details_words(details, "yes", "no")),
        Note::SchedulingTimedOut => {
            "No answer to the meeting request: the AI answers again.".to_owned()
        }
        Note::DispatchFailed { dispatch_id, error } => {
            format!("Could not reach the AI ({dispatch_id}): {error}")
        }
        Note::ReplyFailed { error, texts } => format!(
            "The AI's reply may not have reached the customer ({error}): {}",
            texts.join(" / ")
        ),
        Note::MessageExpired { minutes: m } => format!(
            "The customer's message did not reach the AI in time (it waited {}): answer in the chat.",
            minutes(*m)
        ),
        Note::MessagesMissed { at, count: 0 | 1 } => format!(
            "A customer message of {} never reached the assistant (Kommo did not deliver it): read it in the Kommo chat.",
            local_time(*at, tz)
        ),
        Note::MessagesMissed { at, count } => format!(
            "{count} customer messages, from {} on, never reached the assistant (Kommo did not deliver them): read them in the Kommo chat.",
            local_time(*at, tz)
        ),
        Note::ReplyExpired { minutes: m, texts } => format!(
            "The AI's reply was not sent because it waited {}: {}",
            minutes(*m),
            texts.join(" / ")
        ),
        Note::Written { text } => text.clone(),
    }
}

/// The details of a scheduling outcome as words: `": amanhã 10h"` for a text,
/// `" (when: amanhã 10h, sala: 2)"` for an object's fields (its `status` left out), nothing
/// for anything else. Never raw JSON.
fn details_words(v: &Value, yes: &str, no: &str) -> String {
    let scalar = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { yes } else { no }.to_owned()),
        _ => None,
    };
    match v {
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "status")
                .filter_map(|(k, v)| scalar(v).map(|v| format!("{}: {v}", k.replace('_', " "))))
                .collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            }
        }
        other => scalar(other).map_or(String::new(), |s| format!(": {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conversa_actors::SellerRef;
    use serde_json::json;

    fn ana() -> SellerRef {
        SellerRef {
            id: "ana".into(),
            name: "Seller ana".into(),
        }
    }

    /// The texts the sellers of the original system read, word for word.
    #[test]
    fn portuguese_is_what_sellers_read() {
        let cases = [
            (
                Note::TakenOver {
                    seller: ana(),
                    by: "/assumir from ana".into(),
                },
                "Atendimento assumido por Seller ana (/assumir from ana).",
            ),
            (
                Note::BotBack {
                    lease_expired: false,
                },
                "A IA voltou a responder nesta conversa.",
            ),
            (
                Note::BotBack {
                    lease_expired: true,
                },
                "Tempo de atendimento humano esgotado: a IA voltou a responder.",
            ),
            (
                Note::LeaseEnding { minutes: 10 },
                "A conversa volta para a IA em 10 minutos se ninguém responder.",
            ),
            (
                Note::LeaseEnding { minutes: 0 },
                "A conversa volta para a IA em 1 minuto se ninguém responder.",
            ),
            (
                Note::ProactiveStarted {
                    trigger: "form_filled".into(),
                    seller: ana(),
                },
                "Conversa proativa iniciada (form_filled) para Seller ana.",
            ),
            (
                Note::SchedulingSettled {
                    confirmed: true,
                    details: json!("terça 10h"),
                },
                "Agendamento confirmado: terça 10h.",
            ),
            (
                Note::SchedulingSettled {
                    confirmed: false,
                    details: json!("terça 10h"),
                },
                "Agendamento não concluído: terça 10h.",
            ),
            (
                Note::SchedulingSettled {
                    confirmed: true,
                    details: json!({"status": "confirmed", "when": "amanhã 10h", "presencial": true, "sala_id": 2}),
                },
                "Agendamento confirmado (presencial: sim, sala id: 2, when: amanhã 10h).",
            ),
            (
                Note::SchedulingSettled {
                    confirmed: true,
                    details: json!({"status": "confirmed", "nested": {"a": 1}}),
                },
                "Agendamento confirmado.",
            ),
            (
                Note::SchedulingTimedOut,
                "Agendamento sem resposta: a IA voltou a responder.",
            ),
            (
                Note::DispatchFailed {
                    dispatch_id: "0-1-1".into(),
                    error: "n8n: 502".into(),
                },
                "Falha ao enviar para a IA (0-1-1): n8n: 502",
            ),
            (
                Note::ReplyFailed {
                    error: "kommo: 400".into(),
                    texts: vec!["b".into(), "c".into()],
                },
                "A resposta da IA pode não ter chegado ao cliente (kommo: 400): b / c",
            ),
            (
                Note::MessageExpired { minutes: 60 },
                "A mensagem do cliente não chegou à IA a tempo (ficou 60 minutos na fila): responda pelo chat.",
            ),
            (
                Note::ReplyExpired {
                    minutes: 180,
                    texts: vec!["oi".into()],
                },
                "A resposta da IA não foi enviada porque ficou 3 horas na fila: oi",
            ),
            (
                Note::Written {
                    text: "uma nota antiga".into(),
                },
                "uma nota antiga",
            ),
        ];
        for (note, text) in cases {
            assert_eq!(render(&note, Language::Pt, &TimeZone::UTC), text);
        }
    }

    #[test]
    fn english_when_asked() {
        assert_eq!(
            render(
                &Note::LeaseEnding { minutes: 1 },
                Language::En,
                &TimeZone::UTC
            ),
            "The conversation returns to the AI in 1 minute unless someone answers."
        );
        assert_eq!(
            render(
                &Note::SchedulingSettled {
                    confirmed: false,
                    details: json!({"presencial": false}),
                },
                Language::En,
                &TimeZone::UTC
            ),
            "Meeting not booked (presencial: no)."
        );
    }

    #[test]
    fn a_missed_message_note_tells_when_it_was_written_in_the_sellers_time_zone() {
        // 2026-01-01T13:32:00Z is 10:32 in São Paulo (UTC-3, no daylight saving time).
        let note = Note::MessagesMissed {
            at: 1_767_274_320_000,
            count: 1,
        };
        let sao_paulo = parse_time_zone("America/Sao_Paulo").unwrap();
        assert_eq!(
            render(&note, Language::Pt, &sao_paulo),
            "Uma mensagem do cliente de 01/01 10:32 não chegou ao assistente (o Kommo não a entregou): leia-a no chat do Kommo."
        );
        assert!(render(&note, Language::En, &TimeZone::UTC).contains("01/01 13:32"));
        assert!(
            parse_time_zone("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }

    /// An outbox written by an earlier version holds notes as text: they are still written.
    #[test]
    fn a_note_stored_as_text_by_an_earlier_version_is_read() {
        use conversa_actors::effect::Effect;
        let old: Effect =
            serde_json::from_value(json!({"effect": "add_note", "text": "Olá"})).unwrap();
        assert_eq!(
            old,
            Effect::AddNote {
                note: Note::Written {
                    text: "Olá".into()
                }
            }
        );
        let new = Effect::AddNote {
            note: Note::LeaseEnding { minutes: 5 },
        };
        let stored = serde_json::to_value(&new).unwrap();
        assert_eq!(
            stored,
            json!({"effect": "add_note", "note": {"kind": "lease_ending", "minutes": 5}})
        );
        assert_eq!(serde_json::from_value::<Effect>(stored).unwrap(), new);
    }
}
