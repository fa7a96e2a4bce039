//! `ferryctl init DIR`: creates an appliance directory and creates or joins the vault.
//!
//! Order matters, so that a refusal changes nothing: the target is checked first (reachable,
//! and either empty of vaults or holding this key's vault), the directory is assembled in a
//! staging directory beside DIR, `vault.json` is written to the target only for a new vault,
//! and the staging directory is renamed to DIR last. An existing empty DIR (the package's
//! /var/lib/ferry, whose parent its `ferry` user cannot write) is staged inside itself and
//! its entries moved up, ferry.toml last, so nothing takes it for an appliance before then.

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_config::layout::{self, ApplianceLayout};
use ferry_config::{pki, ApplianceConfig};
use ferry_format::names::VAULT_JSON;
use ferry_format::{VaultDescriptor, VaultError, VaultKey};
use ferry_storage::{open_target, RetryPolicy, StorageError, TargetConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::target_args::TargetArgs;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The appliance directory to create (must not exist, or be empty).
    pub dir: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Join the vault of this existing key file instead of creating a new key.
    #[arg(long, value_name = "FILE")]
    pub vault_key_file: Option<PathBuf>,
    /// DNS names or IP addresses agents use to reach this appliance (repeatable; default: this host's name, localhost, 127.0.0.1).
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Data endpoint address (default 0.0.0.0:9443).
    #[arg(long, value_name = "ADDR")]
    pub data_listen: Option<String>,
    /// Management endpoint address (default 0.0.0.0:443).
    #[arg(long, value_name = "ADDR")]
    pub management_listen: Option<String>,
    /// Prometheus /metrics address (default 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Make a scale-out process server of the site whose configuration server's management
    /// endpoint is HOST:PORT (it gives the CA-signed certificate, the vault key and the target).
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "join_token_file",
        conflicts_with = "vault_key_file"
    )]
    pub join: Option<String>,
    /// The one-time token `ferryctl ps token` made on the configuration server.
    #[arg(long, value_name = "FILE", requires = "join")]
    pub join_token_file: Option<PathBuf>,
    /// The configuration server's certificate SHA-256 (its `ferryctl init` printed it);
    /// without it the first certificate is trusted and its fingerprint printed.
    #[arg(long, value_name = "SHA256", requires = "join")]
    pub fingerprint: Option<String>,
    /// This process server's name in the site (default: its first server name).
    #[arg(long, value_name = "NAME", requires = "join")]
    pub name: Option<String>,
}

#[derive(Serialize)]
struct InitReport {
    appliance_dir: PathBuf,
    /// A process server: the configuration server it joined (None: it is one).
    config_server: Option<String>,
    config_file: PathBuf,
    vault_id: String,
    joined_existing_vault: bool,
    target: String,
    vault_key_file: PathBuf,
    passphrase_file: PathBuf,
    ca_cert_file: PathBuf,
    server_cert_sha256: String,
    /// The commands that come next: start ferryd, register an agent.
    next_steps: Vec<String>,
}

/// What to run after `init`: ferryd on this directory, then `ferry-agent register` on each
/// protected machine against the management endpoint, pinned to this certificate.
/// Where the ferry-server package installs ferryd's unit, which runs the appliance at
/// [`PACKAGED_APPLIANCE_DIR`].
const PACKAGED_UNIT: &str = "/lib/systemd/system/ferryd.service";
const PACKAGED_APPLIANCE_DIR: &str = "/var/lib/ferry";

fn next_steps(dir: &Path, server_name: &str, management_listen: &str, fingerprint: &str) -> Vec<String> {
    let port = management_listen.rsplit_once(':').map_or("443", |(_, p)| p);
    let packaged = dir == Path::new(PACKAGED_APPLIANCE_DIR) && Path::new(PACKAGED_UNIT).exists();
    vec![
        if packaged {
            "systemctl enable --now ferryd".to_string()
        } else {
            format!("ferryd --config {}", dir.display())
        },
        format!(
            "ferry-agent register --server {server_name}:{port} --passphrase-file PASSPHRASE_FILE --fingerprint {fingerprint}"
        ),
    ]
}

