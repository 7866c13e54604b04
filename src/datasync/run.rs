//! One PVC sync operation: lock → point-in-time source → volume server pod → client key
//! and allow-list entry at the agent → destination PVC → `pvc-sync` Job → report → cleanup
//! (always) → unlock. The waits poll the objects the kubelet, the snapshot controller and
//! the Job controller move forward; every step has the operation's deadline.
//!
//! Credentials are per operation: a one-off client key, generated here, is the only key
//! the operation's volume server accepts, the only key its bastion allow-list entry
//! accepts, and is authorized at the bastion under the operation's own entry; all three
//! expire at the operation's deadline and are removed at cleanup. Only that key reaches the
//! DR namespace's Job Secret, so reading Secrets in one DR namespace gives access to that
//! one operation's volume until its deadline, and to nothing else. The mapping's
//! long-lived key never leaves the controller's namespace.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::hooks::HookRun;
use super::keys::KeyRing;
use super::objects::{self, Operation};
use super::plan::{self, Report};
use super::{agent, lock};
use crate::api::{CopyMethod, PvcSyncResult};
use crate::export::policy::Policy;

/// What an operation needs besides its own description.
pub struct Env {
    /// The controller's cluster (PVC locks).
    pub ctl: Client,
    /// The source cluster.
    pub source: Client,
    /// The DR cluster.
    pub dest: Client,
    /// Namespace of the PVC locks.
    pub lease_namespace: String,
    /// This controller replica.
    pub holder: String,
    /// The source cluster's identity in lock names (`namespace/RemoteCluster`).
    pub cluster_id: String,
    /// The agent's namespace in the source cluster.
    pub agent_namespace: String,
    /// The bastion port.
    pub agent_port: i32,
    /// A fixed bastion address instead of the agent pod's.
    pub endpoint: Option<String>,
    /// The agent's host key ring.
    pub host: KeyRing,
    /// The mapping's export policy (destination PVC shape).
    pub policy: Policy,
    /// VolumeSnapshots of the destination to keep (0: none); `None`: 2 when the DR
    /// cluster has a VolumeSnapshotClass for the destination PVC's provisioner, else 0
    /// (see [`image_policy`]).
    pub keep_snapshots: Option<i32>,
    /// VolumeSnapshotClass for destination snapshots.
    pub snapshot_class: Option<String>,
    /// Namespace of the mapping (named in the release command of a held sync).
    pub mapping_namespace: String,
    /// Name of the mapping.
    pub mapping_name: String,
    /// Becomes `true` when the mapping is deleted or stops replicating data: running
    /// operations stop and clean up.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// The result of one operation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Succeeded, failed, held or skipped.
    pub result: PvcSyncResult,
    /// Why it failed, was held or skipped; for a success, what was not copied as is.
    pub message: Option<String>,
    /// What `pvc-sync` reported.
    pub report: Option<Report>,
    /// The point in time the DR copy now holds.
    pub point_in_time: Option<Timestamp>,
    /// When the operation started.
    pub started: Timestamp,
    /// Wall time.
    pub duration: Duration,
    /// Some temporary object could not be removed (the next pass sweeps again).
    pub cleanup_failed: bool,
}

/// The VolumeSnapshot API.
pub fn snapshot_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshot".into(),
        plural: "volumesnapshots".into(),
    }
}

const POLL: Duration = Duration::from_millis(500);

