//! The controller as a process against a real apiserver and a real git server: manual and
//! scheduled replication (the original's scenarios 16 and 17), no reconcile loop while
//! quiet (23), and the install hint when the CRDs are missing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Running, Text, eventually, free_addr, install_crds, start_controller_with};
use dr_syncer::api::NamespaceMapping;
use dr_syncer::sops::Identities;
use dr_syncer_testkit::envtest::{self, ControlPlane};
use dr_syncer_testkit::git::{GitDaemon, bare_repo, git};
use dr_syncer_testkit::objects::Applier;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

/// Starts the controller; its log goes to `target/test-logs/<name>.log` (kept for debugging).
fn start_controller(plane: &ControlPlane, ns: &str, cache: &Path, name: &str) -> Running {
    start_controller_with(&plane.kubeconfig_path(), ns, cache, name, &free_addr(), &[])
}

/// The shared control plane with the CRDs installed, an admin client, an applier and the
/// controller's namespace `ns`.
async fn shared_plane_with(ns: &str) -> (&'static ControlPlane, kube::Client, Applier) {
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let applier = Applier::new(client.clone(), "test");
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await;
    (plane, client, applier)
}

/// A temporary directory with a bare repository `dr.git` served by git daemon on loopback.
fn git_site() -> (tempfile::TempDir, std::path::PathBuf, GitDaemon) {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    (tmp, repo, daemon)
}

async fn wait_for<F: Fn(&NamespaceMapping) -> bool>(
    api: &Api<NamespaceMapping>,
    name: &str,
    secs: u64,
    what: &str,
    f: F,
) -> NamespaceMapping {
    eventually(what, Duration::from_secs(secs), || async {
        let nm = api.get(name).await.unwrap();
        if f(&nm) { Ok(nm) } else { Err(nm.status) }
    })
    .await
}

/// Sets `dr-syncer.io/sync-now` to `value` and waits until the mapping recorded it as
/// handled (`status.lastSyncNow`).
async fn trigger(
    nms: &Api<NamespaceMapping>,
    name: &str,
    value: &str,
    what: &str,
) -> NamespaceMapping {
    let patch = json!({"metadata": {"annotations": {"dr-syncer.io/sync-now": value}}});
    nms.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_for(nms, name, 60, what, |nm| {
        nm.status.as_ref().and_then(|s| s.last_sync_now.as_deref()) == Some(value)
    })
    .await
}

fn source_objects(ns: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": "shop"}}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns}, "data": {"mode": "prod"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "admin", "namespace": ns}, "type": "Opaque", "stringData": {"password": "hunter2-manual"}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": ns},
               "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    ]
}

fn mapping(name: &str, ns: &str, mode: Value, url: &str, recipient: &str) -> Value {
    let mut spec = json!({"sourceNamespace": ns, "resourceTypes": ["configmaps", "secrets", "statefulsets"],
        "destination": {"git": {"url": url, "branch": "main", "path": name}},
        "secrets": {"ageRecipients": [recipient]}});
    json_merge(&mut spec, &mode);
    json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping", "metadata": {"name": name, "namespace": "dr-syncer"}, "spec": spec})
}

fn json_merge(a: &mut Value, b: &Value) {
    for (k, v) in b.as_object().unwrap() {
        a[k] = v.clone();
    }
}

/// The file at `path` on `main` of `repo`, if committed.
fn committed_file(repo: &Path, path: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["show", &format!("main:{path}")])
        .current_dir(repo)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn files(repo: &Path, path: &str) -> String {
    if git(repo, &["for-each-ref", "refs/heads/main"]).is_empty() {
        return String::new();
    }
    git(repo, &["ls-tree", "-r", "--name-only", "main", path])
}

#[tokio::test]
async fn controller_manual_and_scheduled_modes_commit_to_git() {
    let (plane, client, applier) = shared_plane_with("dr-syncer").await;
    for o in source_objects("case16")
        .into_iter()
        .chain(source_objects("case17"))
    {
        applier.apply(&o).await;
    }
    let (tmp, repo, daemon) = git_site();
    let url = daemon.url("dr.git");
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let _controller = start_controller(
        plane,
        "dr-syncer",
        &tmp.path().join("cache"),
        "controller-manual-scheduled",
    );
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), "dr-syncer");

    // 16: Manual — nothing before the trigger.
    applier
        .apply(&mapping(
            "manual",
            "case16",
            json!({"replicationMode": "Manual"}),
            &url,
            &recipient,
        ))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        files(&repo, "manual").is_empty(),
        "manual mapping synced without a trigger"
    );
    let nm = trigger(&nms, "manual", "1", "first manual sync").await;
    let status = nm.status.unwrap();
    assert_eq!(
        status.phase,
        Some(dr_syncer::api::MappingPhase::Synced),
        "{status:?}"
    );
    let commit = status.last_commit.expect("lastCommit");
    assert_eq!(git(&repo, &["rev-parse", "main"]).trim(), commit.sha);
    let listed = files(&repo, "manual");
    assert!(
        listed.contains("manual/case16/core/configmaps/settings.yaml")
            && listed.contains("manual/case16/core/secrets/admin.sops.yaml"),
        "{listed}"
    );
    let sts = git(
        &repo,
        &["show", "main:manual/case16/apps/statefulsets/db.yaml"],
    );
    assert!(
        sts.contains("replicas: 0") && sts.contains("dr-syncer.io/original-replicas: \"3\""),
        "{sts}"
    );
    let stats = status.sync_stats.unwrap();
    assert_eq!(
        (stats.objects, stats.secrets_encrypted, stats.added),
        (4, 1, 4),
        "{stats:?}"
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Synced" && c.status == "True")
    );
    // A second trigger works and commits the change.
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "case16"}, "data": {"mode": "dr-test"}})).await;
    let nm = trigger(&nms, "manual", "2", "second manual sync").await;
    assert_ne!(nm.status.unwrap().last_commit.unwrap().sha, commit.sha);
    assert!(
        git(
            &repo,
            &["show", "main:manual/case16/core/configmaps/settings.yaml"]
        )
        .contains("dr-test")
    );

    // 23: quiet — no commit and no status write.
    let (rv, head) = (
        nm.metadata.resource_version.clone(),
        git(&repo, &["rev-parse", "main"]),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        nms.get("manual").await.unwrap().metadata.resource_version,
        rv,
        "status churn while quiet"
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "commit while quiet"
    );

    // 17: Scheduled — a first sync at once, then on the schedule.
    applier
        .apply(&mapping(
            "scheduled",
            "case17",
            json!({"replicationMode": "Scheduled", "schedule": "* * * * *"}),
            &url,
            &recipient,
        ))
        .await;
    let nm = wait_for(&nms, "scheduled", 60, "first scheduled sync", |nm| {
        nm.status
            .as_ref()
            .is_some_and(|s| s.last_sync_time.is_some() && s.next_sync_time.is_some())
    })
    .await;
    let status = nm.status.unwrap();
    let (last, next) = (
        status.last_sync_time.unwrap().0,
        status.next_sync_time.unwrap().0,
    );
    assert!(
        next > last && (next - last).get_seconds() <= 61,
        "nextSyncTime {next} after {last}"
    );
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late", "namespace": "case17"}, "data": {"a": "1"}})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wait = Duration::try_from(next - jiff::Timestamp::now()).unwrap_or_default();
    if wait > Duration::from_secs(2) {
        assert!(
            !files(&repo, "scheduled").contains("late.yaml"),
            "synced before its schedule"
        );
    }
    wait_for(&nms, "scheduled", 90, "scheduled sync", |nm| {
        nm.status
            .as_ref()
            .and_then(|s| s.last_sync_time.as_ref())
            .is_some_and(|t| t.0 > last)
    })
    .await;
    assert!(files(&repo, "scheduled").contains("scheduled/case17/core/configmaps/late.yaml"));
    // Secrets in every commit are encrypted.
    let history = git(&repo, &["log", "-p", "--all"]);
    assert!(
        !history.contains("hunter2") && !history.contains("aHVudGVyMi1tYW51YWw="),
        "plaintext secret in git history"
    );
}

