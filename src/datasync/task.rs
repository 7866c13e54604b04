//! One task per NamespaceMapping with `pvcConfig.syncData`: it keeps the mapping's client
//! key ring (creating and rotating it in the controller's namespace; it is never published
//! to the agent nor copied to a DR namespace: each operation gets its own one-off key, see
//! `run`), sweeps what an earlier process left behind, and runs the data syncs on the
//! schedule or the `dr-syncer.io/sync-data-now` trigger, recording status, Events and
//! metrics. The schedule follows the attempts in
//! `status.pvcData` (see `due`), so a slot missed while no controller ran is caught up once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::context::DataCtx;
use super::metrics::{KindLabel, MappingLabel, PvcLabel, ResultLabel};
use super::objects::{self, Operation, mapping_label};
use super::run::{self, Env, Outcome};
use super::{agent, due, lock, plan, rings};
use crate::api::{
    ClusterMapping, NamespaceMapping, PvcSyncResult, PvcVolumeStatus, RemoteCluster, keys,
};
use crate::export::policy::{Policy, PolicyError};
use crate::refs::{self, ClusterRef, RefError};
use crate::schedule;

/// Why a pass of a mapping's data-sync task could not run (the task reports it as a
/// `PvcSyncFailed` Event and tries again). Each variant carries the object or field at
/// fault; the message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataSyncError {
    /// A reference of the mapping (ClusterMapping, RemoteCluster, kubeconfig Secret)
    /// cannot be resolved.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// Neither the mapping nor its ClusterMapping names a source RemoteCluster.
    #[error(
        "spec.pvcConfig.syncData: volume data replication needs a source RemoteCluster (spec.sourceCluster or the ClusterMapping's) with spec.pvcSync.enabled"
    )]
    NoSource,
    /// The source RemoteCluster could not be read.
    #[error("{source}")]
    ReadSource {
        /// The reference to it.
        cluster: ClusterRef,
        /// The API error.
        source: kube::Error,
    },
    /// The source RemoteCluster does not exist.
    #[error("{}: RemoteCluster {}/{} not found", .0.field, .0.namespace, .0.name)]
    SourceMissing(ClusterRef),
    /// The source RemoteCluster does not run the PVC agent.
    #[error("RemoteCluster {name}: spec.pvcSync.enabled must be true to replicate volume data")]
    PvcSyncDisabled {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The mapping's export settings (which also shape the destination PVC) are unusable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The mapping's client key Secret could not be read or written.
    #[error("client key Secret: {source}")]
    ClientKey {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The API error.
        source: kube::Error,
    },
    /// The agent's client list could not be updated.
    #[error(
        "agent client keys in {namespace}/{}: {source} (has the agent been deployed?)",
        agent::CLIENTS_SECRET
    )]
    AgentClients {
        /// The agent's namespace in the source cluster.
        namespace: String,
        /// The API error.
        source: kube::Error,
    },
    /// The agent's host key ring could not be read.
    #[error(transparent)]
    HostRing(#[from] rings::ReadError),
    /// The controller has not generated the agent's host key yet.
    #[error("RemoteCluster {name}: the agent host key is not generated yet")]
    HostKeyMissing {
        /// Namespace of the RemoteCluster.
        namespace: String,
        /// Name of the RemoteCluster.
        name: String,
    },
    /// `spec.namespaceSelector` is not a valid label selector.
    #[error("spec.namespaceSelector: {0}")]
    Selector(#[source] kube::core::ParseExpressionError),
    /// The source namespaces matching the selector could not be listed.
    #[error("list namespaces: {source}")]
    ListNamespaces {
        /// The label selector.
        selector: String,
        /// The API error.
        source: kube::Error,
    },
    /// The data-sync schedule is unusable.
    #[error(transparent)]
    Schedule(#[from] due::ScheduleError),
    /// The mapping's `status.pvcData` could not be written.
    #[error("status: {0}")]
    Status(#[source] kube::Error),
    /// The PVCs of a source namespace could not be listed.
    #[error("list PVCs in {namespace}: {source}")]
    ListPvcs {
        /// The source namespace.
        namespace: String,
        /// The API error.
        source: kube::Error,
    },
    /// The pods of a source namespace (to find where a volume is mounted) could not be
    /// listed.
    #[error("list pods in {namespace}: {source}")]
    ListPods {
        /// The source namespace.
        namespace: String,
        /// The API error.
        source: kube::Error,
    },
}

/// A running task, the bell that wakes it and the switch that cancels its operations.
type Task = (
    tokio::task::JoinHandle<()>,
    Arc<Notify>,
    Arc<tokio::sync::watch::Sender<bool>>,
);

/// The running data-sync tasks, by mapping key, and the context they run with.
pub struct DataSyncs {
    ctx: Arc<DataCtx>,
    tasks: Mutex<HashMap<String, Task>>,
}

/// One finished operation, as the status records it.
#[derive(Debug, Clone)]
pub struct Done {
    /// Source PVC, `namespace/name`.
    pub source: String,
    /// Destination PVC, `namespace/name`.
    pub destination: String,
    /// Copy method used.
    pub method: crate::api::CopyMethod,
    /// Operation id.
    pub operation: String,
    /// What happened.
    pub outcome: Outcome,
}

impl DataSyncs {
    /// No tasks yet; tasks started by [`DataSyncs::ensure`] run with `ctx`.
    pub fn new(ctx: DataCtx) -> Self {
        DataSyncs {
            ctx: Arc::new(ctx),
            tasks: Mutex::default(),
        }
    }

    /// Starts the task of a mapping that replicates volume data, or wakes it to look at
    /// the mapping again (a trigger, a schedule or key-setting change).
    pub fn ensure(&self, nm: &NamespaceMapping) {
        let wanted = nm.spec.pvc_config.as_ref().is_some_and(|p| p.sync_data);
        let key = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
        let mut tasks = self.tasks.lock().expect("not poisoned");
        if let Some((handle, notify, cancel)) = tasks.get(&key)
            && !handle.is_finished()
        {
            // Turning syncData off stops running operations (they clean up); the task
            // then revokes the mapping's key at the agent and ends.
            cancel.send_replace(!wanted);
            notify.notify_one();
            return;
        }
        if !wanted {
            tasks.remove(&key);
            return;
        }
        let notify = Arc::new(Notify::new());
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let cancel = Arc::new(cancel);
        let handle = tokio::spawn(run_mapping(
            self.ctx.clone(),
            nm.namespace().unwrap_or_default(),
            nm.name_any(),
            notify.clone(),
            (cancel.clone(), cancelled),
        ));
        tasks.insert(key, (handle, notify, cancel));
    }

    /// Stops the task of a deleted mapping: running operations are cancelled and clean
    /// up after themselves, then the task revokes the mapping's key at the agent.
    pub fn remove(&self, key: &str) {
        if let Some((_, notify, cancel)) = self.tasks.lock().expect("not poisoned").remove(key) {
            cancel.send_replace(true);
            notify.notify_one();
        }
    }
}

/// What a mapping's data syncs need, resolved from its references.
struct Setup {
    cm: Option<ClusterMapping>,
    rc: RemoteCluster,
    source: Client,
    dest: Client,
    policy: Policy,
}

async fn resolve(ctx: &DataCtx, nm: &NamespaceMapping) -> Result<Setup, DataSyncError> {
    // The same resolution and authorization as the manifest sync: data goes where the
    // manifests go, and only where the mapping may write.
    let resolved = refs::resolve(&ctx.client, &ctx.tenancy, nm).await?;
    let mapping_refs = resolved.refs(nm);
    let source_ref = mapping_refs.source().ok_or(DataSyncError::NoSource)?;
    let rc = match Api::<RemoteCluster>::namespaced(ctx.client.clone(), &source_ref.namespace)
        .get_opt(&source_ref.name)
        .await
    {
        Ok(Some(rc)) => rc,
        Ok(None) => return Err(DataSyncError::SourceMissing(source_ref)),
        Err(source) => {
            return Err(DataSyncError::ReadSource {
                cluster: source_ref,
                source,
            });
        }
    };
    if !rc.spec.pvc_sync.as_ref().is_some_and(|p| p.enabled) {
        return Err(DataSyncError::PvcSyncDisabled {
            namespace: source_ref.namespace,
            name: source_ref.name,
        });
    }
    let source = refs::cluster_client(&ctx.client, &source_ref).await?;
    let dest = match mapping_refs.dr_cluster() {
        Some(r) => refs::cluster_client(&ctx.client, &r).await?,
        // Without a target cluster the controller runs in the DR cluster.
        None => ctx.client.clone(),
    };
    let policy = Policy::from_spec(&nm.spec)?;
    Ok(Setup {
        cm: resolved.cluster_mapping.clone(),
        rc,
        source,
        dest,
        policy,
    })
}

/// The agent a mapping's operations use, so the mapping's legacy entry in its client list
/// (published by earlier versions) is revoked again when the task ends.
struct Published {
    source: Client,
    agent_namespace: String,
    mapping: String,
}

impl Published {
    /// Removes the mapping's entry from the agent's client list: its key stops working
    /// at the bastion with the next volume refresh. (Operations' own entries go at their
    /// cleanup.)
    async fn revoke(self) {
        match agent::set_entry(
            &self.source,
            &self.agent_namespace,
            true,
            &self.mapping,
            None,
        )
        .await
        {
            Ok(()) => tracing::info!(mapping = %self.mapping, "client key revoked at the agent"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(mapping = %self.mapping, error = %e, "cannot revoke the client key")
            }
        }
    }
}

/// How often a task checks that its mapping still exists and still replicates data.
const GONE_POLL: Duration = Duration::from_secs(5);

/// Aborts a helper task when the task that owns it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a task keeps between passes.
struct State {
    /// Leftovers of earlier runs were swept (reset when a cleanup failed).
    swept: bool,
    /// When this task last started a run (scheduled or triggered). The status records
    /// attempts per PVC; this also covers a run that found no PVC to record.
    last_run: Option<Timestamp>,
    /// Where the client key is published.
    published: Option<Published>,
    /// Cancels running operations.
    cancel: tokio::sync::watch::Receiver<bool>,
}

async fn run_mapping(
    ctx: Arc<DataCtx>,
    ns: String,
    name: String,
    notify: Arc<Notify>,
    (cancel_tx, cancel): (
        Arc<tokio::sync::watch::Sender<bool>>,
        tokio::sync::watch::Receiver<bool>,
    ),
) {
    let api: Api<NamespaceMapping> = Api::namespaced(ctx.client.clone(), &ns);
    // A deleted object never reaches the reconciler (it is gone from the store), so the
    // task looks for itself: a mapping deleted, or no longer replicating data, cancels
    // the running operations within seconds.
    let guard = {
        let (api, name, notify) = (api.clone(), name.clone(), notify.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(GONE_POLL).await;
                let gone = match api.get_opt(&name).await {
                    Ok(Some(nm)) => !nm.spec.pvc_config.as_ref().is_some_and(|p| p.sync_data),
                    Ok(None) => true,
                    Err(_) => false,
                };
                if gone {
                    cancel_tx.send_replace(true);
                    notify.notify_one();
                    return;
                }
            }
        })
    };
    let _guard = AbortOnDrop(guard);
    let mut state = State {
        swept: false,
        // Not "now": the schedule follows from the attempts recorded in status, so a slot
        // missed while no controller ran is caught up at once (see `due`).
        last_run: None,
        published: None,
        cancel,
    };
    loop {
        let nm = match api.get_opt(&name).await {
            Ok(Some(nm)) if !*state.cancel.borrow() => nm,
            Ok(_) => {
                if let Some(p) = state.published.take() {
                    p.revoke().await;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(mapping = %name, error = %e, "data sync: cannot read the mapping");
                idle(&notify, Duration::from_secs(10)).await;
                continue;
            }
        };
        let Some(cfg) = nm.spec.pvc_config.clone().filter(|p| p.sync_data) else {
            if let Some(p) = state.published.take() {
                p.revoke().await;
            }
            return;
        };
        if nm.spec.paused {
            idle(&notify, Duration::from_secs(3600)).await;
            continue;
        }
        let wake = match step(&ctx, &nm, &cfg, &mut state).await {
            Ok(until) => until,
            Err(e) => {
                tracing::warn!(mapping = %name, error = %e, "data sync");
                ctx.publish(&nm, true, "PvcSyncFailed", e.to_string()).await;
                Timestamp::now() + jiff::SignedDuration::from_secs(30)
            }
        };
        let wait = Duration::try_from(wake - Timestamp::now()).unwrap_or_default();
        idle(&notify, wait.max(Duration::from_millis(200))).await;
    }
}

async fn idle(notify: &Notify, d: Duration) {
    let _ = tokio::time::timeout(d, notify.notified()).await;
}

/// One pass: keys, sweep, and the syncs that are due. Returns when to look again.
async fn step(
    ctx: &DataCtx,
    nm: &NamespaceMapping,
    cfg: &crate::api::PvcConfig,
    state: &mut State,
) -> Result<Timestamp, DataSyncError> {
    let setup = resolve(ctx, nm).await?;
    let pvc_spec = setup.rc.spec.pvc_sync.clone().expect("checked by resolve");
    let mapping = mapping_label(&nm.namespace().unwrap_or_default(), &nm.name_any());
    let key_settings = setup.cm.as_ref().and_then(|c| c.spec.ssh_keys.as_ref());
    let manager = &ctx.field_manager;
    let key_secret = format!("dr-syncer-pvc-{}", nm.name_any());
    let checked = rings::ensure(&ctx.client, nm, &key_secret, key_settings, manager)
        .await
        .map_err(|source| DataSyncError::ClientKey {
            secret: format!("{}/{key_secret}", nm.namespace().unwrap_or_default()),
            source,
        })?;
    if let Some(why) = checked.rotated {
        ctx.publish(
            nm,
            false,
            "KeysRotated",
            format!(
                "SSH client key rotated ({why:?}); new fingerprint {}",
                checked.ring.fingerprint()
            ),
        )
        .await;
    }
    let ring = checked.ring;
    let now = Timestamp::now();
    // The mapping's long-lived key is not authorized at the agent: operations log in with
    // their own one-off keys. Earlier versions published it under the mapping's entry;
    // removing that entry every pass revokes it after an upgrade (and checks that the
    // agent's client list exists before an operation needs it).
    agent::set_entry(&setup.source, &pvc_spec.namespace, true, &mapping, None)
        .await
        .map_err(|source| DataSyncError::AgentClients {
            namespace: pvc_spec.namespace.clone(),
            source,
        })?;
    state.published = Some(Published {
        source: setup.source.clone(),
        agent_namespace: pvc_spec.namespace.clone(),
        mapping: mapping.clone(),
    });
    let host = rings::read(
        &ctx.client,
        &setup.rc.namespace().unwrap_or_default(),
        &agent::host_ring_secret(&setup.rc.name_any()),
    )
    .await?
    .ok_or_else(|| DataSyncError::HostKeyMissing {
        namespace: setup.rc.namespace().unwrap_or_default(),
        name: setup.rc.name_any(),
    })?;
    let source_namespaces = source_namespaces(&setup.source, nm).await?;
    let dests: Vec<(String, String)> = source_namespaces
        .iter()
        .map(|s| (s.clone(), setup.policy.destination_for(s)))
        .collect();
    if !state.swept {
        sweep(ctx, &setup, &pvc_spec.namespace, &mapping, &dests).await;
        state.swept = true;
    }
    let prev = nm
        .status
        .clone()
        .unwrap_or_default()
        .pvc_data
        .unwrap_or_default();
    let trigger = nm.annotations().get(keys::SYNC_DATA_NOW).cloned();
    let triggered = trigger.is_some() && trigger != prev.last_sync_data_now;
    let data_schedule = due::Schedule::of(nm);
    let last = state.last_run.max(due::last_attempt(&prev));
    let scheduled = due::decide(data_schedule, last, now)?;
    if let due::Due::Run(why) = scheduled {
        tracing::info!(mapping = %mapping, ?why, "scheduled data sync due");
    }
    let run_now = triggered || matches!(scheduled, due::Due::Run(_));
    let mut status = prev.clone();
    status.client_key_fingerprint = Some(ring.fingerprint());
    status.key_rotated_at = Some(Time(ring.rotated_at));
    status.previous_key_fingerprint = ring
        .live_previous(now)
        .map(|(p, _)| super::keys::fingerprint_of(p));
    status.previous_key_expires = ring.live_previous(now).map(|(_, t)| Time(*t));
    status.last_rotate_keys = ring.token.clone();
    let mut retry_sweep = false;
    if run_now {
        state.last_run = Some(now);
        let env_base = EnvParts {
            cancel: state.cancel.clone(),
            host,
            setup: &setup,
            mapping: mapping.clone(),
        };
        let outcomes = run_all(ctx, nm, &env_base, &dests, cfg, &prev.volumes).await?;
        // A cleanup that failed is retried by sweeping again soon.
        retry_sweep = outcomes.iter().any(|d| d.outcome.cleanup_failed);
        state.swept = !retry_sweep;
        merge(&mut status.volumes, outcomes, Timestamp::now());
        if triggered {
            status.last_sync_data_now = trigger;
        }
        // A release is used once: every Job of this pass was offered it, and only the
        // deletion set it names went through. Left in place, it would release that same
        // set again after a later, unrelated wipe.
        if nm.annotations().contains_key(keys::ALLOW_DATA_DELETION) {
            let drop = json!({"metadata": {"annotations": {keys::ALLOW_DATA_DELETION: null}}});
            if let Err(e) = Api::<NamespaceMapping>::namespaced(
                ctx.client.clone(),
                &nm.namespace().unwrap_or_default(),
            )
            .patch(&nm.name_any(), &PatchParams::default(), &Patch::Merge(drop))
            .await
            {
                tracing::warn!(mapping = %mapping, error = %e, "could not remove the used data deletion release");
            }
        }
    }
    // The next slot after this pass's run (or after the last attempt when nothing ran);
    // if a long run overran it, the next pass catches it up at once.
    let next = match (data_schedule, state.last_run.max(last)) {
        (Some(s), Some(after)) => Some(s.next_after(after)?),
        _ => None,
    };
    status.next_sync_time = next.map(Time);
    if Some(&status) != nm.status.as_ref().and_then(|s| s.pvc_data.as_ref()) {
        Api::<NamespaceMapping>::namespaced(
            ctx.client.clone(),
            &nm.namespace().unwrap_or_default(),
        )
        .patch_status(
            &nm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"pvcData": status}})),
        )
        .await
        .map_err(DataSyncError::Status)?;
    }
    let mut check = rings::next_check(&ring, key_settings, now);
    if retry_sweep {
        check = check.min(Timestamp::now() + jiff::SignedDuration::from_secs(60));
    }
    Ok(next.map_or(check, |n| n.min(check)))
}

