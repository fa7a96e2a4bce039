//! `ferryctl failover` against a vault the real ferryd and ferry-agent filled (local target):
//! an ext4 disk failed over to a local fixed VHD (every footer field checked here, by this
//! test's own reading of the VHD specification; `qemu-img compare` against the raw restore;
//! `e2fsck`-clean with the files written before the point); every point selector on a machine
//! with two disks; a test failover's pins, and its cleanup leaving nothing behind.

use ferry_tests::{ferryctl, Agent, Appliance, Ferryd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn run_ok(args: &[&str]) -> serde_json::Value {
    let run = ferryctl(args);
    assert!(run.success, "ferryctl {args:?} failed:\n{}{}", run.stdout, run.stderr);
    run.json()
}

pub(crate) fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An ext4 image of `size` bytes holding `files` (made with `mkfs.ext4 -d`, no mount needed).
pub(crate) fn ext4_image(dir: &Path, name: &str, size: u64, files: &[(&str, &[u8])]) -> PathBuf {
    let content = dir.join(format!("{name}-content"));
    std::fs::create_dir_all(&content).unwrap();
    for (file, bytes) in files {
        std::fs::write(content.join(file), bytes).unwrap();
    }
    let image = dir.join(format!("{name}.img"));
    std::fs::File::create(&image).unwrap().set_len(size).unwrap();
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .output()
        .expect("mkfs.ext4 runs");
    assert!(
        made.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    image
}

/// `image` holds a clean ext4 (`e2fsck -f -n`) with `file` equal to `expected` (`debugfs`).
fn assert_clean_ext4_with(image: &Path, file: &str, expected: &[u8]) {
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat /{file}")])
        .arg(image)
        .output()
        .unwrap();
    assert!(cat.stdout == expected, "/{file} differs in {}", image.display());
}

/// `ferryctl restore` of `disk` at `which` (`["--latest"]`, `["--point", id]`) into `out`;
/// the restored bytes.
pub(crate) fn restored(config: &str, disk: &str, which: &[&str], out: &Path) -> Vec<u8> {
    let mut args = vec!["--json", "restore", "--config", config, "--disk", disk];
    args.extend_from_slice(which);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    run_ok(&args);
    std::fs::read(out).unwrap()
}

/// The agent's pass reports, one per disk.
pub(crate) fn passes(agent: &Agent, extra: &[&str]) -> Vec<serde_json::Value> {
    let run = agent.run_once(extra);
    assert!(run.success, "ferry-agent run --once failed: {}", run.stderr);
    run.json().as_array().cloned().expect("an array of pass reports")
}

/// Waits until every (disk, bookmark) is a point in storage; returns the points.
pub(crate) fn wait_for_points(appliance: &Appliance, reports: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let config = appliance.dir.to_str().unwrap();
    reports
        .iter()
        .map(|report| {
            let (disk, bookmark) = (report["disk_id"].as_str().unwrap(), &report["bookmark_id"]);
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let run = ferryctl(&["--json", "points", "--config", config, "--disk", disk]);
                if run.success {
                    if let Some(point) = run
                        .json()
                        .as_array()
                        .and_then(|all| all.iter().find(|p| &p["bookmark_id"] == bookmark).cloned())
                    {
                        return point;
                    }
                }
                assert!(Instant::now() < deadline, "point {bookmark} never reached storage");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .collect()
}

/// This test's own reading of a fixed VHD footer (the VHD specification, "Hard Disk Footer
/// Format"), checking every field; returns the current size.
pub(crate) fn check_footer(footer: &[u8], file_len: u64) -> u64 {
    let be32 = |at: usize| u32::from_be_bytes(footer[at..at + 4].try_into().unwrap());
    let be64 = |at: usize| u64::from_be_bytes(footer[at..at + 8].try_into().unwrap());
    assert_eq!(footer.len(), 512);
    assert_eq!(&footer[0..8], b"conectix", "cookie");
    assert_eq!(be32(8), 2, "features");
    assert_eq!(be32(12), 0x0001_0000, "file format version");
    assert_eq!(be64(16), u64::MAX, "data offset of a fixed disk");
    let vhd_epoch = 946_684_800u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = u64::from(be32(24)) + vhd_epoch;
    assert!(
        stamp <= now && now - stamp < 3600,
        "timestamp {stamp} is not the last hour"
    );
    assert_eq!(&footer[28..32], b"frry", "creator application");
    let (original, current) = (be64(40), be64(48));
    assert_eq!(original, current);
    assert_eq!(current + 512, file_len, "the footer follows the virtual size");
    assert_eq!(current % MIB, 0, "virtual size a whole number of MiB");
    assert!(current >= 20 * MIB);
    // CHS by the specification's algorithm, written out here again.
    let sectors = (current / 512).min(65_535 * 16 * 255);
    let (spt, heads, cth) = if sectors >= 65_535 * 16 * 63 {
        (255, 16, sectors / 255)
    } else {
        let mut spt = 17;
        let mut cth = sectors / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            (spt, heads, cth) = (31, 16, sectors / 31);
        }
        if cth >= heads * 1024 {
            (spt, heads, cth) = (63, 16, sectors / 63);
        }
        (spt, heads, cth)
    };
    assert_eq!(
        u64::from(u16::from_be_bytes([footer[56], footer[57]])),
        cth / heads,
        "cylinders"
    );
    assert_eq!(u64::from(footer[58]), heads, "heads");
    assert_eq!(u64::from(footer[59]), spt, "sectors per track");
    assert_eq!(be32(60), 2, "disk type fixed");
    let sum: u32 = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, &b)| u32::from(b))
        .sum();
    assert_eq!(be32(64), !sum, "checksum");
    assert_ne!(&footer[68..84], &[0u8; 16], "unique id");
    assert_eq!(footer[84], 0, "saved state");
    assert!(footer[85..].iter().all(|&b| b == 0), "reserved bytes zero");
    current
}

#[tokio::test]
async fn failover_to_a_local_vhd_boots_the_same_ext4_as_a_restore() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    // 64 MiB + 4 KiB: not a whole MiB, so the VHD's virtual size rounds up.
    let size = 64 * MIB + 4096;
    let hello = b"written before the point\n".repeat(1000);
    let image = ext4_image(scratch.path(), "root", size, &[("hello.txt", &hello), ("empty", b"")]);
    agent.configure(&[&image], "");
    let reports = passes(&agent, &[]);
    let point = &wait_for_points(&appliance, &reports)[0];
    let disk = point["disk_id"].as_str().unwrap();
    let bookmark = point["bookmark_id"].as_str().unwrap();
    // Written after the point: must not be in the failover.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .map(|f| {
            std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 4096], 40 * MIB).unwrap();
        })
        .unwrap();

    let config = appliance.dir.to_str().unwrap();
    let out = scratch.path().join("failover");
    let report = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--latest",
        "--to-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(report["test"], false);
    assert_eq!(report["state"], "done");
    let disks = report["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0]["point"], bookmark);
    assert_eq!(disks[0]["seq"], point["seq"]);
    assert_eq!(disks[0]["virtual_size_bytes"], 65 * MIB);
    let vhd = PathBuf::from(disks[0]["output"].as_str().unwrap());
    let failover_id = report["failover_id"].as_str().unwrap();
    assert!(vhd.starts_with(out.join(failover_id)), "{}", vhd.display());

    let bytes = std::fs::read(&vhd).unwrap();
    let virtual_size = check_footer(&bytes[bytes.len() - 512..], bytes.len() as u64);
    assert_eq!(virtual_size, 65 * MIB);
    // Sparse: the file holds its data, not its size.
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&vhd).unwrap()) * 512;
    assert!(
        allocated < virtual_size / 2,
        "{allocated} bytes allocated of {virtual_size}"
    );

    // The same bytes as a restore at that point; past the disk, zeros.
    let raw = scratch.path().join("restored.raw");
    let restored = restored(config, disk, &["--point", bookmark], &raw);
    assert_eq!(restored.len() as u64, size);
    assert!(
        bytes[..size as usize] == restored[..],
        "the VHD's disk bytes differ from the restore"
    );
    assert!(bytes[size as usize..virtual_size as usize].iter().all(|&b| b == 0));
    assert_ne!(
        &restored[(40 * MIB) as usize..(40 * MIB + 16) as usize],
        &[0xEE; 16],
        "a write after the point leaked in"
    );

    if have("qemu-img") {
        // qemu sizes a VHD by CHS unless told to trust the footer (see ferry_vault::vhd).
        let compared = std::process::Command::new("qemu-img")
            .args(["compare", "--image-opts"])
            .arg(format!(
                "driver=vpc,force_size_calc=current_size,file.filename={}",
                vhd.display()
            ))
            .arg(format!("driver=raw,file.filename={}", raw.display()))
            .output()
            .unwrap();
        assert!(
            compared.status.success(),
            "qemu-img compare: {}{}",
            String::from_utf8_lossy(&compared.stdout),
            String::from_utf8_lossy(&compared.stderr)
        );
    } else {
        eprintln!("qemu-img compare skipped: qemu-img is not installed (Debian: qemu-utils)");
    }
    assert_clean_ext4_with(&vhd, "hello.txt", &hello); // written before the point

    // Recorded in the vault: `failover list` shows it.
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["failover_id"], failover_id);
    // A real failover's outputs are never cleaned up.
    let refused = ferryctl(&["failover", "cleanup", failover_id, "--config", config]);
    assert!(
        !refused.success && refused.stderr.contains("not a test failover"),
        "{}",
        refused.stderr
    );
    assert!(vhd.exists());
}