/// Runs one operation to its end; never leaves temporary objects or the lock behind.
pub async fn sync_one(env: &Env, op: &Operation) -> Outcome {
    let started = Timestamp::now();
    let clock = Instant::now();
    let outcome = |result, message: Option<String>, report, pit| Outcome {
        result,
        message,
        report,
        point_in_time: pit,
        started,
        duration: clock.elapsed(),
        cleanup_failed: false,
    };
    let lease = lock::lease_name(&env.cluster_id, &op.source_namespace(), &op.pvc_name());
    let holder = format!("{}/{}", env.holder, op.id);
    let hold_for = op.timeout + Duration::from_secs(300);
    let held = match lock::acquire(
        &env.ctl,
        &env.lease_namespace,
        &lease,
        &holder,
        &op.mapping,
        hold_for,
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(other)) => {
            let msg = format!("another sync of this PVC is running ({other}); skipped");
            return outcome(PvcSyncResult::Skipped, Some(msg), None, None);
        }
        Err(e) => {
            return outcome(
                PvcSyncResult::Failed,
                Some(format!("PVC lock: {e}")),
                None,
                None,
            );
        }
    };
    let mut cancel = env.cancel.clone();
    let mut hooks = HookRun::new(
        &env.source,
        &op.source_namespace(),
        &[op.pvc_name()],
        &op.hooks,
    );
    let mut result = tokio::select! {
        r = tokio::time::timeout(op.timeout, steps(env, op, &mut hooks)) => match r {
            Ok(r) => r,
            Err(_) => Err(StepError::Failed(format!("timed out after {}s", op.timeout.as_secs()))),
        },
        _ = cancel.wait_for(|c| *c) => Err(StepError::Failed("cancelled: the mapping was deleted or stopped replicating data".into())),
    };
    // A sync that failed, timed out or was cancelled after `pre` started still thaws the
    // application (a no-op when `post` already ran at its point).
    if let Err(e) = hooks.post().await {
        result = match result {
            Ok(_) => Err(StepError::Failed(e)),
            Err(StepError::Failed(first)) => Err(StepError::Failed(format!("{first}; then {e}"))),
            Err(held) => Err(held),
        };
    }
    let cleaned = cleanup(env, op).await;
    if let Err(e) = &cleaned {
        tracing::warn!(operation = %op.id, error = %e, "cleanup incomplete; swept again on the next pass");
    }
    if let Err(e) = lock::release(&env.ctl, &env.lease_namespace, held).await {
        tracing::warn!(operation = %op.id, error = %e, "cannot release the PVC lock; it expires");
    }
    let mut out = match result {
        Ok((report, pit)) => {
            let note = plan::success_note(&report);
            let mut warnings = hooks.warnings().to_vec();
            if let Some(m) = &op.group {
                warnings.extend(m.warnings.iter().cloned());
            }
            let note = match (note, warnings.join("; ")) {
                (note, w) if w.is_empty() => note,
                (Some(n), w) => Some(format!("{n}; {w}")),
                (None, w) => Some(w),
            };
            outcome(PvcSyncResult::Succeeded, note, Some(report), Some(pit))
        }
        Err(StepError::Held(report)) => {
            let held = report.held.clone().unwrap_or_default();
            let msg = plan::held_message(&held, &env.mapping_namespace, &env.mapping_name);
            outcome(PvcSyncResult::Held, Some(msg), Some(report), None)
        }
        Err(StepError::Failed(e)) => outcome(PvcSyncResult::Failed, Some(e), None, None),
    };
    out.cleanup_failed = cleaned.is_err();
    out
}

