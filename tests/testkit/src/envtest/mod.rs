//! A real control plane (etcd + kube-apiserver) for tests, no kubelet or controller-manager.
//!
//! Binaries come from `tests/envtest/build.sh` (cached by the hash of its go.sum). Each
//! [`ControlPlane`] gets its own directory with fresh certificates, an etcd data dir and free
//! loopback ports, so several run side by side (a source and a DR cluster).
//!
//! Processes are tied to the test process by a *lifeline*: a small shell supervisor reads
//! its stdin, which is a pipe from the test process. When the [`ControlPlane`] is dropped, or
//! the test process exits for any reason (even `SIGKILL`), the pipe closes and the supervisor
//! stops the apiserver and etcd and removes the directory. Detached instances (for
//! `make envtest-up`) skip the lifeline and are stopped by [`stop_detached`].

mod certs;
mod process;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

pub use certs::Pki;
use process::Supervisor;

/// Errors starting or talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Go build of the binaries failed.
    #[error("building the envtest binaries failed: {0}")]
    Build(String),
    /// Filesystem or process error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The apiserver did not become ready.
    #[error("kube-apiserver exited or was not ready within {0:?}; last log lines:\n{1}")]
    NotReady(Duration, String),
    /// Client error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// Kubeconfig error.
    #[error(transparent)]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Certificate generation error.
    #[error(transparent)]
    Cert(#[from] rcgen::Error),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Directory with `etcd`, `kube-apiserver` and `kubectl`, built once per test process
/// (the build itself is cached on disk by `build.sh`).
pub fn bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = crate::workspace_root().join("tests/envtest/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} exited with {}", script.display(), out.status));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(Error::Build)
}

/// The `kubectl` matching the test apiserver's version.
pub fn kubectl_path() -> Result<PathBuf> {
    Ok(bin_dir()?.join("kubectl"))
}

/// A running etcd + kube-apiserver pair.
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    pki: Pki,
    supervisor: Option<Supervisor>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .finish()
    }
}

impl ControlPlane {
    /// Starts a control plane in a fresh directory under `target/envtest/run/`, stopped and
    /// removed when dropped or when the test process exits.
    pub async fn start() -> Result<Self> {
        let run_root = crate::target_dir().join("envtest/run");
        std::fs::create_dir_all(&run_root).map_err(io("creating target/envtest/run"))?;
        let dir = tempdir_in(&run_root)?;
        Self::start_in(dir, false).await
    }

    /// Starts a control plane in `dir` that outlives this process (`make envtest-up`);
    /// stop it with [`stop_detached`].
    pub async fn start_detached(dir: &Path) -> Result<Self> {
        if dir.exists() {
            stop_detached(dir)?;
            std::fs::remove_dir_all(dir).map_err(io(format!("cleaning {}", dir.display())))?;
        }
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        Self::start_in(dir.to_path_buf(), true).await
    }

