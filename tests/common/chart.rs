//! The controller as users install it: the Helm chart rendered with `helm template`, applied
//! to a real apiserver, and the binary started with the rendered Deployment's args and env
//! and the chart's ServiceAccount token. Only what a pod provides differently here is
//! substituted: a free port for `--http-addr` and a writable `--cache-dir`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dr_syncer_testkit::envtest::ControlPlane;
use dr_syncer_testkit::objects::Applier;
use dr_syncer_testkit::tools::helm;
use serde_json::Value;

use super::{Running, free_addr, install_crds};

/// The chart in this repository.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dr-syncer");

/// `helm template dr-syncer <chart> -n <ns> --set <sets…>` as objects.
pub fn render(ns: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "dr-syncer", CHART, "-n", ns];
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
            None => e["value"].as_str().unwrap().to_string(),
        };
        if env_name != "DR_SYNCER_LOG" {
            cmd.env(env_name, value);
        }
    }
    let process = Running(cmd.spawn().unwrap());
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

/// One scrape of the controller's `/metrics`.
pub fn metrics(http: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{http}/metrics")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