fn kube_err(what: &str) -> impl Fn(kube::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub(super) async fn wait<T, F, Fut>(what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    tracing::debug!(what, "waiting");
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why the steps of an operation did not end in a good copy.
enum StepError {
    /// Something failed; the message says what.
    Failed(String),
    /// The deletion breaker held the sync (the report names the batch).
    Held(Report),
}

impl From<String> for StepError {
    fn from(e: String) -> Self {
        StepError::Failed(e)
    }
}

async fn steps(
    env: &Env,
    op: &Operation,
    hooks: &mut HookRun,
) -> Result<(Report, Timestamp), StepError> {
    let src_ns = op.source_namespace();
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(env.source.clone(), &src_ns, &snapshot_resource());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.source.clone(), &src_ns);
    let pp = PostParams::default();
    // 0. Pod Security: a namespace enforcing a level the operation's pods do not meet would
    // refuse the server pod (source) or leave the Job without a pod until the deadline
    // (DR); say what to change before anything is created.
    for (client, ns, writer) in [
        (&env.source, &src_ns, false),
        (&env.dest, &op.dest_namespace, true),
    ] {
        let level = Api::<Namespace>::all(client.clone())
            .get_opt(ns)
            .await
            .map_err(kube_err("read namespace"))?
            .and_then(|n| n.metadata.labels?.remove(plan::POD_SECURITY_ENFORCE));
        if let Some(why) = plan::pod_security_conflict(ns, level.as_deref(), op.run_as_root, writer)
        {
            return Err(why.into());
        }
    }
    // 1. The point in time, between the hooks' `pre` and `post`.
    hooks.pre().await?;
    let point_in_time = match op.method {
        CopyMethod::Snapshot => {
            // A consistency group's member snapshot exists (and is ready) already.
            if op.group.is_none() {
                snapshots
                    .create(&pp, &op.source_snapshot())
                    .await
                    .map_err(kube_err("create VolumeSnapshot"))?;
            }
            let name = op.snapshot_name();
            let (pit, size) = wait("VolumeSnapshot readyToUse", || async {
                let s = snapshots
                    .get(&name)
                    .await
                    .map_err(kube_err("read VolumeSnapshot"))?;
                let status = &s.data["status"];
                if let Some(msg) = status["error"]["message"].as_str() {
                    return Err(format!("VolumeSnapshot {name}: {msg}"));
                }
                Ok((status["readyToUse"] == json!(true)).then(|| {
                    let pit = status["creationTime"].as_str().and_then(|t| t.parse().ok());
                    (
                        pit.unwrap_or_else(Timestamp::now),
                        status["restoreSize"].as_str().map(String::from),
                    )
                }))
            })
            .await?;
            hooks.post().await?;
            claims
                .create(&pp, &op.temp_claim(size.as_deref()))
                .await
                .map_err(kube_err("create temporary PVC"))?;
            op.group.as_ref().map_or(pit, |m| m.point_in_time)
        }
        CopyMethod::Clone => {
            let pit = Timestamp::now();
            claims
                .create(&pp, &op.temp_claim(None))
                .await
                .map_err(kube_err("create clone PVC"))?;
            pit
        }
        CopyMethod::Direct => Timestamp::now(),
    };
    // 2. The volume server with a one-off host key, accepting only the operation's one-off
    // client key, until the deadline (the whole operation runs under `op.timeout`, so a
    // deadline taken now is never earlier than the operation's end).
    let deadline = super::keys::later(Timestamp::now(), op.timeout);
    let (serve_key, serve_pub) = super::keys::generate(&format!("dr-syncer-op-{}", op.id));
    let credential = OperationKey::new(op, deadline);
    let authorized = credential.authorized_keys();
    // The bastion's client list gets the one-off key under this operation's own entry
    // (removed at cleanup, and expiring at the deadline anyway). Published now, so the
    // agent's mounted copy has caught up by the time the Job connects.
    agent::set_entry(
        &env.source,
        &env.agent_namespace,
        true,
        &allow_key(op),
        Some(&authorized),
    )
    .await
    .map_err(kube_err("add the operation's client key at the agent"))?;
    Api::<Secret>::namespaced(env.source.clone(), &src_ns)
        .create(&pp, &op.serve_secret(&serve_key, &authorized))
        .await
        .map_err(kube_err("create server Secret"))?;
    let pods: Api<Pod> = Api::namespaced(env.source.clone(), &src_ns);
    pods.create(&pp, &op.serve_pod())
        .await
        .map_err(kube_err("create server pod"))?;
    let pod_name = op.name("serve");
    let (ip, node) = wait("server pod running", || async {
        let p = pods
            .get(&pod_name)
            .await
            .map_err(kube_err("read server pod"))?;
        let st = p.status.clone().unwrap_or_default();
        match st.phase.as_deref() {
            Some("Failed") | Some("Succeeded") => Err(format!(
                "server pod {pod_name} ended: {}",
                st.message.or(st.reason).unwrap_or_default()
            )),
            Some("Running") => Ok(st.pod_ip.map(|ip| (ip, p.spec.and_then(|s| s.node_name)))),
            _ => Ok(None),
        }
    })
    .await?;
    // The clone's volume exists once the pod that mounts it runs.
    if op.method == CopyMethod::Clone {
        hooks.post().await?;
    }
    let server = plan::address(&ip, i32::from(objects::SERVE_PORT));
    // 3. The bastion and its allow-list entry for this operation only.
    let bastion = match &env.endpoint {
        Some(e) => e.clone(),
        None => {
            let agents: Api<Pod> = Api::namespaced(env.source.clone(), &env.agent_namespace);
            let sel = format!("app.kubernetes.io/name={}", agent::NAME);
            let list = agents
                .list(&ListParams::default().labels(&sel))
                .await
                .map_err(kube_err("list agent pods"))?;
            plan::agent_address(&list.items, node.as_deref(), env.agent_port).ok_or_else(|| {
                format!("no ready agent pod in namespace {} of the source cluster (is spec.pvcSync.enabled set and the DaemonSet running?)", env.agent_namespace)
            })?
        }
    };
    let entry = objects::allow_line(&server, &credential.fingerprint(), deadline);
    agent::set_entry(
        &env.source,
        &env.agent_namespace,
        false,
        &allow_key(op),
        Some(&entry),
    )
    .await
    .map_err(kube_err("add allow-list entry"))?;
    // 4. The destination PVC.
    ensure_namespace(&env.dest, &op.dest_namespace).await?;
    let dest_claims: Api<PersistentVolumeClaim> =
        Api::namespaced(env.dest.clone(), &op.dest_namespace);
    let dest_pvc = op.pvc_name();
    let dest_claim = match dest_claims
        .get_opt(&dest_pvc)
        .await
        .map_err(kube_err("read destination PVC"))?
    {
        Some(c) => c,
        None => {
            let claim = objects::destination_claim(&op.source, &op.dest_namespace, &env.policy);
            match dest_claims.create(&pp, &claim).await {
                Ok(c) => c,
                Err(kube::Error::Api(s)) if s.code == 409 => claim,
                Err(e) => return Err(format!("create destination PVC: {e}").into()),
            }
        }
    };
    // 5. The Job.
    let known = objects::known_hosts(
        &bastion,
        &env.host.pins(Timestamp::now()),
        &server,
        &serve_pub,
    );
    Api::<Secret>::namespaced(env.dest.clone(), &op.dest_namespace)
        .create(&pp, &op.job_secret(&credential.private, &known))
        .await
        .map_err(kube_err("create job Secret"))?;
    let jobs: Api<Job> = Api::namespaced(env.dest.clone(), &op.dest_namespace);
    jobs.create(&pp, &op.sync_job(&dest_pvc, &server, &bastion))
        .await
        .map_err(kube_err("create Job"))?;
    let job_name = op.name("job");
    let succeeded = wait("Job finished", || async {
        let j = jobs.get(&job_name).await.map_err(kube_err("read Job"))?;
        let st = j.status.unwrap_or_default();
        let cond = |t: &str| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True")
        };
        Ok(if st.succeeded.unwrap_or(0) > 0 || cond("Complete") {
            Some(true)
        } else if st.failed.unwrap_or(0) > 0 || cond("Failed") {
            Some(false)
        } else {
            None
        })
    })
    .await?;
    // `Direct`: the copy was the point in time.
    hooks.post().await?;
    let job_pods: Api<Pod> = Api::namespaced(env.dest.clone(), &op.dest_namespace);
    let sel = format!("{}={}", objects::OPERATION, op.id);
    let listed = job_pods
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(kube_err("list Job pods"))?;
    let report = listed.items.iter().find_map(plan::report);
    let killed = listed.items.iter().find_map(plan::killed_why);
    if !succeeded {
        if let Some(r) = report.as_ref().filter(|r| r.held.is_some()) {
            return Err(StepError::Held(r.clone()));
        }
        let why = report
            .and_then(|r| {
                let code = r.exit_code.unwrap_or(1);
                let hint = if code == plan::EXIT_OWNERSHIP {
                    plan::ownership_hint(op.run_as_root)
                } else {
                    ""
                };
                r.error.map(|e| format!("{e} (exit code {code}){hint}"))
            })
            .or(killed.map(|k| format!("{k}; {KILLED_COMMIT}")))
            .unwrap_or_else(|| {
                format!(
                    "the pvc-sync Job failed (no report in its termination message); {KILLED_COMMIT}"
                )
            });
        return Err(why.into());
    }
    let report = report.unwrap_or_default();
    if let Some(why) = plan::ownership_breach(&report, op.ownership) {
        return Err(why.into());
    }
    // The data is in and verified: a failed image snapshot is a warning, not a failed sync.
    let (keep, class) = image_policy(env, &dest_claim).await;
    if keep > 0
        && let Err(e) = keep_image(env, op, &dest_pvc, keep, class).await
    {
        tracing::warn!(operation = %op.id, error = %e, "destination snapshot not taken");
    }
    Ok((report, point_in_time))
}

