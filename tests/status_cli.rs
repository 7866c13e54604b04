//! `dr-syncer status` against a real apiserver, as an on-call engineer runs it: several
//! mappings in different states (their status written through the status subresource, as
//! the controller writes it), the table asserted cell by cell, `-A`, `-o json`, `--check`,
//! and the kubectl plugin path (`kubectl dr-syncer status` through a `kubectl-dr_syncer`
//! link).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::install_crds;
use dr_syncer::api::NamespaceMapping;
use dr_syncer_testkit::envtest;
use dr_syncer_testkit::objects::Applier;
use jiff::{Timestamp, ToSpan};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

fn status(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .arg("status")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("DR_SYNCER_KUBECONFIG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn status_shows_every_mapping_and_pvc_as_the_controller_left_them() {
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let applier = Applier::new(client.clone(), "test");
    let now = Timestamp::now();
    let ago = |secs: i64| (now - secs.seconds()).to_string();
    for ns in ["status-a", "status-b"] {
        applier
            .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await;
    }
    let mappings: Vec<(&str, &str, Value, Value)> = vec![
        (
            "status-a",
            "shop",
            json!({"sourceNamespace": "shop", "replicationMode": "Continuous", "rpoTarget": "15m",
                   "destination": {"git": {"url": "ssh://git@git.example.com/dr/state.git"}}}),
            json!({"phase": "Synced", "lastSyncTime": ago(150), "lastCompleteSyncTime": ago(150),
                   "lastCommit": {"sha": "9f8e7d6c5b4a39281706", "time": ago(150), "message": "sync shop"},
                   "conditions": [{"type": "DrReady", "status": "True", "reason": "Verified", "message": "12 objects accepted",
                                   "lastTransitionTime": ago(600)}],
                   "pvcData": {"volumes": [
                       {"source": "shop/data", "destination": "shop/data", "result": "Succeeded", "pointInTime": ago(400)},
                       {"source": "shop/uploads", "destination": "shop/uploads", "result": "Held",
                        "message": "held: would delete 100% of the DR copy's files; batch 4f2a", "pointInTime": ago(7200)}]}}),
        ),
        (
            "status-a",
            "billing",
            json!({"sourceNamespace": "billing", "replicationMode": "Scheduled", "schedule": "@hourly",
                   "destination": {"cluster": {"remoteClusterRef": {"name": "dr"}}}}),
            json!({"phase": "Failed", "lastSyncTime": ago(3 * 3600 + 60), "lastCompleteSyncTime": ago(3 * 3600 + 60),
                   "lastError": {"message": "apply Deployment billing/api: forbidden", "time": ago(60)}}),
        ),
        (
            "status-a",
            "audit",
            json!({"sourceNamespace": "audit", "replicationMode": "Manual", "clusterMappingRef": {"name": "cm"}}),
            json!({"phase": "Held", "lastSyncTime": ago(1000), "lastCompleteSyncTime": ago(1000)}),
        ),
        (
            "status-b",
            "fresh",
            json!({"sourceNamespace": "fresh", "replicationMode": "Manual", "clusterMappingRef": {"name": "cm"}}),
            Value::Null,
        ),
    ];
    for (ns, name, spec, st) in &mappings {
        applier
            .apply(
                &json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}),
            )
            .await;
        if !st.is_null() {
            Api::<NamespaceMapping>::namespaced(client.clone(), ns)
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": st})),
                )
                .await
                .unwrap();
        }
    }
    let kc = plane.kubeconfig_path();

    // One namespace: no NAMESPACE column; what is wrong is marked.
    let out = status(&kc, &["-n", "status-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = "\
NAME     MODE        PHASE   LAST SYNC  RPO     TARGET  COMMIT   HELD               DR READY  PVCS
audit    Manual      Held    16m ago    16m     1h00m   -        manifests          -         -
billing  Scheduled   Failed  3h01m ago  3h01m!  1h00m   -        -                  -         -
shop     Continuous  Synced  2m ago     2m      15m     9f8e7d6  data:shop/uploads  yes       1/2 ok

MAPPING        PVC           RESULT     POINT IN TIME         RPO
status-a/shop  shop/data     Succeeded  POINT1  6m
status-a/shop  shop/uploads  Held       POINT2  2h00m!
";
    let fmt = |secs: i64| {
        (now - secs.seconds())
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let want = want
        .replace("POINT1", &fmt(400))
        .replace("POINT2", &fmt(7200));
    assert_eq!(text(&out), want);

    // Wide: destination, the last error, the PVC messages.
    let wide = text(&status(&kc, &["-n", "status-a", "-o", "wide"]));
    assert!(
        wide.contains("cluster      apply Deployment billing/api: forbidden"),
        "{wide}"
    );
    assert!(
        wide.contains("held: would delete 100% of the DR copy's files; batch 4f2a"),
        "{wide}"
    );

    // Every namespace: the never-synced mapping is over its target.
    let all = text(&status(&kc, &["-A"]));
    let fresh = all
        .lines()
        .find(|l| l.starts_with("status-b"))
        .unwrap_or_else(|| panic!("no status-b line in:\n{all}"));
    let cells: Vec<&str> = fresh.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        ["status-b", "fresh", "Manual", "Pending", "-", "never!"],
        "{all}"
    );

    // JSON for scripts.
    let json: Value =
        serde_json::from_slice(&status(&kc, &["-n", "status-a", "-o", "json"]).stdout).unwrap();
    let shop = json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "shop")
        .unwrap();
    assert_eq!(shop["rpoTargetSeconds"], 900);
    assert_eq!(shop["overTarget"], false);
    assert_eq!(shop["held"], json!(["data:shop/uploads"]));
    assert_eq!(shop["pvcs"][1]["overTarget"], true);

    // --check: exit 1 while something is wrong, 0 for a healthy set.
    assert_eq!(
        status(&kc, &["-n", "status-a", "--check"]).status.code(),
        Some(1)
    );
    Api::<NamespaceMapping>::namespaced(client.clone(), "status-b")
        .patch_status(
            "fresh",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Synced", "lastSyncTime": ago(30), "lastCompleteSyncTime": ago(30)}})),
        )
        .await
        .unwrap();
    let healthy = status(&kc, &["-n", "status-b", "--check"]);
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy));

    // As a kubectl plugin.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_dr-syncer"),
        bin.path().join("kubectl-dr_syncer"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = Command::new(envtest::kubectl_path().unwrap())
        .args(["dr-syncer", "status", "-n", "status-a"])
        .env("PATH", path)
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    assert!(
        plugin.status.success(),
        "{}",
        String::from_utf8_lossy(&plugin.stderr)
    );
    assert_eq!(text(&plugin), want);
}
