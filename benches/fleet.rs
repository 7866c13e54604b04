//! Fleet benchmark: `BENCH_FLEET_NAMESPACES` namespaces (1 000) of `BENCH_FLEET_OBJECTS`
//! mixed objects (100) each in a real apiserver, committed to git daemon on loopback, in
//! two layouts a platform team uses:
//!
//! - (A) one Continuous mapping selecting every namespace (`namespaceSelector`), one
//!   repository;
//! - (B) one Continuous mapping per namespace, a repository each.
//!
//! Measured per layout, each with a freshly started controller: time to the first complete
//! commit (every namespace in git), change → pushed commit for 100 single-object changes
//! spread over the namespaces (p50/p99), controller RSS (median of readings after each
//! change, and VmHWM with the startup), the WATCH requests the controller holds on the
//! apiserver (`apiserver_longrunning_requests`, less what was held before it started), and
//! the API requests served until the first complete commit, by verb (`apiserver_request_total`;
//! by resource on stderr).
//!
//! Goals (judged by the code; a figure of one run per layout is reported, not judged —
//! `BENCH_FLEET_REPS` runs more): first complete commit ≤ 60 s; p99 ≤ debounce + 2 s; peak
//! RSS ≤ 100 MB + 2 KB per watched object; the watches of (B) no more than (A)'s.
//!
//! Sharding: `BENCH_FLEET_REPLICAS=1,3` runs (B) once per replica count, the replicas
//! started with `--sharding` as the chart starts them (`replicaCount`); RSS and file
//! descriptors are then given for the largest replica and for all together.
//! `BENCH_FLEET_LAYOUTS=B` skips (A).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dr_syncer_testkit::bench::{
    Samples, Table, Verdict, controller_plane, proc_status_kib, start_controller,
};
use dr_syncer_testkit::envtest::{ControlPlane, requests_served, watch_requests};
use dr_syncer_testkit::git::{GitDaemon, bare_repo};
use dr_syncer_testkit::objects::{Applier, mixed_namespace};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

