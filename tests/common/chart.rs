//! The controller as users install it: the Helm chart packaged with `helm package` and the
//! archive rendered with `helm template`, applied
//! to a real apiserver, and the binary started with the rendered Deployment's args and env
//! and the chart's ServiceAccount token. Only what a pod provides differently here is
//! substituted: a free port for `--http-addr`, a writable `--cache-dir`, and ConfigMap
//! volumes as local copies (env values pointing into them follow).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dr_syncer_testkit::envtest::ControlPlane;
use dr_syncer_testkit::objects::Applier;
use dr_syncer_testkit::tools::helm;
use serde_json::Value;

use super::{Running, free_addr, install_crds};

/// The chart in this repository.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dr-syncer");

/// The chart archive users install (`helm package` of [`CHART`]), made once per test
/// process: what is missing from the archive (a file `.helmignore` drops, a template
/// reading a file outside the chart) fails the tests that render it.
pub fn packaged() -> PathBuf {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            let out = Command::new(helm())
                .args(["package", CHART, "-d"])
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "helm package: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "tgz"))
                .expect("helm package wrote a .tgz")
        })
        .clone()
}

/// `helm template dr-syncer <packaged chart> -n <ns> --set <sets…>` as objects.
pub fn render(ns: &str, sets: &[&str]) -> Vec<Value> {
    let archive = packaged();
    let archive = archive.to_str().unwrap();
    let mut args = vec!["template", "dr-syncer", archive, "-n", ns];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(helm()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered Deployment.
pub fn deployment(objs: &[Value]) -> &Value {
    objs.iter().find(|o| o["kind"] == "Deployment").unwrap()
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A controller installed by the chart and running as its Deployment would.
pub struct ChartController {
    /// The process (killed when dropped).
    pub process: Running,
    /// Where `/metrics` and `/readyz` are served.
    pub http: String,
    /// The rendered args, as started.
    pub args: Vec<String>,
}

/// Installs the chart into `ns` of `plane` (CRDs, RBAC, ServiceAccount, …) and starts the
/// controller with the Deployment's args/env as the chart's ServiceAccount; waits for
/// `/readyz`. `extra` args are appended (test-only knobs); the log goes to
/// `target/test-logs/<name>.log`.
pub async fn start(
    plane: &ControlPlane,
    ns: &str,
    sets: &[&str],
    work: &Path,
    name: &str,
    extra: &[&str],
) -> ChartController {
    let admin = plane.client().await.unwrap();
    install_crds(&admin).await;
    let applier = Applier::new(admin, "test");
    applier
        .apply(
            &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    let rendered = render(ns, sets);
    for o in &rendered {
        applier.apply(o).await;
    }
    let pod = &deployment(&rendered)["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"].as_str().unwrap();
    std::fs::create_dir_all(work).unwrap();
    let kubeconfig = work.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        serde_saphyr::to_string(&plane.service_account_kubeconfig(ns, sa).await.unwrap()).unwrap(),
    )
    .unwrap();
    let container = &pod["containers"][0];
    let http = free_addr();
    let cache = work.join(format!("{name}-cache"));
    let mut args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|a| {
            if a.starts_with("--http-addr=") {
                format!("--http-addr={http}")
            } else if a.starts_with("--cache-dir=") {
                format!("--cache-dir={}", cache.display())
            } else {
                a
            }
        })
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mounts = config_map_volumes(
        plane,
        ns,
        &rendered,
        pod,
        &work.join(format!("{name}-volumes")),
    )
    .await;
    let dir = dr_syncer_testkit::target_dir().join("test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dr-syncer"));
    cmd.args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("DR_SYNCER_LOG", "dr_syncer=debug,info")
        .stdout(Stdio::null())
        .stderr(log);
    for e in container["env"].as_array().unwrap() {
        let env_name = e["name"].as_str().unwrap();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => ns.to_string(),
            Some("metadata.name") => format!("{name}-7d9f-abcde"),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => local_path(&mounts, e["value"].as_str().unwrap()),
        };
        if env_name != "DR_SYNCER_LOG" {
            cmd.env(env_name, value);
        }
    }
    let process = Running::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Command::new("curl")
        .args(["-sf", &format!("http://{http}/readyz")])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "{name}: controller never ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ChartController {
        process,
        http,
        args,
    }
}

/// The pod's ConfigMap volumes as the kubelet would mount them: each mount's files (the
/// listed `items`, else every key) written below `dir`, read from the rendered chart or, for
/// a ConfigMap the chart does not create, from the apiserver. Returns `(mountPath, local
/// directory)` pairs.
async fn config_map_volumes(
    plane: &ControlPlane,
    ns: &str,
    rendered: &[Value],
    pod: &Value,
    dir: &Path,
) -> Vec<(String, std::path::PathBuf)> {
    let mut mounts = Vec::new();
    for m in pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let Some(cm) = volume["configMap"]["name"].as_str() else {
            continue;
        };
        let data = match rendered
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm)
        {
            Some(o) => o["data"].clone(),
            None => {
                let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                    kube::Api::namespaced(plane.client().await.unwrap(), ns);
                serde_json::to_value(api.get(cm).await.unwrap().data.unwrap_or_default()).unwrap()
            }
        };
        let local = dir.join(m["name"].as_str().unwrap());
        std::fs::create_dir_all(&local).unwrap();
        let files: Vec<(String, String)> = match volume["configMap"]["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap().to_string(),
                        i["path"].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
            None => data
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (k.clone(), k.clone()))
                .collect(),
        };
        for (key, path) in files {
            let body = data[&key]
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {cm} has no key {key}"));
            std::fs::write(local.join(path), body).unwrap();
        }
        mounts.push((m["mountPath"].as_str().unwrap().to_string(), local));
    }
    mounts
}

/// `value` with a mounted path replaced by its local copy (see [`config_map_volumes`]).
fn local_path(mounts: &[(String, std::path::PathBuf)], value: &str) -> String {
    for (mount, local) in mounts {
        if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
            return local.join(rest).display().to_string();
        }
    }
    value.to_string()
}

/// One scrape of the controller's `/metrics`.
pub fn metrics(http: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{http}/metrics")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
