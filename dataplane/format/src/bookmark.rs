//! BOOKMARK records: the JSON a recovery point is named by (PROTOCOL.md section 3).
//!
//! Limits: the JSON is at most [`BOOKMARK_JSON_MAX_BYTES`]; `id` is 1..=64 characters of
//! `[A-Za-z0-9._-]`; `tag` at most 256 characters; `group_id` a canonical lowercase UUID.
//! Unknown extra fields are tolerated (a newer agent may add some); duplicate fields are not.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::ids::parse_canonical_uuid;

/// Largest BOOKMARK record payload accepted, in bytes.
pub const BOOKMARK_JSON_MAX_BYTES: u32 = 4096;
/// Longest bookmark id, in characters.
pub const BOOKMARK_ID_MAX_CHARS: usize = 64;
/// Longest bookmark tag, in characters (Unicode scalar values).
pub const BOOKMARK_TAG_MAX_CHARS: usize = 256;

/// A validated bookmark id: 1..=64 characters of `[A-Za-z0-9._-]`, safe inside object names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BookmarkId(String);

impl BookmarkId {
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > BOOKMARK_ID_MAX_CHARS {
            return Err(format!(
                "bookmark id must be 1..={BOOKMARK_ID_MAX_CHARS} characters, got {}",
                text.len()
            ));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
        if !text.bytes().all(allowed) {
            return Err("bookmark id may only contain A-Z a-z 0-9 . _ -".to_string());
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BookmarkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BookmarkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BookmarkId({})", self.0)
    }
}

/// How consistent the state at a bookmark is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BookmarkKind {
    /// Crash-consistent: as if the machine lost power at this point.
    Crash,
    /// Application-consistent: the agent quiesced the applications first.
    App,
}

impl BookmarkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BookmarkKind::Crash => "crash",
            BookmarkKind::App => "app",
        }
    }
}

/// A validated bookmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bookmark {
    pub id: BookmarkId,
    pub kind: BookmarkKind,
    pub tag: Option<String>,
    pub group_id: Option<Uuid>,
}

#[derive(Deserialize)]
struct BookmarkWire {
    id: String,
    kind: String,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
}

#[derive(Serialize)]
struct BookmarkWireOut<'a> {
    id: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
}

impl Bookmark {
    /// Parses and validates a BOOKMARK record's data. The error is a human reason; the batch
    /// decoder turns it into `bad_bookmark`.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        if json.len() > BOOKMARK_JSON_MAX_BYTES as usize {
            return Err(format!(
                "bookmark JSON is {} bytes, limit {BOOKMARK_JSON_MAX_BYTES}",
                json.len()
            ));
        }
        let wire: BookmarkWire =
            serde_json::from_slice(json).map_err(|e| format!("bookmark is not the expected JSON object: {e}"))?;
        let id = BookmarkId::new(&wire.id)?;
        let kind = match wire.kind.as_str() {
            "crash" => BookmarkKind::Crash,
            "app" => BookmarkKind::App,
            other => return Err(format!("bookmark kind must be \"crash\" or \"app\", got {other:?}")),
        };
        if let Some(tag) = &wire.tag {
            let chars = tag.chars().count();
            if chars > BOOKMARK_TAG_MAX_CHARS {
                return Err(format!(
                    "bookmark tag is {chars} characters, limit {BOOKMARK_TAG_MAX_CHARS}"
                ));
            }
        }
        let group_id = match &wire.group_id {
            None => None,
            Some(text) => Some(
                parse_canonical_uuid(text)
                    .ok_or_else(|| "bookmark group_id must be a lowercase hyphenated UUID".to_string())?,
            ),
        };
        Ok(Bookmark {
            id,
            kind,
            tag: wire.tag,
            group_id,
        })
    }

    /// The record data for this bookmark. Always within [`BOOKMARK_JSON_MAX_BYTES`] because
    /// every field is length-limited by construction (64 + 256*4 + 36 bytes plus syntax).
    pub fn to_json(&self) -> Vec<u8> {
        let out = BookmarkWireOut {
            id: self.id.as_str(),
            kind: self.kind.as_str(),
            tag: self.tag.as_deref(),
            group_id: self.group_id.map(|g| g.hyphenated().to_string()),
        };
        // Serialising a struct of strings cannot fail.
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let b = Bookmark {
            id: BookmarkId::new("bm-1.a_b").unwrap(),
            kind: BookmarkKind::App,
            tag: Some("nightly ✓".into()),
            group_id: Some(Uuid::nil()),
        };
        assert_eq!(Bookmark::from_json(&b.to_json()).unwrap(), b);
        assert!(Bookmark::from_json(br#"{"id":"","kind":"app"}"#).is_err());
        assert!(Bookmark::from_json(br#"{"id":"a/b","kind":"app"}"#).is_err());
        assert!(Bookmark::from_json(br#"{"id":"a","kind":"warm"}"#).is_err());
        assert!(Bookmark::from_json(br#"{"id":"a"}"#).is_err());
        assert!(Bookmark::from_json(br#"["a"]"#).is_err());
        assert!(Bookmark::from_json(br#"{"id":"a","kind":"app","id":"b"}"#).is_err());
        assert!(Bookmark::from_json(br#"{"id":"a","kind":"app","group_id":"NOT-A-UUID"}"#).is_err());
        let long_tag = format!(r#"{{"id":"a","kind":"crash","tag":"{}"}}"#, "é".repeat(257));
        assert!(Bookmark::from_json(long_tag.as_bytes()).is_err());
        let ok_tag = format!(r#"{{"id":"a","kind":"crash","tag":"{}","extra":1}}"#, "é".repeat(256));
        assert!(Bookmark::from_json(ok_tag.as_bytes()).is_ok());
        assert!(Bookmark::from_json(&vec![b' '; 4097]).is_err());
        assert!(BookmarkId::new(&"a".repeat(64)).is_ok());
        assert!(BookmarkId::new(&"a".repeat(65)).is_err());
    }
}
