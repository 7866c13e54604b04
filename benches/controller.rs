//! Controller benchmark: a Continuous mapping over 10 000 objects (`BENCH_OBJECTS`) in a
//! real apiserver, committing to git daemon. Measures, for 100 single-object changes
//! (`BENCH_CHANGES`), the time from the change to the commit on the remote (p50/p99 against
//! the goals debounce + 0.5 s / + 2 s), and the controller's RSS (goal ≤ 150 MB).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dr_syncer_testkit::envtest::ControlPlane;
use dr_syncer_testkit::git::{GitDaemon, bare_repo};
use dr_syncer_testkit::objects::{Applier, mixed_namespace};
use kube::api::{Patch, PatchParams};
use serde_json::json;

const DEBOUNCE_S: f64 = 1.0;

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let changes: usize = std::env::var("BENCH_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    let applier = Applier::new(client.clone(), "bench");
    for crd in dr_syncer::api::crds() {
        applier.apply(&serde_json::to_value(&crd).unwrap()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dr-syncer"}}))
        .await;
    applier.apply_all(&mixed_namespace("bench", n), 32).await;
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut controller = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["controller", "--kubeconfig"])
        .arg(plane.kubeconfig_path())
        .args([
            "--namespace",
            "dr-syncer",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--cache-dir",
        ])
        .arg(tmp.path().join("cache"))
        .env("DR_SYNCER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping", "metadata": {"name": "bench", "namespace": "dr-syncer"},
            "spec": {"replicationMode": "Continuous", "continuous": {"debounce": "1s", "maxDelay": "5s"}, "sourceNamespace": "bench",
                     "destination": {"git": {"url": daemon.url("dr.git"), "path": "bench"}}}}))
        .await;
    let start = Instant::now();
    while git(&repo, &["rev-parse", "main"]).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no first commit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "first commit of {n} objects after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "bench");
    let mut latencies = Vec::new();
    for i in 0..changes {
        let marker = format!("change-{i}");
        let t0 = Instant::now();
        cms.patch(
            "obj-00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"flag": marker}})),
        )
        .await
        .unwrap();
        loop {
            if git(
                &repo,
                &["show", "main:bench/bench/core/configmaps/obj-00000.yaml"],
            )
            .is_some_and(|t| t.contains(&marker))
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "change {i} never committed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(t0.elapsed().as_secs_f64());
    }
    let (rss, hwm) = (
        rss_kib(controller.id(), "VmRSS:"),
        rss_kib(controller.id(), "VmHWM:"),
    );
    let _ = controller.kill();
    let _ = controller.wait();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "\ncontroller, Continuous mapping over {n} objects, {changes} single-object changes (debounce {DEBOUNCE_S}s)"
    );
    println!("{:<34} {:>10} {:>12}", "measure", "value", "goal");
    println!(
        "{:<34} {:>9.2}s {:>11.2}s",
        "change -> pushed commit, p50",
        pct(&latencies, 0.5),
        DEBOUNCE_S + 0.5
    );
    println!(
        "{:<34} {:>9.2}s {:>11.2}s",
        "change -> pushed commit, p99",
        pct(&latencies, 0.99),
        DEBOUNCE_S + 2.0
    );
    println!(
        "{:<34} {:>9.2}s {:>12}",
        "change -> pushed commit, max",
        latencies[latencies.len() - 1],
        "-"
    );
    println!(
        "{:<34} {:>8.1}MB {:>10}MB",
        "controller RSS now",
        rss as f64 / 1024.0,
        150
    );
    println!(
        "{:<34} {:>8.1}MB {:>10}MB",
        "controller RSS peak",
        hwm as f64 / 1024.0,
        150
    );
}
