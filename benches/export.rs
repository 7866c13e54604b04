//! Export benchmark against the peer the issue names: loads N mixed objects (default
//! 10 000, `BENCH_OBJECTS`) into a real kube-apiserver, then runs, in the same session,
//! `dr-syncer export` and `kubectl get <same types> -o yaml`, three times each, and prints
//! a table of median wall time and peak RSS (GNU time). Run with `make bench-export`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dr_syncer_testkit::envtest::{ControlPlane, kubectl_path};
use dr_syncer_testkit::objects::{Applier, MIXED_TYPES, mixed_namespace};

/// Runs `cmd` under GNU time; returns (wall seconds, peak RSS MiB).
fn measure(program: &Path, args: &[String]) -> (f64, f64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("GNU time (Debian package `time`) is installed");
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let mut it = last.split_whitespace();
    let wall: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let rss_kib: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    (wall, rss_kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

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
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let to = tmp.path().join(format!("out-{i}")).display().to_string();
        let args = [
            "export",
            "--kubeconfig",
            &kubeconfig,
            "-n",
            "bench",
            "--to",
            &to,
            "-o",
            "json",
        ]
        .map(String::from);
        ours.push(measure(Path::new(env!("CARGO_BIN_EXE_dr-syncer")), &args));
        let args = [
            "--kubeconfig",
            &kubeconfig,
            "get",
            MIXED_TYPES,
            "-n",
            "bench",
            "-o",
            "yaml",
        ]
        .map(String::from);
        peer.push(measure(&kubectl_path().unwrap(), &args));
    }
    let row = |name: &str, runs: &[(f64, f64)]| {
        let wall = median(runs.iter().map(|r| r.0).collect());
        let rss = median(runs.iter().map(|r| r.1).collect());
        (name.to_string(), wall, rss)
    };
    let rows = [
        row("dr-syncer export", &ours),
        row("kubectl get -o yaml", &peer),
    ];
    println!("\nexport of {n} objects (median of 3 runs, same apiserver, same session)");
    println!(
        "{:<22} {:>10} {:>14} {:>16}",
        "tool", "wall (s)", "peak RSS (MiB)", "time vs kubectl"
    );
    for (name, wall, rss) in &rows {
        println!(
            "{name:<22} {wall:>10.2} {rss:>14.1} {:>15.2}x",
            wall / rows[1].1
        );
    }
}