/// The appliance's files are written once, owner-only ([`ferry_durable::create_new`]); the
/// error names the file.
fn write_new(path: &Path, contents: &[u8]) -> Result<()> {
    ferry_durable::create_new(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn new_dir(path: &Path) -> Result<()> {
    ferry_durable::new_private_dir(path).with_context(|| format!("cannot create directory {}", path.display()))
}

fn fsync_dir(path: &Path) -> Result<()> {
    ferry_durable::fsync_dir(path).with_context(|| format!("cannot fsync directory {}", path.display()))
}

/// Moves every entry of `staging` into `dir` (its parent), the config file last, then removes
/// `staging`: an appliance directory is one only once its ferry.toml is there.
fn move_entries_up(staging: &Path, dir: &Path) -> Result<()> {
    let config_name = ApplianceLayout::new(staging)
        .config_file()
        .file_name()
        .map(|n| n.to_os_string())
        .context("the layout names no config file")?;
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(staging)
        .with_context(|| format!("listing {}", staging.display()))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    // false sorts first: everything else, then the config file.
    names.sort_by_key(|name| *name == config_name);
    for name in names {
        std::fs::rename(staging.join(&name), dir.join(&name))
            .with_context(|| format!("cannot move {} into {}", name.to_string_lossy(), dir.display()))?;
    }
    std::fs::remove_dir(staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    fsync_dir(dir)
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// 24 characters from an alphabet without look-alikes (~119 bits), in groups of four.
pub(crate) fn generate_passphrase() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut out = String::new();
    let mut pool = [0u8; 64];
    while out.len() < 24 + 5 {
        aws_lc_rs::rand::fill(&mut pool).map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        // Reject bytes >= 248 (8 * 31) so every character is equally likely.
        for byte in pool.iter().filter(|b| **b < 248) {
            if out.len() == 24 + 5 {
                break;
            }
            if out.len() % 5 == 4 {
                out.push('-');
            }
            out.push(ALPHABET[usize::from(*byte) % ALPHABET.len()] as char);
        }
    }
    Ok(out)
}

fn refuse_existing(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; refusing to overwrite (an appliance lives there?)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
}

fn load_or_generate_key(file: Option<&Path>) -> Result<VaultKey> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the vault key file {}", path.display()))?;
            VaultKey::parse_text(&text).with_context(|| format!("{} does not hold a vault key", path.display()))
        }
        None => Ok(VaultKey::generate()?),
    }
}

/// What the target says about vaults: none yet, or one this key opens. Another key's vault
/// is an error.
async fn existing_vault(storage: &dyn ferry_storage::ObjectStorage, key: &VaultKey) -> Result<Option<VaultDescriptor>> {
    match storage.get(VAULT_JSON).await {
        Ok(bytes) => {
            let vault = VaultDescriptor::parse(&bytes)
                .with_context(|| format!("{VAULT_JSON} on the target is not readable"))?;
            match vault.open(key) {
                Ok(_) => Ok(Some(vault)),
                Err(VaultError::WrongKey { vault_id }) => bail!(
                    "wrong vault key: the target already holds vault {vault_id}, sealed with another key. \
                     To add this appliance to that vault, pass --vault-key-file with its key. Nothing was written."
                ),
                Err(other) => Err(other.into()),
            }
        }
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).context("cannot read the target"),
    }
}

/// The join's answer and this process server's private key.
struct Joined {
    answer: ferry_client::api::JoinResponse,
    key_pem: String,
}

/// Joins the site (see [`InitArgs::join`]); the token is spent by the configuration server
/// whatever happens next.
async fn join_site(args: &InitArgs, config_server: &str, server_names: &[String], advertised: &str) -> Result<Joined> {
    let token_file = args
        .join_token_file
        .as_deref()
        .context("--join needs --join-token-file")?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the join token file {}", token_file.display()))?;
    let name = args.name.clone().unwrap_or_else(|| server_names[0].clone());
    let joined = ferry_client::register::join(
        config_server,
        args.fingerprint.as_deref(),
        &token,
        &name,
        server_names,
        advertised,
    )
    .await
    .with_context(|| format!("cannot join the site of the configuration server at {config_server}"))?;
    if args.fingerprint.is_none() {
        eprintln!(
            "warning: no --fingerprint was given, so the first certificate {config_server} presented was trusted:\n  SHA-256 {}\n  \
             Compare it with the one `ferryctl init` printed on the configuration server.",
            joined.server_fingerprint
        );
    }
    Ok(Joined {
        answer: joined.answer,
        key_pem: joined.key_pem,
    })
}