/// Key of an operation's entries in the agent's allow-list and client list: the mapping,
/// `..` (which no mapping label contains, so one mapping's prefix never matches
/// another's), the operation id.
pub fn allow_key(op: &Operation) -> String {
    format!("{}..{}", op.mapping, op.id)
}

/// An operation's one-off client key and its deadline.
pub struct OperationKey {
    /// The private key (OpenSSH text); goes only into the operation's Job Secret.
    pub private: String,
    /// The public key line.
    pub public: String,
    /// When the key stops working everywhere.
    pub expires: Timestamp,
}

impl std::fmt::Debug for OperationKey {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationKey")
            .field("public", &self.public)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl OperationKey {
    /// A fresh key for `op`, valid until `expires`.
    pub fn new(op: &Operation, expires: Timestamp) -> Self {
        let (private, public) = super::keys::generate(&format!("dr-syncer-op-{}-client", op.id));
        OperationKey {
            private,
            public,
            expires,
        }
    }

    /// The `authorized_keys` line of the volume server and of the operation's entry in the
    /// bastion's client list: this key only, with `expiry-time` at the deadline.
    pub fn authorized_keys(&self) -> String {
        format!(
            "expiry-time=\"{}\" {}\n",
            crate::pvc::access::format_expiry(self.expires),
            self.public.trim()
        )
    }

    /// SHA-256 fingerprint (what the allow-list entry is bound to).
    pub fn fingerprint(&self) -> String {
        super::keys::fingerprint_of(&self.public)
    }
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api
        .get_opt(name)
        .await
        .map_err(kube_err("read destination namespace"))?
        .is_some()
    {
        return Ok(());
    }
    let ns: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {crate::api::keys::MANAGED_BY: "dr-syncer"}}}))
    .expect("valid Namespace");
    agent::create_missing(&api, &ns)
        .await
        .map_err(kube_err("create destination namespace"))
}

