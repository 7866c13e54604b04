//! The original project's scenarios, adapted to the git destination: the controller (a
//! process) commits each mapping's export; the committed path is then decrypted with the
//! DR side's age identity and applied with `kubectl apply --server-side -k` to a second
//! apiserver, and checked there. 00 explicit types, 01 `*`, 02 ignore label, 03/04 scale to
//! zero and override, 05 only ConfigMaps and Secrets, 06 Service types, 07 Ingress, 08/09
//! namespace remap, 22 label-selected namespaces with a suffix (and removal).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Running, eventually, free_addr, install_crds, start_controller_with};
use dr_syncer::api::NamespaceMapping;
use dr_syncer::sops::Identities;
use dr_syncer_testkit::envtest::{self, ControlPlane, kubectl_path};
use dr_syncer_testkit::git::{GitDaemon, bare_repo, git};
use dr_syncer_testkit::objects::Applier;
use kube::api::DynamicObject;
use kube::{Api, Client};
use serde_json::{Value, json};

struct World {
    ns: String,
    client: Client,
    applier: Applier,
    dr: ControlPlane,
    dr_applier: Applier,
    repo: PathBuf,
    url: String,
    identity: Identities,
    recipient: String,
    tmp: tempfile::TempDir,
    _daemon: GitDaemon,
    _controller: Running,
}

/// A source apiserver (shared), a DR apiserver, a git server and a controller watching `ns`.
async fn world(ns: &str) -> World {
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let applier = Applier::new(client.clone(), "test");
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await;
    let dr = ControlPlane::start().await.unwrap();
    let dr_applier = Applier::new(dr.client().await.unwrap(), "test");
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let url = daemon.url("dr.git");
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let controller = start_controller_with(
        &plane.kubeconfig_path(),
        ns,
        &tmp.path().join("cache"),
        &format!("controller-{ns}"),
        &free_addr(),
        &[],
    );
    World {
        ns: ns.to_string(),
        client,
        applier,
        dr,
        dr_applier,
        repo,
        url,
        identity: Identities::from_identity(id),
        recipient,
        tmp,
        _daemon: daemon,
        _controller: controller,
    }
}

impl World {
    /// Creates the source objects and a Manual mapping `name`, triggers it and waits.
    async fn sync(
        &self,
        name: &str,
        objects: &[Value],
        spec: Value,
        trigger: &str,
    ) -> NamespaceMapping {
        for o in objects {
            self.applier.apply(o).await;
        }
        let mut full = json!({"replicationMode": "Manual", "destination": {"git": {"url": self.url, "path": name}},
                              "secrets": {"ageRecipients": [self.recipient]}});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        self.applier
            .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
                "metadata": {"name": name, "namespace": self.ns, "annotations": {"dr-syncer.io/sync-now": trigger}}, "spec": full}))
            .await;
        let api: Api<NamespaceMapping> = Api::namespaced(self.client.clone(), &self.ns);
        // On timeout the last status is shown, its lastError included.
        eventually(
            &format!("{name}: sync {trigger}"),
            Duration::from_secs(60),
            || async {
                let nm = api.get(name).await.unwrap();
                let s = nm.status.clone().unwrap_or_default();
                if s.last_sync_now.as_deref() == Some(trigger) {
                    Ok(nm)
                } else {
                    Err(s)
                }
            },
        )
        .await
    }

    /// The committed files below `path` (relative names).
    fn committed(&self, path: &str) -> Vec<String> {
        git(&self.repo, &["ls-tree", "-r", "--name-only", "main", path])
            .lines()
            .map(|l| l.trim_start_matches(&format!("{path}/")).to_string())
            .collect()
    }

    /// Checks out `path`, decrypts its Secrets with the DR identity and applies it to DR.
    fn apply_to_dr(&self, path: &str) {
        let dir = self.tmp.path().join(format!("checkout-{path}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let archive = Command::new("git")
            .args(["archive", "main", path])
            .current_dir(&self.repo)
            .output()
            .unwrap();
        assert!(archive.status.success());
        let mut tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
        drop(tar.stdin.take());
        assert!(tar.wait().unwrap().success());
        decrypt_all(&dir, &self.identity);
        let out = Command::new(kubectl_path().unwrap())
            .arg("--kubeconfig")
            .arg(self.dr.kubeconfig_path())
            .args(["apply", "--server-side", "-k"])
            .arg(dir.join(path))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply -k {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn dr_get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": ns}});
        let api: Api<DynamicObject> = self.dr_applier.api_for(&probe).await;
        api.get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }
}

fn decrypt_all(dir: &Path, ids: &Identities) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            decrypt_all(&p, ids);
        } else if p.to_string_lossy().ends_with(".sops.yaml")
            && p.file_name().is_some_and(|n| n != ".sops.yaml")
        {
            let plain =
                dr_syncer::sops::decrypt(&std::fs::read_to_string(&p).unwrap(), ids).unwrap();
            std::fs::write(&p, dr_syncer::export::render::render(&plain).unwrap()).unwrap();
        }
    }
}