/// Pass reports of one run, by disk path order of the agent config (`[a, b]`).
fn by_disk<'a>(reports: &'a [serde_json::Value], disk: &str) -> &'a serde_json::Value {
    reports
        .iter()
        .find(|r| r["disk_id"] == disk)
        .expect("a report for the disk")
}

#[tokio::test]
async fn every_selector_picks_its_point_and_test_failovers_clean_up() {
    use std::os::unix::fs::PermissionsExt;
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let a = ext4_image(scratch.path(), "a", 32 * MIB, &[("a.txt", b"disk a")]);
    let b = ext4_image(scratch.path(), "b", 24 * MIB, &[("b.txt", b"disk b")]);
    let ok = scratch.path().join("ok.sh");
    std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent.configure(
        &[&a, &b],
        &format!("[quiesce]\npre_script = {ok:?}\npost_script = {ok:?}\n"),
    );
    // Three passes over both disks: crash, app, crash; changes between them.
    let first = passes(&agent, &[]);
    std::thread::sleep(Duration::from_millis(50));
    let write = |image: &Path, byte: u8| {
        let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[byte; 8192], 20 * MIB).unwrap();
    };
    write(&a, 1);
    write(&b, 1);
    let second = passes(&agent, &["--app"]);
    std::thread::sleep(Duration::from_millis(50));
    write(&a, 2);
    let third = passes(&agent, &[]);
    let points: Vec<Vec<serde_json::Value>> = [&first, &second, &third]
        .iter()
        .map(|r| wait_for_points(&appliance, r))
        .collect();
    assert!(points[1].iter().all(|p| p["kind"] == "app"), "{:?}", points[1]);
    let machine = agent.identity().machine_id.to_string();
    let disk_a = first[0]["disk_id"].as_str().unwrap().to_string();
    let config = appliance.dir.to_str().unwrap();
    let out = scratch.path().join("out");
    let failover = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "failover",
            "--config",
            config,
            "--to-dir",
            out.to_str().unwrap(),
            "--format",
            "raw",
        ];
        args.extend_from_slice(extra);
        run_ok(&args)
    };
    let seqs = |report: &serde_json::Value| -> Vec<(String, u64)> {
        report["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["disk_id"].as_str().unwrap().to_string(), d["seq"].as_u64().unwrap()))
            .collect()
    };
    let seq_of = |pass: &[serde_json::Value], disk: &str| {
        let point = pass.iter().find(|p| p["disk_id"] == disk).unwrap();
        (disk.to_string(), point["seq"].as_u64().unwrap())
    };
    let expect = |pass: &[serde_json::Value], report: &serde_json::Value| {
        let mut wanted: Vec<(String, u64)> = seqs(report).iter().map(|(disk, _)| seq_of(pass, disk)).collect();
        wanted.sort();
        let mut got = seqs(report);
        got.sort();
        assert_eq!(got, wanted, "{report}");
    };

    // --machine: both disks, at one kind of point each.
    let latest = failover(&["--machine", &machine[..8], "--latest"]);
    assert_eq!(seqs(&latest).len(), 2);
    expect(&points[2], &latest);
    let app = failover(&["--machine", &machine, "--latest-app"]);
    expect(&points[1], &app);
    assert!(app["disks"].as_array().unwrap().iter().all(|d| d["kind"] == "app"));
    // --at between the first and second passes: the first pass's points.
    let newest_first = points[0]
        .iter()
        .map(|p| p["source_time_unix_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    let oldest_second = points[1]
        .iter()
        .map(|p| p["source_time_unix_ms"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(newest_first < oldest_second);
    let between = ferry_format::time::format_unix_ms((newest_first + oldest_second) / 2);
    let at = failover(&["--machine", &machine, "--at", &between]);
    expect(&points[0], &at);
    // --point and --seq on one disk; the output equals a restore there.
    let bookmark = by_disk(&points[1], &disk_a)["bookmark_id"]
        .as_str()
        .unwrap()
        .to_string();
    let by_point = failover(&["--disk", &disk_a, "--point", &bookmark]);
    assert_eq!(seqs(&by_point), vec![seq_of(&points[1], &disk_a)]);
    let seq = seq_of(&points[0], &disk_a).1.to_string();
    let by_seq = failover(&["--disk", &disk_a, "--seq", &seq]);
    assert_eq!(by_seq["disks"][0]["seq"].as_u64(), Some(seq.parse().unwrap()));
    let at_point = restored(
        config,
        &disk_a,
        &["--point", &bookmark],
        &scratch.path().join("a-at-point.raw"),
    );
    let output = by_point["disks"][0]["output"].as_str().unwrap();
    assert!(std::fs::read(output).unwrap() == at_point);

    // Nothing fits: clear errors, nothing written, nothing recorded.
    let listed_before = run_ok(&["--json", "failover", "list", "--config", config])
        .as_array()
        .unwrap()
        .len();
    for (args, says) in [
        (
            vec!["--disk", disk_a.as_str(), "--at", "2001-01-01T00:00:00Z"],
            "no recovery point at or before",
        ),
        (vec!["--disk", disk_a.as_str(), "--at", "yesterday"], "RFC 3339"),
        (
            vec!["--disk", disk_a.as_str(), "--point", "no-such-point"],
            "no recovery point no-such-point",
        ),
        (vec!["--disk", "ffffffff", "--latest"], "no disk in this vault"),
        (vec!["--machine", "ffffffff", "--latest"], "no machine in this vault"),
    ] {
        let mut all = vec!["failover", "--config", config, "--to-dir", out.to_str().unwrap()];
        all.extend_from_slice(&args);
        let run = ferryctl(&all);
        assert!(!run.success && run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        listed_before,
        "a refused failover left a record"
    );

    // A test failover pins its points; a point the user pinned already stays pinned after.
    let user_pinned = by_disk(&points[2], &disk_a)["bookmark_id"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&[
        "--json",
        "points",
        "pin",
        "--config",
        config,
        "--disk",
        &disk_a,
        "--point",
        &user_pinned,
        "--reason",
        "audit",
    ]);
    let test = failover(&["--machine", &machine, "--latest", "--test"]);
    assert_eq!(test["test"], true);
    let test_id = test["failover_id"].as_str().unwrap().to_string();
    let pinned = |disk: &str| -> Vec<(String, Option<String>)> {
        run_ok(&["--json", "points", "--config", config, "--disk", disk])
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pinned"] == true)
            .map(|p| {
                (
                    p["bookmark_id"].as_str().unwrap().to_string(),
                    p["pin_reason"].as_str().map(String::from),
                )
            })
            .collect()
    };
    let disk_b = test["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["disk_id"].as_str().unwrap())
        .find(|d| *d != disk_a)
        .unwrap()
        .to_string();
    let b_point = by_disk(&points[2], &disk_b)["bookmark_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        pinned(&disk_b),
        vec![(b_point, Some(format!("test failover {test_id}")))]
    );
    assert_eq!(pinned(&disk_a), vec![(user_pinned.clone(), Some("audit".to_string()))]);
    let outputs: Vec<PathBuf> = test["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["output"].as_str().unwrap()))
        .collect();
    assert!(outputs.iter().all(|o| o.exists()));

    let digests = appliance.dir.join("target/ferry/v1/failovers").join(&test_id);
    assert_eq!(files_under(&digests), 2, "one digest segment per disk");
    let cleaned = run_ok(&["--json", "failover", "cleanup", &test_id, "--config", config]);
    assert_eq!(cleaned["outputs_removed"].as_array().map(Vec::len), Some(2));
    assert_eq!(cleaned["pins_released"], 1);
    assert!(outputs.iter().all(|o| !o.exists()));
    assert!(!out.join(&test_id).exists(), "the test failover's directory is left");
    assert_eq!(
        files_under(&digests),
        0,
        "the test failover's block digests are left in {}",
        digests.display()
    );
    assert!(pinned(&disk_b).is_empty());
    assert_eq!(
        pinned(&disk_a),
        vec![(user_pinned, Some("audit".to_string()))],
        "the user's pin went"
    );
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["failover_id"] != test_id.as_str()));
    let again = ferryctl(&["failover", "cleanup", &test_id, "--config", config]);
    assert!(
        !again.success && again.stderr.contains("no failover"),
        "{}",
        again.stderr
    );
}

/// How many files are under `dir`, at any depth (0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 })
        .sum()
}

/// Loop devices made for a test, detached (and unmounted) when dropped.
#[derive(Default)]
pub(crate) struct Loops {
    pub(crate) devices: Vec<String>,
    pub(crate) mounts: Vec<PathBuf>,
}

impl Loops {
    /// A loop device over `file`; None without root and loop devices.
    pub(crate) fn attach(&mut self, file: &Path) -> Option<String> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        self.devices.push(device.clone());
        Some(device)
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for mount in &self.mounts {
            let _ = std::process::Command::new("umount").arg(mount).output();
        }
        for device in &self.devices {
            let _ = std::process::Command::new("losetup").args(["-d", device]).output();
        }
    }
}

impl Loops {
    /// A loop device over a new file of `size` zero bytes in `dir`, made ext4 and mounted.
    pub(crate) fn mounted(&mut self, dir: &Path, size: u64) -> String {
        let file = dir.join("mounted.dev");
        std::fs::File::create(&file).unwrap().set_len(size).unwrap();
        let device = self.attach(&file).expect("a loop device");
        let mount_point = dir.join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        let made = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("mkfs.ext4 -q -F {device} && mount {device} {}", mount_point.display()),
            ])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        self.mounts.push(mount_point);
        device
    }

    /// Says why a test that needs loop devices is skipped (a failure under FERRY_REQUIRE_LOOP).
    pub(crate) fn unavailable() {
        assert!(
            std::env::var("FERRY_REQUIRE_LOOP").is_err(),
            "FERRY_REQUIRE_LOOP is set but no loop device could be made"
        );
        eprintln!("skipped: needs root and loop devices (set FERRY_REQUIRE_LOOP=1 to require)");
    }
}

fn file_of(path: &Path, size: u64, byte: u8) {
    let chunk = vec![byte; MIB as usize];
    let mut all = Vec::with_capacity(size as usize);
    while (all.len() as u64) < size {
        all.extend_from_slice(&chunk[..chunk.len().min((size - all.len() as u64) as usize)]);
    }
    std::fs::write(path, all).unwrap();
}

#[tokio::test]
async fn failover_onto_a_block_device_and_the_devices_it_refuses() {
    let scratch = tempfile::tempdir().unwrap();
    let mut loops = Loops {
        devices: Vec::new(),
        mounts: Vec::new(),
    };
    let target_file = scratch.path().join("target.dev");
    file_of(&target_file, 40 * MIB, 0xAA); // garbage the failover must not leave in the disk
    let Some(target) = loops.attach(&target_file) else {
        Loops::unavailable();
        return;
    };
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let image = ext4_image(scratch.path(), "dev", 32 * MIB, &[("f.txt", b"on the device")]);
    agent.configure(&[&image], "");
    let reports = passes(&agent, &[]);
    let point = &wait_for_points(&appliance, &reports)[0];
    let disk = point["disk_id"].as_str().unwrap();
    let config = appliance.dir.to_str().unwrap();

    let report = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--latest",
        "--to-device",
        &target,
    ]);
    assert_eq!(report["disks"][0]["output"], target.as_str());
    assert_eq!(report["disks"][0]["virtual_size_bytes"], 32 * MIB);
    let raw = scratch.path().join("restored.raw");
    let restore = restored(config, disk, &["--latest"], &raw);
    let device_bytes = std::fs::read(&target).unwrap();
    assert!(
        device_bytes[..(32 * MIB) as usize] == restore[..],
        "the device differs from the restore"
    );
    assert!(
        device_bytes[(32 * MIB) as usize..].iter().all(|&b| b == 0xAA),
        "bytes past the disk were touched"
    );
    assert_clean_ext4_with(Path::new(&target), "f.txt", b"on the device");

    // Refused, with nothing written: a smaller device, a mounted one, a file.
    let small_file = scratch.path().join("small.dev");
    file_of(&small_file, 16 * MIB, 0x55);
    let small = loops.attach(&small_file).expect("a second loop device");
    let mounted = loops.mounted(scratch.path(), 40 * MIB);
    let listed_before = run_ok(&["--json", "failover", "list", "--config", config])
        .as_array()
        .unwrap()
        .len();
    for (device, says) in [
        (small.as_str(), "smaller than the disk"),
        (mounted.as_str(), "is mounted at"),
        (raw.to_str().unwrap(), "is not a block device"),
    ] {
        let run = ferryctl(&[
            "failover",
            "--config",
            config,
            "--disk",
            disk,
            "--latest",
            "--to-device",
            device,
        ]);
        assert!(!run.success && run.stderr.contains(says), "{device}: {}", run.stderr);
    }
    assert!(
        std::fs::read(&small).unwrap().iter().all(|&b| b == 0x55),
        "a refused device was written"
    );
    let listed = run_ok(&["--json", "failover", "list", "--config", config])
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, listed_before, "a refused failover left a record");
}

