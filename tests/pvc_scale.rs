//! A volume of 2 million small files, synced the way the DR Job does it (`pvc-sync` from a
//! `serve-volume` agent over SSH): both sides' peak RSS stay under the stated goals, on the
//! first copy and on a pass that finds nothing changed, and the copy is complete.
//!
//! Goals (the DR Job's default memory limit is 512 MiB, and a volume's file count must not
//! decide whether the Job fits):
//! - receiver: at most [`RECEIVER_GOAL_MIB`] — it keeps the manifest on the DR volume, and
//!   in memory 9 bytes per entry plus about 20 per file to transfer (measured: 90 MiB on
//!   the first copy, 59 MiB when nothing changed);
//! - sender: at most [`SENDER_GOAL_MIB`] — what it needs to serve requests (path, size,
//!   inode) goes to temporary files, so its memory does not grow with the file count
//!   (measured: 40 MiB).
//!
//! `PVC_SCALE_FILES` changes the count for a quick local run; CI runs the default.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dr_syncer_testkit::bench::{proc_status_kib, read_time_rss, tempfile_path};
use dr_syncer_testkit::volume::{VolumeServer, keygen};

/// Receiver peak RSS goal at 2 million files.
const RECEIVER_GOAL_MIB: u64 = 128;
/// Sender peak RSS goal at 2 million files.
const SENDER_GOAL_MIB: u64 = 64;
/// Files per directory.
const PER_DIR: usize = 1000;

/// Small files of 0 to 96 bytes, `PER_DIR` per directory. Writing two million files takes
/// minutes, so a complete tree (`done` names it) is kept for the next run.
fn populate(src: &Path, files: usize, done: &Path) {
    if done.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(src);
    let mut dir = PathBuf::new();
    for i in 0..files {
        if i % PER_DIR == 0 {
            dir = src.join(format!("d{:05}", i / PER_DIR));
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut f = std::fs::File::create(dir.join(format!("f{i:07}"))).unwrap();
        f.write_all(&i.to_le_bytes().repeat(i % 13)[..(i % 100).min(8 * (i % 13))])
            .unwrap();
    }
    std::fs::write(done, "").unwrap();
}

/// A destination with room for `files` inodes: tmpfs when it has them (the copy's fsyncs
/// cost nothing there, so the run measures memory, not the disk), else the target dir.
fn destination(files: usize) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let free_inodes = rustix::fs::statvfs(shm).map_or(0, |s| s.f_favail);
    if free_inodes > files as u64 + files as u64 / 10 {
        shm.join("dr-syncer-pvc-scale")
    } else {
        dr_syncer_testkit::target_dir().join("pvc-scale-dst")
    }
}

/// One sync: its JSON summary, the receiver's and the sender's peak RSS (MiB) and the
/// wall time. The agent is started per sync, so its peak is this sync's.
fn sync(bin: &Path, dir: &Path, src: &Path, dst: &Path) -> (serde_json::Value, u64, u64, f64) {
    let agent = VolumeServer::start(bin, dir, src);
    let host = std::fs::read_to_string(dir.join("agent_host.pub")).unwrap();
    std::fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{} {host}", agent.port),
    )
    .unwrap();
    let rss_file = tempfile_path("pvc-scale-rss");
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(bin)
        .args([
            "pvc-sync",
            "--from",
            &format!("ssh://127.0.0.1:{}", agent.port),
            "--output",
            "json",
            "--to",
        ])
        .arg(dst)
        .arg("--identity")
        .arg(dir.join("client"))
        .arg("--known-hosts")
        .arg(dir.join("known_hosts"))
        .output()
        .expect("/usr/bin/time (Debian package time; scripts/install-deps.sh)");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "pvc-sync failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sender_mib = proc_status_kib(agent.child.id(), "VmHWM:") / 1024;
    let receiver_mib = read_time_rss(&rss_file) / 1024;
    let _ = std::fs::remove_file(&rss_file);
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in: {text}"));
    (summary, receiver_mib, sender_mib, secs)
}

#[test]
fn pvc_scale_two_million_files_stay_within_memory_goals() {
    let files: usize = std::env::var("PVC_SCALE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dr-syncer"));
    let dir = dr_syncer_testkit::target_dir().join("pvc-scale");
    std::fs::create_dir_all(&dir).unwrap();
    let client = keygen(&dir.join("client"));
    let host = keygen(&dir.join("agent_host"));
    std::fs::write(dir.join("agent_host.pub"), &host).unwrap();
    std::fs::write(dir.join("authorized_keys"), format!("{client}\n")).unwrap();
    let src = dir.join(format!("src-{files}"));
    let started = Instant::now();
    populate(&src, files, &dir.join(format!("src-{files}.complete")));
    eprintln!("{files} files written in {:.0?}", started.elapsed());
    let dst = destination(files);
    let _ = std::fs::remove_dir_all(&dst);
    let cleanup = Cleanup(vec![dst.clone()]);

    let (first, first_recv, first_send, first_secs) = sync(&bin, &dir, &src, &dst);
    let (again, again_recv, again_send, again_secs) = sync(&bin, &dir, &src, &dst);
    eprintln!(
        "| sync | files | time (s) | receiver peak RSS (MiB) | sender peak RSS (MiB) |\n\
         | first copy | {files} | {first_secs:.1} | {first_recv} | {first_send} |\n\
         | nothing changed | {files} | {again_secs:.1} | {again_recv} | {again_send} |\n\
         goals: receiver <= {RECEIVER_GOAL_MIB} MiB, sender <= {SENDER_GOAL_MIB} MiB"
    );

    assert_eq!(first["filesTransferred"], files as u64, "{first}");
    assert_eq!(again["filesTransferred"], 0, "{again}");
    assert_eq!(again["filesUnchanged"], files as u64, "{again}");
    // The copy is the source: every directory has its files, with their bytes.
    let dirs = files.div_ceil(PER_DIR);
    let copied: usize = (0..dirs)
        .map(|d| {
            std::fs::read_dir(dst.join(format!("d{d:05}")))
                .unwrap()
                .count()
        })
        .sum();
    assert_eq!(copied, files);
    for i in [0, 1, 12, 999, files / 2 + 7, files - 1] {
        let rel = format!("d{:05}/f{i:07}", i / PER_DIR);
        assert_eq!(
            std::fs::read(dst.join(&rel)).unwrap(),
            std::fs::read(src.join(&rel)).unwrap(),
            "{rel}"
        );
    }
    for (what, mib, goal) in [
        ("receiver, first copy", first_recv, RECEIVER_GOAL_MIB),
        ("receiver, nothing changed", again_recv, RECEIVER_GOAL_MIB),
        ("sender, first copy", first_send, SENDER_GOAL_MIB),
        ("sender, nothing changed", again_send, SENDER_GOAL_MIB),
    ] {
        assert!(
            mib <= goal,
            "{what}: peak RSS {mib} MiB over the goal of {goal} MiB at {files} files"
        );
    }
    drop(cleanup);
}

/// Removes the copy however the test ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