fn ns(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}
fn cm(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"key1": "value1", "key2": "value2"}})
}
fn secret(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "test-secret", "namespace": ns}, "type": "Opaque", "stringData": {"username": "admin", "password": "scenario-pw"}})
}
fn deployment(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27", "resources": {"requests": {"cpu": "10m"}, "limits": {"memory": "64Mi"}}}]}}}})
}
fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "annotations": {"prometheus.io/scrape": "true"}}, "spec": spec})
}
fn ingress(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": ns, "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/"}},
           "spec": {"ingressClassName": "nginx", "tls": [{"hosts": [format!("{ns}.example.com")], "secretName": "tls"}],
                    "rules": [{"host": format!("{ns}.example.com"), "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
}
fn standard(ns_name: &str) -> Vec<Value> {
    vec![
        ns(ns_name, json!({"scenario": ns_name})),
        cm(ns_name, "test-configmap"),
        secret(ns_name),
        deployment(ns_name, "test-deployment", json!({"app": "test-app"})),
        service(
            ns_name,
            "web",
            json!({"selector": {"app": "test-app"}, "ports": [{"port": 80, "targetPort": 80}]}),
        ),
        ingress(ns_name, "test-ingress"),
    ]
}

#[tokio::test]
async fn original_scenarios_via_git_and_dr_apply() {
    let w = world("scenarios").await;

    // 00: explicit types.
    w.sync("s00", &standard("s00"), json!({"sourceNamespace": "s00", "resourceTypes": ["ConfigMaps", "Secrets", "Deployments", "Services", "Ingresses"]}), "go").await;
    w.apply_to_dr("s00");
    let dep = w
        .dr_get("apps/v1", "Deployment", "s00", "test-deployment")
        .await
        .unwrap();
    assert_eq!(dep["spec"]["replicas"], 0);
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "64Mi"
    );
    let s = w
        .dr_get("v1", "Secret", "s00", "test-secret")
        .await
        .unwrap();
    assert_eq!(
        s["data"]["password"], "c2NlbmFyaW8tcHc=",
        "the Secret arrives on DR decrypted, byte for byte"
    );
    assert_eq!(
        w.dr_get("v1", "ConfigMap", "s00", "test-configmap")
            .await
            .unwrap()["data"]["key2"],
        "value2"
    );
    assert!(
        w.dr_get("networking.k8s.io/v1", "Ingress", "s00", "test-ingress")
            .await
            .is_some()
    );
    assert_eq!(
        w.dr_get("v1", "Namespace", "", "s00").await.unwrap()["metadata"]["labels"]["scenario"],
        "s00"
    );

    // 01: "*" also takes kinds not named (a Role here).
    let mut objs = standard("s01");
    objs.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader", "namespace": "s01"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}));
    w.sync(
        "s01",
        &objs,
        json!({"sourceNamespace": "s01", "resourceTypes": ["*"]}),
        "go",
    )
    .await;
    w.apply_to_dr("s01");
    assert!(
        w.dr_get("rbac.authorization.k8s.io/v1", "Role", "s01", "reader")
            .await
            .is_some()
    );

    // 02: the ignore label.
    let mut objs = standard("s02");
    objs.push(deployment(
        "s02",
        "test-deployment-2",
        json!({"dr-syncer.io/ignore": "true"}),
    ));
    w.sync(
        "s02",
        &objs,
        json!({"sourceNamespace": "s02", "resourceTypes": ["*"]}),
        "go",
    )
    .await;
    assert!(
        !w.committed("s02")
            .iter()
            .any(|f| f.contains("test-deployment-2"))
    );
    w.apply_to_dr("s02");
    assert!(
        w.dr_get("apps/v1", "Deployment", "s02", "test-deployment-2")
            .await
            .is_none()
    );
    assert!(
        w.dr_get("apps/v1", "Deployment", "s02", "test-deployment")
            .await
            .is_some()
    );

    // 03/04: scale to zero, and the override label keeps the source count.
    let objs = vec![
        ns("s04", json!({})),
        deployment("s04", "d1", json!({})),
        deployment("s04", "d2", json!({"dr-syncer.io/scale-override": "true"})),
    ];
    w.sync(
        "s04",
        &objs,
        json!({"sourceNamespace": "s04", "resourceTypes": ["deployments"], "scaleToZero": true}),
        "go",
    )
    .await;
    w.apply_to_dr("s04");
    assert_eq!(
        w.dr_get("apps/v1", "Deployment", "s04", "d1")
            .await
            .unwrap()["spec"]["replicas"],
        0
    );
    assert_eq!(
        w.dr_get("apps/v1", "Deployment", "s04", "d2")
            .await
            .unwrap()["spec"]["replicas"],
        3
    );

    // 05: only ConfigMaps and Secrets.
    w.sync(
        "s05",
        &standard("s05"),
        json!({"sourceNamespace": "s05", "resourceTypes": ["configmaps", "secrets"]}),
        "go",
    )
    .await;
    let files = w.committed("s05");
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("configmaps/test-configmap.yaml"))
            && files
                .iter()
                .any(|f| f.ends_with("secrets/test-secret.sops.yaml")),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f.contains("deployments")
            || f.contains("services")
            || f.contains("ingresses")),
        "{files:?}"
    );

    // 06: Service types.
    let objs = vec![
        ns("s06", json!({})),
        service(
            "s06",
            "clusterip",
            json!({"selector": {"app": "a"}, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}),
        ),
        service(
            "s06",
            "nodeport",
            json!({"type": "NodePort", "selector": {"app": "a"}, "ports": [{"name": "http", "port": 80, "nodePort": 30081}, {"name": "https", "port": 443, "nodePort": 30444}]}),
        ),
        service(
            "s06",
            "headless",
            json!({"clusterIP": "None", "selector": {"app": "a"}, "ports": [{"port": 5432}]}),
        ),
    ];
    w.sync(
        "s06",
        &objs,
        json!({"sourceNamespace": "s06", "resourceTypes": ["services"]}),
        "go",
    )
    .await;
    w.apply_to_dr("s06");
    let np = w.dr_get("v1", "Service", "s06", "nodeport").await.unwrap();
    assert_eq!(
        (
            np["spec"]["type"].as_str(),
            np["spec"]["ports"][0]["nodePort"].as_i64(),
            np["spec"]["ports"][1]["nodePort"].as_i64()
        ),
        (Some("NodePort"), Some(30081), Some(30444))
    );
    assert_eq!(
        w.dr_get("v1", "Service", "s06", "headless").await.unwrap()["spec"]["clusterIP"],
        "None"
    );
    let src_ip = Applier::new(w.client.clone(), "t")
        .api_for(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "s06"}}))
        .await
        .get("clusterip")
        .await
        .unwrap();
    let dr_ip = w.dr_get("v1", "Service", "s06", "clusterip").await.unwrap();
    assert_ne!(
        serde_json::to_value(src_ip).unwrap()["spec"]["clusterIP"],
        dr_ip["spec"]["clusterIP"],
        "ClusterIPs are allocated anew on DR"
    );

    // 07: Ingress with TLS, annotations and backends.
    w.sync(
        "s07",
        &[ns("s07", json!({})), ingress("s07", "complex")],
        json!({"sourceNamespace": "s07", "resourceTypes": ["ingresses"]}),
        "go",
    )
    .await;
    w.apply_to_dr("s07");
    let ing = w
        .dr_get("networking.k8s.io/v1", "Ingress", "s07", "complex")
        .await
        .unwrap();
    assert_eq!(ing["spec"], ingress("s07", "complex")["spec"]);
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"],
        "/"
    );

    // 08/09: namespace remap, namespace labels and annotations kept.
    let mut objs = standard("s08");
    objs[0] = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "s08", "labels": {"env": "prod"}, "annotations": {"description": "shop"}}});
    w.sync(
        "s08",
        &objs,
        json!({"sourceNamespace": "s08", "destinationNamespace": "s08-dr", "resourceTypes": ["*"]}),
        "go",
    )
    .await;
    w.apply_to_dr("s08");
    let remapped = w.dr_get("v1", "Namespace", "", "s08-dr").await.unwrap();
    assert_eq!(
        (
            remapped["metadata"]["labels"]["env"].as_str(),
            remapped["metadata"]["annotations"]["description"].as_str()
        ),
        (Some("prod"), Some("shop"))
    );
    assert!(
        w.dr_get("v1", "ConfigMap", "s08-dr", "test-configmap")
            .await
            .is_some()
    );
    assert!(w.dr_get("v1", "Namespace", "", "s08").await.is_none());

    // 22: label-selected namespaces with a suffix; a namespace losing the label is removed.
    let objs = vec![
        ns("s22a", json!({"dr": "yes"})),
        cm("s22a", "a"),
        ns("s22b", json!({"dr": "yes"})),
        cm("s22b", "b"),
        ns("s22c", json!({"dr": "no"})),
        cm("s22c", "c"),
    ];
    w.sync("s22", &objs, json!({"namespaceSelector": {"matchLabels": {"dr": "yes"}}, "destinationNamespaceSuffix": "-dr", "resourceTypes": ["configmaps"]}), "1").await;
    let files = w.committed("s22");
    assert!(
        files.contains(&"s22a-dr/core/configmaps/a.yaml".to_string())
            && files.contains(&"s22b-dr/core/configmaps/b.yaml".to_string()),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.starts_with("s22c")), "{files:?}");
    w.applier.apply(&ns("s22b", json!({"dr": "no"}))).await;
    w.sync("s22", &[], json!({"namespaceSelector": {"matchLabels": {"dr": "yes"}}, "destinationNamespaceSuffix": "-dr", "resourceTypes": ["configmaps"]}), "2").await;
    let files = w.committed("s22");
    assert!(
        !files.iter().any(|f| f.starts_with("s22b-dr")),
        "its directory is removed: {files:?}"
    );
    assert!(files.contains(&"s22a-dr/core/configmaps/a.yaml".to_string()));
}