const DEBOUNCE_S: f64 = 1.0;
/// How long a layout may take to commit every namespace before it is reported as not done.
const FIRST_COMMIT_LIMIT: Duration = Duration::from_secs(600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

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

fn ns_name(i: usize) -> String {
    format!("fleet-{i:04}")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// One mapping, a `namespaceSelector` over every namespace.
    Selector,
    /// One mapping and repository per namespace.
    PerNamespace,
}

impl Layout {
    fn title(self, namespaces: usize, replicas: usize) -> String {
        let base = match self {
            Layout::Selector => "(A) one selector mapping".to_string(),
            Layout::PerNamespace => format!("(B) {namespaces} mappings"),
        };
        match replicas {
            1 => base,
            n => format!("{base}, {n} replicas (sharding)"),
        }
    }

    /// The repository holding namespace `ns`.
    fn repo(self, srv: &Path, ns: &str) -> PathBuf {
        match self {
            Layout::Selector => srv.join("fleet.git"),
            Layout::PerNamespace => srv.join(format!("{ns}.git")),
        }
    }
}

/// What one run of a layout measured.
#[derive(Default)]
struct Run {
    /// Seconds to the first commit of every namespace (`None`: not within the limit).
    first_commit: Option<f64>,
    latencies: Samples,
    rss_mb: Samples,
    /// VmHWM of the largest replica.
    hwm_mb: f64,
    /// VmHWM of every replica, added up.
    hwm_total_mb: f64,
    watches: Option<f64>,
    /// API requests by `"VERB resource"` from applying the mappings to the first complete commit
    /// (everything the apiserver served meanwhile: the controllers' requests, plus the
    /// mappings' own creation and the bench's few reads).
    requests: Option<std::collections::BTreeMap<String, f64>>,
    /// Namespaces not in git when the first-commit limit passed.
    missing: usize,
    /// The controllers' open file descriptors after the first commit (each watch is a
    /// connection of its own), all replicas together.
    fds: usize,
}

/// WATCH requests the apiserver holds now; `None` when an overloaded apiserver does not
/// answer within a minute (reported as such, never as a number).
async fn watches(client: &kube::Client) -> Option<f64> {
    for _ in 0..3 {
        let read = tokio::time::timeout(Duration::from_secs(20), watch_requests(client)).await;
        match read {
            Ok(Ok(n)) => return Some(n),
            Ok(Err(e)) => eprintln!("apiserver /metrics: {e}"),
            Err(_) => eprintln!("apiserver /metrics: no answer in 20 s"),
        }
    }
    None
}

/// Starts `replicas` controllers; more than one shard the mappings (`--sharding`).
fn start_controllers(plane: &ControlPlane, cache: &Path, replicas: usize) -> Vec<Child> {
    (0..replicas)
        .map(|i| {
            let instance = format!("fleet-replica-{i}");
            let mut extra = vec!["--instance", instance.as_str()];
            if replicas > 1 {
                extra.push("--sharding");
            }
            start_controller(
                Path::new(env!("CARGO_BIN_EXE_dr-syncer")),
                &plane.kubeconfig_path(),
                &cache.join(format!("replica-{i}")),
                &extra,
            )
        })
        .collect()
}

/// The mappings of `layout`, pointing at `daemon`.
fn mappings(layout: Layout, namespaces: usize, daemon: &GitDaemon) -> Vec<serde_json::Value> {
    let spec = |source: serde_json::Value, repo: &str| {
        let mut spec = json!({"replicationMode": "Continuous",
            "continuous": {"debounce": format!("{DEBOUNCE_S}s"), "maxDelay": "5s"},
            "destination": {"git": {"url": daemon.url(repo), "path": "dr"}}});
        for (k, v) in source.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    match layout {
        Layout::Selector => vec![
            json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "fleet", "namespace": "dr-syncer"},
            "spec": spec(json!({"namespaceSelector": {"matchLabels": {"generated": "yes"}}}), "fleet.git")}),
        ],
        Layout::PerNamespace => (0..namespaces)
            .map(|i| {
                let ns = ns_name(i);
                json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
                    "metadata": {"name": ns, "namespace": "dr-syncer"},
                    "spec": spec(json!({"sourceNamespace": ns}), &format!("{ns}.git"))})
            })
            .collect(),
    }
}

/// Whether `ns`'s ConfigMap `obj-00000` is in git (with `marker` in it, if given).
fn committed(layout: Layout, srv: &Path, ns: &str, marker: Option<&str>) -> bool {
    let repo = layout.repo(srv, ns);
    git(
        &repo,
        &[
            "show",
            &format!("main:dr/{ns}/core/configmaps/obj-00000.yaml"),
        ],
    )
    .is_some_and(|t| marker.is_none_or(|m| t.contains(m)))
}