/// The blob's page ranges (merged) are exactly the non-zero 512-byte sectors of `bytes` (the
/// whole blob); returns them.
pub(crate) async fn assert_pages_are_the_non_zero_sectors(
    blob: &ferry_storage::page_blob::PageBlob,
    bytes: &[u8],
) -> Vec<(u64, u64)> {
    let mut expected: Vec<(u64, u64)> = Vec::new();
    for (index, sector) in bytes.chunks(512).enumerate() {
        if sector.iter().any(|&b| b != 0) {
            let start = index as u64 * 512;
            match expected.last_mut() {
                Some(last) if last.1 == start => last.1 = start + 512,
                _ => expected.push((start, start + 512)),
            }
        }
    }
    let mut actual: Vec<(u64, u64)> = Vec::new();
    for (start, end) in blob.page_ranges().await.unwrap() {
        match actual.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => actual.push((start, end)),
        }
    }
    assert_eq!(actual, expected, "page ranges are not exactly the non-zero sectors");
    actual
}

/// A container of the Azurite account, with its well-known key.
pub(crate) fn azurite_config(endpoint: &str, container: &str) -> ferry_storage::AzureTargetConfig {
    ferry_storage::AzureTargetConfig {
        account: ferry_tests::AZURITE_ACCOUNT.into(),
        container: container.into(),
        endpoint: Some(endpoint.into()),
        create_container: false,
        request_timeout_secs: 60,
        credential: ferry_storage::AzureCredentialConfig::SharedKey {
            account_key: ferry_storage::Secret::new(ferry_tests::AZURITE_KEY),
        },
    }
}

