//! Text comparison the way people mean it: "Previdenciário" and "previdenciario" are the same
//! area, "João" and "joao" the same seller.

use unicode_normalization::UnicodeNormalization;

/// Lowercase, without accents (canonical decomposition, combining marks dropped), trimmed,
/// inner whitespace collapsed.
pub fn fold(s: &str) -> String {
    let stripped: String = s
        .nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    stripped.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn ignores_case_accents_and_spacing() {
        assert_eq!(fold("Previdenciário"), "previdenciario");
        assert_eq!(fold("  Direito   do TRABALHO "), "direito do trabalho");
        assert_eq!(fold("Ação Cível"), fold("acao civel"));
        assert_ne!(fold("civel"), fold("penal"));
    }
}