#[allow(clippy::too_many_arguments)]
async fn run_layout(
    layout: Layout,
    replicas: usize,
    plane: &ControlPlane,
    client: &kube::Client,
    applier: &Applier,
    namespaces: usize,
    changes: usize,
    round: usize,
    work: &Path,
) -> Run {
    let srv = work.join(format!("srv-{round}"));
    let _ = std::fs::remove_dir_all(&srv);
    match layout {
        Layout::Selector => {
            bare_repo(&srv, "fleet.git");
        }
        Layout::PerNamespace => {
            for i in 0..namespaces {
                bare_repo(&srv, &format!("{}.git", ns_name(i)));
            }
        }
    }
    let daemon = GitDaemon::start(&srv);
    let before = watches(client).await;
    let requests_before = requests_served(client).await.ok();
    let mut controllers = start_controllers(plane, &work.join(format!("cache-{round}")), replicas);
    let maps = mappings(layout, namespaces, &daemon);
    let start = Instant::now();
    applier.apply_all(&maps, 16).await;
    let mut run = Run::default();
    // Every namespace committed: checked newest-first until one is missing.
    let mut pending: Vec<String> = (0..namespaces).map(ns_name).collect();
    while start.elapsed() < FIRST_COMMIT_LIMIT {
        while pending
            .last()
            .is_some_and(|ns| committed(layout, &srv, ns, None))
        {
            pending.pop();
        }
        if pending.is_empty() {
            run.first_commit = Some(start.elapsed().as_secs_f64());
            run.requests = match (requests_before, requests_served(client).await.ok()) {
                (Some(b), Some(now)) => Some(
                    now.into_iter()
                        .map(|(what, n)| {
                            let was = b.get(&what).copied().unwrap_or(0.0);
                            (what, n - was)
                        })
                        .filter(|(_, n)| *n > 0.0)
                        .collect(),
                ),
                _ => None,
            };
            if let Some(r) = &run.requests {
                eprintln!("API requests until the first complete commit: {r:?}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    run.missing = pending
        .iter()
        .filter(|ns| !committed(layout, &srv, ns, None))
        .count();
    eprintln!(
        "{}: first complete commit {:?}, {} namespaces missing",
        layout.title(namespaces, replicas),
        run.first_commit,
        run.missing
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.fds = controllers
        .iter()
        .map(|c| {
            std::fs::read_dir(format!("/proc/{}/fd", c.id()))
                .map(|d| d.count())
                .expect("the controller's /proc fd directory")
        })
        .sum();
    run.watches = match (before, watches(client).await) {
        (Some(b), Some(now)) => Some(now - b),
        _ => None,
    };
    let cms = |ns: &str| -> kube::Api<k8s_openapi::api::core::v1::ConfigMap> {
        kube::Api::namespaced(client.clone(), ns)
    };
    for i in 0..changes.min(if run.first_commit.is_some() {
        changes
    } else {
        0
    }) {
        let ns = ns_name((i * 37) % namespaces);
        let marker = format!("round-{round}-change-{i}");
        let t0 = Instant::now();
        cms(&ns)
            .patch(
                "obj-00000",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"flag": marker}})),
            )
            .await
            .unwrap();
        while !committed(layout, &srv, &ns, Some(&marker)) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "change {i} in {ns} never committed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run.latencies.push(t0.elapsed().as_secs_f64());
        let rss: u64 = controllers
            .iter()
            .map(|c| proc_status_kib(c.id(), "VmRSS:"))
            .sum();
        run.rss_mb.push(rss as f64 / 1024.0);
    }
    let hwm: Vec<f64> = controllers
        .iter()
        .map(|c| proc_status_kib(c.id(), "VmHWM:") as f64 / 1024.0)
        .collect();
    run.hwm_mb = hwm.iter().copied().fold(0.0, f64::max);
    run.hwm_total_mb = hwm.iter().sum();
    for c in &mut controllers {
        let _ = c.kill();
        let _ = c.wait();
    }
    // The next layout starts from no mappings.
    let api: kube::Api<dr_syncer::api::NamespaceMapping> =
        kube::Api::namespaced(client.clone(), "dr-syncer");
    for m in &maps {
        let name = m["metadata"]["name"].as_str().unwrap();
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    drop(daemon);
    run
}

#[tokio::main]
async fn main() {
    let namespaces = env_usize("BENCH_FLEET_NAMESPACES", 1000);
    let per_ns = env_usize("BENCH_FLEET_OBJECTS", 100);
    let changes = env_usize("BENCH_CHANGES", 100);
    let reps = env_usize("BENCH_FLEET_REPS", 1);
    let list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let replica_counts: Vec<usize> = list("BENCH_FLEET_REPLICAS", "1")
        .iter()
        .map(|s| {
            s.parse()
                .expect("BENCH_FLEET_REPLICAS: replica counts, e.g. 1,3")
        })
        .collect();
    let layouts: Vec<Layout> = list("BENCH_FLEET_LAYOUTS", "A,B")
        .iter()
        .map(|s| match s.as_str() {
            "A" => Layout::Selector,
            "B" => Layout::PerNamespace,
            other => panic!("BENCH_FLEET_LAYOUTS: {other:?} is not A or B"),
        })
        .collect();
    let objects = namespaces * per_ns;
    let crds: Vec<_> = dr_syncer::api::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let (plane, client, applier) = controller_plane(&crds).await;
    let t0 = Instant::now();
    for i in 0..namespaces {
        applier
            .apply_all(&mixed_namespace(&ns_name(i), per_ns), 32)
            .await;
    }
    eprintln!("{objects} objects applied in {:.0?}", t0.elapsed());
    let work = tempfile::tempdir().unwrap();
    let mut results: Vec<(Layout, usize, Vec<Run>)> = Vec::new();
    let mut round = 0;
    // One mapping cannot be spread: (A) runs on one replica only.
    let cases = layouts.iter().flat_map(|&l| {
        let counts = if l == Layout::Selector {
            vec![1]
        } else {
            replica_counts.clone()
        };
        counts.into_iter().map(move |r| (l, r))
    });
    for (layout, replicas) in cases.collect::<Vec<_>>() {
        let mut runs = Vec::new();
        for _ in 0..reps {
            runs.push(
                run_layout(
                    layout,
                    replicas,
                    &plane,
                    &client,
                    &applier,
                    namespaces,
                    changes,
                    round,
                    work.path(),
                )
                .await,
            );
            round += 1;
        }
        results.push((layout, replicas, runs));
    }
    print_results(namespaces, per_ns, changes, reps, &results);
}

fn print_results(
    namespaces: usize,
    per_ns: usize,
    changes: usize,
    reps: usize,
    results: &[(Layout, usize, Vec<Run>)],
) {
    let objects = namespaces * per_ns;
    let rss_goal = 100.0 + 2.0 * objects as f64 / 1024.0;
    println!(
        "\n## Fleet: {namespaces} namespaces × {per_ns} objects ({objects}), Continuous, debounce {DEBOUNCE_S} s, {changes} changes spread over the namespaces, {reps} run(s) per layout"
    );
    let mut t = Table::new(&["measure", "layout", "value", "goal", "verdict"]);
    let watches_a = results
        .iter()
        .find(|(l, _, _)| *l == Layout::Selector)
        .map(|(_, _, r)| Samples::from_iter(r.iter().filter_map(|r| r.watches)));
    for (layout, replicas, runs) in results {
        let replicas = *replicas;
        let title = layout.title(namespaces, replicas);
        let firsts = Samples::from_iter(runs.iter().filter_map(|r| r.first_commit));
        let all_done = firsts.len() == runs.len();
        t.row(vec![
            "first complete commit".into(),
            title.clone(),
            if all_done {
                format!("{:.1} s (range {} s)", firsts.median(), firsts.spread(1))
            } else {
                format!(
                    "not within {} s in {} of {} runs ({} of {namespaces} namespaces missing)",
                    FIRST_COMMIT_LIMIT.as_secs(),
                    runs.len() - firsts.len(),
                    runs.len(),
                    runs.iter().map(|r| r.missing).max().unwrap_or(0)
                )
            },
            "≤ 60 s".into(),
            if all_done {
                Verdict::judge(firsts.len(), firsts.median() <= 60.0, false).to_string()
            } else {
                "MISSED".into()
            },
        ]);
        let lat = Samples::from_iter(
            runs.iter()
                .flat_map(|r| r.latencies.values().iter().copied()),
        );
        if !lat.is_empty() {
            let goal = DEBOUNCE_S + 2.0;
            t.row(vec![
                "change -> pushed commit, p50 / p99".into(),
                title.clone(),
                format!("{:.2} s / {:.2} s", lat.quantile(0.5), lat.quantile(0.99)),
                format!("p99 ≤ {goal:.2} s"),
                Verdict::judge(lat.len(), lat.quantile(0.99) <= goal, false).to_string(),
            ]);
        }
        let rss = Samples::from_iter(runs.iter().flat_map(|r| r.rss_mb.values().iter().copied()));
        if !rss.is_empty() {
            t.row(vec![
                format!(
                    "controller RSS{}, median of {} readings",
                    if replicas > 1 { " (all replicas)" } else { "" },
                    rss.len()
                ),
                title.clone(),
                format!("{:.1} MB (range {} MB)", rss.median(), rss.spread(1)),
                "-".into(),
                "-".into(),
            ]);
        }
        let hwm = Samples::from_iter(runs.iter().map(|r| r.hwm_mb));
        t.row(vec![
            if replicas > 1 {
                "controller peak RSS (VmHWM, startup included), largest replica".into()
            } else {
                "controller peak RSS (VmHWM, startup included)".into()
            },
            title.clone(),
            format!("{:.1} MB (range {} MB)", hwm.median(), hwm.spread(1)),
            format!("≤ {rss_goal:.0} MB"),
            Verdict::judge(hwm.len(), hwm.median() <= rss_goal, false).to_string(),
        ]);
        if replicas > 1 {
            let total = Samples::from_iter(runs.iter().map(|r| r.hwm_total_mb));
            t.row(vec![
                "controller peak RSS, all replicas added up".into(),
                title.clone(),
                format!("{:.1} MB (range {} MB)", total.median(), total.spread(1)),
                "-".into(),
                "-".into(),
            ]);
        }
        let w = Samples::from_iter(runs.iter().filter_map(|r| r.watches));
        let (goal, verdict) = match (&watches_a, layout) {
            _ if w.len() < runs.len() => ("-".into(), "-".into()),
            (Some(a), Layout::PerNamespace) if !a.is_empty() => (
                format!("≤ (A)'s {:.0}", a.median()),
                Verdict::judge(w.len().min(a.len()), w.median() <= a.median(), false).to_string(),
            ),
            _ => ("-".into(), "-".into()),
        };
        // By verb: the resources are printed to stderr as each run reaches its commit.
        let requests: Vec<std::collections::BTreeMap<String, f64>> = runs
            .iter()
            .filter_map(|r| r.requests.as_ref())
            .map(|r| {
                let mut by_verb = std::collections::BTreeMap::new();
                for (what, n) in r {
                    let verb = what.split(' ').next().unwrap_or_default().to_string();
                    *by_verb.entry(verb).or_insert(0.0) += n;
                }
                by_verb
            })
            .collect();
        if !requests.is_empty() {
            let verbs: std::collections::BTreeSet<&String> =
                requests.iter().flat_map(|r| r.keys()).collect();
            let per_verb: Vec<String> = verbs
                .into_iter()
                .map(|verb| {
                    let n = Samples::from_iter(
                        requests.iter().map(|r| r.get(verb).copied().unwrap_or(0.0)),
                    );
                    format!("{verb} {:.0}", n.median())
                })
                .collect();
            t.row(vec![
                format!(
                    "API requests until the first complete commit (median of {})",
                    requests.len()
                ),
                title.clone(),
                per_verb.join(" · "),
                "-".into(),
                "-".into(),
            ]);
        }
        let fds = Samples::from_iter(runs.iter().map(|r| r.fds as f64));
        t.row(vec![
            "controller open file descriptors (all replicas)".into(),
            title.clone(),
            format!("{:.0}", fds.median()),
            "-".into(),
            "-".into(),
        ]);
        t.row(vec![
            "WATCH requests held on the apiserver".into(),
            title,
            if w.len() < runs.len() {
                format!(
                    "unreadable in {} of {} runs (the apiserver did not answer /metrics)",
                    runs.len() - w.len(),
                    runs.len()
                )
            } else {
                format!("{:.0}", w.median())
            },
            goal,
            verdict,
        ]);
    }
    t.print("fleet: first commit, change to commit, memory, watches");
}
