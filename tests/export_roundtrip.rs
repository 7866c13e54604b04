//! Round trip on two real apiservers: the shop namespace and a generated namespace of a few
//! hundred mixed objects are loaded into a source cluster, exported live with the binary,
//! applied to a DR cluster with `kubectl apply --server-side -k`, and every DR object is
//! compared field by field with its source; the only differences allowed are the
//! documented transforms (see `normalize`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dr_syncer::export::source::offline;
use dr_syncer_testkit::envtest::{ControlPlane, kubectl_path};
use dr_syncer_testkit::objects::{Applier, mixed_namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::{Value, json};

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");
const LOADER: &str = "fixture-loader";

async fn install_crd(client: &Client, crd: &Value) {
    Applier::new(client.clone(), LOADER).apply(crd).await;
    let name = crd["metadata"]["name"].as_str().unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, name, conditions::is_crd_established()),
    )
    .await
    .unwrap()
    .unwrap();
}

/// Makes a `kubectl get -o yaml` object loadable: server-set fields go, allocated Service
/// addresses go (the apiserver allocates them again), nodePorts stay only where the
/// original manifest (last-applied) had them, and the Job controller's UID labels go.
fn loadable(mut v: Value) -> Value {
    let m = v["metadata"].as_object_mut().unwrap();
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        m.remove(f);
    }
    v.as_object_mut().unwrap().remove("status");
    match v["kind"].as_str().unwrap() {
        "Service" => {
            let explicit: BTreeSet<i64> =
                v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .map(|la| {
                        la["spec"]["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|p| p.get("nodePort").is_some())
                            .filter_map(|p| p["port"].as_i64())
                            .collect()
                    })
                    .unwrap_or_default();
            let spec = v["spec"].as_object_mut().unwrap();
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if !explicit.contains(&p["port"].as_i64().unwrap()) {
                    p.as_object_mut().unwrap().remove("nodePort");
                }
            }
        }
        "Job" => {
            v["spec"].as_object_mut().unwrap().remove("selector");
            for path in ["/metadata/labels", "/spec/template/metadata/labels"] {
                if let Some(Value::Object(l)) = v.pointer_mut(path) {
                    l.retain(|k, _| !k.contains("controller-uid") && !k.ends_with("job-name"));
                }
            }
        }
        _ => {}
    }
    v
}

/// Loads the shop example: owners first, then objects they own with the new owner UIDs.
async fn load_shop(applier: &Applier) -> BTreeSet<(String, String)> {
    let input = offline::read_dir(Path::new(SHOP)).unwrap();
    for ns in input.namespaces.values() {
        applier.apply(&loadable(ns.clone())).await;
    }
    let mut objects: Vec<Value> = input
        .objects
        .into_iter()
        .map(|o| loadable(o.value))
        .collect();
    objects.sort_by_key(|o| o["metadata"].get("ownerReferences").is_some());
    let mut uids: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut loaded = BTreeSet::new();
    let mut pending = objects;
    while !pending.is_empty() {
        let before = pending.len();
        let mut next = Vec::new();
        for mut obj in pending {
            let refs = obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let resolved: Option<Vec<Value>> = refs
                .iter()
                .map(|r| {
                    let key = (
                        r["kind"].as_str().unwrap().to_string(),
                        r["name"].as_str().unwrap().to_string(),
                    );
                    uids.get(&key).map(|uid| {
                        let mut r = r.clone();
                        r["uid"] = json!(uid);
                        r
                    })
                })
                .collect();
            let Some(resolved) = resolved else {
                next.push(obj);
                continue;
            };
            if !refs.is_empty() {
                obj["metadata"]["ownerReferences"] = json!(resolved);
            }
            let applied = applier.apply(&obj).await;
            let key = (
                obj["kind"].as_str().unwrap().to_string(),
                obj["metadata"]["name"].as_str().unwrap().to_string(),
            );
            uids.insert(
                key.clone(),
                applied["metadata"]["uid"].as_str().unwrap().to_string(),
            );
            loaded.insert(key);
        }
        assert!(next.len() < before, "unresolvable owners: {next:?}");
        pending = next;
    }
    loaded
}

/// Removes from `v` what the export documents as changed, so source and DR can be compared:
/// server-set metadata and status; on DR the bookkeeping annotations of scale-to-zero and
/// suspension (whose values are checked against the source first); on the source the
/// fields cleaning removes (allocated Service addresses, PVC binding, token references,
/// GitOps labels, rollout annotations).
fn normalize(v: &mut Value, kind: &str) {
    let m = v["metadata"].as_object_mut().unwrap();
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        m.remove(f);
    }
    if let Some(Value::Object(a)) = m.get_mut("annotations") {
        a.retain(|k, _| {
            !k.starts_with("dr-syncer.io/original-")
                && k != "kubectl.kubernetes.io/last-applied-configuration"
                && k != "deployment.kubernetes.io/revision"
                && !k.starts_with("autoscaling.alpha.kubernetes.io/")
                && !(kind == "PersistentVolumeClaim"
                    && (k.starts_with("pv.kubernetes.io/") || k.starts_with("volume.")))
        });
        if a.is_empty() {
            m.remove("annotations");
        }
    }
    if let Some(Value::Object(l)) = m.get_mut("labels") {
        l.retain(|k, _| !k.starts_with("kustomize.toolkit.fluxcd.io/"));
    }
    let o = v.as_object_mut().unwrap();
    o.remove("status");
    match kind {
        "Deployment" | "StatefulSet" => {
            o["spec"].as_object_mut().unwrap().remove("replicas");
            if let Some(Value::Object(a)) = v.pointer_mut("/spec/template/metadata/annotations") {
                a.remove("kubectl.kubernetes.io/restartedAt");
            }
        }
        "CronJob" => {
            o["spec"].as_object_mut().unwrap().remove("suspend");
        }
        "Service" => {
            let spec = o["spec"].as_object_mut().unwrap();
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        "PersistentVolumeClaim" => {
            o["spec"].as_object_mut().unwrap().remove("volumeName");
        }
        "ServiceAccount" => {
            o.remove("secrets");
        }
        _ => {}
    }
}

