//! The site kept by its configuration server, in its appliance directory: one-time join tokens
//! (`state/join-tokens/`, made by `ferryctl ps token`, spent by a process server's
//! `ferryctl init --join`) and the process servers that joined (`state/process-servers/`,
//! shown by `ferryctl ps list`).
//!
//! A token is 32 random bytes in hex; only its SHA-256 is stored, so the directory does not
//! hold usable tokens. Spending one renames its file (atomic: of two joins racing with the same
//! token, one wins) before anything is answered, so a token works once even across crashes.
//! Tokens expire (default one hour); a configuration server keeps at most [`TOKENS_MAX`].

use ferry_durable::checked;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const TOKEN_MAGIC: [u8; 8] = *b"FRJOINT1";
const SERVER_MAGIC: [u8; 8] = *b"FRPSRVR1";
/// Unspent tokens kept at most (a bound on what `ps token` may pile up).
pub const TOKENS_MAX: usize = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenRecord {
    created_unix_ms: u64,
    expires_unix_ms: u64,
}

/// A process server of the site, as recorded when it joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessServer {
    pub name: String,
    pub data_endpoint: String,
    pub server_names: Vec<String>,
    pub joined_unix_ms: u64,
    pub joined_from: String,
    /// `ferryctl ps drain`: its machines were moved off and no new machine is placed there.
    #[serde(default)]
    pub drained: bool,
}

fn tokens_dir(root: &Path) -> PathBuf {
    root.join("state/join-tokens")
}

fn servers_dir(root: &Path) -> PathBuf {
    root.join("state/process-servers")
}

fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.trim().as_bytes());
    hex::encode(digest.as_ref())
}

/// Makes a token valid for `valid_for_ms` from `now_unix_ms` in the appliance at `root`.
pub fn new_token(root: &Path, now_unix_ms: u64, valid_for_ms: u64) -> Result<String, String> {
    let dir = tokens_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let unspent = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
        .count();
    if unspent >= TOKENS_MAX {
        return Err(format!(
            "{unspent} join tokens are unspent in {}: remove the old ones first",
            dir.display()
        ));
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the random generator failed".to_string())?;
    let token = hex::encode(bytes);
    let record = TokenRecord {
        created_unix_ms: now_unix_ms,
        expires_unix_ms: now_unix_ms.saturating_add(valid_for_ms),
    };
    checked::write(
        &dir.join(format!("{}.token", token_hash(&token))),
        TOKEN_MAGIC,
        1,
        &record,
    )
    .map_err(|e| format!("cannot record the token: {e}"))?;
    Ok(token)
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefused {
    /// Unknown or already spent (the two are not told apart).
    Unknown,
    Expired,
    Io(String),
}

/// Spends `token`: Ok once, for a known unexpired token.
pub fn spend_token(root: &Path, token: &str, now_unix_ms: u64) -> Result<(), TokenRefused> {
    let dir = tokens_dir(root);
    let hash = token_hash(token);
    let path = dir.join(format!("{hash}.token"));
    let spent = dir.join(format!("{hash}.spent"));
    match std::fs::rename(&path, &spent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TokenRefused::Unknown),
        Err(e) => return Err(TokenRefused::Io(e.to_string())),
    }
    ferry_durable::fsync_dir(&dir).map_err(|e| TokenRefused::Io(e.to_string()))?;
    let record: TokenRecord = checked::read(&spent, TOKEN_MAGIC, 1).map_err(|e| TokenRefused::Io(e.to_string()))?;
    if record.expires_unix_ms < now_unix_ms {
        return Err(TokenRefused::Expired);
    }
    Ok(())
}

/// Records a process server that joined (replacing one of the same name).
pub fn record_server(root: &Path, server: &ProcessServer) -> Result<(), String> {
    let dir = servers_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    checked::write(
        &dir.join(format!("{}.server", hex::encode(server.name.as_bytes()))),
        SERVER_MAGIC,
        1,
        server,
    )
    .map_err(|e| format!("cannot record the process server: {e}"))
}

/// The process servers that joined, by name.
pub fn servers(root: &Path) -> Result<Vec<ProcessServer>, String> {
    let dir = servers_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut servers = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".server") {
            servers.push(
                checked::read::<ProcessServer>(&entry.path(), SERVER_MAGIC, 1)
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?,
            );
        }
    }
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once_and_not_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let token = new_token(dir.path(), 1_000, 60_000).unwrap();
        assert_eq!(
            spend_token(dir.path(), "not-a-token", 2_000),
            Err(TokenRefused::Unknown)
        );
        assert_eq!(spend_token(dir.path(), &token, 2_000), Ok(()));
        assert_eq!(
            spend_token(dir.path(), &token, 2_000),
            Err(TokenRefused::Unknown),
            "spent"
        );
        let late = new_token(dir.path(), 1_000, 60_000).unwrap();
        assert_eq!(spend_token(dir.path(), &late, 70_000), Err(TokenRefused::Expired));
        assert_eq!(
            spend_token(dir.path(), &late, 2_000),
            Err(TokenRefused::Unknown),
            "an expired token is spent too"
        );
        let stored = std::fs::read_dir(dir.path().join("state/join-tokens")).unwrap().count();
        assert_eq!(stored, 2);
        assert!(
            !std::fs::read_dir(dir.path().join("state/join-tokens"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(&token)),
            "the token itself is never stored"
        );
    }

    #[test]
    fn process_servers_are_recorded_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(servers(dir.path()).unwrap().is_empty());
        let server = ProcessServer {
            name: "ps-2".into(),
            data_endpoint: "ps2:9443".into(),
            server_names: vec!["ps2".into()],
            joined_unix_ms: 5,
            joined_from: "10.0.0.2".into(),
            drained: false,
        };
        record_server(dir.path(), &server).unwrap();
        assert_eq!(servers(dir.path()).unwrap(), vec![server]);
    }
}
