//! The one rule for a Kommo id (contact, lead, talk, account) wherever conversa reads one: in a
//! webhook, a path, a query, a JSON string or a seller's command.

/// The largest Kommo id accepted: 15 digits (Kommo's ids have far fewer), so every id is
/// exact in n8n's JavaScript and the OpenAPI document can say precisely what is accepted.
pub const MAX_ID: u64 = 999_999_999_999_999;

/// A Kommo id from text (a path segment, a query value, a string field): digits, optionally
/// between spaces, tabs or line breaks, from 1 to [`MAX_ID`]. The one rule for every id the
/// API takes.
pub fn parse_id(raw: &str) -> Option<u64> {
    let digits = raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()
        .filter(|id| (1..=MAX_ID).contains(id))
}

/// [`parse_id`]'s rule as a pattern, for the OpenAPI document (route attributes, which take
/// only literals, spell it out as `r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$"`).
pub const ID_PATTERN: &str = r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$";

/// [`ID_PATTERN`], or blank (an id that may be left out, as `account[id]`).
pub const ID_OR_BLANK_PATTERN: &str = r"^[ \t\n\r]*(0*[1-9][0-9]{0,14})?[ \t\n\r]*$";