#[tokio::test]
async fn failover_to_azurite_writes_a_fixed_vhd_page_blob_of_only_the_data() {
    let Some(endpoint) = ferry_tests::azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh sets it)");
        return;
    };
    let appliance = Appliance::init_azurite(&endpoint, "failover", |c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let size = 40 * MIB + 4096;
    let data = b"into Azure\n".repeat(20_000);
    let image = ext4_image(scratch.path(), "az", size, &[("data.txt", &data)]);
    agent.configure(&[&image], "");
    let reports = passes(&agent, &[]);
    let point = &wait_for_points(&appliance, &reports)[0];
    let disk = point["disk_id"].as_str().unwrap();
    let config = appliance.dir.to_str().unwrap();
    let container = ferry_tests::unique_container("failover-out");

    let run = ferryctl(&[
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--latest",
        "--to-azure-container",
        &container,
    ]);
    assert!(run.success, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("az disk create"), "{}", run.stdout);
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    let record = &listed[0];
    let url = record["disks"][0]["output"].as_str().unwrap().to_string();
    assert!(!url.contains("sig="), "a signature in the recorded URL: {url}");
    assert_eq!(record["disks"][0]["virtual_size_bytes"], 41 * MIB);
    let name = url.split_once(&format!("/{container}/")).unwrap().1.to_string();

    // A page blob of virtual size + 512 bytes.
    let az_config = azurite_config(&endpoint, &container);
    let blob = ferry_storage::page_blob::PageBlob::open(&az_config, &container, &name)
        .await
        .unwrap();
    let (blob_type, blob_size) = blob.properties().await.unwrap();
    assert_eq!((blob_type.as_str(), blob_size), ("PageBlob", 41 * MIB + 512));

    // Its bytes: the restore at that point, zeros to the virtual size, then a right footer.
    let reader = ferry_storage::azure::AzureBlob::connect(&az_config).await.unwrap();
    let bytes = ferry_storage::ObjectStorage::get(&reader, &name).await.unwrap();
    check_footer(&bytes[bytes.len() - 512..], bytes.len() as u64);
    let raw = scratch.path().join("restored.raw");
    let restored = restored(config, disk, &["--latest"], &raw);
    assert!(
        bytes[..size as usize] == restored[..],
        "the blob's disk bytes differ from the restore"
    );
    assert!(bytes[size as usize..(41 * MIB) as usize].iter().all(|&b| b == 0));
    let local_vhd = scratch.path().join("from-azure.vhd");
    std::fs::write(&local_vhd, &bytes[..]).unwrap();
    assert_clean_ext4_with(&local_vhd, "data.txt", &data);

    // Its page ranges: exactly the non-zero 512-byte sectors (merged as the service reports).
    let actual = assert_pages_are_the_non_zero_sectors(&blob, &bytes).await;
    let stored: u64 = actual.iter().map(|(s, e)| e - s).sum();
    assert!(stored < 41 * MIB / 2, "{stored} bytes of pages for a mostly empty disk");

    // A test failover to Azure, then cleanup: the blob is gone.
    let test = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--latest",
        "--to-azure-container",
        &container,
        "--test",
    ]);
    let test_url = test["disks"][0]["output"].as_str().unwrap().to_string();
    let test_name = test_url.split_once(&format!("/{container}/")).unwrap().1.to_string();
    let test_blob = ferry_storage::page_blob::PageBlob::open(&az_config, &container, &test_name)
        .await
        .unwrap();
    assert!(test_blob.properties().await.is_ok());
    run_ok(&[
        "--json",
        "failover",
        "cleanup",
        test["failover_id"].as_str().unwrap(),
        "--config",
        config,
    ]);
    let gone = test_blob.properties().await;
    assert!(
        matches!(gone, Err(ferry_storage::StorageError::NotFound { .. })),
        "{gone:?}"
    );
}