/// The VolumeSnapshotClass API.
pub fn snapshot_class_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotClass".into(),
        plural: "volumesnapshotclasses".into(),
    }
}

/// What a Job killed without a report may have left: a commit half carried out.
const KILLED_COMMIT: &str = "if it was killed while committing, the DR volume holds .drsync/journal and the next sync finishes that commit first (on failover: pvc-sync --finish-only, runbook §4b)";

/// Destination images kept by default: the newest and the one before it — a sync that
/// succeeds with bad data (a source encrypted in place) would otherwise replace the only
/// image of the good state.
const DEFAULT_IMAGES: i32 = 2;

/// How many destination images to keep and with which VolumeSnapshotClass: an explicit
/// `keepSnapshots` with the mapping's class; unset, [`DEFAULT_IMAGES`] with the DR
/// cluster's VolumeSnapshotClass whose driver provisions the destination PVC's
/// StorageClass, or 0 when there is none (or the snapshot API is not served).
async fn image_policy(env: &Env, claim: &PersistentVolumeClaim) -> (i32, Option<String>) {
    if let Some(n) = env.keep_snapshots {
        return (n.max(0), env.snapshot_class.clone());
    }
    match default_image_class(&env.dest, claim).await {
        Ok(Some(class)) => (DEFAULT_IMAGES, Some(class)),
        Ok(None) => (0, None),
        Err(e) => {
            tracing::debug!(error = %e, "no default destination snapshot: cannot match a VolumeSnapshotClass");
            (0, None)
        }
    }
}

/// The DR cluster's VolumeSnapshotClass for the provisioner of `claim`'s StorageClass
/// (the one named by the claim, else the cluster's default StorageClass).
async fn default_image_class(
    dest: &Client,
    claim: &PersistentVolumeClaim,
) -> Result<Option<String>, kube::Error> {
    use k8s_openapi::api::storage::v1::StorageClass;
    let classes: Api<StorageClass> = Api::all(dest.clone());
    let named = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone());
    let sc = match named {
        Some(n) => classes.get_opt(&n).await?,
        None => classes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                    .is_some_and(|v| v == "true")
            }),
    };
    let Some(sc) = sc else { return Ok(None) };
    let snapshot_classes: Api<DynamicObject> =
        Api::all_with(dest.clone(), &snapshot_class_resource());
    let listed: Vec<serde_json::Value> = snapshot_classes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    Ok(plan::snapshot_class_for(&sc.provisioner, &listed))
}