/// A process server's files: the site's vault key and CA certificate (not its key: agents
/// register with the configuration server), its own server certificate, the configuration.
fn write_joined_files(
    staging: &ApplianceLayout,
    config: &ApplianceConfig,
    key: &VaultKey,
    joined: &Joined,
) -> Result<String> {
    write_new(&staging.vault_key_file(), format!("{}\n", key.to_text()).as_bytes())?;
    new_dir(&staging.root().join("pki"))?;
    write_new(&staging.ca_cert_file(), joined.answer.ca_pem.as_bytes())?;
    write_new(&staging.server_cert_file(), joined.answer.cert_pem.as_bytes())?;
    write_new(&staging.server_key_file(), joined.key_pem.as_bytes())?;
    write_new(&staging.config_file(), config.to_documented_toml().as_bytes())?;
    let der = ferry_client::tls::certificate_der(&joined.answer.cert_pem)
        .context("the configuration server sent an unreadable certificate")?;
    Ok(pki::fingerprint_sha256(&der))
}

fn write_appliance_files(
    staging: &ApplianceLayout,
    config: &ApplianceConfig,
    key: &VaultKey,
    server_names: &[String],
) -> Result<String> {
    write_new(&staging.vault_key_file(), format!("{}\n", key.to_text()).as_bytes())?;
    write_new(
        &staging.passphrase_file(),
        format!("{}\n", generate_passphrase()?).as_bytes(),
    )?;
    new_dir(&staging.root().join("pki"))?;
    let appliance_name = server_names.first().cloned().unwrap_or_else(|| "ferry".into());
    let (ca_pem, ca, ca_key) = pki::generate_ca(&appliance_name)?;
    let server = pki::generate_server_cert(server_names, &ca, &ca_key)?;
    write_new(&staging.ca_cert_file(), ca_pem.cert_pem.as_bytes())?;
    write_new(&staging.ca_key_file(), ca_pem.key_pem.as_bytes())?;
    write_new(&staging.server_cert_file(), server.cert_pem.as_bytes())?;
    write_new(&staging.server_key_file(), server.key_pem.as_bytes())?;
    // Each write_new fsyncs its file and directory; this last one in the root also makes the
    // pki/ entry durable.
    write_new(&staging.config_file(), config.to_documented_toml().as_bytes())?;
    Ok(pki::fingerprint_sha256(&server.cert_der))
}

pub async fn run(args: InitArgs, json: bool) -> Result<()> {
    let dir = std::path::absolute(&args.dir).with_context(|| format!("bad path {}", args.dir.display()))?;
    refuse_existing(&dir)?;
    let parent = dir
        .parent()
        .context("the appliance directory needs a parent directory")?
        .to_path_buf();
    let file_name = dir
        .file_name()
        .context("the appliance directory needs a name")?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;

    let mut server_names = args.server_names.clone();
    if server_names.is_empty() {
        server_names.extend(host_name());
        server_names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    }
    let data_port = args
        .data_listen
        .as_deref()
        .and_then(|listen| listen.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| "9443".into());
    let advertised = format!("{}:{data_port}", server_names[0]);
    let joined = match &args.join {
        Some(config_server) => Some(join_site(&args, config_server, &server_names, &advertised).await?),
        None => None,
    };
    let target = match &joined {
        Some(joined) => serde_json::from_value(joined.answer.target.clone())
            .context("the configuration server sent a target this ferryctl does not understand")?,
        None => args
            .target
            .to_config(Some(PathBuf::from(layout::LOCAL_TARGET_DIR)), true)?,
    };
    let mut config = ApplianceConfig::with_target(target);
    config.server.config_server = args.join.clone();
    if let Some(listen) = &args.data_listen {
        config.server.data_listen = listen.clone();
    }
    if let Some(listen) = &args.management_listen {
        config.server.management_listen = listen.clone();
    }
    if let Some(listen) = &args.metrics_listen {
        config.server.metrics_listen = listen.clone();
    }
    config.server.advertised_data_endpoint = advertised;
    config
        .validate()
        .map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    let key = match &joined {
        Some(joined) => VaultKey::parse_text(&joined.answer.vault_key)
            .context("the configuration server sent no usable vault key")?,
        None => load_or_generate_key(args.vault_key_file.as_deref())?,
    };

    // Assemble beside the final directory (inside it when it exists); relative target paths
    // resolve inside the staging directory.
    let in_place = dir.exists();
    let staging_dir = if in_place {
        dir.join(format!(".init-{}", std::process::id()))
    } else {
        parent.join(format!(".{file_name}.init-{}", std::process::id()))
    };
    let _ = std::fs::remove_dir_all(&staging_dir);
    new_dir(&staging_dir)?;
    let staging = ApplianceLayout::new(&staging_dir);
    let result = async {
        let storage = open_target(&config.resolved_target(&staging), RetryPolicy::default())
            .await
            .context("cannot open the target")?;
        let existing = existing_vault(&*storage, &key).await?;
        if let Some(joined) = &joined {
            match &existing {
                Some(vault) if vault.vault_id == joined.answer.vault_id => {}
                Some(vault) => bail!(
                    "the target holds vault {}, not the site's vault {}: check the target's settings",
                    vault.vault_id,
                    joined.answer.vault_id
                ),
                None => bail!(
                    "this machine reaches the site's target but finds no vault there ({}): a local-directory \
                     target must be the same shared directory on every process server",
                    storage.describe()
                ),
            }
        }
        let fingerprint = match &joined {
            Some(joined) => write_joined_files(&staging, &config, &key, joined)?,
            None => write_appliance_files(&staging, &config, &key, &server_names)?,
        };
        let (vault, joined) = match existing {
            Some(vault) => (vault, true),
            None => {
                let vault = VaultDescriptor::create(&key, ferry_client::clock::now_unix_ms());
                storage
                    .put(VAULT_JSON, vault.to_json().into())
                    .await
                    .context("cannot write vault.json to the target")?;
                (vault, false)
            }
        };
        Ok::<_, anyhow::Error>((storage.describe(), fingerprint, vault, joined))
    }
    .await;
    let (target_description, fingerprint, vault, joined) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging_dir);
            return Err(e);
        }
    };
    if in_place {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} owner-only", dir.display()))?;
        move_entries_up(&staging_dir, &dir)?;
    } else {
        if dir.exists() {
            std::fs::remove_dir(&dir).with_context(|| format!("{} appeared while initialising", dir.display()))?;
        }
        std::fs::rename(&staging_dir, &dir)
            .with_context(|| format!("cannot move the new appliance into {}", dir.display()))?;
        fsync_dir(&parent)?;
    }

    let layout = ApplianceLayout::new(&dir);
    let target_description = target_description.replace(&staging_dir.display().to_string(), &dir.display().to_string());
    let report = InitReport {
        appliance_dir: dir.clone(),
        config_server: args.join.clone(),
        config_file: layout.config_file(),
        vault_id: vault.vault_id.to_string(),
        joined_existing_vault: joined,
        target: target_description,
        vault_key_file: layout.vault_key_file(),
        passphrase_file: layout.passphrase_file(),
        ca_cert_file: layout.ca_cert_file(),
        next_steps: next_steps(&dir, &server_names[0], &config.server.management_listen, &fingerprint),
        server_cert_sha256: fingerprint,
    };
    print_report(&report, json);
    Ok(())
}

