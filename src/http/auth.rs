//! Secret checks shared by the protected endpoints: constant-time comparison, so response
//! timing tells an attacker nothing about how much of a guess was right.

use subtle::ConstantTimeEq;

/// Whether `given` equals `expected`, compared in constant time (only the lengths may leak).
pub fn secret_matches(expected: &str, given: &str) -> bool {
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_secrets() {
        assert!(secret_matches("s3cret", "s3cret"));
        assert!(!secret_matches("s3cret", "s3cre"));
        assert!(!secret_matches("s3cret", "s3cret!"));
        assert!(!secret_matches("s3cret", ""));
    }
}