/// A VolumeSnapshot of the destination after a good sync (the last-known-good image), and
/// the oldest ones beyond `keep` deleted.
async fn keep_image(
    env: &Env,
    op: &Operation,
    pvc: &str,
    keep: i32,
    class: Option<String>,
) -> Result<(), String> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.dest.clone(), &op.dest_namespace, &snapshot_resource());
    let stamp = Timestamp::now().strftime("%Y%m%d%H%M%S").to_string();
    let mut spec = json!({"source": {"persistentVolumeClaimName": pvc}});
    if let Some(c) = &class {
        spec["volumeSnapshotClassName"] = json!(c);
    }
    let pvc_label = objects::label_value(pvc);
    let labels = json!({objects::PVC: pvc_label, objects::MAPPING: op.mapping, "dr-syncer.io/image": "true"});
    let snap: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": format!("{}-{stamp}", pvc.chars().take(200).collect::<String>()), "labels": labels},
        "spec": spec,
    }))
    .expect("valid VolumeSnapshot");
    api.create(&PostParams::default(), &snap)
        .await
        .map_err(kube_err("create destination VolumeSnapshot"))?;
    let sel = format!("{}={pvc_label},dr-syncer.io/image=true", objects::PVC);
    let mut list = api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(kube_err("list destination VolumeSnapshots"))?
        .items;
    list.sort_by_key(|s| s.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let excess = list.len().saturating_sub(keep.max(0) as usize);
    for old in list.iter().take(excess) {
        if let Some(n) = &old.metadata.name {
            let _ = api.delete(n, &DeleteParams::default()).await;
        }
    }
    Ok(())
}

/// Deletes every object labelled with `selector` in `namespace` (pods, Secrets, PVCs,
/// VolumeSnapshots, Jobs); types a cluster does not serve are skipped.
pub async fn delete_labeled(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<(), kube::Error> {
    let kinds = [
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        snapshot_resource(),
        super::group::group_resource(),
    ];
    let lp = ListParams::default().labels(selector);
    let mut first_error = None;
    for ar in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        match api
            .delete_collection(&DeleteParams::background(), &lp)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes an operation's temporary objects on both sides and its entries in the agent's
/// allow-list and client list (the one-off key stops working at the bastion).
pub async fn cleanup(env: &Env, op: &Operation) -> Result<(), kube::Error> {
    let sel = format!("{}={}", objects::OPERATION, op.id);
    let mut removed = Ok(());
    for secret in [true, false] {
        let r = agent::set_entry(
            &env.source,
            &env.agent_namespace,
            secret,
            &allow_key(op),
            None,
        )
        .await;
        let r = match r {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other,
        };
        if removed.is_ok() {
            removed = r;
        }
    }
    // Both sides are always attempted (the job Secret holds a private key); the first
    // error is reported.
    let source = delete_labeled(&env.source, &op.source_namespace(), &sel).await;
    let dest = delete_labeled(&env.dest, &op.dest_namespace, &sel).await;
    match (dest, source, removed) {
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvc::access::{Source, key_allowed, parse_authorized_keys};
    use russh::keys::PublicKey;

    fn op(id: &str) -> Operation {
        Operation {
            id: id.into(),
            mapping: "ns.m".into(),
            method: CopyMethod::Clone,
            source: Default::default(),
            dest_namespace: "d".into(),
            image: "i".into(),
            pull_policy: None,
            run_as_root: false,
            host_users: None,
            ownership: Default::default(),
            max_delete_percent: 50,
            allow_deletions: None,
            resources: None,
            node: None,
            snapshot_class: None,
            timeout: Duration::from_secs(60),
            bwlimit_kib: None,
            hooks: Vec::new(),
            group: None,
        }
    }

    /// The one-off key's `authorized_keys` line accepts that key only, and only until the
    /// deadline; another operation's key is refused.
    #[test]
    fn operation_key_authorized_only_for_itself_until_the_deadline() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let deadline = t("2026-11-26T10:00:00Z");
        let a = OperationKey::new(&op("a"), deadline);
        let b = OperationKey::new(&op("b"), deadline);
        let list = Source::Fixed(parse_authorized_keys(&a.authorized_keys()).unwrap());
        let key = |k: &OperationKey| PublicKey::from_openssh(&k.public).unwrap();
        let cases = [
            ("own_key_before", key(&a), t("2026-11-26T09:59:59Z"), true),
            ("own_key_at_deadline", key(&a), deadline, false),
            ("other_operation", key(&b), t("2026-11-26T09:00:00Z"), false),
        ];
        for (name, k, now, want) in cases {
            assert_eq!(key_allowed(&list, &k, now), want, "{name}");
        }
        assert_eq!(a.fingerprint(), crate::pvc::access::fingerprint(&key(&a)));
        assert!(
            !format!("{a:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
    }
}
