//! Secrets kept out of logs and public answers, and compared in constant time.
//!
//! A URL may carry credentials (`https://user:password@n8n.example/…`, `?token=…`): wherever a
//! configured URL is shown (the start-up line, `/ready`) or an HTTP client error is described
//! (they name the URL they failed on), it goes through here first.

/// Whether `given` equals `expected`, compared in constant time (only the lengths may leak).
pub fn secret_matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// `raw` with its user, password, query values and fragment replaced by `***`; a value that is
/// not a URL is not shown at all.
pub fn url(raw: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(raw.trim()) else {
        return "<not a URL>".to_owned();
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_username("***");
        let _ = parsed.set_password(None);
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some("***"));
    }
    if parsed.query().is_some() {
        let names: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        parsed
            .query_pairs_mut()
            .clear()
            .extend_pairs(names.iter().map(|k| (k.as_str(), "***")));
    }
    parsed.to_string()
}

/// An HTTP client error with its causes, never the URL it failed on (it may carry
/// credentials).
pub fn client_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn credentials_and_query_values_are_hidden() {
        assert_eq!(
            url("https://bot:hunter2@n8n.example/webhook/x?token=abc&x=1"),
            "https://***@n8n.example/webhook/x?token=***&x=***"
        );
        assert_eq!(url("http://h:1/send-response"), "http://h:1/send-response");
        assert_eq!(url("http://h:1/x#s3cret"), "http://h:1/x#***");
        assert_eq!(url("not a url with hunter2"), "<not a URL>");
    }
}
