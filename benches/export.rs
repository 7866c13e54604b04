//! Export benchmark against the peer the issue names: loads N mixed objects (default
//! 10 000, `BENCH_OBJECTS`) into a real kube-apiserver, then runs, in the same session,
//! `dr-syncer export` and `kubectl get <same types> -o yaml`, `BENCH_REPS` (≥ 3) times each
//! in alternating order, and prints a table of median and range of wall time and peak RSS
//! (GNU time). Run with `make bench-export`.

use std::process::Command;
use std::time::Instant;

use dr_syncer_testkit::bench::{Samples, Table, gnu_time, reps, rotated, settle};

use dr_syncer_testkit::envtest::{ControlPlane, kubectl_path};
use dr_syncer_testkit::objects::{Applier, MIXED_TYPES, mixed_namespace};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let plane = ControlPlane::start().await.expect("control plane");
    let client = plane.client().await.unwrap();
    let load = Instant::now();
    Applier::new(client, "bench-loader")
        .apply_all(&mixed_namespace("bench", n), 32)
        .await;
    eprintln!("loaded {n} objects in {:.1}s", load.elapsed().as_secs_f64());

    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = plane.kubeconfig_path().display().to_string();
    let kubectl = kubectl_path().unwrap();
    // (wall s, peak RSS MiB) per tool: 0 = dr-syncer, 1 = kubectl.
    let mut runs: [(Samples, Samples); 2] = Default::default();
    for rep in 0..reps() {
        for tool in rotated(&[0usize, 1], rep) {
            let mut cmd;
            if tool == 0 {
                let to = tmp.path().join(format!("out-{rep}"));
                cmd = Command::new(env!("CARGO_BIN_EXE_dr-syncer"));
                cmd.args(["export", "--kubeconfig", &kubeconfig, "-n", "bench", "--to"])
                    .arg(&to)
                    .args(["-o", "json"]);
            } else {
                cmd = Command::new(&kubectl);
                cmd.args(["--kubeconfig", &kubeconfig, "get", MIXED_TYPES])
                    .args(["-n", "bench", "-o", "yaml"]);
            }
            settle();
            let t = gnu_time(&cmd);
            runs[tool].0.push(t.secs);
            runs[tool].1.push(t.peak_rss_kib as f64 / 1024.0);
        }
    }
    println!(
        "\n## Export of {n} objects: dr-syncer export vs kubectl get -o yaml (same apiserver, same session, {} runs each)",
        runs[0].0.len()
    );
    let mut t = Table::new(&[
        "tool",
        "wall median (s)",
        "wall range (s)",
        "x kubectl time",
        "peak RSS median (MiB)",
        "peak RSS range (MiB)",
    ]);
    for (name, (wall, rss)) in ["dr-syncer export", "kubectl get -o yaml"]
        .iter()
        .zip(&runs)
    {
        t.row(vec![
            name.to_string(),
            format!("{:.2}", wall.median()),
            wall.spread(2),
            format!("{:.2}", wall.median() / runs[1].0.median()),
            format!("{:.1}", rss.median()),
            rss.spread(1),
        ]);
    }
    t.print("export");
}
