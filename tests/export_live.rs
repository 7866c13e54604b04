//! Live exports when parts of the API fail: a type the exporter may not list, and an API
//! group whose discovery fails. Both are reported, the export still completes (exit 3) and
//! the files of the failed types are kept instead of deleted.

use std::path::Path;
use std::process::{Command, Output};

use dr_syncer_testkit::envtest;
use dr_syncer_testkit::objects::Applier;
use serde_json::{Value, json};

fn export(kubeconfig: &Path, ns: &str, to: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["export", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["-n", ns, "--to"])
        .arg(to)
        .output()
        .unwrap()
}

fn objects(ns: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns}, "data": {"a": "1"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns}, "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "exporter", "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": format!("{ns}-exporter")},
               "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": format!("{ns}-exporter")},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-exporter")},
               "subjects": [{"kind": "ServiceAccount", "name": "exporter", "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "services-only", "namespace": ns},
               "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "services-only", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "services-only"},
               "subjects": [{"kind": "ServiceAccount", "name": "exporter", "namespace": ns}]}),
    ]
}

#[tokio::test]
async fn export_forbidden_types_are_reported_and_their_files_kept() {
    let plane = envtest::shared().await;
    let ns = "live-forbidden";
    let applier = Applier::new(plane.client().await.unwrap(), "test");
    for o in objects(ns) {
        applier.apply(&o).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    let first = export(&plane.kubeconfig_path(), ns, &to);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let cm = to.join(format!("{ns}/core/configmaps/settings.yaml"));
    let cm_before = std::fs::read(&cm).unwrap();

    // The restricted account may list Services only; let RBAC settle first.
    let sa_kubeconfig = plane
        .service_account_kubeconfig(ns, "exporter")
        .await
        .unwrap();
    let path = tmp.path().join("sa.kubeconfig");
    std::fs::write(&path, serde_saphyr::to_string(&sa_kubeconfig).unwrap()).unwrap();
    applier.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
        "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}})).await;
    let mut second = export(&path, ns, &to);
    for _ in 0..50 {
        if second.status.code() == Some(3) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        second = export(&path, ns, &to);
    }
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(
        second.status.code(),
        Some(3),
        "partial export exits 3\n{stdout}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        stdout.contains("FAILED configmaps in live-forbidden") && stdout.contains("forbidden"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&cm).unwrap(),
        cm_before,
        "files of a forbidden type are kept"
    );
    let kustomization =
        std::fs::read_to_string(to.join(format!("{ns}/kustomization.yaml"))).unwrap();
    assert!(
        kustomization.contains("core/configmaps/settings.yaml"),
        "{kustomization}"
    );
    let svc = std::fs::read_to_string(to.join(format!("{ns}/core/services/web.yaml"))).unwrap();
    assert!(
        svc.contains("443"),
        "allowed types are still exported: {svc}"
    );
}

#[tokio::test]
async fn export_isolates_a_failing_api_group() {
    let plane = envtest::shared().await;
    let ns = "live-aggregated";
    let applier = Applier::new(plane.client().await.unwrap(), "test");
    for o in objects(ns).into_iter().take(3) {
        applier.apply(&o).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    let first = export(&plane.kubeconfig_path(), ns, &to);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // A file an earlier export wrote for a group that is about to fail discovery.
    let widget = to.join(format!("{ns}/widgets.example.com/widgets/w1.yaml"));
    std::fs::create_dir_all(widget.parent().unwrap()).unwrap();
    std::fs::write(
        &widget,
        "apiVersion: widgets.example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n",
    )
    .unwrap();
    // An aggregated API whose backing Service does not exist: its discovery fails (503).
    applier.apply(&json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.widgets.example.com"},
        "spec": {"group": "widgets.example.com", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "insecureSkipTLSVerify": true, "service": {"name": "absent", "namespace": ns, "port": 443}}})).await;
    let mut second = export(&plane.kubeconfig_path(), ns, &to);
    for _ in 0..50 {
        if String::from_utf8_lossy(&second.stdout).contains("FAILED widgets.example.com") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        second = export(&plane.kubeconfig_path(), ns, &to);
    }
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(
        second.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("FAILED widgets.example.com"), "{stdout}");
    assert!(
        widget.exists(),
        "files of a group whose discovery failed are kept"
    );
    assert!(
        to.join(format!("{ns}/core/configmaps/settings.yaml"))
            .exists(),
        "other groups still exported"
    );
}