#[tokio::test]
async fn controller_exits_with_an_install_hint_without_crds() {
    let plane = ControlPlane::start().await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["controller", "--kubeconfig"])
        .arg(plane.kubeconfig_path())
        .args(["--http-addr", &free_addr()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CRDs are not installed")
            && stderr.contains("dr-syncer crds | kubectl apply"),
        "{stderr}"
    );
}

async fn wait_until<F: Fn() -> bool>(secs: u64, what: &str, f: F) {
    eventually(what, Duration::from_secs(secs), || {
        std::future::ready(f().then_some(()))
    })
    .await
}

#[tokio::test]
async fn controller_continuous_mode_propagates_update_create_delete() {
    let ns = "dr-syncer-cont";
    let (plane, client, applier) = shared_plane_with(ns).await;
    for o in source_objects("case18") {
        applier.apply(&o).await;
    }
    let (tmp, repo, daemon) = git_site();
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let http = free_addr();
    let _controller = start_controller_with(
        &plane.kubeconfig_path(),
        ns,
        &tmp.path().join("cache"),
        "controller-continuous",
        &http,
        // The watch lists 4 s late, which would open a window between the startup export
        // and the watch's first listing.
        &["--test-watch-start-delay-ms", "4000"],
    );
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    let mode = json!({"replicationMode": "Continuous", "continuous": {"debounce": "1s", "maxDelay": "5s", "resyncInterval": "1h"}});
    let mut nm = mapping(
        "continuous",
        "case18",
        mode,
        &daemon.url("dr.git"),
        &recipient,
    );
    nm["metadata"]["namespace"] = json!(ns);
    applier.apply(&nm).await;
    wait_for(&nms, "continuous", 60, "first continuous sync", |nm| {
        nm.status.as_ref().is_some_and(|s| s.last_commit.is_some())
    })
    .await;
    let cm_path = "continuous/case18/core/configmaps/settings.yaml";
    let show = |p: &str| committed_file(&repo, p);
    // The watch starts 4 s late. Had the startup export not waited for the watch's first
    // listing, this change would fall between the two: in the watch's baseline, missing from
    // the export, and left for the resync an hour later.
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "early", "namespace": "case18"}, "data": {"made": "right after the first sync"}})).await;
    wait_until(
        30,
        "a change right after the first sync is exported",
        || show("continuous/case18/core/configmaps/early.yaml").is_some(),
    )
    .await;
    // Let the watches list their baseline before changing anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "case18"}, "data": {"mode": "updated"}})).await;
    wait_until(30, "update propagated", || {
        show(cm_path).is_some_and(|t| t.contains("updated"))
    })
    .await;
    let update_latency = start.elapsed();
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new-one", "namespace": "case18"}, "data": {"a": "1"}})).await;
    wait_until(30, "create propagated", || {
        show("continuous/case18/core/configmaps/new-one.yaml").is_some()
    })
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "case18");
    let kustomization = show("continuous/case18/kustomization.yaml").unwrap();
    assert!(
        kustomization.contains("- core/configmaps/new-one.yaml"),
        "a created object is listed in its kustomization: {kustomization}"
    );
    cms.delete("new-one", &Default::default()).await.unwrap();
    wait_until(30, "delete propagated", || {
        show("continuous/case18/core/configmaps/new-one.yaml").is_none()
    })
    .await;
    assert!(
        !show("continuous/case18/kustomization.yaml")
            .unwrap()
            .contains("new-one"),
        "a deleted object leaves its kustomization"
    );
    // A Secret change is encrypted into its file, and its fingerprint is recorded.
    let secret_path = "continuous/case18/core/secrets/admin.sops.yaml";
    let fingerprints_before = show("continuous/.dr-syncer/fingerprints.yaml").unwrap();
    applier.apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "admin", "namespace": "case18"}, "type": "Opaque", "stringData": {"password": "rotated-by-continuous"}})).await;
    wait_until(30, "secret change propagated", || {
        show(secret_path).is_some_and(|t| {
            dr_syncer::sops::decrypt(&t, &Identities::from_identity(identity.clone()))
                .is_ok_and(|v| v["data"]["password"] == json!(B64.encode("rotated-by-continuous")))
        })
    })
    .await;
    let secret_file = show(secret_path).unwrap();
    assert!(!secret_file.contains("rotated-by-continuous"));
    assert_ne!(
        show("continuous/.dr-syncer/fingerprints.yaml").unwrap(),
        fingerprints_before,
        "the new fingerprint is recorded"
    );
    // Those changes were patches, and a full export now finds nothing to change: the
    // patched tree is exactly what a full export writes.
    let (_, metrics) = http_get(&http, "/metrics");
    let patches = metrics
        .lines()
        .find(|l| {
            l.starts_with("dr_syncer_syncs_total")
                && l.contains("mapping=\"dr-syncer-cont/continuous\"")
                && l.contains("path=\"patch\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        patches >= 4.0,
        "update, create, delete and the Secret were patches: {metrics}"
    );
    let head_before_full = git(&repo, &["rev-parse", "main"]);
    trigger(&nms, "continuous", "full-1", "full sync after patches").await;
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head_before_full,
        "a full export changed what the patches wrote"
    );
    // 23 with watches running: a quiet minute writes no commit and no status.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rv, head) = (
        nms.get("continuous")
            .await
            .unwrap()
            .metadata
            .resource_version,
        git(&repo, &["rev-parse", "main"]),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        nms.get("continuous")
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv,
        "status churn in a quiet minute"
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "commit in a quiet minute"
    );
    // A status-only change of a watched object is not a change of the export.
    let head = git(&repo, &["rev-parse", "main"]);
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client, "case18");
    sts.patch_status(
        "db",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3}}),
        ),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "status-only change committed"
    );
    assert!(
        update_latency < Duration::from_secs(10),
        "update took {update_latency:?}"
    );
    // Deleting the mapping stops its watch although its namespace stays quiet.
    let watch_gauge = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("dr_syncer_continuous_watch{")
                    && l.contains("mapping=\"dr-syncer-cont/continuous\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    };
    assert_eq!(
        watch_gauge(&http_get(&http, "/metrics").1).as_deref(),
        Some("1")
    );
    nms.delete("continuous", &Default::default()).await.unwrap();
    eventually(
        "the watch of a deleted mapping stops",
        Duration::from_secs(45),
        || async {
            let metrics = http_get(&http, "/metrics").1;
            if watch_gauge(&metrics).as_deref() == Some("0") {
                Ok(())
            } else {
                Err(Text(metrics))
            }
        },
    )
    .await;
}