/// `--latest` with a running ferryd waits until what ferryd holds for the disk is uploaded
/// (the lowest RPO); `--latest-processed` takes the newest point already in storage at once.
#[tokio::test]
async fn latest_waits_for_the_cache_and_latest_processed_does_not() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let image = ext4_image(scratch.path(), "held", 32 * MIB, &[("x.txt", b"x")]);
    agent.configure(&[&image], "");
    let first = wait_for_points(&appliance, &passes(&agent, &[]))[0].clone();
    let disk = first["disk_id"].as_str().unwrap().to_string();
    let config = appliance.dir.to_str().unwrap();
    // Uploads crawl at the lowest cap (1 MB/s) while 12 MiB of incompressible data waits.
    let tune = ferryctl(&["tune", "--config", config, "bandwidth_cap_bytes_per_sec=1000000"]);
    assert!(tune.success, "{}", tune.stderr);
    let mut noise = vec![0u8; (12 * MIB) as usize];
    ferry_harness::datagen::DataGenerator::new(9, ferry_harness::datagen::Mix::INCOMPRESSIBLE).fill(&mut noise);
    let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &noise, 8 * MIB).unwrap();
    let second = passes(&agent, &[]);
    let second_bookmark = second[0]["bookmark_id"].as_str().unwrap().to_string();

    let out = scratch.path().join("out");
    let waiting = std::process::Command::new(ferry_tests::binary("ferryctl"))
        .args([
            "--json", "failover", "--config", config, "--disk", &disk, "--latest", "--format", "raw", "--to-dir",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let processed = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        &disk,
        "--latest-processed",
        "--format",
        "raw",
        "--to-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        processed["disks"][0]["point"], first["bookmark_id"],
        "--latest-processed waited or saw the held point"
    );
    let lift = ferryctl(&["tune", "--config", config, "bandwidth_cap_bytes_per_sec=0"]);
    assert!(lift.success, "{}", lift.stderr);
    let waited = waiting.wait_with_output().unwrap();
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let report: serde_json::Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(
        report["disks"][0]["point"],
        second_bookmark.as_str(),
        "--latest did not wait for the cache"
    );
}