fn print_report(report: &InitReport, json: bool) {
    if json {
        outln!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
        return;
    }
    let vault_state = if report.joined_existing_vault {
        "joined the existing vault"
    } else {
        "new vault"
    };
    if let Some(config_server) = &report.config_server {
        outln!(
            "Initialised a scale-out process server in {}, of the site of the configuration server at {config_server}",
            report.appliance_dir.display()
        );
        outln!("  config       {}", report.config_file.display());
        outln!("  vault        {} (the site's)", report.vault_id);
        outln!("  target       {}", report.target);
        outln!("  server certificate SHA-256 {}", report.server_cert_sha256);
        if let Some(start) = report.next_steps.first() {
            outln!();
            outln!("Next: start the process server:");
            outln!("       {start}");
        }
        return;
    }
    outln!("Initialised a Ferry appliance in {}", report.appliance_dir.display());
    outln!("  config       {}", report.config_file.display());
    outln!("  vault        {} ({vault_state})", report.vault_id);
    outln!("  target       {}", report.target);
    outln!("  vault key    {}", report.vault_key_file.display());
    outln!(
        "  passphrase   {}  (agents register with it)",
        report.passphrase_file.display()
    );
    outln!("  agent CA     {}", report.ca_cert_file.display());
    outln!("  server certificate SHA-256 {}", report.server_cert_sha256);
    outln!();
    outln!("Copy the vault key somewhere safe, away from this machine: without it no disk can be restored.");
    if let [start, register, ..] = report.next_steps.as_slice() {
        outln!();
        outln!("Next:");
        outln!("  1. Start the process server:");
        outln!("       {start}");
        outln!("  2. On each protected machine, with a copy of the passphrase file:");
        outln!("       {register}");
        outln!("     then list its disks in agent.toml and run `ferry-agent run --config agent.toml`.");
    }
}

/// Exposed for `vault check`: the target of an appliance directory, resolved.
pub fn appliance_target(dir: &Path) -> Result<(TargetConfig, PathBuf)> {
    let layout = ApplianceLayout::new(dir);
    let config = ApplianceConfig::load(&layout.config_file())?;
    Ok((config.resolved_target(&layout), layout.vault_key_file()))
}