#[tokio::test]
async fn cluster_mapping_defaults_give_destination_and_recipients() {
    let w = world("scenarios-defaults").await;
    let url = w.url.clone();
    w.applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "ClusterMapping", "metadata": {"name": "prod-to-dr", "namespace": w.ns},
            "spec": {"defaults": {"git": {"url": url, "path": "clusters/prod"}, "secrets": {"ageRecipients": [w.recipient]}}}}))
        .await;
    let objs = vec![ns("s10", json!({})), cm("s10", "c"), secret("s10")];
    for o in &objs {
        w.applier.apply(o).await;
    }
    w.applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "inherits", "namespace": w.ns, "annotations": {"dr-syncer.io/sync-now": "go"}},
            "spec": {"replicationMode": "Manual", "sourceNamespace": "s10", "clusterMappingRef": {"name": "prod-to-dr"}, "resourceTypes": ["configmaps", "secrets"]}}))
        .await;
    let api: Api<NamespaceMapping> = Api::namespaced(w.client.clone(), &w.ns);
    eventually("sync of inherits", Duration::from_secs(60), || async {
        let s = api
            .get("inherits")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if s.last_sync_now.as_deref() == Some("go") {
            Ok(())
        } else {
            Err(s)
        }
    })
    .await;
    let files = w.committed("clusters/prod/inherits");
    assert!(
        files.contains(&"s10/core/configmaps/c.yaml".to_string()),
        "{files:?}"
    );
    let secret = git(
        &w.repo,
        &[
            "show",
            "main:clusters/prod/inherits/s10/core/secrets/test-secret.sops.yaml",
        ],
    );
    assert!(
        secret.contains(&w.recipient),
        "encrypted for the ClusterMapping's recipient"
    );
}
