//! Where each file of an appliance directory lives.

use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "ferry.toml";
pub const VAULT_KEY_FILE: &str = "vault.key";
pub const PASSPHRASE_FILE: &str = "passphrase";
pub const CA_CERT_FILE: &str = "pki/ca.pem";
pub const CA_KEY_FILE: &str = "pki/ca.key";
pub const SERVER_CERT_FILE: &str = "pki/server.pem";
pub const SERVER_KEY_FILE: &str = "pki/server.key";
pub const CACHE_DIR: &str = "cache";
pub const LOCAL_TARGET_DIR: &str = "target";

/// Paths of one appliance directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplianceLayout {
    root: PathBuf,
}

impl ApplianceLayout {
    /// `root` is the appliance directory; its `ferry.toml` is taken to mean the directory
    /// (users type `--config /var/lib/ferry/ferry.toml` as often as the directory).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = match root.parent() {
            Some(dir) if root.file_name().is_some_and(|f| f == CONFIG_FILE) && root.is_file() => dir.to_path_buf(),
            _ => root,
        };
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn vault_key_file(&self) -> PathBuf {
        self.root.join(VAULT_KEY_FILE)
    }

    /// Where consolidation's scratch files go (unnamed files, gone when ferryd stops).
    pub fn retention_scratch_dir(&self) -> PathBuf {
        self.root.join("retention-scratch")
    }

    pub fn passphrase_file(&self) -> PathBuf {
        self.root.join(PASSPHRASE_FILE)
    }

    pub fn ca_cert_file(&self) -> PathBuf {
        self.root.join(CA_CERT_FILE)
    }

    pub fn ca_key_file(&self) -> PathBuf {
        self.root.join(CA_KEY_FILE)
    }

    pub fn server_cert_file(&self) -> PathBuf {
        self.root.join(SERVER_CERT_FILE)
    }

    pub fn server_key_file(&self) -> PathBuf {
        self.root.join(SERVER_KEY_FILE)
    }

    /// A path from the configuration: relative paths are relative to the appliance directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.root.join(path)
        }
    }
}
