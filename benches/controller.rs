//! Controller benchmark: a Continuous mapping over 10 000 objects (`BENCH_OBJECTS`) in a
//! real apiserver, committing to git daemon. Measures, for 100 single-object changes
//! (`BENCH_CHANGES`), the time from the change to the commit on the remote (p50/p99 against
//! the goals debounce + 0.5 s / + 2 s), and the controller's RSS (read after every change;
//! goal: peak ≤ 150 MB). Verdicts are computed, on the samples named in the table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dr_syncer_testkit::bench::{
    Samples, Table, Verdict, controller_plane, proc_status_kib, start_controller,
};
use dr_syncer_testkit::git::{GitDaemon, bare_repo};
use dr_syncer_testkit::objects::mixed_namespace;
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
    let crds: Vec<_> = dr_syncer::api::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let (plane, client, applier) = controller_plane(&crds).await;
    applier.apply_all(&mixed_namespace("bench", n), 32).await;
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let mut controller = start_controller(
        Path::new(env!("CARGO_BIN_EXE_dr-syncer")),
        &plane.kubeconfig_path(),
        &tmp.path().join("cache"),
        &[],
    );
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
    let first_commit_secs = start.elapsed().as_secs_f64();
    eprintln!("first commit of {n} objects after {first_commit_secs:.1}s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "bench");
    let mut latencies = Samples::default();
    let mut rss_mb = Samples::default();
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
        rss_mb.push(proc_status_kib(controller.id(), "VmRSS:") as f64 / 1024.0);
    }
    let first_commit = first_commit_secs;
    let hwm_mb = proc_status_kib(controller.id(), "VmHWM:") as f64 / 1024.0;
    let _ = controller.kill();
    let _ = controller.wait();
    let (p50, p99) = (latencies.quantile(0.5), latencies.quantile(0.99));
    println!(
        "\n## Controller: a Continuous mapping over {n} objects, {changes} single-object changes (debounce {DEBOUNCE_S} s)"
    );
    let mut t = Table::new(&["measure", "value", "goal", "verdict"]);
    let judged =
        |met: bool, samples: &Samples| Verdict::judge(samples.len(), met, false).to_string();
    t.row(vec![
        "first complete commit".into(),
        format!("{first_commit:.1} s"),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        "change -> pushed commit, p50".into(),
        format!("{p50:.2} s"),
        format!("≤ {:.2} s", DEBOUNCE_S + 0.5),
        judged(p50 <= DEBOUNCE_S + 0.5, &latencies),
    ]);
    t.row(vec![
        "change -> pushed commit, p99".into(),
        format!("{p99:.2} s"),
        format!("≤ {:.2} s", DEBOUNCE_S + 2.0),
        judged(p99 <= DEBOUNCE_S + 2.0, &latencies),
    ]);
    t.row(vec![
        "change -> pushed commit, max".into(),
        format!("{:.2} s", latencies.max()),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        format!("controller RSS, median of {} readings", rss_mb.len()),
        format!("{:.1} MB (range {} MB)", rss_mb.median(), rss_mb.spread(1)),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        "controller peak RSS (VmHWM, startup included)".into(),
        format!("{hwm_mb:.1} MB"),
        "≤ 150 MB".into(),
        judged(hwm_mb <= 150.0, &rss_mb),
    ]);
    t.print("change to commit and memory");
}
