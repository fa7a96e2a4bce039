//! Identifier text forms shared by the protocol and the storage names.
//!
//! PROTOCOL.md and FORMATS.md write ids (`disk_id`, `machine_id`, `vault_id`, `group_id`) as
//! lowercase hyphenated UUIDs. Parsing is strict so that one id has exactly one spelling in a
//! URL path and in an object name: anything else is refused rather than normalised.

use uuid::Uuid;

/// Parses the canonical lowercase hyphenated form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
/// Uppercase, braces, URNs and the simple (unhyphenated) form are refused.
pub fn parse_canonical_uuid(text: &str) -> Option<Uuid> {
    const CANONICAL_LEN: usize = 36;
    if text.len() != CANONICAL_LEN {
        return None;
    }
    let lowercase_hex_or_hyphen = text
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lowercase_hex_or_hyphen {
        return None;
    }
    let uuid = Uuid::try_parse(text).ok()?;
    // try_parse accepts only the hyphenated form at this length; check the round trip anyway.
    (uuid.hyphenated().to_string() == text).then_some(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_lowercase_hyphenated() {
        let text = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            parse_canonical_uuid(text).map(|u| u.to_string()),
            Some(text.to_string())
        );
        assert!(parse_canonical_uuid(&text.to_uppercase()).is_none());
        assert!(parse_canonical_uuid("0f8fad5bd9cb469fa16570867728950e").is_none());
        assert!(parse_canonical_uuid("{0f8fad5b-d9cb-469f-a165-70867728950e}").is_none());
        assert!(parse_canonical_uuid("0f8fad5b-d9cb-469f-a165-70867728950").is_none());
        assert!(parse_canonical_uuid("0f8fad5b-d9cb-469f-a165_70867728950e").is_none());
        assert!(parse_canonical_uuid("").is_none());
    }
}
