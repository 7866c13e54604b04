//! What every reconcile shares: clients, the event recorder, settings, the fingerprint key
//! and one lock per mapping so two syncs of a mapping never overlap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};

use crate::export::source::live::{self, Discovery};

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The controller's own namespace (fingerprint-key Secret, Leases).
    pub namespace: String,
    /// Where git clones are cached.
    pub cache_dir: PathBuf,
    /// Types listed at once per sync.
    pub list_concurrency: usize,
    /// Mappings reconciled at once.
    pub sync_concurrency: u16,
    /// Field manager of everything the controller writes.
    pub field_manager: String,
    /// Which mappings are reconciled and what their references may reach (the
    /// controller's namespace is `tenancy.controller_namespace`, equal to `namespace`).
    pub tenancy: crate::refs::Tenancy,
    /// Image of the PVC agent and the data-sync pods (the controller's own image).
    pub image: String,
    /// Pause before a Continuous watch lists its source (tests only: it widens the window
    /// between the startup export and the watch's first listing).
    pub watch_start_delay: std::time::Duration,
    /// How often the DR readiness check (`DrReady`) runs; `None` switches it off.
    pub dr_check_interval: Option<std::time::Duration>,
    /// RPO target of mappings without `spec.rpoTarget` (exported for alerts).
    pub default_rpo_target: std::time::Duration,
    /// The static shard this replica serves (`--shard`): only mappings labelled
    /// `dr-syncer.io/shard` with it; `None` serves the unlabelled ones.
    pub shard: Option<String>,
}

/// Shared state of the reconcilers.
pub struct Ctx {
    /// Client of the cluster the controller runs in.
    pub client: Client,
    /// One recorder, so repeated events fold into series.
    pub recorder: Recorder,
    /// Settings.
    pub settings: Settings,
    /// HMAC key of the Secret fingerprints.
    pub fingerprint_key: Vec<u8>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Continuous-mode watch tasks.
    pub watches: super::continuous::Watches,
    /// The WATCH requests shared by the Continuous mappings.
    pub hubs: super::hub::Hubs,
    /// Volume data-sync tasks.
    pub data_syncs: crate::datasync::DataSyncs,
    /// This replica's identity (PVC lock holder).
    pub instance: String,
    /// Prometheus metrics.
    pub metrics: Arc<super::metrics::Metrics>,
    inputs: Mutex<HashMap<String, String>>,
    synced: Mutex<std::collections::HashSet<String>>,
    /// With leader election: the lease every write is checked against (fencing).
    pub leadership: Option<super::leader::Leadership>,
    /// With sharding: this replica's membership, which decides the mappings it owns and
    /// fences every write for them.
    pub membership: Option<Arc<super::shard::Membership>>,
    /// Mappings whose DR readiness is checked soon: a commit changed what their DR cluster
    /// pulls.
    pub dr_checks: DrCheckRequests,
    discoveries: Mutex<HashMap<super::hub::ClusterKey, Arc<DiscoverySlot>>>,
}

/// One source cluster's last API discovery and when it was made; the async lock makes
/// callers that arrive together wait for one discovery instead of each making their own.
type DiscoverySlot = tokio::sync::Mutex<Option<(std::time::Instant, Arc<Discovery>)>>;

/// How long a source cluster's API discovery is reused. A thousand mappings starting
/// together discover once instead of a thousand times (some twenty requests each); a CRD
/// installed at the source is listed by syncs that start this much later.
pub const DISCOVERY_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Mappings (`namespace/name`) waiting for an early DR readiness check. Only the mappings
/// that committed are checked early: a pass over every mapping after each commit cost a
/// thousand mapping reads per commit while a fleet started (all of them, again and again).
#[derive(Default)]
pub struct DrCheckRequests {
    keys: Mutex<std::collections::BTreeSet<String>>,
    wake: tokio::sync::Notify,
}

impl DrCheckRequests {
    /// Asks for a check of mapping `key` soon.
    pub fn request(&self, key: &str) {
        self.keys
            .lock()
            .expect("not poisoned")
            .insert(key.to_string());
        self.wake.notify_one();
    }

    /// Waits for requests and takes them (the ones made while nobody waited included).
    pub async fn next(&self) -> Vec<String> {
        loop {
            let keys = std::mem::take(&mut *self.keys.lock().expect("not poisoned"));
            if !keys.is_empty() {
                return keys.into_iter().collect();
            }
            self.wake.notified().await;
        }
    }
}

/// Name of the Secret holding the fingerprint key.
pub const FINGERPRINT_SECRET: &str = "dr-syncer-fingerprint-key";