fn check_transforms(kind: &str, name: &str, src: &Value, dr: &Value) {
    let ann = |v: &Value, k: &str| v["metadata"]["annotations"][k].as_str().map(str::to_string);
    match kind {
        "Deployment" | "StatefulSet" => {
            let original = src["spec"]["replicas"].as_i64().unwrap_or(1);
            assert_eq!(
                ann(dr, "dr-syncer.io/original-replicas"),
                Some(original.to_string()),
                "{kind} {name}"
            );
            let over = ann(src, "dr-syncer.io/scale-override").and_then(|s| s.parse::<i64>().ok());
            assert_eq!(
                dr["spec"]["replicas"].as_i64(),
                Some(over.unwrap_or(0)),
                "{kind} {name} DR replicas"
            );
        }
        "CronJob" => {
            assert_eq!(dr["spec"]["suspend"], json!(true), "{name}");
            assert_eq!(
                ann(dr, "dr-syncer.io/original-suspend"),
                Some(
                    src["spec"]["suspend"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                )
            );
        }
        "Service" => {
            let ports = |v: &Value| v["spec"]["ports"].as_array().cloned().unwrap_or_default();
            for (s, d) in ports(src).iter().zip(ports(dr)) {
                let explicit = name == "web-nodeport";
                if explicit {
                    assert_eq!(
                        s["nodePort"], d["nodePort"],
                        "explicit nodePort of {name} kept"
                    );
                }
            }
            if src["spec"]["clusterIP"] == json!("None") {
                assert_eq!(
                    dr["spec"]["clusterIP"],
                    json!("None"),
                    "headless {name} stays headless"
                );
            }
        }
        _ => {}
    }
}

fn strip_node_ports(v: &mut Value) {
    for p in v
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        p.as_object_mut().unwrap().remove("nodePort");
    }
}

#[tokio::test]
async fn export_round_trip_two_apiservers() {
    let (source, dr) = (
        ControlPlane::start().await.unwrap(),
        ControlPlane::start().await.unwrap(),
    );
    let (src_client, dr_client) = (source.client().await.unwrap(), dr.client().await.unwrap());
    let crd: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(Path::new(SHOP).join("01-crd-coupons.yaml")).unwrap(),
    )
    .unwrap();
    install_crd(&src_client, &crd).await;
    // No CRD on DR: the export carries it in _cluster/.
    let applier = Applier::new(src_client.clone(), LOADER);
    let loaded = load_shop(&applier).await;
    assert!(loaded.len() >= 30, "shop fixture loaded: {}", loaded.len());
    applier.apply_all(&mixed_namespace("bulk", 300), 8).await;
    let dr_reader = Applier::new(dr_client.clone(), LOADER);

    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("dr-export");
    let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["export", "--kubeconfig"])
        .arg(source.kubeconfig_path())
        .args(["-n", "shop", "-n", "bulk", "--to"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "export failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );

    // As the README tells kubectl users: the cluster-scoped directory (Namespaces, CRDs)
    // first, wait for the CRDs to be served, then the whole tree.
    let kubectl = |args: &[&str]| {
        let out = Command::new(kubectl_path().unwrap())
            .arg("--kubeconfig")
            .arg(dr.kubeconfig_path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} on DR failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = |sub: &str| out_dir.join(sub).to_str().unwrap().to_string();
    kubectl(&["apply", "--server-side", "-k", &dir("_cluster")]);
    dr_syncer_testkit::objects::wait_established(&dr_client, &[]).await;
    kubectl(&["apply", "--server-side", "-k", &dir("")]);

    let files = dr_syncer::export::output::read_tree(&out_dir).unwrap();
    let mut compared = 0;
    let mut differences = Vec::new();
    for (path, content) in &files.files {
        if path.ends_with("kustomization.yaml") || path.starts_with('.') {
            continue;
        }
        let exported: Value =
            serde_saphyr::from_str(std::str::from_utf8(content).unwrap()).unwrap();
        let kind = exported["kind"].as_str().unwrap().to_string();
        let name = exported["metadata"]["name"].as_str().unwrap().to_string();
        let dr_obj = dr_reader
            .api_for(&exported)
            .await
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{path} missing on DR: {e}"));
        let src_obj = applier.api_for(&exported).await.get(&name).await.unwrap();
        let (mut src_v, mut dr_v) = (
            serde_json::to_value(src_obj).unwrap(),
            serde_json::to_value(dr_obj).unwrap(),
        );
        check_transforms(&kind, &name, &src_v, &dr_v);
        normalize(&mut src_v, &kind);
        normalize(&mut dr_v, &kind);
        // Allocated nodePorts are allocated anew on DR; the explicit one was checked above.
        if kind == "Service" && name != "web-nodeport" {
            strip_node_ports(&mut src_v);
            strip_node_ports(&mut dr_v);
        }
        if src_v != dr_v {
            differences.push(format!("{path}:\n  source: {src_v}\n  dr:     {dr_v}"));
        }
        compared += 1;
    }
    assert!(compared >= 300, "compared {compared} objects");
    assert!(
        differences.is_empty(),
        "{} undocumented differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // Nothing the export must skip reached the DR cluster.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(dr_client.clone(), "shop");
    assert!(
        secrets
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no Secret is written without encryption"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(dr_client, "shop");
    assert!(
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "controller-owned Pods are not exported"
    );
}