    async fn start_in(dir: PathBuf, detached: bool) -> Result<Self> {
        let bins = bin_dir()?;
        let pki = Pki::generate()?;
        pki.write(&dir)?;
        // A port can be taken between probing and binding; retry with new ports.
        let mut last_err = None;
        for _attempt in 0..3 {
            let [etcd_client, etcd_peer, secure] = free_ports::<3>()?;
            let supervisor =
                Supervisor::spawn(&dir, &bins, etcd_client, etcd_peer, secure, detached)?;
            let server = format!("https://127.0.0.1:{secure}");
            let mut plane = ControlPlane {
                dir: dir.clone(),
                server,
                pki: pki.clone(),
                supervisor: Some(supervisor),
            };
            match plane.wait_ready(Duration::from_secs(90)).await {
                Ok(()) => {
                    std::fs::write(plane.dir.join("kubeconfig"), plane.kubeconfig_yaml())
                        .map_err(io("writing kubeconfig"))?;
                    if detached && let Some(s) = plane.supervisor.take() {
                        s.detach();
                    }
                    return Ok(plane);
                }
                Err(e) => {
                    if let Some(s) = plane.supervisor.take() {
                        s.stop();
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("valid request");
            if client.request_text(req).await.is_ok() {
                return Ok(());
            }
            let exited = self.supervisor.as_mut().is_some_and(Supervisor::exited);
            if exited || tokio::time::Instant::now() > deadline {
                return Err(Error::NotReady(timeout, self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for log in ["apiserver.log", "etcd.log"] {
            let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "== {log}\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        out
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The instance's directory (certificates, logs, `kubeconfig`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Admin kubeconfig (`system:masters`, TLS verified against the instance's CA) with all
    /// credentials embedded, so it can also be stored in a Secret.
    pub fn kubeconfig(&self) -> Kubeconfig {
        self.pki
            .kubeconfig(&self.server, "envtest-admin", certs::Credentials::Cert)
    }

    fn kubeconfig_yaml(&self) -> String {
        serde_saphyr::to_string(&self.kubeconfig()).expect("kubeconfig serializes")
    }

    /// An admin client.
    pub async fn client(&self) -> Result<Client> {
        client_from(self.kubeconfig()).await
    }

    /// A kubeconfig authenticating as ServiceAccount `namespace/name` with a fresh bound
    /// token (TokenRequest; no token controller runs here). The account must exist.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Kubeconfig> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        let token = token.status.and_then(|s| s.token).unwrap_or_default();
        let user = format!("system:serviceaccount:{namespace}:{name}");
        Ok(self
            .pki
            .kubeconfig(&self.server, &user, certs::Credentials::Token(token)))
    }

    /// A client authenticating as ServiceAccount `namespace/name`.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        client_from(self.service_account_kubeconfig(namespace, name).await?).await
    }

    /// `kubectl` pointed at this instance with the admin kubeconfig.
    pub fn kubectl(&self) -> Result<std::process::Command> {
        let mut cmd = std::process::Command::new(kubectl_path()?);
        cmd.arg("--kubeconfig").arg(self.kubeconfig_path());
        Ok(cmd)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(s) = self.supervisor.take() {
            s.stop();
        }
    }
}

/// Stops a detached instance started in `dir` (no-op when none runs there).
pub fn stop_detached(dir: &Path) -> Result<()> {
    process::stop_pids(dir)
}

/// WATCH requests the apiserver holds now (`apiserver_longrunning_requests`, summed over
/// resources), read from its `/metrics`: what a controller's watches cost the apiserver.
pub async fn watch_requests(client: &Client) -> Result<f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("valid request");
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{") && l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Requests the apiserver has served so far, by `"VERB resource"`
/// (`apiserver_request_total`, summed over codes and scopes; `resource` is empty for paths
/// such as `/version`): the difference of two readings is what the clients asked for.
pub async fn requests_served(client: &Client) -> Result<std::collections::BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("valid request");
    let text = client.request_text(req).await?;
    let label = |line: &str, name: &str| -> String {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    };
    let mut served = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some(count) = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) else {
            continue;
        };
        let key = format!("{} {}", label(line, "verb"), label(line, "resource"));
        *served.entry(key).or_insert(0.0) += count;
    }
    Ok(served)
}

/// Builds a client from a kubeconfig (TLS verified).
pub async fn client_from(kubeconfig: Kubeconfig) -> Result<Client> {
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// One control plane shared by all tests of a test binary (tests isolate themselves by
/// namespace). Started on first use; stopped when the test process exits.
pub async fn shared() -> &'static ControlPlane {
    shared_named("default").await
}

/// Like [`shared`], keyed by role, so one test binary can share a `"source"` and a `"dr"`
/// instance.
pub async fn shared_named(role: &'static str) -> &'static ControlPlane {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static PLANES: OnceLock<
        Mutex<HashMap<&'static str, &'static tokio::sync::OnceCell<ControlPlane>>>,
    > = OnceLock::new();
    let cell = {
        let mut map = PLANES
            .get_or_init(Default::default)
            .lock()
            .expect("not poisoned");
        *map.entry(role)
            .or_insert_with(|| Box::leak(Box::new(tokio::sync::OnceCell::new())))
    };
    // Each #[tokio::test] has its own runtime; the plane's processes do not depend on it, and
    // clients are made per test, so sharing across runtimes is safe.
    cell.get_or_init(|| async {
        ControlPlane::start()
            .await
            .expect("start envtest control plane")
    })
    .await
}

fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(io("probing free ports"))?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr().map_err(io("probing free ports"))?.port();
    }
    Ok(ports)
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = parent.join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(format!("cleaning {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::group_members;

    /// Dropping a control plane stops the supervisor, etcd and the apiserver (all of its
    /// process group) and removes its directory.
    #[tokio::test]
    async fn control_plane_drop_leaves_no_process_and_no_directory() {
        let plane = ControlPlane::start().await.unwrap();
        let pgid = plane.supervisor.as_ref().unwrap().process_group();
        let dir = plane.dir().to_path_buf();
        // bash, etcd, kube-apiserver.
        assert!(group_members(pgid).len() >= 3, "{:?}", group_members(pgid));
        drop(plane);
        assert_eq!(group_members(pgid), Vec::<u32>::new(), "left running");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
