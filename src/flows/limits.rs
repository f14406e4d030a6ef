//! The size limits on what a request hands to a conversation: kept in its snapshot and sent
//! to n8n, so nothing a client sends grows them without bound.

use crate::flows::FlowError;

/// The most bytes of free-form JSON (`lead_data`, a scheduling request's details, a
/// scheduling outcome) one request may hand to a conversation.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// Refuses a free-form JSON value larger than `max` bytes, naming its field.
pub fn bounded_json(field: &str, value: &serde_json::Value, max: usize) -> Result<(), FlowError> {
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > max {
        return Err(FlowError::invalid(
            field,
            format!("`{field}` is {size} bytes of JSON: at most {max}"),
        ));
    }
    Ok(())
}

/// Refuses a text longer than `max` characters, naming its field.
pub fn bounded_text(field: &str, text: &str, max: usize) -> Result<(), FlowError> {
    let chars = text.chars().count();
    if chars > max {
        return Err(FlowError::invalid(
            field,
            format!("`{field}` is {chars} characters: at most {max}"),
        ));
    }
    Ok(())
}