struct EnvParts<'a> {
    cancel: tokio::sync::watch::Receiver<bool>,
    host: super::keys::KeyRing,
    setup: &'a Setup,
    mapping: String,
}

async fn source_namespaces(
    source: &Client,
    nm: &NamespaceMapping,
) -> Result<Vec<String>, DataSyncError> {
    if let Some(ns) = &nm.spec.source_namespace {
        return Ok(vec![ns.clone()]);
    }
    let Some(sel) = &nm.spec.namespace_selector else {
        return Ok(Vec::new());
    };
    let selector = kube::core::Selector::try_from(sel.clone())
        .map_err(DataSyncError::Selector)?
        .to_string();
    let list = match Api::<Namespace>::all(source.clone())
        .list(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list,
        Err(source) => return Err(DataSyncError::ListNamespaces { selector, source }),
    };
    Ok(list.items.iter().map(|n| n.name_any()).collect())
}

async fn run_all(
    ctx: &DataCtx,
    nm: &NamespaceMapping,
    parts: &EnvParts<'_>,
    dests: &[(String, String)],
    cfg: &crate::api::PvcConfig,
    prev: &[PvcVolumeStatus],
) -> Result<Vec<Done>, DataSyncError> {
    let setup = parts.setup;
    let pvc_spec = setup.rc.spec.pvc_sync.clone().expect("checked by resolve");
    let dsc = cfg.data_sync_config.clone().unwrap_or_default();
    let method = plan::copy_method(cfg.data_sync_config.as_ref());
    let timeout = dsc
        .timeout
        .as_deref()
        .and_then(schedule::parse_duration)
        .unwrap_or(Duration::from_secs(6 * 3600));
    let image = agent::image(&pvc_spec, &ctx.image);
    let env = Env {
        ctl: ctx.client.clone(),
        source: setup.source.clone(),
        dest: setup.dest.clone(),
        lease_namespace: ctx.namespace.clone(),
        holder: ctx.instance.clone(),
        cluster_id: format!(
            "{}/{}",
            setup.rc.namespace().unwrap_or_default(),
            setup.rc.name_any()
        ),
        agent_namespace: pvc_spec.namespace.clone(),
        agent_port: pvc_spec.port,
        endpoint: pvc_spec.endpoint.clone(),
        host: parts.host.clone(),
        policy: setup.policy.clone(),
        keep_snapshots: dsc.keep_snapshots,
        snapshot_class: dsc.volume_snapshot_class_name.clone(),
        mapping_namespace: nm.namespace().unwrap_or_default(),
        mapping_name: nm.name_any(),
        cancel: parts.cancel.clone(),
    };
    // The batch the user released by annotation; `pvc-sync` lets deletions through only
    // when it names exactly the deletion set at hand.
    let allow_deletions = nm.annotations().get(keys::ALLOW_DATA_DELETION).cloned();
    let mut ops = Vec::new();
    for (src, dst) in dests {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(setup.source.clone(), src);
        let list = claims
            .list(&ListParams::default())
            .await
            .map_err(|source| DataSyncError::ListPvcs {
                namespace: src.clone(),
                source,
            })?;
        let (pods, vas) = if method == crate::api::CopyMethod::Direct {
            let pods =
                Api::<k8s_openapi::api::core::v1::Pod>::namespaced(setup.source.clone(), src)
                    .list(&ListParams::default())
                    .await
                    .map_err(|source| DataSyncError::ListPods {
                        namespace: src.clone(),
                        source,
                    })?
                    .items;
            let vas =
                Api::<k8s_openapi::api::storage::v1::VolumeAttachment>::all(setup.source.clone())
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
            (pods, vas)
        } else {
            (Vec::new(), Vec::new())
        };
        for pvc in list.items {
            if let Err(why) = plan::eligible(&pvc) {
                tracing::debug!(pvc = %pvc.name_any(), ?why, "not replicated");
                continue;
            }
            let node = (method == crate::api::CopyMethod::Direct)
                .then(|| plan::mount_node(&pvc, &pods, &vas))
                .flatten();
            ops.push(Operation {
                id: op_id(),
                mapping: parts.mapping.clone(),
                method,
                source: pvc,
                dest_namespace: dst.clone(),
                image: image.clone(),
                pull_policy: pvc_spec
                    .image
                    .as_ref()
                    .and_then(|i| i.pull_policy)
                    .map(|p| format!("{p:?}")),
                run_as_root: pvc_spec.run_as_root,
                host_users: pvc_spec.host_users,
                ownership: dsc.ownership.unwrap_or_default(),
                max_delete_percent: dsc
                    .max_delete_percent
                    .unwrap_or(objects::DEFAULT_MAX_DELETE_PERCENT),
                allow_deletions: allow_deletions.clone(),
                resources: dsc.resources.clone(),
                node,
                snapshot_class: dsc.volume_snapshot_class_name.clone(),
                timeout,
                bwlimit_kib: dsc.bandwidth_limit_kib,
                hooks: dsc.hooks.clone(),
                group: None,
            });
        }
    }
    // Show the syncs as running while they run (a large volume takes a while).
    let mut volumes = prev.to_vec();
    mark_running(&mut volumes, &ops, jiff::Timestamp::now());
    if volumes.as_slice() != prev {
        let patch = json!({"status": {"pvcData": {"volumes": volumes}}});
        if let Err(e) = Api::<NamespaceMapping>::namespaced(
            ctx.client.clone(),
            &nm.namespace().unwrap_or_default(),
        )
        .patch_status(
            &nm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        {
            tracing::warn!(error = %e, "cannot record running syncs");
        }
    }
    // Consistency groups: one VolumeGroupSnapshot per group before its members run.
    let (not_run, groups) = super::group::prepare(
        &setup.source,
        &dsc.consistency_groups,
        &dsc.hooks,
        &mut ops,
        timeout,
    )
    .await;
    let concurrency = usize::try_from(pvc_spec.concurrency).unwrap_or(1).max(1);
    let env = &env;
    let mut results: Vec<_> = futures::stream::iter(ops)
        .map(|op| async move {
            tracing::info!(operation = %op.id, pvc = %op.pvc_name(), method = ?op.method, "PVC sync started");
            let out = run::sync_one(env, &op).await;
            (op, out)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (ns, id) in groups {
        if let Err(e) = super::group::remove(&setup.source, &ns, &id).await {
            tracing::warn!(error = %e, group = %id, "cannot remove a group snapshot; swept later");
        }
    }
    results.extend(not_run);
    let mut recorded = Vec::new();
    for (op, out) in results {
        record(ctx, nm, &op, &out).await;
        let source = format!("{}/{}", op.source_namespace(), op.pvc_name());
        let dest = format!("{}/{}", op.dest_namespace, op.pvc_name());
        recorded.push(Done {
            source,
            destination: dest,
            method: op.method,
            operation: op.id.clone(),
            outcome: out,
        });
    }
    Ok(recorded)
}

fn op_id() -> String {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).expect("OS random generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Metrics and an Event for one operation.
async fn record(ctx: &DataCtx, nm: &NamespaceMapping, op: &Operation, out: &Outcome) {
    let m = &ctx.metrics;
    let mapping = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
    let result = format!("{:?}", out.result);
    m.syncs
        .get_or_create(&ResultLabel {
            mapping: mapping.clone(),
            result,
        })
        .inc();
    m.duration
        .get_or_create(&MappingLabel {
            mapping: mapping.clone(),
        })
        .observe(out.duration.as_secs_f64());
    let pvc = format!("{}/{}", op.source_namespace(), op.pvc_name());
    let (warning, reason, note) = match out.result {
        PvcSyncResult::Succeeded => {
            let r = out.report.clone().unwrap_or_default();
            for (kind, v) in [("literal", r.bytes_literal), ("matched", r.bytes_matched)] {
                m.bytes
                    .get_or_create(&KindLabel {
                        mapping: mapping.clone(),
                        kind: kind.into(),
                    })
                    .inc_by(u64::try_from(v).unwrap_or(0));
            }
            if let Some(pit) = out.point_in_time {
                m.last_success
                    .get_or_create(&PvcLabel {
                        mapping: mapping.clone(),
                        pvc: pvc.clone(),
                    })
                    .set(pit.as_millisecond() as f64 / 1000.0);
            }
            let mut note = format!(
                "{pvc} synced with {:?} in {:.1}s: {} files, {} bytes literal, {} matched, {} deleted",
                op.method,
                out.duration.as_secs_f64(),
                r.files_transferred,
                r.bytes_literal,
                r.bytes_matched,
                r.deleted
            );
            if let Some(m) = &out.message {
                note.push_str(&format!("; {m}"));
            }
            (false, "PvcSynced", note)
        }
        // Not a success: the RPO keeps growing (the last-success gauge stays) until the
        // batch is released or the source recovers.
        PvcSyncResult::Held => (
            true,
            "PvcDeletionsHeld",
            format!("{pvc}: {}", out.message.clone().unwrap_or_default()),
        ),
        // Outcomes are final; `Running` only appears in status while a sync runs.
        PvcSyncResult::Skipped | PvcSyncResult::Running => (
            false,
            "PvcSyncSkipped",
            format!("{pvc}: {}", out.message.clone().unwrap_or_default()),
        ),
        PvcSyncResult::Failed => (
            true,
            "PvcSyncFailed",
            format!("{pvc}: {}", out.message.clone().unwrap_or_default()),
        ),
    };
    ctx.publish(nm, warning, reason, note).await;
}

/// Marks the PVCs of `ops` as running in the status list (pure); the last results' other
/// fields stay until the outcome replaces them.
pub fn mark_running(volumes: &mut Vec<PvcVolumeStatus>, ops: &[Operation], now: Timestamp) {
    for op in ops {
        let source = format!("{}/{}", op.source_namespace(), op.pvc_name());
        let v = match volumes.iter().position(|v| v.source == source) {
            Some(i) => &mut volumes[i],
            None => {
                volumes.push(PvcVolumeStatus {
                    source,
                    destination: format!("{}/{}", op.dest_namespace, op.pvc_name()),
                    ..Default::default()
                });
                volumes.last_mut().expect("just pushed")
            }
        };
        v.result = Some(PvcSyncResult::Running);
        v.message = None;
        v.copy_method = Some(op.method);
        v.last_attempt_time = Some(Time(now));
        v.operation = Some(op.id.clone());
    }
    volumes.sort_by(|a, b| a.source.cmp(&b.source));
}

/// Folds outcomes into the per-PVC status list (pure).
pub fn merge(volumes: &mut Vec<PvcVolumeStatus>, done: Vec<Done>, now: Timestamp) {
    for Done {
        source,
        destination,
        method,
        operation: id,
        outcome: out,
    } in done
    {
        let pos = volumes.iter().position(|v| v.source == source);
        let v = match pos {
            Some(i) => &mut volumes[i],
            None => {
                volumes.push(PvcVolumeStatus {
                    source: source.clone(),
                    ..Default::default()
                });
                volumes.last_mut().expect("just pushed")
            }
        };
        v.destination = destination;
        v.copy_method = Some(method);
        v.result = Some(out.result);
        v.message = out.message.clone();
        v.last_attempt_time = Some(Time(out.started));
        v.duration_millis = i64::try_from(out.duration.as_millis()).unwrap_or(i64::MAX);
        v.operation = Some(id);
        if out.result == PvcSyncResult::Succeeded {
            let r = out.report.clone().unwrap_or_default();
            v.last_success_time = Some(Time(now));
            v.point_in_time = out.point_in_time.map(Time);
            v.bytes_literal = r.bytes_literal;
            v.bytes_matched = r.bytes_matched;
            v.files_transferred = r.files_transferred;
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            v.deleted_files = count(r.deleted_files);
            v.ownership_not_kept = count(r.ownership_not_kept);
            v.unreadable = count(r.unreadable);
        }
        v.rpo_seconds = v
            .point_in_time
            .as_ref()
            .map(|t| t.0.duration_until(now).as_secs());
    }
    volumes.sort_by(|a, b| a.source.cmp(&b.source));
}

/// Removes what an earlier process of this controller left behind for this mapping:
/// temporary objects on both sides, operations' entries in the agent's allow-list and
/// client list, and PVC locks. Runs once per task
/// start, before the task's first operation, so nothing of its own is live yet.
async fn sweep(
    ctx: &DataCtx,
    setup: &Setup,
    agent_ns: &str,
    mapping: &str,
    dests: &[(String, String)],
) {
    let sel = format!("{}={mapping},{}=true", objects::MAPPING, objects::TEMPORARY);
    for (src, dst) in dests {
        for (client, ns) in [(&setup.source, src), (&setup.dest, dst)] {
            if let Err(e) = run::delete_labeled(client, ns, &sel).await {
                tracing::warn!(namespace = %ns, error = %e, "sweep");
            }
        }
    }
    let prefix = format!("{mapping}..");
    let stale = |keys: Vec<String>| -> BTreeMap<String, Value> {
        keys.into_iter()
            .filter(|k| k.starts_with(&prefix))
            .map(|k| (k, Value::Null))
            .collect()
    };
    let params = PatchParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(setup.source.clone(), agent_ns);
    if let Ok(Some(cm)) = cms.get_opt(agent::ALLOW_CONFIGMAP).await {
        let stale = stale(cm.data.unwrap_or_default().into_keys().collect());
        if !stale.is_empty() {
            let patch = Patch::Merge(json!({"data": stale}));
            let _ = cms.patch(agent::ALLOW_CONFIGMAP, &params, &patch).await;
        }
    }
    // One-off client keys of operations that never reached their cleanup.
    let secrets: Api<Secret> = Api::namespaced(setup.source.clone(), agent_ns);
    if let Ok(Some(s)) = secrets.get_opt(agent::CLIENTS_SECRET).await {
        let stale = stale(s.data.unwrap_or_default().into_keys().collect());
        if !stale.is_empty() {
            let patch = Patch::Merge(json!({"data": stale}));
            if let Err(e) = secrets.patch(agent::CLIENTS_SECRET, &params, &patch).await {
                tracing::warn!(mapping, error = %e, "sweep of operation client keys");
            }
        }
    }
    match lock::release_all(&ctx.client, &ctx.namespace, mapping).await {
        Ok(n) if n > 0 => tracing::info!(
            mapping,
            locks = n,
            "released PVC locks left by an earlier run"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(mapping, error = %e, "sweep of PVC locks"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CopyMethod;

    fn done(source: &str, result: PvcSyncResult, literal: i64) -> Done {
        let t: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        Done {
            source: source.into(),
            destination: format!("{source}-dr"),
            method: CopyMethod::Clone,
            operation: "op".into(),
            outcome: Outcome {
                result,
                message: (result != PvcSyncResult::Succeeded).then(|| "why".into()),
                report: Some(plan::Report {
                    bytes_literal: literal,
                    ..Default::default()
                }),
                point_in_time: Some(t),
                started: t,
                duration: Duration::from_secs(2),
                cleanup_failed: false,
            },
        }
    }

    fn api_error() -> kube::Error {
        kube::Error::Api(Box::new(
            serde_json::from_value(
                json!({"code": 403, "message": "forbidden", "reason": "Forbidden"}),
            )
            .unwrap(),
        ))
    }

    /// The messages are those of the `String` errors the typed ones replaced (they reach
    /// users as `PvcSyncFailed` Events).
    #[test]
    fn data_sync_error_messages_table() {
        let e = api_error();
        let r = ClusterRef {
            namespace: "dr-syncer".into(),
            name: "prod".into(),
            field: "spec.sourceCluster".into(),
            cross_namespace_refs: false,
        };
        let cases = [
            (
                "no_source",
                DataSyncError::NoSource,
                "spec.pvcConfig.syncData: volume data replication needs a source RemoteCluster (spec.sourceCluster or the ClusterMapping's) with spec.pvcSync.enabled".to_string(),
            ),
            (
                "source_missing",
                DataSyncError::SourceMissing(r.clone()),
                "spec.sourceCluster: RemoteCluster dr-syncer/prod not found".into(),
            ),
            (
                "read_source",
                DataSyncError::ReadSource {
                    cluster: r,
                    source: api_error(),
                },
                e.to_string(),
            ),
            (
                "pvc_sync_disabled",
                DataSyncError::PvcSyncDisabled {
                    namespace: "dr-syncer".into(),
                    name: "prod".into(),
                },
                "RemoteCluster prod: spec.pvcSync.enabled must be true to replicate volume data"
                    .into(),
            ),
            (
                "client_key",
                DataSyncError::ClientKey {
                    secret: "dr-syncer/dr-syncer-pvc-m".into(),
                    source: api_error(),
                },
                format!("client key Secret: {e}"),
            ),
            (
                "agent_clients",
                DataSyncError::AgentClients {
                    namespace: "agent".into(),
                    source: api_error(),
                },
                format!(
                    "agent client keys in agent/{}: {e} (has the agent been deployed?)",
                    agent::CLIENTS_SECRET
                ),
            ),
            (
                "host_ring",
                DataSyncError::from(rings::ReadError {
                    namespace: "dr-syncer".into(),
                    name: "dr-syncer-agent-prod".into(),
                    message: e.to_string(),
                }),
                format!("Secret dr-syncer/dr-syncer-agent-prod: {e}"),
            ),
            (
                "host_key_missing",
                DataSyncError::HostKeyMissing {
                    namespace: "dr-syncer".into(),
                    name: "prod".into(),
                },
                "RemoteCluster prod: the agent host key is not generated yet".into(),
            ),
            (
                "selector",
                DataSyncError::Selector(kube::core::ParseExpressionError("bad".into())),
                format!(
                    "spec.namespaceSelector: {}",
                    kube::core::ParseExpressionError("bad".into())
                ),
            ),
            (
                "list_namespaces",
                DataSyncError::ListNamespaces {
                    selector: "tier=web".into(),
                    source: api_error(),
                },
                format!("list namespaces: {e}"),
            ),
            (
                "status",
                DataSyncError::Status(api_error()),
                format!("status: {e}"),
            ),
            (
                "list_pvcs",
                DataSyncError::ListPvcs {
                    namespace: "shop".into(),
                    source: api_error(),
                },
                format!("list PVCs in shop: {e}"),
            ),
            (
                "list_pods",
                DataSyncError::ListPods {
                    namespace: "shop".into(),
                    source: api_error(),
                },
                format!("list pods in shop: {e}"),
            ),
        ];
        for (name, err, want) in cases {
            assert_eq!(err.to_string(), want, "{name}");
        }
    }

    #[test]
    fn merge_keeps_last_success_through_failures() {
        let now: Timestamp = "2026-11-26T10:05:00Z".parse().unwrap();
        let mut volumes = Vec::new();
        merge(
            &mut volumes,
            vec![
                done("b/x", PvcSyncResult::Succeeded, 10),
                done("a/y", PvcSyncResult::Skipped, 0),
            ],
            now,
        );
        assert_eq!(
            volumes
                .iter()
                .map(|v| v.source.as_str())
                .collect::<Vec<_>>(),
            ["a/y", "b/x"]
        );
        assert_eq!(volumes[1].rpo_seconds, Some(300));
        assert_eq!(volumes[0].last_success_time, None);
        merge(
            &mut volumes,
            vec![done("b/x", PvcSyncResult::Failed, 99)],
            now,
        );
        let b = &volumes[1];
        assert_eq!(b.result, Some(PvcSyncResult::Failed));
        assert_eq!(b.message.as_deref(), Some("why"));
        assert_eq!(b.bytes_literal, 10, "numbers of the last good sync stay");
        assert!(b.last_success_time.is_some());
        assert_eq!(volumes.len(), 2);
    }

    /// A held sync is not a success: the last good numbers and point in time stay (so the
    /// RPO keeps growing), and the message with the release command is shown.
    #[test]
    fn merge_held_keeps_the_last_good_copy() {
        let first: Timestamp = "2026-11-26T10:05:00Z".parse().unwrap();
        let later: Timestamp = "2026-11-26T11:05:00Z".parse().unwrap();
        let mut volumes = Vec::new();
        let mut ok = done("b/x", PvcSyncResult::Succeeded, 10);
        if let Some(r) = ok.outcome.report.as_mut() {
            r.deleted_files = 4;
            r.unreadable = 1;
        }
        merge(&mut volumes, vec![ok], first);
        assert_eq!((volumes[0].deleted_files, volumes[0].unreadable), (4, 1));
        let mut held = done("b/x", PvcSyncResult::Held, 0);
        held.outcome.point_in_time = None;
        held.outcome.message = Some("release batch abc".into());
        merge(&mut volumes, vec![held], later);
        let v = &volumes[0];
        assert_eq!(v.result, Some(PvcSyncResult::Held));
        assert_eq!(v.message.as_deref(), Some("release batch abc"));
        assert_eq!((v.bytes_literal, v.deleted_files), (10, 4));
        assert_eq!(
            v.point_in_time.as_ref().map(|t| t.0.to_string()).as_deref(),
            Some("2026-11-26T10:00:00Z")
        );
        assert_eq!(v.rpo_seconds, Some(3900), "the RPO grows while held");
    }
}