/// The chart's RBAC (charts/dr-syncer/templates/rbac.yaml) for a release namespace.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test]
async fn controller_leader_election_one_writer_and_takeover() {
    let ns = "dr-syncer-le";
    let (plane, client, applier) = shared_plane_with(ns).await;
    for o in source_objects("case-le") {
        applier.apply(&o).await;
    }
    let (tmp, repo, daemon) = git_site();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let le = ["--leader-election", "--lease-duration", "4"];
    let mut a = Some(start_controller_with(
        &plane.kubeconfig_path(),
        ns,
        &tmp.path().join("cache-a"),
        "replica-a",
        &addr_a,
        &le,
    ));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    let holder = || async {
        leases
            .get_opt("dr-syncer-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
    };
    let leader = eventually("somebody took the lease", Duration::from_secs(30), holder).await;
    // The standby starts once the lease is held. (Started at the same instant, both may
    // briefly think they lead: the loser's pushes are fenced and it exits to be
    // restarted — correct, but it would leave this test without a standby to take over.)
    let mut b = Some(start_controller_with(
        &plane.kubeconfig_path(),
        ns,
        &tmp.path().join("cache-b"),
        "replica-b",
        &addr_b,
        &le,
    ));
    let mut nm = mapping(
        "le",
        "case-le",
        json!({"replicationMode": "Manual"}),
        &daemon.url("dr.git"),
        &recipient,
    );
    nm["metadata"]["namespace"] = json!(ns);
    nm["metadata"]["annotations"] = json!({"dr-syncer.io/sync-now": "1"});
    applier.apply(&nm).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    wait_for(&nms, "le", 60, "sync by the leader", |nm| {
        nm.status.as_ref().and_then(|s| s.last_sync_now.as_deref()) == Some("1")
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let reporters = || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reporting_instance)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        reporters().await,
        [leader.clone()].into_iter().collect(),
        "only the leader writes"
    );
    // Health and metrics of the leader.
    let leader_addr = if leader == "replica-a" {
        &addr_a
    } else {
        &addr_b
    };
    assert_eq!(http_get(leader_addr, "/healthz").0, 200);
    assert_eq!(http_get(leader_addr, "/readyz").0, 200);
    let (code, body) = http_get(leader_addr, "/metrics");
    assert_eq!(code, 200);
    for metric in [
        "dr_syncer_last_success_timestamp_seconds{mapping=\"dr-syncer-le/le\"}",
        "dr_syncer_commits_total{mapping=\"dr-syncer-le/le\"} 1",
        "dr_syncer_sync_duration_seconds_count",
        "dr_syncer_objects_exported{",
    ] {
        assert!(
            body.contains(metric),
            "{metric} missing from /metrics:\n{body}"
        );
    }
    // SIGKILL the leader; a trigger made while nobody leads is not lost.
    let killed_at = Instant::now();
    if leader == "replica-a" {
        a.take()
    } else {
        b.take()
    };
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "case-le"}, "data": {"mode": "after-failover"}})).await;
    trigger(&nms, "le", "2", "sync by the new leader").await;
    let takeover = killed_at.elapsed();
    let new_leader = holder().await.unwrap();
    assert_ne!(new_leader, leader);
    assert!(
        git(
            &repo,
            &["show", "main:le/case-le/core/configmaps/settings.yaml"]
        )
        .contains("after-failover")
    );
    assert!(
        takeover < Duration::from_secs(4 + 15),
        "takeover took {takeover:?}"
    );
    drop((a, b));
}

#[tokio::test]
async fn controller_checks_remote_clusters_and_cluster_mappings() {
    let dr = ControlPlane::start().await.unwrap();
    let other = ControlPlane::start().await.unwrap();
    let ns = "dr-syncer-clusters";
    let (plane, client, applier) = shared_plane_with(ns).await;
    let kubeconfig_secret = |name: &str, kc: &kube::config::Kubeconfig| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
               "stringData": {"kubeconfig": serde_saphyr::to_string(kc).unwrap()}})
    };
    applier
        .apply(&kubeconfig_secret("dr-kubeconfig", &dr.kubeconfig()))
        .await;
    // A kubeconfig for the DR server that trusts another cluster's CA: TLS must fail.
    let mut wrong = dr.kubeconfig();
    wrong.clusters[0]
        .cluster
        .as_mut()
        .unwrap()
        .certificate_authority_data = other.kubeconfig().clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority_data
        .clone();
    applier.apply(&kubeconfig_secret("wrong-ca", &wrong)).await;
    for (name, secret) in [("dr", "dr-kubeconfig"), ("spoofed", "wrong-ca")] {
        applier.apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": name, "namespace": ns},
            "spec": {"kubeconfigSecretRef": {"name": secret}, "healthCheckInterval": "1h"}})).await;
    }
    applier.apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "ClusterMapping", "metadata": {"name": "to-dr", "namespace": ns},
        "spec": {"targetCluster": "dr"}})).await;
    applier.apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "ClusterMapping", "metadata": {"name": "to-nowhere", "namespace": ns},
        "spec": {"targetCluster": "missing"}})).await;
    let tmp = tempfile::tempdir().unwrap();
    let _controller = start_controller(plane, ns, &tmp.path().join("cache"), "controller-clusters");
    let rcs: Api<dr_syncer::api::RemoteCluster> = Api::namespaced(client.clone(), ns);
    let cms: Api<dr_syncer::api::ClusterMapping> = Api::namespaced(client.clone(), ns);
    let status_of = |name: &'static str| {
        let rcs = rcs.clone();
        async move { rcs.get(name).await.unwrap().status.unwrap_or_default() }
    };
    eventually("health reported", Duration::from_secs(30), || async {
        let health = (
            status_of("dr").await.health,
            status_of("spoofed").await.health,
        );
        if health.0.is_some() && health.1.is_some() {
            Ok(())
        } else {
            Err(health)
        }
    })
    .await;
    let healthy = status_of("dr").await;
    assert_eq!(
        healthy.health,
        Some(dr_syncer::api::Health::Healthy),
        "{healthy:?}"
    );
    assert_eq!(healthy.version.as_deref(), Some("v1.37.2"));
    let spoofed = status_of("spoofed").await;
    assert_eq!(
        spoofed.health,
        Some(dr_syncer::api::Health::Unhealthy),
        "a server whose certificate the CA does not sign is never trusted"
    );
    // Fixing the Secret re-checks the cluster without waiting for the interval (1h).
    applier
        .apply(&kubeconfig_secret("wrong-ca", &dr.kubeconfig()))
        .await;
    eventually(
        "the Secret change triggers a re-check",
        Duration::from_secs(30),
        || async {
            let health = status_of("spoofed").await.health;
            if health == Some(dr_syncer::api::Health::Healthy) {
                Ok(())
            } else {
                Err(health)
            }
        },
    )
    .await;
    let failed = eventually("ClusterMapping phases", Duration::from_secs(30), || async {
        let (a, b) = (
            cms.get("to-dr").await.unwrap().status.unwrap_or_default(),
            cms.get("to-nowhere")
                .await
                .unwrap()
                .status
                .unwrap_or_default(),
        );
        if a.phase == Some(dr_syncer::api::ClusterMappingPhase::Ready)
            && b.phase == Some(dr_syncer::api::ClusterMappingPhase::Failed)
        {
            Ok(b)
        } else {
            Err((a.phase, b.phase))
        }
    })
    .await;
    assert!(failed.message.unwrap().contains("missing"));
}

