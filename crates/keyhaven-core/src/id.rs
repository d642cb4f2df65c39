use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest key id or label accepted.
const MAX_LEN: usize = 128;

/// A key identifier: stable, unique within its backend and never reused after a delete.
///
/// Ids are 1 to 128 characters from `[A-Za-z0-9._-]`, not starting with `.`, so they are safe as
/// file names and on command lines. Keys keyhaven generates get 128 random bits, hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// A fresh random id (128 bits from the operating system's CSPRNG, 32 hex digits).
    ///
    /// # Errors
    /// [`Error::Crypto`] if the operating system's random source fails.
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|_| Error::Crypto)?;
        Ok(KeyId(hex::encode(bytes)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > MAX_LEN || s.starts_with('.') || !s.chars().all(ok_char) {
            return Err(Error::InvalidInput(format!(
                "'{}' is not a key id (1-{MAX_LEN} characters of A-Z a-z 0-9 . _ -, not starting with '.')",
                s.escape_debug()
            )));
        }
        Ok(KeyId(s.to_owned()))
    }
}

impl TryFrom<String> for KeyId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

/// Checks a key label: 1 to 128 characters in Unicode normalization form C, no control
/// characters, no invisible formatting characters (bidirectional overrides and isolates,
/// zero-width spaces and joiners, byte order marks: they make two labels look alike or text
/// read in another order), no leading or trailing spaces. [`normalize_label`] brings a label
/// typed in another form to NFC first.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong with the label.
pub fn validate_label(label: &str) -> Result<(), Error> {
    use unicode_normalization::{IsNormalized, is_nfc_quick};
    if label.is_empty() {
        return Err(Error::InvalidInput("a key label may not be empty".into()));
    }
    if label.chars().count() > MAX_LEN {
        return Err(Error::InvalidInput(format!(
            "a key label may be at most {MAX_LEN} characters"
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(Error::InvalidInput(
            "a key label may not contain control characters".into(),
        ));
    }
    if let Some(c) = label.chars().find(|c| is_invisible_format(*c)) {
        return Err(Error::InvalidInput(format!(
            "a key label may not contain the invisible character U+{:04X} (bidirectional \
             controls and zero-width characters make labels look like others)",
            u32::from(c)
        )));
    }
    if label.trim() != label {
        return Err(Error::InvalidInput(
            "a key label may not start or end with white space".into(),
        ));
    }
    let nfc = match is_nfc_quick(label.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => {
            unicode_normalization::UnicodeNormalization::nfc(label).eq(label.chars())
        }
    };
    if !nfc {
        return Err(Error::InvalidInput(
            "a key label must be in Unicode normalization form C (composed characters); \
             keyhaven's commands normalize what you type"
                .into(),
        ));
    }
    Ok(())
}

/// `label` in Unicode normalization form C, checked by [`validate_label`]: what keyhaven
/// stores and looks labels up by, so `é` typed as one character or as `e` plus a combining
/// accent names the same key.
///
/// # Errors
/// As [`validate_label`].
pub fn normalize_label(label: &str) -> Result<String, Error> {
    use unicode_normalization::UnicodeNormalization;
    let nfc: String = label.nfc().collect();
    validate_label(&nfc)?;
    Ok(nfc)
}

/// Characters that change how text reads or hide in it: the bidirectional embeddings,
/// overrides, isolates and marks, zero-width spaces, (non-)joiners, word joiner, invisible
/// operators, soft hyphen, and the byte order mark.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = KeyId::generate().unwrap();
        let b = KeyId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(a.as_str().parse::<KeyId>().unwrap(), a);
    }

    #[test]
    fn labels_are_nfc_and_visible() {
        // composed and decomposed é name the same label; only the composed form is stored
        let composed = "caf\u{e9}";
        let decomposed = "cafe\u{301}";
        assert!(validate_label(composed).is_ok());
        assert!(validate_label(decomposed).is_err());
        assert_eq!(normalize_label(decomposed).unwrap(), composed);
        for bad in [
            "release\u{202E}gpj.exe",
            "rel\u{200B}ease",
            "\u{FEFF}release",
            "a\u{2066}b\u{2069}",
            "x\u{200D}y",
        ] {
            let e = normalize_label(bad).unwrap_err();
            assert!(e.to_string().contains("invisible"), "{bad:?}: {e}");
        }
        assert!(validate_label("日本語のラベル").is_ok());
    }

    #[test]
    fn rejects_path_like_ids() {
        for bad in ["", "../x", "a/b", ".hidden", "a b", "é", &"x".repeat(129)] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn labels() {
        assert!(validate_label("release signing 2026").is_ok());
        assert!(validate_label("").is_err());
        assert!(validate_label(" x").is_err());
        assert!(validate_label("a\nb").is_err());
    }

    proptest! {
        #[test]
        fn id_parse_accepts_only_safe_names(s in "\\PC{0,140}") {
            if let Ok(id) = s.parse::<KeyId>() {
                prop_assert!(!id.as_str().contains('/'));
                prop_assert!(!id.as_str().starts_with('.'));
                let json = serde_json::to_string(&id).unwrap();
                prop_assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
            }
        }
    }
}
