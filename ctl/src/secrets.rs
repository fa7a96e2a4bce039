//! The appliance's two secrets, shown or changed on purpose: the registration passphrase
//! (`ferryctl passphrase [--rotate]`) and the vault key (`ferryctl vault export-key`). Both
//! print only to stdout, only when asked, with a warning on stderr; nothing else in ferryctl
//! or ferryd prints them.
//!
//! ferryd reads the passphrase file at every registration, so a rotation takes effect at once
//! without a restart; machines already registered keep their certificates.

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_config::layout::ApplianceLayout;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PassphraseArgs {
    /// The appliance directory.
    #[arg(long, default_value = "/var/lib/ferry")]
    pub config: PathBuf,
    /// Replace it with a new random passphrase (the old one stops working at once).
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Args, Debug)]
pub struct ExportKeyArgs {
    /// The appliance directory.
    #[arg(long, default_value = "/var/lib/ferry")]
    pub config: PathBuf,
}

fn read_trimmed(path: &std::path::Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(text)
}

pub fn passphrase(args: PassphraseArgs, json: bool) -> Result<()> {
    let layout = ApplianceLayout::new(&args.config);
    let file = layout.passphrase_file();
    // Reading it first also checks this is an appliance directory.
    let current = read_trimmed(&file, "passphrase")?;
    let shown = if args.rotate {
        let fresh = crate::init::generate_passphrase()?;
        ferry_durable::replace(&file, format!("{fresh}\n").as_bytes())
            .with_context(|| format!("cannot replace {}", file.display()))?;
        eprintln!("the registration passphrase was rotated: the old one no longer registers machines");
        fresh
    } else {
        current
    };
    if json {
        outln!("{}", serde_json::json!({ "passphrase": shown, "rotated": args.rotate }));
    } else {
        outln!("{shown}");
    }
    Ok(())
}

pub fn export_key(args: ExportKeyArgs, json: bool) -> Result<()> {
    let layout = ApplianceLayout::new(&args.config);
    let text = read_trimmed(&layout.vault_key_file(), "vault key")?;
    // Check it parses before anyone relies on the copy.
    ferry_format::VaultKey::parse_text(&text).context("the vault key file does not hold a vault key")?;
    eprintln!(
        "WARNING: this is the vault key. With it and the storage, anyone can read every disk in the \
         vault. Keep it offline (a password manager, a safe); it is the only way to restore without \
         this appliance."
    );
    if json {
        outln!("{}", serde_json::json!({ "vault_key": text }));
    } else {
        outln!("{text}");
    }
    Ok(())
}
