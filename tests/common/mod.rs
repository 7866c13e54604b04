//! Helpers shared by the integration tests that need dr-syncer itself (the testkit crate
//! knows nothing of dr-syncer's types).
#![allow(dead_code)] // each test binary uses a subset

pub mod chart;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

/// Installs dr-syncer's CRDs with server-side apply and waits until they are Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in dr_syncer::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("dr-syncer-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("CRD {name} rejected: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
        .unwrap();
    }
}

/// A child process killed (SIGKILL) and reaped when dropped. Started with
/// [`Running::spawn`] (or any `Command` with `process_group(0)`), it leads its own process
/// group and the kill takes every process it started with it; otherwise only the child
/// itself is killed.
pub struct Running(pub Child);

impl Running {
    /// Spawns `cmd` as the leader of its own process group.
    pub fn spawn(cmd: &mut Command) -> Running {
        use std::os::unix::process::CommandExt;
        Running(cmd.process_group(0).spawn().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGKILL, no grace: tests drop a controller to simulate a crash (a leader that
        // never releases its lease, a batch cut off mid-way).
        dr_syncer_testkit::process::stop(&mut self.0, dr_syncer_testkit::process::Stop::Kill);
    }
}

/// What one poll of [`eventually`] saw: the value it waits for, or "not yet" with, where
/// the poll can tell, the state it observed (shown if the wait times out).
pub trait Observation {
    /// The value [`eventually`] returns.
    type Value;
    /// `Ok(value)` when done; `Err(state)` to poll again.
    fn observed(self) -> Result<Self::Value, Option<String>>;
}

/// `Some(value)` is done; `None` polls again (nothing to report on timeout).
impl<T> Observation for Option<T> {
    type Value = T;
    fn observed(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Ok(value)` is done; `Err(state)` polls again, and the last state is reported on timeout.
impl<T, S: std::fmt::Debug> Observation for Result<T, S> {
    type Value = T;
    fn observed(self) -> Result<T, Option<String>> {
        self.map_err(|s| Some(format!("{s:?}")))
    }
}

/// A state that [`eventually`] shows as is on timeout (multi-line text such as a file list
/// or a metrics scrape) instead of quoted and escaped by `Debug`.
pub struct Text(pub String);

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How often [`eventually`] polls.
pub const POLL: Duration = Duration::from_millis(200);

/// Polls `f` every [`POLL`] until it returns `Some(value)` (or `Ok(value)`) and returns the
/// value; panics naming `what` and the last observed state (an `Err`'s content) when
/// `timeout` passes first. The one wait loop of the envtest suites, so every timeout reads
/// the same and says what was seen.
pub async fn eventually<T, O, Fut>(what: &str, timeout: Duration, mut f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = O>,
    O: Observation<Value = T>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match f().await.observed() {
            Ok(v) => return v,
            Err(state) => state,
        };
        if std::time::Instant::now() >= deadline {
            match last {
                Some(state) => {
                    panic!("{what}: not reached within {timeout:?}; last observed: {state}")
                }
                None => panic!("{what}: not reached within {timeout:?}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A free loopback `host:port`.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Starts the controller on `kubeconfig`, living in (and reconciling the mappings of) `ns`; its log goes to
/// `target/test-logs/<name>.log` (kept for debugging).
pub fn start_controller_with(
    kubeconfig: &Path,
    ns: &str,
    cache: &Path,
    name: &str,
    http: &str,
    extra: &[&str],
) -> Running {
    let dir = dr_syncer_testkit::target_dir().join("test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .args(["controller", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--namespace",
                ns,
                "--http-addr",
                http,
                "--instance",
                name,
                "--cache-dir",
            ])
            .arg(cache)
            .args(extra)
            .env("DR_SYNCER_LOG", "dr_syncer=debug,info")
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// Every `dr_syncer_*` metric name the chart's alerting rules and Grafana dashboard use
/// (`charts/dr-syncer/files/`), for the tests that check them against a real scrape.
#[allow(dead_code)] // not every test binary checks metrics
pub fn chart_metric_names() -> std::collections::BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/dr-syncer/files");
    let text = ["alerts.yaml", "dashboard.json"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect::<String>();
    regex::Regex::new(r"dr_syncer_[a-z_]+")
        .unwrap()
        .find_iter(&text)
        .map(|m| m.as_str().to_string())
        .collect()
}