#[tokio::test]
async fn controller_direct_apply_into_dr_cluster_prunes_only_its_own_objects() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let dr = ControlPlane::start().await.unwrap();
    let dr_client = dr.client().await.unwrap();
    let ns = "dr-syncer-direct";
    let src = "case00d";
    let applier = Applier::new(client.clone(), "test");
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": src, "labels": {"team": "shop"}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dr-kubeconfig", "namespace": ns}, "stringData": {"kubeconfig": serde_saphyr::to_string(&dr.kubeconfig()).unwrap()}}),
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "dr", "namespace": ns}, "spec": {"kubeconfigSecretRef": {"name": "dr-kubeconfig"}}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": src}, "data": {"k": "v"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gone-soon", "namespace": src}, "data": {"k": "v"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": src}, "stringData": {"password": "direct-pw"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": src},
               "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": src}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-np", "namespace": src}, "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": src}, "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
    ] {
        applier.apply(&o).await;
    }
    // Someone else's object in the DR namespace: pruning must never touch it.
    let dr_applier = Applier::new(dr_client.clone(), "someone-else");
    dr_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": src}}))
        .await;
    dr_applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-ours", "namespace": src}, "data": {"x": "1"}})).await;
    let tmp = tempfile::tempdir().unwrap();
    let _controller = start_controller(plane, ns, &tmp.path().join("cache"), "controller-direct");
    applier.apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping", "metadata": {"name": "direct", "namespace": ns, "annotations": {"dr-syncer.io/sync-now": "1"}},
        "spec": {"replicationMode": "Manual", "sourceNamespace": src, "resourceTypes": ["*"], "destination": {"cluster": {"remoteClusterRef": {"name": "dr"}}}}})).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    let nm = wait_for(&nms, "direct", 60, "direct sync", |nm| {
        nm.status
            .as_ref()
            .is_some_and(|s| s.last_sync_now.as_deref() == Some("1") || s.last_error.is_some())
    })
    .await;
    assert!(
        nm.status.as_ref().unwrap().last_error.is_none(),
        "{:?}",
        nm.status
    );
    let cms: Api<ConfigMap> = Api::namespaced(dr_client.clone(), src);
    let cfg = cms.get("cfg").await.unwrap();
    assert_eq!(cfg.data.unwrap()["k"], "v");
    assert_eq!(
        cfg.metadata.labels.unwrap()["dr-syncer.io/managed-by"],
        "dr-syncer-direct.direct"
    );
    let secret = Api::<Secret>::namespaced(dr_client.clone(), src)
        .get("creds")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"direct-pw");
    let web = Api::<Deployment>::namespaced(dr_client.clone(), src)
        .get("web")
        .await
        .unwrap();
    assert_eq!(web.spec.replicas, Some(0));
    assert_eq!(
        web.metadata.annotations.unwrap()["dr-syncer.io/original-replicas"],
        "3"
    );
    let svcs: Api<Service> = Api::namespaced(dr_client.clone(), src);
    assert_eq!(
        svcs.get("db")
            .await
            .unwrap()
            .spec
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("None"),
        "headless stays headless"
    );
    assert_eq!(
        svcs.get("web-np")
            .await
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap()[0]
            .node_port,
        Some(30080),
        "explicit nodePort kept"
    );
    // A deletion on the source is pruned on DR; the foreign object stays.
    Api::<ConfigMap>::namespaced(client.clone(), src)
        .delete("gone-soon", &Default::default())
        .await
        .unwrap();
    nms.patch(
        "direct",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"dr-syncer.io/sync-now": "2"}}})),
    )
    .await
    .unwrap();
    let nm = wait_for(&nms, "direct", 60, "second direct sync", |nm| {
        nm.status
            .as_ref()
            .is_some_and(|s| s.last_sync_now.as_deref() == Some("2") || s.last_error.is_some())
    })
    .await;
    assert!(
        nm.status.as_ref().unwrap().last_error.is_none(),
        "{:?}",
        nm.status
    );
    assert!(
        cms.get_opt("gone-soon").await.unwrap().is_none(),
        "deleted on the source, pruned on DR"
    );
    assert!(
        cms.get_opt("not-ours").await.unwrap().is_some(),
        "objects dr-syncer did not apply are never pruned"
    );
    assert_eq!(nm.status.unwrap().sync_stats.unwrap().deleted, 1);
}

#[tokio::test]
async fn controller_killed_mid_batch_converges_after_restart() {
    let ns = "dr-syncer-crash";
    let src = "case-crash";
    let (plane, client, applier) = shared_plane_with(ns).await;
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": src}}))
        .await;
    let cms: Vec<Value> = (0..200)
        .map(|i| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i:03}"), "namespace": src}, "data": {"v": "1"}}))
        .collect();
    applier.apply_all(&cms, 16).await;
    let (tmp, repo, daemon) = git_site();
    let cache = tmp.path().join("cache");
    let mut controller = Some(start_controller(plane, ns, &cache, "controller-crash"));
    let nm = json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping", "metadata": {"name": "crash", "namespace": ns},
        "spec": {"replicationMode": "Continuous", "continuous": {"debounce": "1s", "maxDelay": "3s"}, "sourceNamespace": src,
                 "resourceTypes": ["configmaps"], "destination": {"git": {"url": daemon.url("dr.git"), "path": "crash"}}}});
    applier.apply(&nm).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    wait_for(&nms, "crash", 60, "first sync", |nm| {
        nm.status.as_ref().is_some_and(|s| s.last_commit.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A big batch of changes; the controller is SIGKILLed while it works on it.
    let updated: Vec<Value> = cms
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c["data"]["v"] = json!("2");
            c
        })
        .collect();
    applier.apply_all(&updated, 16).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    controller.take();
    // Changes made while no controller runs must not be lost either.
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-new", "namespace": src}, "data": {"v": "2"}})).await;
    let _restarted = start_controller(plane, ns, &cache, "controller-crash-2");
    eventually("repository converged", Duration::from_secs(60), || {
        let files = files(&repo, "crash");
        let cm_files = files.lines().filter(|l| l.contains("/configmaps/")).count();
        let converged = cm_files == 201
            && git(&repo, &["grep", "-c", "v: \"2\"", "main", "--", "crash"])
                .lines()
                .count()
                == 201;
        std::future::ready(if converged {
            Ok(())
        } else {
            Err(Text(format!("\n{files}")))
        })
    })
    .await;
    let fsck = Command::new("git")
        .args(["fsck", "--strict"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    // No duplicates, nothing stray: exactly the namespace, 201 ConfigMaps and kustomizations.
    let listed = files(&repo, "crash");
    let objects: Vec<&str> = listed
        .lines()
        .filter(|l| !l.ends_with("kustomization.yaml") && !l.contains("/."))
        .collect();
    assert_eq!(objects.len(), 202, "{listed}");
}

#[tokio::test]
async fn controller_breaker_holds_until_the_batch_is_released() {
    let (ns, src) = ("dr-syncer-breaker", "case-breaker");
    let (plane, client, applier) = shared_plane_with(ns).await;
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": src}}))
        .await;
    for i in 0..4 {
        applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}"), "namespace": src}, "data": {"a": "1"}})).await;
    }
    let (tmp, repo, daemon) = git_site();
    let _controller = start_controller(plane, ns, &tmp.path().join("cache"), "controller-breaker");
    let nm = |trigger: &str| {
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
        "metadata": {"name": "guarded", "namespace": ns, "annotations": {"dr-syncer.io/sync-now": trigger}},
        "spec": {"replicationMode": "Manual", "sourceNamespace": src, "resourceTypes": ["configmaps"],
                 "destination": {"git": {"url": daemon.url("dr.git"), "path": "guarded"}}}})
    };
    applier.apply(&nm("1")).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    wait_for(&nms, "guarded", 60, "first sync", |nm| {
        nm.status.as_ref().and_then(|s| s.last_sync_now.as_deref()) == Some("1")
    })
    .await;
    let head = git(&repo, &["rev-parse", "main"]);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), src);
    for i in 0..3 {
        cms.delete(&format!("c{i}"), &Default::default())
            .await
            .unwrap();
    }
    applier.apply(&nm("2")).await;
    let held = wait_for(&nms, "guarded", 60, "held", |nm| {
        nm.status.as_ref().and_then(|s| s.phase) == Some(dr_syncer::api::MappingPhase::Held)
    })
    .await;
    let message = held.status.unwrap().last_error.unwrap().message;
    assert!(message.contains("would delete 3 of 5 objects"), "{message}");
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "nothing committed while held"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    assert!(
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("MassDeletionHeld"))
    );
    // A wrong id releases nothing; the id from the status releases this batch.
    let batch = message
        .split("release batch ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let release =
        |v: &str| json!({"metadata": {"annotations": {"dr-syncer.io/allow-mass-deletion": v}}});
    nms.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(release("000000000000")),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "a wrong id releases nothing"
    );
    nms.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(release(&batch)),
    )
    .await
    .unwrap();
    wait_for(&nms, "guarded", 30, "released sync", |nm| {
        nm.status.as_ref().and_then(|s| s.last_sync_now.as_deref()) == Some("2")
    })
    .await;
    assert!(
        !files(&repo, "guarded").contains("c0.yaml") && files(&repo, "guarded").contains("c3.yaml")
    );
}

