//! FORMATS.md section 2: `vault.json`, the one plaintext object, which names the vault and
//! lets any tool tell a wrong vault key from corruption before it reads anything else.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::{Keyring, VaultKey};

pub const VAULT_FORMAT: u32 = 1;
/// The format of a vault that holds objects of an owner epoch above 0 (scale-out takeovers,
/// docs/FORMATS.md "Ownership"): a reader must apply the owners' records to use them.
pub const VAULT_FORMAT_EPOCHS: u32 = 2;
/// `vault.json` is a few hundred bytes; anything much larger is not one.
pub const VAULT_JSON_MAX_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultDescriptor {
    pub format: u32,
    pub vault_id: Uuid,
    pub created_unix_ms: u64,
    pub key_check: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("wrong vault key: it does not match this vault's key_check (vault {vault_id})")]
    WrongKey { vault_id: Uuid },
    #[error("vault.json is not valid: {0}")]
    Invalid(String),
    #[error("vault.json has format {0}; this version reads formats 1 and 2")]
    UnsupportedFormat(u32),
}

impl VaultDescriptor {
    /// A new vault for `key`, with a fresh id.
    pub fn create(key: &VaultKey, created_unix_ms: u64) -> Self {
        Self {
            format: VAULT_FORMAT,
            vault_id: Uuid::new_v4(),
            created_unix_ms,
            key_check: key.key_check(),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, VaultError> {
        if bytes.len() > VAULT_JSON_MAX_BYTES {
            return Err(VaultError::Invalid(format!("{} bytes is too large", bytes.len())));
        }
        let parsed: Self = serde_json::from_slice(bytes).map_err(|e| VaultError::Invalid(e.to_string()))?;
        if !matches!(parsed.format, VAULT_FORMAT | VAULT_FORMAT_EPOCHS) {
            return Err(VaultError::UnsupportedFormat(parsed.format));
        }
        Ok(parsed)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// Checks `key` against `key_check` (constant-time) and returns the vault's keyring.
    pub fn open(&self, key: &VaultKey) -> Result<Keyring, VaultError> {
        if !key.matches_key_check(&self.key_check) {
            return Err(VaultError::WrongKey {
                vault_id: self.vault_id,
            });
        }
        Ok(Keyring::new(key.clone(), self.vault_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_checks_the_key() {
        let key = VaultKey::from_bytes([7; 32]);
        let vault = VaultDescriptor::create(&key, 1);
        let parsed = VaultDescriptor::parse(&vault.to_json()).unwrap();
        assert_eq!(parsed, vault);
        assert!(parsed.open(&key).is_ok());
        let wrong = parsed.open(&VaultKey::from_bytes([8; 32])).unwrap_err();
        assert!(wrong.to_string().starts_with("wrong vault key"));
        assert!(matches!(VaultDescriptor::parse(b"{}"), Err(VaultError::Invalid(_))));
        let v2 = String::from_utf8(vault.to_json())
            .unwrap()
            .replace("\"format\": 1", "\"format\": 2");
        assert_eq!(VaultDescriptor::parse(v2.as_bytes()).unwrap().format, 2);
        let v3 = v2.replace("\"format\": 2", "\"format\": 3");
        assert_eq!(
            VaultDescriptor::parse(v3.as_bytes()),
            Err(VaultError::UnsupportedFormat(3))
        );
    }
}
