//! Flux's source-controller and kustomize-controller, built from their pinned Go modules
//! (`tests/flux/build.sh`, cached by the hash of its go.mod/go.sum), installed into a test
//! control plane the way `flux install` does it (the CRDs, the `flux-system` namespace) and
//! run as local processes with the admin kubeconfig.
//!
//! Differences from a cluster install, all on the controllers' command lines: no metrics or
//! health endpoints, source-controller's artifact server on a free loopback port (the
//! address kustomize-controller downloads from), and a shorter wait before a Kustomization
//! whose dependency is not ready yet is looked at again (`--requeue-dependency`, 30 s by
//! default).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::envtest::ControlPlane;
use crate::objects::Applier;
use crate::process::ProcessGroup;

/// The namespace `flux install` creates and the controllers run in.
pub const NAMESPACE: &str = "flux-system";

/// The directory `tests/flux/build.sh` prepares: `bin/source-controller`,
/// `bin/kustomize-controller` and `crds/*.yaml`. Built once per machine (minutes, cold).
pub fn dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = crate::workspace_root().join("tests/flux/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Both controllers, running against one control plane. Dropping it stops them (SIGTERM,
/// then SIGKILL): drop it before the [`ControlPlane`], or the apiserver waits for their
/// watches to drain when it stops.
pub struct Flux {
    source: ProcessGroup,
    kustomize: ProcessGroup,
    /// `host:port` of source-controller's artifact server.
    pub storage_addr: String,
    /// Where the controllers' logs go (`<name>-source-controller.log`, ...).
    pub logs: PathBuf,
}

impl std::fmt::Debug for Flux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flux")
            .field("source", &self.source.id())
            .field("kustomize", &self.kustomize.id())
            .field("storage_addr", &self.storage_addr)
            .finish()
    }
}

impl Flux {
    /// Installs Flux's CRDs and the `flux-system` namespace into `plane` and starts both
    /// controllers with `plane`'s admin kubeconfig. `work` holds the artifact storage; the
    /// logs go to `target/test-logs/<name>-{source,kustomize}-controller.log`.
    pub async fn install(plane: &ControlPlane, work: &Path, name: &str) -> Flux {
        let flux = dir();
        let client = plane.client().await.expect("admin client");
        let applier = Applier::new(client.clone(), "flux-install");
        let mut crds = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(flux.join("crds"))
            .expect("flux crds/")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for doc in text.split("\n---") {
                let crd: Value = serde_saphyr::from_str(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                if crd.is_null() {
                    continue;
                }
                applier.apply(&crd).await;
                crds.push(crd["metadata"]["name"].as_str().unwrap().to_string());
            }
        }
        let names: Vec<&str> = crds.iter().map(String::as_str).collect();
        crate::objects::wait_established(&client, &names).await;
        applier
            .apply(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            )
            .await;

        let storage = work.join("flux-storage");
        std::fs::create_dir_all(&storage).unwrap();
        let storage_addr = free_addr();
        let logs = crate::target_dir().join("test-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let start = |bin: &str, args: &[String]| {
            let log =
                std::fs::File::create(logs.join(format!("{name}-{bin}.log"))).expect("log file");
            ProcessGroup::spawn(
                Command::new(flux.join("bin").join(bin))
                    .args(["--metrics-addr=0", "--health-addr=0", "--log-level=debug"])
                    .args(args)
                    .env("KUBECONFIG", plane.kubeconfig_path())
                    .env("RUNTIME_NAMESPACE", NAMESPACE)
                    .stdout(Stdio::null())
                    .stderr(log),
            )
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"))
        };
        let source = start(
            "source-controller",
            &[
                format!("--storage-path={}", storage.display()),
                format!("--storage-addr={storage_addr}"),
                format!("--storage-adv-addr={storage_addr}"),
            ],
        );
        let kustomize = start(
            "kustomize-controller",
            &["--requeue-dependency=2s".to_string()],
        );
        Flux {
            source,
            kustomize,
            storage_addr,
            logs,
        }
    }

    /// Whether both controllers still run.
    pub fn running(&self) -> bool {
        !self.source.leader_exited() && !self.kustomize.leader_exited()
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}
