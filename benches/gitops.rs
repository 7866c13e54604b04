//! Git destination benchmark: the initial commit of a 10 000-object export (`BENCH_OBJECTS`)
//! into a bare repository, a no-change export, and a one-object change, each timed end to
//! end with `dr-syncer export` (median and range of `BENCH_REPS`, ≥ 3). Run with
//! `make bench-gitops`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dr_syncer_testkit::bench::{Samples, Table, reps};
use dr_syncer_testkit::git::bare_repo;
use dr_syncer_testkit::objects::mixed_namespace;

fn export(from: &Path, to: &Path, cache: &Path) -> f64 {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["export", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--mapping-name", "bench", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let objects = mixed_namespace("bench", n);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(src.join("objects.json"), serde_json::to_vec(&list).unwrap()).unwrap();
    let (mut initial, mut noop, mut change) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..reps() {
        let repo = bare_repo(tmp.path(), &format!("r{i}.git"));
        let cache = tmp.path().join(format!("cache{i}"));
        initial.push(export(&src, &repo, &cache));
        noop.push(export(&src, &repo, &cache));
        let mut changed = objects.clone();
        changed[1]["data"]["flag"] = serde_json::json!(format!("changed-{i}"));
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": changed});
        let src2 = tmp.path().join(format!("src-changed{i}"));
        std::fs::create_dir_all(&src2).unwrap();
        std::fs::write(
            src2.join("objects.json"),
            serde_json::to_vec(&list).unwrap(),
        )
        .unwrap();
        change.push(export(&src2, &repo, &cache));
    }
    println!(
        "\n## Git destination: {n} objects, whole `dr-syncer export` runs ({} each)",
        initial.len()
    );
    let mut t = Table::new(&["step", "wall median (s)", "wall range (s)"]);
    for (name, runs) in [
        ("initial commit + push", initial),
        ("no change (no commit)", noop),
        ("one object changed: commit + push", change),
    ] {
        t.row(vec![
            name.to_string(),
            format!("{:.2}", runs.median()),
            runs.spread(2),
        ]);
    }
    t.print("git destination");
}
