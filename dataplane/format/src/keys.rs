//! FORMATS.md section 2: the vault key, its text form, `key_check`, and object keys.
//!
//! - Vault key: 32 random bytes; text form `ferry-vault-key-v1:` + 64 lowercase hex digits.
//! - `key_check` = HMAC-SHA256(vault key, "ferry/v1/key-check"), lowercase hex.
//! - Object key = HKDF-SHA256(IKM = vault key, salt = the 16 bytes of `vault_id`,
//!   info = "ferry/v1/disk/{disk_id}" or "ferry/v1/vault", L = 32).
//!
//! Key material never appears in `Debug` output. Comparison of `key_check` is constant-time.

use aws_lc_rs::{aead, hkdf, hmac, rand};
use std::fmt;
use uuid::Uuid;

use crate::names::ObjectName;

pub const VAULT_KEY_LEN: usize = 32;
pub const VAULT_KEY_TEXT_PREFIX: &str = "ferry-vault-key-v1:";
const KEY_CHECK_MESSAGE: &[u8] = b"ferry/v1/key-check";
const VAULT_INFO: &str = "ferry/v1/vault";
const DISK_INFO_PREFIX: &str = "ferry/v1/disk/";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a vault key's text form is \"{VAULT_KEY_TEXT_PREFIX}\" followed by 64 lowercase hex digits; this is not one"
    )]
    BadText,
    #[error("the system random generator failed")]
    Random,
}

/// The vault key. Dropping it overwrites the bytes (best effort; a copy may remain elsewhere).
#[derive(Clone)]
pub struct VaultKey([u8; VAULT_KEY_LEN]);

impl VaultKey {
    /// A fresh key from the operating system's random generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; VAULT_KEY_LEN];
        rand::fill(&mut bytes).map_err(|_| KeyError::Random)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; VAULT_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the text form; surrounding white space (a trailing newline in a key file) is
    /// ignored. Uppercase hex is refused so that a key has one spelling.
    pub fn parse_text(text: &str) -> Result<Self, KeyError> {
        let hex_digits = text
            .trim()
            .strip_prefix(VAULT_KEY_TEXT_PREFIX)
            .ok_or(KeyError::BadText)?;
        let lowercase = hex_digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex_digits.len() != VAULT_KEY_LEN * 2 || !lowercase {
            return Err(KeyError::BadText);
        }
        let mut bytes = [0u8; VAULT_KEY_LEN];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| KeyError::BadText)?;
        Ok(Self(bytes))
    }

    /// The text form, for the key file and `ferryctl vault export-key`.
    pub fn to_text(&self) -> String {
        format!("{VAULT_KEY_TEXT_PREFIX}{}", hex::encode(self.0))
    }

    /// `key_check` as written in `vault.json`.
    pub fn key_check(&self) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hex::encode(hmac::sign(&key, KEY_CHECK_MESSAGE).as_ref())
    }

    /// Whether `key_check_hex` (from `vault.json`) was made with this key; constant-time.
    pub fn matches_key_check(&self, key_check_hex: &str) -> bool {
        let Ok(tag) = hex::decode(key_check_hex) else {
            return false;
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hmac::verify(&key, KEY_CHECK_MESSAGE, &tag).is_ok()
    }

    /// HKDF-SHA256 expansion with the given `info`.
    pub fn derive(&self, vault_id: Uuid, info: &str) -> ObjectKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, vault_id.as_bytes());
        let prk = salt.extract(&self.0);
        let mut okm_bytes = [0u8; VAULT_KEY_LEN];
        // expand/fill fail only when L exceeds 255 * 32 bytes; L is 32.
        let info_parts = [info.as_bytes()];
        if let Ok(okm) = prk.expand(&info_parts, Okm32) {
            let _ = okm.fill(&mut okm_bytes);
        }
        ObjectKey::from_bytes(okm_bytes)
    }
}

impl Drop for VaultKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(<redacted>)")
    }
}

struct Okm32;
impl hkdf::KeyType for Okm32 {
    fn len(&self) -> usize {
        VAULT_KEY_LEN
    }
}

/// An AES-256-GCM key for sealing objects, derived from the vault key.
pub struct ObjectKey {
    bytes: [u8; VAULT_KEY_LEN],
    aead: aead::LessSafeKey,
}