#[tokio::test]
async fn controller_continuous_direct_apply_propagates_changes() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let dr = ControlPlane::start().await.unwrap();
    let (ns, src) = ("dr-syncer-direct18", "case18d");
    let applier = Applier::new(client.clone(), "test");
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": src}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dr-kubeconfig", "namespace": ns}, "stringData": {"kubeconfig": serde_saphyr::to_string(&dr.kubeconfig()).unwrap()}}),
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "dr", "namespace": ns}, "spec": {"kubeconfigSecretRef": {"name": "dr-kubeconfig"}}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": src}, "data": {"v": "1"}}),
    ] {
        applier.apply(&o).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _controller = start_controller(plane, ns, &tmp.path().join("cache"), "controller-direct18");
    applier.apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping", "metadata": {"name": "cont", "namespace": ns},
        "spec": {"replicationMode": "Continuous", "continuous": {"debounce": "1s", "maxDelay": "5s"}, "sourceNamespace": src,
                 "resourceTypes": ["configmaps"], "destination": {"cluster": {"remoteClusterRef": {"name": "dr"}}}}})).await;
    let dr_cms: Api<ConfigMap> = Api::namespaced(dr.client().await.unwrap(), src);
    let value_on_dr = |name: &'static str| {
        let api = dr_cms.clone();
        async move {
            api.get_opt(name)
                .await
                .unwrap()
                .and_then(|c| c.data)
                .and_then(|d| d.get("v").cloned())
        }
    };
    let until = |what: &'static str, name: &'static str, want: Option<&'static str>| {
        let check = value_on_dr;
        async move {
            let what = format!("{what} reaches the DR cluster");
            eventually(&what, Duration::from_secs(30), || async {
                let got = check(name).await;
                if got.as_deref() == want {
                    Ok(())
                } else {
                    Err(got)
                }
            })
            .await
        }
    };
    until("first sync", "a", Some("1")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": src}, "data": {"v": "2"}})).await;
    until("update", "a", Some("2")).await;
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": src}, "data": {"v": "new"}})).await;
    until("create", "b", Some("new")).await;
    Api::<ConfigMap>::namespaced(client, src)
        .delete("b", &Default::default())
        .await
        .unwrap();
    until("delete", "b", None).await;
}

/// Continuous mode over a `namespaceSelector`: changes in selected namespaces are
/// committed, unselected ones ignored; a namespace that gains the label is exported and
/// then followed like the others, one that loses it leaves the repository.
#[tokio::test]
async fn controller_continuous_namespace_selector_follows_labels() {
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let applier = Applier::new(client.clone(), "test");
    let ns = "dr-syncer-sel";
    let label = "dr-cont-sel";
    let namespace = |name: &str, selected: bool| {
        let labels = if selected {
            json!({label: "on"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    };
    let cm = |ns: &str, name: &str, v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"v": v}});
    applier.apply(&namespace(ns, false)).await;
    for (n, selected) in [("sel-a", true), ("sel-b", true), ("sel-other", false)] {
        applier.apply(&namespace(n, selected)).await;
        applier.apply(&cm(n, "conf", "1")).await;
    }
    let (tmp, repo, daemon) = git_site();
    let _controller = start_controller(plane, ns, &tmp.path().join("cache"), "controller-selector");
    applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "selected", "namespace": ns},
            "spec": {"namespaceSelector": {"matchLabels": {label: "on"}}, "destinationNamespaceSuffix": "-dr",
                     "resourceTypes": ["configmaps"], "replicationMode": "Continuous",
                     "continuous": {"debounce": "1s", "maxDelay": "5s", "resyncInterval": "1h"},
                     "destination": {"git": {"url": daemon.url("dr.git"), "branch": "main", "path": "sel"}}}}))
        .await;
    let show = |p: &str| committed_file(&repo, &format!("sel/{p}"));
    let conf = |n: &str| format!("{n}-dr/core/configmaps/conf.yaml");
    wait_until(60, "first export", || show(&conf("sel-a")).is_some()).await;
    assert!(show(&conf("sel-b")).is_some());
    assert!(
        show(&conf("sel-other")).is_none(),
        "unselected namespace exported"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A change in a selected namespace.
    applier.apply(&cm("sel-a", "conf", "2")).await;
    wait_until(30, "change in sel-a", || {
        show(&conf("sel-a")).is_some_and(|t| t.contains("v: '2'") || t.contains("v: \"2\""))
    })
    .await;
    // A change in an unselected namespace is not exported.
    applier.apply(&cm("sel-other", "conf", "2")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(show(&conf("sel-other")).is_none());
    // The label arrives: the namespace is exported and followed from then on.
    applier.apply(&namespace("sel-other", true)).await;
    wait_until(30, "sel-other joined", || {
        show(&conf("sel-other")).is_some()
    })
    .await;
    applier.apply(&cm("sel-other", "late", "1")).await;
    wait_until(30, "new object in the joined namespace", || {
        show("sel-other-dr/core/configmaps/late.yaml").is_some()
    })
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "sel-other");
    cms.delete("late", &Default::default()).await.unwrap();
    wait_until(30, "deletion in the joined namespace", || {
        show("sel-other-dr/core/configmaps/late.yaml").is_none()
    })
    .await;
    // The label goes: its directory leaves the repository.
    applier.apply(&namespace("sel-b", false)).await;
    wait_until(30, "sel-b left", || {
        show("sel-b-dr/kustomization.yaml").is_none()
    })
    .await;
    assert!(show(&conf("sel-a")).is_some() && show(&conf("sel-other")).is_some());
    let root = show("kustomization.yaml").unwrap();
    assert!(!root.contains("sel-b-dr"), "{root}");
}