/// A recovery plan: groups in order, scripts given the failover id and outputs, a failing
/// script stops the run, `--resume` goes on from the failed group only.
#[tokio::test]
async fn a_plan_runs_groups_in_order_stops_at_a_failing_script_and_resumes() {
    use std::os::unix::fs::PermissionsExt;
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let scratch = tempfile::tempdir().unwrap();
    // Two machines, a disk each.
    let mut disks = Vec::new();
    let mut machines = Vec::new();
    for name in ["db", "app"] {
        let agent = Agent::register(&appliance);
        let image = ext4_image(scratch.path(), name, 24 * MIB, &[("f", name.as_bytes())]);
        agent.configure(&[&image], "");
        let point = wait_for_points(&appliance, &passes(&agent, &[]))[0].clone();
        disks.push(point["disk_id"].as_str().unwrap().to_string());
        machines.push(agent.identity().machine_id.to_string());
    }
    let log = scratch.path().join("calls.log");
    let script = |name: &str, exit: i32| {
        let path = scratch.path().join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{name} $FERRY_PLAN_GROUP $FERRY_FAILOVER_ID $(echo \"$FERRY_OUTPUTS\" | wc -l)\" >> {}\nexit {exit}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let (pre, post) = (script("pre", 0), script("post", 0));
    let failing = script("failing", 3);
    let plan = scratch.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "name = \"erp\"\n[[groups]]\nname = \"databases\"\nmachines = [\"{}\"]\npre_script = {pre:?}\npost_script = {post:?}\n\
             manual = \"check the database\"\n[[groups]]\nname = \"apps\"\ndisks = [\"{}\"]\npre_script = {failing:?}\npost_script = {post:?}\n",
            &machines[0][..8],
            disks[1]
        ),
    )
    .unwrap();
    let config = appliance.dir.to_str().unwrap();
    let out = scratch.path().join("out");
    let args = |extra: &[&str]| {
        let mut all = vec![
            "--json",
            "plan",
            "run",
            plan.to_str().unwrap(),
            "--config",
            config,
            "--latest",
            "--format",
            "raw",
            "--yes",
        ];
        all.extend_from_slice(&["--to-dir", out.to_str().unwrap()]);
        all.extend_from_slice(extra);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let first = ferryctl(&args(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    let error = |run: &ferry_tests::Run| run.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        !first.success && error(&first).contains("group \"apps\" failed"),
        "{}",
        first.stdout
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 3, "{calls}");
    assert!(lines[0].starts_with("pre databases "), "{calls}");
    assert!(
        lines[1].starts_with("post databases ") && lines[1].ends_with(" 1"),
        "one output: {calls}"
    );
    assert!(lines[2].starts_with("failing apps "), "{calls}");
    let group_id = lines[0].split(' ').nth(2).unwrap();
    assert_eq!(
        lines[1].split(' ').nth(2),
        Some(group_id),
        "pre and post see the same failover id"
    );
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the failed group failed over nothing"
    );
    assert_eq!(listed[0]["failover_id"], group_id);
    assert_eq!(listed[0]["disks"][0]["disk_id"], disks[0].as_str());

    // Resuming without a fix fails the same way; with the script fixed, only "apps" runs.
    std::fs::copy(&pre, &failing).unwrap();
    let resumed = ferryctl(&args(&["--resume"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(resumed.success, "{}", resumed.stderr);
    let report = resumed.json();
    assert_eq!(report["failovers"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(report["failovers"][0]["disks"][0]["disk_id"], disks[1].as_str());
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), 5, "{calls}");
    assert!(calls.lines().nth(3).unwrap().starts_with("pre apps "), "{calls}");
    // A changed plan is not resumed.
    std::fs::write(&plan, std::fs::read_to_string(&plan).unwrap() + "\n# edited\n").unwrap();
    let changed = ferryctl(&args(&["--resume"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !changed.success && error(&changed).contains("the plan changed"),
        "{}",
        changed.stdout
    );
}