impl Ctx {
    /// Builds the context, creating the fingerprint key Secret on first start.
    pub async fn new(
        client: Client,
        settings: Settings,
        instance: String,
        metrics: Arc<super::metrics::Metrics>,
    ) -> Result<Self, kube::Error> {
        let fingerprint_key = fingerprint_key(&client, &settings).await?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "dr-syncer".into(),
                instance: Some(instance.clone()),
            },
        );
        // The data sync gets only what it uses, so it never depends on this context.
        let data_syncs = crate::datasync::DataSyncs::new(crate::datasync::DataCtx {
            client: client.clone(),
            namespace: settings.namespace.clone(),
            field_manager: settings.field_manager.clone(),
            image: settings.image.clone(),
            instance: instance.clone(),
            recorder: recorder.clone(),
            metrics: metrics.pvc.clone(),
            tenancy: settings.tenancy.clone(),
        });
        Ok(Ctx {
            client,
            recorder,
            settings,
            fingerprint_key,
            locks: Mutex::default(),
            watches: Default::default(),
            hubs: Default::default(),
            data_syncs,
            instance,
            metrics,
            inputs: Mutex::default(),
            synced: Mutex::default(),
            leadership: None,
            membership: None,
            dr_checks: DrCheckRequests::default(),
            discoveries: Mutex::default(),
        })
    }

    /// The API discovery of source cluster `cluster` (reached through `client`), made at
    /// most [`DISCOVERY_TTL`] ago. A failed discovery is not kept.
    pub async fn discovery(
        &self,
        cluster: &super::hub::ClusterKey,
        client: &Client,
    ) -> Result<Arc<Discovery>, kube::Error> {
        let slot = self
            .discoveries
            .lock()
            .expect("not poisoned")
            .entry(cluster.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((at, discovery)) = slot.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(discovery.clone());
        }
        let discovery = Arc::new(live::discover(client).await?);
        *slot = Some((std::time::Instant::now(), discovery.clone()));
        Ok(discovery)
    }

    /// What the last health check of `key` saw (spec generation and Secret version).
    pub fn last_inputs(&self, key: &str) -> Option<String> {
        self.inputs.lock().expect("not poisoned").get(key).cloned()
    }

    /// Records what a health check of `key` saw.
    pub fn set_last_inputs(&self, key: &str, inputs: String) {
        self.inputs
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), inputs);
    }

    /// Whether this process has synced `key` yet. Until it has, a change may have been missed
    /// (restart, leader change), so Continuous mappings sync once at start.
    pub fn synced_since_start(&self, key: &str) -> bool {
        self.synced.lock().expect("not poisoned").contains(key)
    }

    /// Forgets that `key` was synced: a mapping that moved to another replica and comes
    /// back syncs in full again (changes made meanwhile were not watched here).
    pub fn forget_synced(&self, key: &str) {
        self.synced.lock().expect("not poisoned").remove(key);
    }

    /// Whether this replica works on `key` (a mapping's `namespace/name`, or another
    /// object's `Kind/namespace/name`): always without sharding; with it, when the members
    /// it last saw assign `key` to it.
    pub fn owns(&self, key: &str) -> bool {
        self.membership.as_ref().is_none_or(|m| m.owns(key))
    }

    /// Whether this replica checks the health of a RemoteCluster or ClusterMapping (`key`
    /// is `Kind/namespace/name`): the default group shares them out as it does mappings;
    /// a static shard (`--shard`) leaves them to the default group.
    pub fn owns_shared(&self, key: &str) -> bool {
        self.settings.shard.is_none() && self.owns(key)
    }

    /// The name shown as a mapping's `status.owner` and in commit trailers.
    pub fn replica(&self) -> &str {
        &self.instance
    }

    /// Records a successful sync of `key` by this process.
    pub fn mark_synced(&self, key: &str) {
        self.synced
            .lock()
            .expect("not poisoned")
            .insert(key.to_string());
    }

    /// Publishes an Event about `obj`; a failure is logged, never fatal (Events are a
    /// report, not state).
    pub async fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        crate::events::publish(&self.recorder, obj, warning, reason, action, note).await;
    }

    /// Whether this replica may write for mapping `key` now: it holds the leader lease
    /// (leader election) and still owns `key` (sharding); always without either.
    pub async fn may_write(&self, key: &str) -> Result<(), String> {
        may_write(self.leadership.as_ref(), self.membership.as_deref(), key).await
    }

    /// [`Ctx::may_write`] for blocking code: the fence handed to git pushes of `key`. Only
    /// call it from `spawn_blocking` threads: `block_on` panics on a runtime thread, which
    /// refuses the push (fail closed).
    pub fn fence_for(&self, key: &str) -> crate::gitops::Fence {
        if self.leadership.is_none() && self.membership.is_none() {
            return crate::gitops::Fence::default();
        }
        let handle = tokio::runtime::Handle::current();
        let (leadership, membership) = (self.leadership.clone(), self.membership.clone());
        let key = key.to_string();
        crate::gitops::Fence::new(move || {
            handle.block_on(may_write(leadership.as_ref(), membership.as_deref(), &key))
        })
    }

    /// The lock of one mapping (`namespace/name`).
    pub fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("not poisoned")
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}

async fn may_write(
    leadership: Option<&super::leader::Leadership>,
    membership: Option<&super::shard::Membership>,
    key: &str,
) -> Result<(), String> {
    if let Some(l) = leadership {
        l.check().await?;
    }
    if let Some(m) = membership {
        m.check(key).await?;
    }
    Ok(())
}

/// Reads (or creates) the fingerprint key. Kept in a Secret, never in git: with the key,
/// fingerprints could be tested against guessed passwords.
async fn fingerprint_key(client: &Client, settings: &Settings) -> Result<Vec<u8>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    if let Some(s) = api.get_opt(FINGERPRINT_SECRET).await?
        && let Some(k) = s.data.and_then(|d| d.get("key").cloned())
        && k.0.len() >= 32
    {
        return Ok(k.0);
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).expect("OS random generator");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": FINGERPRINT_SECRET, "labels": {"app.kubernetes.io/managed-by": "dr-syncer"}},
        "type": "Opaque",
        "data": {"key": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key)},
    }))
    .expect("valid Secret");
    // Create only: if another replica won the race, use its key.
    match api.create(&Default::default(), &secret).await {
        Ok(_) => Ok(key),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let s = api.get(FINGERPRINT_SECRET).await?;
            Ok(s.data
                .and_then(|d| d.get("key").cloned())
                .map(|k| k.0)
                .unwrap_or(key))
        }
        Err(e) => Err(e),
    }
}