/// Series names (`name{labels}` as exposed) and the `# TYPE` names of a scrape.
fn scraped_names(scrape: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut series = Vec::new();
    let mut types = Vec::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.push((n.to_string(), t.to_string()));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let (s, _) = line.rsplit_once(' ').unwrap();
            series.push(s.to_string());
        }
    }
    (series, types)
}

/// Whether metric `name` is one the scrape exposes: a series of that name, or a family
/// whose type gives it that name (`_total` of a counter, `_bucket`/`_sum`/`_count` of a
/// histogram) although it has no series yet.
fn exported(name: &str, series: &[String], types: &[(String, String)]) -> bool {
    let base = |s: &String| s.split('{').next().unwrap_or_default().to_string();
    series.iter().any(|s| base(s) == name)
        || types.iter().any(|(n, t)| {
            (t == "gauge" && n == name)
                || (t == "counter" && format!("{n}_total") == name)
                || (t == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|x| format!("{n}{x}") == name))
        })
}

fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(dr_syncer_testkit::tools::promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Issue 17 §1–2: the chart's alerting rules and Grafana dashboard against what the
/// controller really exports. A controller syncs a mapping into git; its `/metrics` scrape
/// gives the metric names and the label set; every metric the rules and panels use must be
/// in it; `promtool check rules` parses every alert and panel query; `promtool test rules`
/// fires each alert on series named and labelled as scraped (kube-state-metrics' DaemonSet
/// series and Prometheus' `up` are the only ones not from the controller) and keeps quiet
/// for a healthy mapping.
#[tokio::test]
async fn monitoring_rules_and_dashboard_use_what_the_controller_exports() {
    let ns = "dr-syncer-mon";
    let (plane, client, applier) = shared_plane_with(ns).await;
    for o in source_objects("case-mon") {
        applier.apply(&o).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let addr = free_addr();
    let _controller = start_controller_with(
        &plane.kubeconfig_path(),
        ns,
        &tmp.path().join("cache"),
        "monitoring",
        &addr,
        &["--default-rpo-target", "20m"],
    );
    let mut nm = mapping(
        "mon",
        "case-mon",
        json!({"replicationMode": "Manual", "rpoTarget": "15m"}),
        &daemon.url("dr.git"),
        &recipient,
    );
    nm["metadata"]["namespace"] = json!(ns);
    nm["metadata"]["annotations"] = json!({"dr-syncer.io/sync-now": "1"});
    applier.apply(&nm).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    wait_for(&nms, "mon", 60, "first sync", |nm| {
        nm.status.as_ref().and_then(|s| s.last_sync_now.as_deref()) == Some("1")
    })
    .await;
    let (code, scrape) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let key = format!("{ns}/mon");
    for want in [
        format!("dr_syncer_rpo_target_seconds{{mapping=\"{key}\"}} 900"),
        "dr_syncer_leader 1".to_string(),
    ] {
        assert!(
            scrape.lines().any(|l| l == want),
            "{want} not in:\n{scrape}"
        );
    }
    let (series, types) = scraped_names(&scrape);
    let mapping_labels = series
        .iter()
        .find(|s| s.starts_with("dr_syncer_last_success_timestamp_seconds{"))
        .map(|s| {
            s.trim_start_matches("dr_syncer_last_success_timestamp_seconds")
                .to_string()
        })
        .unwrap_or_else(|| panic!("no last_success series in:\n{scrape}"));
    assert_eq!(mapping_labels, format!("{{mapping=\"{key}\"}}"));

    // The chart's rules and dashboard, rendered as a user installs them.
    let render = |template: &str| -> Value {
        let out = Command::new(dr_syncer_testkit::tools::helm())
            .args([
                "template",
                "dr",
                "charts/dr-syncer",
                "--namespace",
                "dr-syncer",
            ])
            .args([
                "--set",
                "monitoring.rules.enabled=true",
                "--set",
                "monitoring.dashboard.enabled=true",
            ])
            .args(["--show-only", template])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
    };
    let rule = render("templates/prometheusrule.yaml");
    let dashboard_cm = render("templates/dashboard.yaml");
    assert_eq!(dashboard_cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(dashboard_cm["data"]["dr-syncer.json"].as_str().unwrap()).unwrap();
    let rules = &rule["spec"]["groups"][0]["rules"];
    let work = tmp.path().join("promtool");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("alerts.yaml"),
        serde_saphyr::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();

    // Every metric used is exported (no rename slips through).
    let panel_exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    // (PVC metrics appear with the first volume sync: the PVC replication test checks
    // those against its scrape.)
    let used = common::chart_metric_names();
    for name in used.iter().filter(|n| !n.starts_with("dr_syncer_pvc_")) {
        assert!(
            exported(name, &series, &types),
            "{name}, used by the chart's alerts or dashboard, is not exported by the controller:\n{scrape}"
        );
    }
    assert!(used.len() >= 12, "{used:?}");
    assert!(panel_exprs.len() >= 12, "{panel_exprs:?}");

    // Every alert and every panel query parses.
    let (ok, out) = promtool(&work, &["check", "rules", "alerts.yaml"]);
    assert!(ok, "{out}");
    let recording: Vec<Value> = panel_exprs
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:panel_{i}"), "expr": e.replace("$__rate_interval", "5m")}))
        .collect();
    std::fs::write(
        work.join("dashboard.yaml"),
        serde_saphyr::to_string(&json!({"groups": [{"name": "dashboard", "rules": recording}]}))
            .unwrap(),
    )
    .unwrap();
    let (ok, out) = promtool(&work, &["check", "rules", "dashboard.yaml"]);
    assert!(ok, "{out}");

    // Each alert fires on scraped names and labels; a healthy mapping stays quiet.
    let annotations = |alert: &str, labels: &[(&str, &str)]| -> Value {
        let r = rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"));
        let mut a = r["annotations"].clone();
        for v in a.as_object_mut().unwrap().values_mut() {
            let mut s = v.as_str().unwrap().to_string();
            for (k, val) in labels {
                s = s.replace(&format!("{{{{ $labels.{k} }}}}"), val);
            }
            *v = json!(s);
        }
        a
    };
    let healthy = "dr-syncer-mon/healthy";
    let m = |name: &str, key: &str| format!("{name}{{mapping=\"{key}\"}}");
    let pvc = "case-mon/data";
    let expect = |alert: &str, eval: &str, labels: Vec<(&str, &str)>| {
        let mut l: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let severity = rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap()["labels"]["severity"]
            .clone();
        l.insert("severity".into(), severity);
        json!({"eval_time": eval, "alertname": alert,
               "exp_alerts": [{"exp_labels": l, "exp_annotations": annotations(alert, &labels)}]})
    };
    let quiet =
        |alert: &str, eval: &str| json!({"eval_time": eval, "alertname": alert, "exp_alerts": []});
    let tests = json!({
        "rule_files": ["alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // RPO: `key` last synced at 0 (target 15m, as scraped); `healthy` every minute.
                {"series": m("dr_syncer_last_success_timestamp_seconds", &key), "values": "0x60"},
                {"series": m("dr_syncer_rpo_target_seconds", &key), "values": "900x60"},
                {"series": m("dr_syncer_last_success_timestamp_seconds", healthy), "values": "0+60x60"},
                {"series": m("dr_syncer_rpo_target_seconds", healthy), "values": "900x60"},
                // Failing syncs: `key` only fails; `healthy` fails too but also succeeds.
                {"series": m("dr_syncer_sync_failures_total", &key), "values": "0+1x60"},
                {"series": format!("dr_syncer_syncs_total{{mapping=\"{key}\",path=\"full\"}}"), "values": "1x60"},
                {"series": m("dr_syncer_sync_failures_total", healthy), "values": "0+1x60"},
                {"series": format!("dr_syncer_syncs_total{{mapping=\"{healthy}\",path=\"patch\"}}"), "values": "0+1x60"},
                {"series": m("dr_syncer_breaker_held", &key), "values": "1x60"},
                {"series": m("dr_syncer_breaker_held", healthy), "values": "0x60"},
                {"series": format!("dr_syncer_pvc_syncs_total{{mapping=\"{key}\",result=\"Failed\"}}"), "values": "0+1x60"},
                {"series": format!("dr_syncer_pvc_syncs_total{{mapping=\"{healthy}\",result=\"Succeeded\"}}"), "values": "0+1x60"},
                {"series": format!("dr_syncer_pvc_last_success_timestamp_seconds{{mapping=\"{key}\",pvc=\"{pvc}\"}}"), "values": "0x60"},
                {"series": m("dr_syncer_dr_rejected_objects", &key), "values": "2x60"},
                {"series": m("dr_syncer_dr_rejected_objects", healthy), "values": "0x60"},
                {"series": "dr_syncer_leader", "values": "0x60"},
                {"series": "kube_daemonset_status_number_unavailable{daemonset=\"dr-syncer-agent\",namespace=\"dr-syncer-agent\"}", "values": "1x60"},
            ],
            "alert_rule_test": [
                quiet("DrSyncerRpoAboveTarget", "10m"),
                expect("DrSyncerRpoAboveTarget", "25m", vec![("mapping", &key)]),
                expect("DrSyncerSyncFailing", "30m", vec![("mapping", &key)]),
                expect("DrSyncerBreakerHeld", "5m", vec![("mapping", &key)]),
                expect("DrSyncerPvcSyncFailing", "30m", vec![("mapping", &key)]),
                expect("DrSyncerPvcRpoAboveTarget", "25m", vec![("mapping", &key), ("pvc", pvc)]),
                expect("DrSyncerDrNotReady", "20m", vec![("mapping", &key)]),
                expect("DrSyncerNoLeader", "10m", vec![]),
                expect("DrSyncerControllerDown", "10m", vec![("job", "dr-dr-syncer")]),
                expect("DrSyncerAgentNotReady", "20m", vec![("daemonset", "dr-syncer-agent"), ("namespace", "dr-syncer-agent")]),
            ],
        }],
    });
    std::fs::write(
        work.join("alerts_test.yaml"),
        serde_saphyr::to_string(&tests).unwrap(),
    )
    .unwrap();
    let (ok, out) = promtool(&work, &["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "promtool test rules:\n{out}");
}

/// Continuous mappings of single namespaces share their WATCH requests: the first
/// `NAMESPACE_WATCHES_BEFORE_SHARING` namespaces of a type get a watch each; the next one
/// starts one cluster-wide watch fanned out by namespace, which takes over those
/// namespaces and stops their watches. Three more mappings then add no WATCH on the
/// apiserver, and a mapping that joins the running shared watch gets its namespace's
/// objects (its own listing), then its later creates, updates and deletes — and nothing of
/// the other namespaces. A namespace the shared watch has seen no ConfigMap in gets an
/// empty listing without asking the apiserver, and its first ConfigMap still arrives.
#[tokio::test]
async fn controller_continuous_mappings_share_watches() {
    // A plane of its own: other tests' controllers would move the WATCH count.
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let applier = Applier::new(client.clone(), "test");
    let ns = "dr-syncer-share";
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await;
    let own = dr_syncer::controller::hub::NAMESPACE_WATCHES_BEFORE_SHARING;
    // `own` namespaces with a watch each, one that starts the shared watch, three joining.
    let first = own + 1;
    let count = first + 3;
    let source = |i: usize| format!("share-{i}");
    for i in 0..count {
        applier
            .apply(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": source(i)}}),
            )
            .await;
        applier
            .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": source(i)}, "data": {"v": format!("start-{i}")}}))
            .await;
    }
    let (tmp, repo, daemon) = git_site();
    let _controller = start_controller(&plane, ns, &tmp.path().join("cache"), "controller-share");
    let show = |p: &str| committed_file(&repo, p);
    let add_mapping = |i: usize| {
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": format!("m{i}"), "namespace": ns},
            "spec": {"sourceNamespace": source(i), "resourceTypes": ["configmaps"],
                     "replicationMode": "Continuous", "continuous": {"debounce": "1s", "maxDelay": "5s"},
                     "destination": {"git": {"url": daemon.url("dr.git"), "path": format!("m{i}")}}}})
    };
    let file = |i: usize, name: &str| format!("m{i}/{}/core/configmaps/{name}.yaml", source(i));
    // Adds mappings `range`, waits until each committed its namespace, and counts the
    // WATCH requests once they have settled.
    let add = |range: std::ops::Range<usize>| {
        let (applier, client, show, add_mapping, file) =
            (&applier, &client, &show, &add_mapping, &file);
        async move {
            for i in range.clone() {
                applier.apply(&add_mapping(i)).await;
            }
            for i in range {
                wait_until(60, "a mapping committed its namespace", || {
                    show(&file(i, "settings")).is_some_and(|t| t.contains(&format!("start-{i}")))
                })
                .await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            envtest::watch_requests(client).await.unwrap()
        }
    };
    let with_own = add(0..own).await;
    let with_first = add(own..first).await;
    let with_all = add(first..count).await;
    println!(
        "WATCH requests: {with_own} with {own} mappings, {with_first} with {first}, {with_all} with {count}"
    );
    // `own` ConfigMap watches were replaced by one: the count fell by `own - 1`.
    assert!(
        with_first - with_own <= 1.0 - own as f64,
        "the first sharing mapping changed the WATCH requests by {} (the {own} namespace watches taken over by one shared watch: {} expected)",
        with_first - with_own,
        1.0 - own as f64
    );
    assert!(
        with_all - with_first < 1.0,
        "three more mappings added {} WATCH requests ({with_first} with {first} mappings, {with_all} with {count})",
        with_all - with_first
    );
    // Changes reach the mapping of their namespace, and only it.
    let cms = |i: usize| -> Api<k8s_openapi::api::core::v1::ConfigMap> {
        Api::namespaced(client.clone(), &source(i))
    };
    // A namespace whose own watch was taken over, one that started the shared watch, one
    // that joined it.
    let (own_watch, started, joined) = (3, own, count - 1);
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": source(own_watch)}, "data": {"v": "changed"}}))
        .await;
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra", "namespace": source(joined)}, "data": {"v": "new"}}))
        .await;
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": source(joined)}, "data": {"v": "changed"}}))
        .await;
    cms(started)
        .delete("settings", &Default::default())
        .await
        .unwrap();
    wait_until(30, "update, create and delete committed", || {
        show(&file(own_watch, "settings")).is_some_and(|t| t.contains("changed"))
            && show(&file(joined, "extra")).is_some()
            && show(&file(joined, "settings")).is_some_and(|t| t.contains("changed"))
            && show(&file(started, "settings")).is_none()
    })
    .await;
    // A namespace without ConfigMaps: its mapping's listing comes from the shared watch (the
    // sync lists no ConfigMaps there either); its first ConfigMap is a change like any other.
    let empty = count;
    applier
        .apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": source(empty)}}),
        )
        .await;
    applier.apply(&add_mapping(empty)).await;
    wait_until(
        60,
        "the mapping of the empty namespace committed it",
        || {
            git(&repo, &["ls-tree", "-r", "--name-only", "main"])
                .lines()
                .any(|p| p.starts_with(&format!("m{empty}/")))
        },
    )
    .await;
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first", "namespace": source(empty)}, "data": {"v": "arrived"}}))
        .await;
    wait_until(
        30,
        "the first ConfigMap of the empty namespace committed",
        || show(&file(empty, "first")).is_some_and(|t| t.contains("arrived")),
    )
    .await;
    let tree = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    for i in 0..=count {
        let foreign: Vec<&str> = tree
            .lines()
            .filter(|p| p.starts_with(&format!("m{i}/")))
            .filter(|p| {
                (0..=count).any(|j| {
                    j != i
                        && p.split('/')
                            .any(|part| part == source(j) || part == format!("{}.yaml", source(j)))
                })
            })
            .collect();
        assert!(
            foreign.is_empty(),
            "m{i} holds other namespaces' objects: {foreign:?}"
        );
    }
}

/// The files below `dir` as text, by path (read as `dr-syncer export` reads its previous
/// output: its marker file left out).
fn read_dir_files(dir: &Path) -> std::collections::BTreeMap<String, String> {
    dr_syncer::export::output::read_tree(dir)
        .unwrap()
        .files
        .into_iter()
        .map(|(path, bytes)| (path, String::from_utf8(bytes).unwrap()))
        .collect()
}

/// A full sync streams: namespace after namespace, a type of more than one 500-object page,
/// more than one write chunk. It commits exactly the tree `dr-syncer export` writes from the
/// same source and mapping, file for file: HPA targets leave replicas to the HPA, a custom
/// resource brings its CRD, Secrets are encrypted. The next sync of the same source reuses
/// every file, Secrets included, and commits nothing.
#[tokio::test]
async fn controller_full_sync_streams_what_the_cli_export_writes() {
    let ns = "dr-syncer-stream";
    let (plane, client, applier) = shared_plane_with(ns).await;
    let crd = "widgets.stream.example.com";
    applier
        .apply(&json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": crd},
            "spec": {"group": "stream.example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}))
        .await;
    dr_syncer_testkit::objects::wait_established(&client, &[crd]).await;
    let (big, small) = ("stream-big", "stream-small");
    let mut objects = Vec::new();
    for n in [big, small] {
        applier
            .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"dr-stream": "on"}}}))
            .await;
    }
    for i in 0..520 {
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i:04}"), "namespace": big}, "data": {"i": i.to_string()}}));
    }
    let deployment = |name: &str, replicas: u32| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": big},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}}})
    };
    objects.extend([
        deployment("web", 3),
        deployment("batch", 2),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": big},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": big}, "stringData": {"password": "streamed-secret"}}),
        json!({"apiVersion": "stream.example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": small}, "spec": {"size": 3}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": small}, "data": {"mode": "dr"}}),
    ]);
    applier.apply_all(&objects, 8).await;

    let (tmp, repo, daemon) = git_site();
    let identity = age::x25519::Identity::generate();
    let mapping = json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
        "metadata": {"name": "stream", "namespace": ns},
        "spec": {"namespaceSelector": {"matchLabels": {"dr-stream": "on"}}, "replicationMode": "Manual", "scaleToZero": false,
                 "destination": {"git": {"url": daemon.url("dr.git"), "branch": "main", "path": "stream"}},
                 "secrets": {"ageRecipients": [identity.to_public().to_string()]}}});
    let _controller = start_controller(plane, ns, &tmp.path().join("cache"), "controller-stream");
    applier.apply(&mapping).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(client.clone(), ns);
    let nm = trigger(&nms, "stream", "1", "first full sync").await;
    let status = nm.status.unwrap();
    assert_eq!(
        status.phase,
        Some(dr_syncer::api::MappingPhase::Synced),
        "{status:?}"
    );
    let head = git(&repo, &["rev-parse", "main"]);

    // The same source and mapping through `dr-syncer export`, which holds the whole export.
    let mapping_file = tmp.path().join("mapping.yaml");
    std::fs::write(&mapping_file, serde_saphyr::to_string(&mapping).unwrap()).unwrap();
    let exported = tmp.path().join("exported");
    let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["export", "--kubeconfig"])
        .arg(plane.kubeconfig_path())
        .arg("--mapping")
        .arg(&mapping_file)
        .arg("--to")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkout = tmp.path().join("checkout");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            repo.to_str().unwrap(),
            checkout.to_str().unwrap(),
        ],
    );
    let committed = read_dir_files(&checkout.join("stream"));
    let held = read_dir_files(&exported);
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        held.keys().collect::<Vec<_>>(),
        "the streamed sync and the CLI export wrote different files"
    );
    // Encrypted files and their fingerprints differ by construction (fresh data keys).
    let random = |p: &str| p.contains("/core/secrets/") || p == ".dr-syncer/fingerprints.yaml";
    for (path, text) in committed.iter().filter(|(p, _)| !random(p)) {
        assert_eq!(text, &held[path], "{path} differs from the CLI export");
    }
    let file = |p: &str| {
        committed
            .get(p)
            .unwrap_or_else(|| panic!("{p} not committed"))
    };
    assert!(file(&format!("{big}/core/configmaps/cm-0519.yaml")).contains("i: \"519\""));
    // Without scale-to-zero, the HPA's target leaves its replicas to the HPA (listed first).
    assert!(!file(&format!("{big}/apps/deployments/web.yaml")).contains("replicas:"));
    assert!(file(&format!("{big}/apps/deployments/batch.yaml")).contains("replicas: 2"));
    assert!(file(&format!("{small}/stream.example.com/widgets/w1.yaml")).contains("size: 3"));
    assert!(
        file(&format!(
            "_cluster/apiextensions.k8s.io/customresourcedefinitions/{crd}.yaml"
        ))
        .contains("kind: Widget")
    );
    let secret = file(&format!("{big}/core/secrets/db.sops.yaml"));
    assert!(!secret.contains("streamed-secret"));
    let decrypted =
        dr_syncer::sops::decrypt(secret, &Identities::from_identity(identity.clone())).unwrap();
    assert_eq!(
        decrypted["data"]["password"],
        json!(B64.encode("streamed-secret"))
    );
    assert!(
        file(&format!("{big}/kustomization.yaml")).contains("core/secrets/db.sops.yaml"),
        "the kustomization lists the Secret"
    );

    // Nothing changed at the source: nothing to commit, the Secret's file is reused.
    let nm = trigger(&nms, "stream", "2", "second full sync").await;
    assert_eq!(
        nm.status.unwrap().phase,
        Some(dr_syncer::api::MappingPhase::Synced)
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "a commit without a change"
    );
}
