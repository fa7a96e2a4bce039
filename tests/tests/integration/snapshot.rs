//! Point-in-time passes with the real ferry-agent, ferryd and ferryctl: an image file on a
//! loop-mounted XFS (reflink) is rewritten block by block the whole time the agent reads it;
//! every point taken with `snapshot = "reflink"` restores to a state that one instant of the
//! writer's log explains, and the same check fails for `snapshot = "none"` (live reads), so
//! the check can fail. An LVM logical volume is read from an LVM snapshot where device-mapper
//! exists.

use ferry_tests::{ferryctl, Agent, Appliance, Ferryd, LoopMount};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::failover::{run_ok, wait_for_points};

const BLOCK: usize = 4096;
const BLOCKS: usize = 4096; // a 16 MiB image

/// A block as the writer writes it: its index, the write's sequence number, then a filler.
fn block(index: usize, seq: u64) -> Vec<u8> {
    let mut bytes = vec![(seq % 251) as u8 + 1; BLOCK];
    bytes[..8].copy_from_slice(&(index as u64).to_le_bytes());
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    bytes
}

/// Writes random blocks of `image`, each with the next sequence number, until `stop`; the log
/// holds, in order, the block each sequence number went to (entry i is seq i + 1).
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(image: &Path) -> Writer {
        let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
        let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (stop_flag, written) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut seq = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let index = (rng % BLOCKS as u64) as usize;
                seq += 1;
                file.write_all_at(&block(index, seq), (index * BLOCK) as u64).unwrap();
                written.lock().unwrap().push(index as u32);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Writer {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn log(&self) -> Vec<u32> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether `restored` is the image after exactly the first P writes of `log` for some P (the
/// highest sequence number it holds): every block must hold its last write at or before P.
/// Returns the first block that says otherwise.
fn explained_by_one_instant(restored: &[u8], log: &[u32]) -> Result<u64, String> {
    let seq_of = |index: usize| {
        let bytes = &restored[index * BLOCK..(index + 1) * BLOCK];
        assert_eq!(
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            index as u64,
            "block {index} holds another block's bytes"
        );
        u64::from_le_bytes(bytes[8..16].try_into().unwrap())
    };
    let newest = (0..BLOCKS).map(seq_of).max().unwrap_or(0);
    assert!(newest as usize <= log.len(), "a write the log does not have");
    let mut expected = vec![0u64; BLOCKS];
    for (i, index) in log[..newest as usize].iter().enumerate() {
        expected[*index as usize] = i as u64 + 1;
    }
    for (index, want) in expected.iter().enumerate() {
        let found = seq_of(index);
        if found != *want {
            return Err(format!(
                "block {index} holds write {found}, but after write {newest} it held write {want}"
            ));
        }
    }
    Ok(newest)
}

/// Three passes of the agent over `image` with `snapshot` while the writer runs; for each
/// point, whether one instant of the writer's log explains it.
async fn points_under_writes(mode: &str) -> Option<(Vec<Result<u64, String>>, Vec<serde_json::Value>)> {
    let scratch = tempfile::tempdir().unwrap();
    let fs = LoopMount::new(scratch.path(), "xfs")?;
    let image = fs.mount.join("disk.img");
    let initial: Vec<u8> = (0..BLOCKS).flat_map(|i| block(i, 0)).collect();
    std::fs::write(&image, &initial).unwrap();
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    // Reads at 4 MB/s: a pass takes about 4 s, long enough for thousands of writes.
    std::fs::write(
        &agent.config,
        format!(
            "state_dir = {:?}\n[[disks]]\npath = {:?}\nsnapshot = {mode:?}\n[scan]\nread_rate_bytes_per_sec = 4000000\n",
            agent.state_dir.to_str().unwrap(),
            image.to_str().unwrap()
        ),
    )
    .unwrap();
    let writer = Writer::start(&image);
    let mut reports = Vec::new();
    for _ in 0..3 {
        let run = agent.run_once(&[]);
        assert!(run.success, "ferry-agent run --once: {}", run.stderr);
        reports.extend(run.json().as_array().cloned().unwrap());
    }
    let log = writer.log();
    drop(writer);
    let status = agent.status().expect("the agent's status");
    let points = wait_for_points(&appliance, &reports);
    let config = appliance.dir.to_str().unwrap();
    let mut verdicts = Vec::new();
    for point in &points {
        let out = scratch.path().join("restored.raw");
        let _ = std::fs::remove_file(&out);
        run_ok(&[
            "--json",
            "restore",
            "--config",
            config,
            "--disk",
            point["disk_id"].as_str().unwrap(),
            "--point",
            point["bookmark_id"].as_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        verdicts.push(explained_by_one_instant(&std::fs::read(&out).unwrap(), &log));
    }
    let listed = ferryctl(&[
        "--json",
        "points",
        "--config",
        config,
        "--disk",
        points[0]["disk_id"].as_str().unwrap(),
    ]);
    assert!(listed.success, "{}", listed.stderr);
    Some((verdicts, vec![listed.json(), status]))
}

#[tokio::test]
async fn reflink_passes_read_one_instant_and_live_reads_do_not() {
    let Some((verdicts, shown)) = points_under_writes("reflink").await else {
        return;
    };
    for (number, verdict) in verdicts.iter().enumerate() {
        let newest = verdict
            .as_ref()
            .unwrap_or_else(|e| panic!("reflink point {} is not one instant: {e}", number + 1));
        assert!(*newest > 0, "the writer had written before the pass");
    }
    // The points say how they were taken, and the agent shows how long writes were held.
    let tags: Vec<&str> = shown[0]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["tag"].as_str())
        .collect();
    assert_eq!(tags.len(), 3, "{}", shown[0]);
    assert!(
        tags.iter().all(|t| t.starts_with("snapshot reflink, writes held")),
        "{tags:?}"
    );
    eprintln!("reflink points: {verdicts:?}; tags {tags:?}");
    let disk = &shown[1]["disks"][0];
    assert_eq!(disk["snapshot"], "reflink", "{disk}");
    assert!(disk["pass"]["hold_ms"].is_f64(), "no hold time shown: {disk}");

    // The same check on live reads finds a state no instant had.
    let Some((verdicts, shown)) = points_under_writes("none").await else {
        return;
    };
    eprintln!("live-read points: {verdicts:?}");
    assert!(
        verdicts.iter().any(|v| v.is_err()),
        "live reads under writes gave only consistent points: the check cannot tell ({verdicts:?})"
    );
    let tags: Vec<&str> = shown[0]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["tag"].as_str())
        .collect();
    assert!(
        tags.iter().all(|t| t.starts_with("live read, not point-in-time")),
        "{tags:?}"
    );
    assert_eq!(shown[1]["disks"][0]["snapshot"], "none");
}

/// `snapshot = "lvm"` on a logical volume (a volume group on a loop device): the pass reads an
/// LVM snapshot, the point restores equal to the volume, and the snapshot is removed after the
/// pass. Needs device-mapper and the LVM tools; skipped, saying so, where either is missing.
#[tokio::test]
async fn lvm_passes_read_a_snapshot_that_is_removed_afterwards() {
    let sh = ferry_tests::sh;
    if std::fs::OpenOptions::new()
        .read(true)
        .open("/dev/mapper/control")
        .is_err()
        || !sh("command -v lvcreate").0
    {
        eprintln!("skipped: needs device-mapper (/dev/mapper/control) and the LVM tools (lvm2)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let backing = scratch.path().join("pv.img");
    let vg = format!("ferrytest{}", std::process::id());
    let (made, loop_device) = sh(&format!(
        "truncate -s 256M {b} && d=$(losetup -f --show {b}) && pvcreate -q $d >/dev/null && vgcreate -q {vg} $d >/dev/null && lvcreate -q -L 64M -n data {vg} >/dev/null && echo $d",
        b = backing.display()
    ));
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("vgremove -q -f {} ; losetup -d {}", self.0, self.1)])
                .output();
        }
    }
    let _cleanup = Cleanup(vg.clone(), loop_device.clone());
    assert!(made, "a volume group on a loop device could not be made");
    let volume = format!("/dev/{vg}/data");
    let mut data = vec![0u8; 64 << 20];
    ferry_harness::datagen::DataGenerator::new(3, ferry_harness::datagen::Mix::MIXED).fill(&mut data[..32 << 20]);
    let device = std::fs::OpenOptions::new().write(true).open(&volume).unwrap();
    device.write_all_at(&data, 0).unwrap();
    device.sync_all().unwrap();
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    std::fs::write(
        &agent.config,
        format!(
            "state_dir = {:?}\n[[disks]]\npath = {volume:?}\nsnapshot = \"lvm\"\n",
            agent.state_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let run = agent.run_once(&[]);
    assert!(run.success, "ferry-agent run --once: {}", run.stderr);
    let reports = run.json().as_array().cloned().unwrap();
    let point = &wait_for_points(&appliance, &reports)[0];
    assert!(
        point["tag"].as_str().unwrap_or_default().starts_with("snapshot lvm"),
        "{point}"
    );
    let (_, volumes) = sh(&format!("lvs --noheadings -o lv_name {vg}"));
    assert!(!volumes.contains("ferry-snapshot"), "the snapshot was left: {volumes}");
    let out = scratch.path().join("restored.raw");
    run_ok(&[
        "--json",
        "restore",
        "--config",
        appliance.dir.to_str().unwrap(),
        "--disk",
        point["disk_id"].as_str().unwrap(),
        "--point",
        point["bookmark_id"].as_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the restore differs from the volume"
    );
}

/// A held capture (a consistency group's prepare): a reflink clone, then the file system
/// frozen, then what changed in between laid over the clone. While it is held the writer's
/// writes wait, and the capture reads exactly what the frozen image holds, every time.
#[tokio::test]
async fn a_held_capture_is_the_image_at_the_freeze_while_writes_wait() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(fs) = LoopMount::new(scratch.path(), "xfs") else {
        return;
    };
    let image = fs.mount.join("held.img");
    let initial: Vec<u8> = (0..BLOCKS).flat_map(|i| block(i, 0)).collect();
    std::fs::write(&image, &initial).unwrap();
    let device = Arc::new(
        ferry_agent::device::Device::open(&ferry_agent::config::DiskConfig {
            path: image.clone(),
            name: None,
            identity: None,
            sector_size: None,
            snapshot: Default::default(),
            reprotect_from: None,
        })
        .unwrap(),
    );
    let writer = Writer::start(&image);
    let size = (BLOCKS * BLOCK) as u64;
    let mut overlays = Vec::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let mut held = ferry_agent::held::take(&device).unwrap();
        overlays.push(held.overlay_bytes);
        // Writes wait while the file system is frozen.
        let before = writer.log().len();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            writer.log().len(),
            before,
            "round {round}: a write completed while frozen"
        );
        let mut frozen = vec![0u8; size as usize];
        std::fs::File::open(&image)
            .unwrap()
            .read_exact_at(&mut frozen, 0)
            .unwrap();
        let mut captured = vec![0u8; size as usize];
        held.device.read_exact_at(&mut captured, 0).unwrap();
        held.release();
        assert!(
            captured == frozen,
            "round {round}: the capture differs from the frozen image"
        );
        assert!(explained_by_one_instant(&captured, &writer.log()).is_ok());
    }
    assert!(writer.log().len() > 100, "the writer went on after each release");
    // What was written between each clone and its freeze, and had to come from the overlay.
    eprintln!("overlay bytes per capture: {overlays:?}");
    assert!(
        overlays.iter().any(|&bytes| bytes > 0),
        "no write landed between a clone and its freeze: the overlay was never tested"
    );
}
