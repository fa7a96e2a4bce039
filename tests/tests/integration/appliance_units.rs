//! The appliance's system files (appliance/): the ferryd unit is hardened as the appliance
//! issue asks (`systemd-analyze security` at most 2.5) and runs as its own user with only the
//! capability to bind 443; the sysctl file names only settings this kernel has.

use std::path::{Path, PathBuf};

fn appliance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance")
}

/// `systemd-analyze security --offline=true UNIT`'s overall exposure, or `None` without
/// systemd-analyze.
fn exposure(unit: &Path) -> Option<f64> {
    let output = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(unit)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let value = line.split(':').nth(1).and_then(|v| v.split_whitespace().next());
    Some(
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read {line:?}")),
    )
}

#[test]
fn the_ferryd_unit_is_hardened_and_runs_as_its_own_user() {
    let unit = appliance_dir().join("systemd/ferryd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "User=ferry",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "StateDirectory=ferry",
        "ReadWritePaths=/var/lib/ferry",
        "LimitNOFILE=1048576",
        "ConditionPathExists=/var/lib/ferry/ferry.toml",
        "ExecStart=/usr/bin/ferryd --config /var/lib/ferry",
    ] {
        assert!(text.lines().any(|l| l == line), "{} lacks {line}", unit.display());
    }
    match exposure(&unit) {
        Some(level) => assert!(
            level <= 2.5,
            "systemd-analyze security rates ferryd.service {level}, above 2.5"
        ),
        None => eprintln!("skipped the exposure check: systemd-analyze is not installed"),
    }
}

#[test]
fn the_sysctl_file_sets_only_settings_this_kernel_has() {
    let path = appliance_dir().join("sysctl/90-ferry.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut settings = 0;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{line:?} is not key = value"));
        let key = key.trim();
        let proc = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(
            proc.exists(),
            "{key} is not a setting of this kernel ({})",
            proc.display()
        );
        assert!(!value.trim().is_empty(), "{key} has no value");
        settings += 1;
    }
    assert!(settings >= 5, "{settings} settings");
}