impl ObjectKey {
    pub fn from_bytes(bytes: [u8; VAULT_KEY_LEN]) -> Self {
        // AES_256_GCM takes exactly 32 bytes, which the array type guarantees.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &bytes).expect("AES-256 key is 32 bytes");
        Self {
            bytes,
            aead: aead::LessSafeKey::new(unbound),
        }
    }

    pub(crate) fn aead(&self) -> &aead::LessSafeKey {
        &self.aead
    }

    /// The raw key, for the test vectors and the independent `aes-gcm` check only.
    pub fn expose_bytes(&self) -> &[u8; VAULT_KEY_LEN] {
        &self.bytes
    }
}

impl Drop for ObjectKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObjectKey(<redacted>)")
    }
}

/// The vault key and vault id together: hands out the object key for any object name.
#[derive(Clone, Debug)]
pub struct Keyring {
    vault_key: VaultKey,
    vault_id: Uuid,
}

impl Keyring {
    pub fn new(vault_key: VaultKey, vault_id: Uuid) -> Self {
        Self { vault_key, vault_id }
    }

    pub fn vault_id(&self) -> Uuid {
        self.vault_id
    }

    pub fn vault_key(&self) -> &VaultKey {
        &self.vault_key
    }

    pub fn disk_key(&self, disk_id: Uuid) -> ObjectKey {
        self.vault_key
            .derive(self.vault_id, &format!("{DISK_INFO_PREFIX}{}", disk_id.hyphenated()))
    }

    pub fn vault_object_key(&self) -> ObjectKey {
        self.vault_key.derive(self.vault_id, VAULT_INFO)
    }

    /// The key that seals `name`: the disk's key under `disks/{disk_id}/`, the vault key
    /// otherwise. `vault.json` is plaintext, but gets the vault key for uniformity.
    pub fn key_for(&self, name: &ObjectName) -> ObjectKey {
        match name.disk_id() {
            Some(disk_id) => self.disk_key(disk_id),
            None => self.vault_object_key(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects() {
        let key = VaultKey::from_bytes([0xab; 32]);
        let text = key.to_text();
        assert_eq!(text, format!("ferry-vault-key-v1:{}", "ab".repeat(32)));
        assert_eq!(VaultKey::parse_text(&format!("  {text}\n")).unwrap().0, key.0);
        assert_eq!(
            VaultKey::parse_text(&text.to_uppercase()).err(),
            Some(KeyError::BadText)
        );
        assert_eq!(
            VaultKey::parse_text(&text[..text.len() - 1]).err(),
            Some(KeyError::BadText)
        );
        assert_eq!(
            VaultKey::parse_text(&format!("{text}00")).err(),
            Some(KeyError::BadText)
        );
        assert_eq!(VaultKey::parse_text(&"ab".repeat(32)).err(), Some(KeyError::BadText));
        assert_eq!(
            VaultKey::parse_text(&text.replace("ab", "zz")).err(),
            Some(KeyError::BadText)
        );
        assert!(!format!("{key:?}").contains("ab"));
    }

    #[test]
    fn key_check_matches_only_its_key() {
        let key = VaultKey::from_bytes([1; 32]);
        let other = VaultKey::from_bytes([2; 32]);
        assert!(key.matches_key_check(&key.key_check()));
        assert!(!other.matches_key_check(&key.key_check()));
        assert!(!key.matches_key_check("not hex"));
        assert!(!key.matches_key_check(""));
    }

    #[test]
    fn hkdf_matches_rustcrypto_and_rfc5869() {
        // Independent check of the derivation with the RustCrypto implementation.
        let key = VaultKey::from_bytes(*b"0123456789abcdef0123456789abcdef");
        let vault_id = Uuid::from_bytes(*b"fedcba9876543210");
        let info = "ferry/v1/disk/00000000-0000-0000-0000-000000000001";
        let ours = key.derive(vault_id, info);
        let hk = ::hkdf::Hkdf::<::sha2::Sha256>::new(Some(vault_id.as_bytes()), &key.0);
        let mut theirs = [0u8; 32];
        hk.expand(info.as_bytes(), &mut theirs).unwrap();
        assert_eq!(ours.expose_bytes(), &theirs);

        // RFC 5869 A.1 (first 32 bytes of its 42-byte OKM) through the same expansion path.
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
        let parts = [info.as_slice()];
        let mut okm = [0u8; 32];
        prk.expand(&parts, Okm32).unwrap().fill(&mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }
}
