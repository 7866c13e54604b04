//! Continuous mode: one watch task per mapping over every exported type of its source
//! namespace (the WATCH requests themselves are shared between mappings, see `hub`). It keeps a hash per object (not the object), so status-only updates and
//! relists that change nothing are ignored; real changes are batched — a sync starts after
//! `debounce` of quiet, and at the latest `maxDelay` after the first change.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DynamicObject;
use kube::core::Selector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{NamespaceMapping, ReplicationMode};
use crate::export::Policy;
use crate::export::resource::ResourceType;

use super::context::Ctx;
use super::hub::Filter;
use super::schedule::parse_duration;
use super::tracker::{Batch, Tracker};

/// How often a watch checks that its mapping still exists.
const MAPPING_CHECK: Duration = Duration::from_secs(30);

/// How long a sync waits for its watch's first listing before it runs anyway.
const LISTING_WAIT: Duration = Duration::from_secs(120);

/// A running watch task.
struct WatchTask {
    /// The mapping's uid: tells a mapping deleted and created again under the same name
    /// from an unchanged one.
    uid: Option<String>,
    /// The mapping generation the watch was started for.
    generation: Option<i64>,
    /// The source RemoteCluster it follows (resolved through the ClusterMapping): a change
    /// restarts the watch.
    source: Option<crate::refs::ClusterRef>,
    handle: JoinHandle<()>,
}

/// Running watch tasks, by mapping.
#[derive(Default)]
pub struct Watches {
    tasks: Mutex<HashMap<String, WatchTask>>,
}

impl Watches {
    /// Starts (or restarts after a spec change) the watch of a Continuous mapping; stops it
    /// for any other mode. When it starts a watch it returns a signal that turns true once
    /// the watch has listed every type (see [`Watches::wait_listed`]); a running watch was
    /// listed before, or gave up waiting, so there is nothing to wait for.
    pub fn ensure(
        &self,
        ctx: &Arc<Ctx>,
        nm: &NamespaceMapping,
        source: Option<crate::refs::ClusterRef>,
    ) -> Option<watch::Receiver<bool>> {
        let key = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let wanted = nm.spec.replication_mode == ReplicationMode::Continuous
            && !nm.spec.paused
            && (nm.spec.source_namespace.is_some() || nm.spec.namespace_selector.is_some());
        match tasks.get(&key) {
            Some(t)
                if wanted
                    && t.uid == nm.metadata.uid
                    && t.generation == nm.metadata.generation
                    && t.source == source
                    && !t.handle.is_finished() =>
            {
                return None;
            }
            Some(t) => t.handle.abort(),
            None => {}
        }
        tasks.remove(&key);
        if !wanted {
            return None;
        }
        let (tx, listed) = watch::channel(false);
        let handle = tokio::spawn(watch_mapping(ctx.clone(), nm.clone(), source.clone(), tx));
        tasks.insert(
            key,
            WatchTask {
                uid: nm.metadata.uid.clone(),
                generation: nm.metadata.generation,
                source,
                handle,
            },
        );
        Some(listed)
    }

    /// Waits until a watch has listed every type (or ended, or [`LISTING_WAIT`] passed).
    ///
    /// The export of a Continuous mapping waits for this: a watch's first listing is its
    /// baseline, so a change between an earlier export listing and the baseline would be
    /// seen by neither and wait for the next resync. Listed first, everything after the
    /// baseline is a change the watch reports, and everything before is in the export.
    pub async fn wait_listed(mut listed: watch::Receiver<bool>) {
        let _ = tokio::time::timeout(LISTING_WAIT, listed.wait_for(|done| *done)).await;
    }

    /// Stops the watch of a deleted mapping.
    pub fn remove(&self, key: &str) {
        if let Some(t) = self.tasks.lock().expect("not poisoned").remove(key) {
            t.handle.abort();
        }
    }

    /// Drops the entry of a watch that is ending by itself (no abort: the caller is that
    /// task), unless the entry already belongs to a newer mapping of the same name.
    fn forget(&self, key: &str, uid: &Option<String>) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        if tasks.get(key).is_some_and(|t| &t.uid == uid) {
            tasks.remove(key);
        }
    }
}

/// Which source namespaces a mapping exports.
enum Scope {
    /// `spec.sourceNamespace`.
    One(String),
    /// `spec.namespaceSelector`, as a label selector string.
    Selected(String),
}

async fn watch_mapping(
    ctx: Arc<Ctx>,
    nm: NamespaceMapping,
    source: Option<crate::refs::ClusterRef>,
    listed: watch::Sender<bool>,
) {
    let (ns, name) = (nm.namespace().unwrap_or_default(), nm.name_any());
    let cont = nm.spec.continuous.clone();
    let debounce = cont
        .as_ref()
        .and_then(|c| parse_duration(&c.debounce))
        .unwrap_or(Duration::from_secs(5));
    let max_delay = cont
        .as_ref()
        .and_then(|c| parse_duration(&c.max_delay))
        .unwrap_or(Duration::from_secs(60));
    let scope = match (&nm.spec.source_namespace, &nm.spec.namespace_selector) {
        (Some(source), _) => Scope::One(source.clone()),
        (None, Some(sel)) => match Selector::try_from(sel.clone()) {
            Ok(s) => Scope::Selected(s.to_string()),
            Err(_) => return,
        },
        (None, None) => return,
    };
    let Ok(policy) = Policy::from_spec(&nm.spec) else {
        return;
    };
    // The source was resolved by the dereference stage (mapping → ClusterMapping → local),
    // exactly as the full sync resolves it.
    let client = match &source {
        Some(r) => match crate::refs::cluster_client(&ctx.client, r).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(mapping = %name, error = %e, "continuous watch not started");
                return;
            }
        },
        None => ctx.client.clone(),
    };
    let cluster_key: super::hub::ClusterKey = source
        .as_ref()
        .map(|r| (r.namespace.clone(), r.name.clone()));
    let types: Vec<ResourceType> = match ctx.discovery(&cluster_key, &client).await {
        Ok(d) => d
            .listable
            .iter()
            .filter(|rt| policy.wants_type(rt).is_ok())
            .cloned()
            .collect(),
        Err(e) => {
            tracing::warn!(mapping = %name, error = %e, "continuous watch: discovery failed");
            return;
        }
    };
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "unknown".into());
    let pending = ctx
        .metrics
        .pending_changes
        .get_or_create(&super::metrics::MappingLabel {
            mapping: format!("{ns}/{name}"),
        })
        .clone();
    let mut tracker = Tracker::new(policy);
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    let mut ns_hashes: HashMap<String, u64> = HashMap::new();
    let mut first_change: Option<Instant> = None;
    let mut last_change = Instant::now();
    // The Namespace objects: their labels decide the selection, and a label or annotation
    // change reaches the exported Namespace (a full sync).
    // A single-namespace mapping shares the watches of its source cluster with the other
    // mappings (`hub`): the number of WATCH requests follows the types, not the mappings.
    tokio::time::sleep(ctx.settings.watch_start_delay).await;
    let mut ns_events = match &scope {
        Scope::One(source) => ctx
            .hubs
            .subscribe(
                cluster_key.clone(),
                &client,
                &super::hub::namespace_resource(),
                Filter::Named(source.clone()),
            )
            .await
            .filter_map(|ev| async move { super::hub::as_namespace(ev).map(Ok) })
            .boxed(),
        Scope::Selected(sel) => {
            let ns_api: Api<Namespace> = Api::all(client.clone());
            watcher(ns_api, watcher::Config::default().labels(sel))
                .default_backoff()
                .boxed()
        }
    };
    // kube-runtime never reconciles a deleted object, so the watch checks for its mapping
    // itself; otherwise a quiet namespace would keep the watches of a deleted mapping open.
    let mappings: Api<NamespaceMapping> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existence = tokio::time::interval(MAPPING_CHECK);
    existence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _running = Running::start(
        ctx.metrics
            .continuous_watch
            .get_or_create(&super::metrics::MappingLabel {
                mapping: format!("{ns}/{name}"),
            })
            .clone(),
    );
    tracing::info!(mapping = %name, types = types.len(), "continuous watch started");
    if types.is_empty() {
        listed.send_replace(true);
    }
    // Object streams restart when a namespace joins the selection, so its objects are
    // listed (and remembered) too.
    'streams: loop {
        let mut streams = Vec::with_capacity(types.len());
        for rt in &types {
            let ar = rt.api_resource();
            let rt = rt.clone();
            let events = match &scope {
                Scope::One(source) => ctx
                    .hubs
                    .subscribe(
                        cluster_key.clone(),
                        &client,
                        &ar,
                        Filter::InNamespace(source.clone()),
                    )
                    .await
                    .map(move |ev| (rt.clone(), Ok::<_, watcher::Error>(ev)))
                    .boxed(),
                // Streaming lists: the initial state arrives as watch events (no large LIST).
                Scope::Selected(_) => watcher(
                    Api::<DynamicObject>::all_with(client.clone(), &ar),
                    watcher::Config::default().streaming_lists(),
                )
                .default_backoff()
                .map(move |ev| (rt.clone(), ev))
                .boxed(),
            };
            streams.push(events);
        }
        let mut events = stream::select_all(streams);
        loop {
            let deadline = first_change.map(|f| (last_change + debounce).min(f + max_delay));
            let fire = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let mut changed = false;
            let mut restart = false;
            tokio::select! {
                ev = ns_events.next() => {
                    let Some(Ok(ev)) = ev else { continue };
                    let (joined, left) = namespace_event(ev, &mut namespaces, &mut ns_hashes);
                    for ns in &left {
                        tracker.drop_namespace(ns);
                    }
                    if !left.is_empty() || joined.is_some() {
                        tracker.require_full(joined.as_ref().map(|j| j.to_string()).unwrap_or_else(|| "a namespace left the selection".into()));
                        changed = true;
                    }
                    restart = matches!(scope, Scope::Selected(_)) && matches!(joined, Some(NamespaceChange::Joined(_)));
                }
                ev = events.next() => {
                    let Some((rt, ev)) = ev else { break 'streams };
                    let Ok(ev) = ev else { continue };
                    if matches!(scope, Scope::Selected(_)) && !in_selection(&ev, &namespaces) {
                        continue;
                    }
                    changed = tracker.observe(&rt, ev);
                    if !*listed.borrow() && tracker.listed_types() >= types.len() {
                        listed.send_replace(true);
                    }
                }
                _ = existence.tick() => {
                    let gone = match mappings.get_opt(&name).await {
                        Ok(None) => true,
                        Ok(Some(now)) => now.metadata.uid != nm.metadata.uid,
                        // An unreachable API server is no proof of deletion.
                        Err(_) => false,
                    };
                    if gone {
                        tracing::info!(mapping = %name, "mapping deleted; continuous watch stopped");
                        ctx.watches.forget(&format!("{ns}/{name}"), &nm.metadata.uid);
                        return;
                    }
                }
                _ = fire => {
                    first_change = None;
                    pending.set(0);
                    let batch = tracker.take_batch(&namespaces);
                    let batch = Some(Incoming { batch, kubernetes_version: version.clone() });
                    if let Err(e) = super::mapping::sync_triggered(&ctx, &ns, &name, "source changed", batch).await {
                        tracing::warn!(mapping = %name, error = %e, "triggered sync failed");
                    }
                }
            }
            if changed {
                pending.inc();
                let now = Instant::now();
                first_change.get_or_insert(now);
                last_change = now;
            }
            if restart {
                continue 'streams;
            }
        }
    }
}

/// Counts a watch in the mapping's `continuous_watch` gauge for as long as it lives; the
/// task ending or being aborted drops it. Increments rather than sets, so a restarted watch
/// and the aborted one it replaces never leave the gauge at 0.
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Running {
    fn start(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the watch hands to a triggered sync.
pub struct Incoming {
    /// The changes.
    pub batch: Batch,
    /// The source's Kubernetes version, for the commit trailer.
    pub kubernetes_version: String,
}

/// Why a Namespace event needs a full sync.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceChange {
    /// Namespaces joined the selection: their objects must be listed (streams restart).
    Joined(Vec<String>),
    /// A selected Namespace's labels or annotations changed (the exported Namespace).
    Changed(String),
}

impl std::fmt::Display for NamespaceChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamespaceChange::Joined(names) => {
                write!(f, "namespace joined the selection: {}", names.join(", "))
            }
            NamespaceChange::Changed(name) => write!(f, "namespace {name} changed"),
        }
    }
}

/// Applies a Namespace watch event to the selection. Returns why a full sync is needed
/// and the namespaces that left.
fn namespace_event(
    ev: watcher::Event<Namespace>,
    selected: &mut BTreeSet<String>,
    hashes: &mut HashMap<String, u64>,
) -> (Option<NamespaceChange>, Vec<String>) {
    let hash = |n: &Namespace| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(&(&n.metadata.labels, &n.metadata.annotations))
            .unwrap_or_default()
            .hash(&mut h);
        h.finish()
    };
    match ev {
        watcher::Event::Init => {
            hashes.clear();
            (None, Vec::new())
        }
        watcher::Event::InitApply(n) => {
            hashes.insert(n.name_any(), hash(&n));
            (None, Vec::new())
        }
        watcher::Event::InitDone => {
            let now: BTreeSet<String> = hashes.keys().cloned().collect();
            let left: Vec<String> = selected.difference(&now).cloned().collect();
            let joined: Vec<String> = now.difference(selected).cloned().collect();
            let first = selected.is_empty() && left.is_empty();
            *selected = now;
            // The first listing is the baseline: the startup sync covers it.
            let why = (!first && !joined.is_empty()).then_some(NamespaceChange::Joined(joined));
            (why, left)
        }
        watcher::Event::Apply(n) => {
            let name = n.name_any();
            let new = hash(&n);
            let old = hashes.insert(name.clone(), new);
            if selected.insert(name.clone()) {
                (Some(NamespaceChange::Joined(vec![name])), Vec::new())
            } else if old != Some(new) {
                (Some(NamespaceChange::Changed(name)), Vec::new())
            } else {
                (None, Vec::new())
            }
        }
        watcher::Event::Delete(n) => {
            let name = n.name_any();
            hashes.remove(&name);
            if selected.remove(&name) {
                (None, vec![name])
            } else {
                (None, Vec::new())
            }
        }
    }
}

fn in_selection(ev: &watcher::Event<DynamicObject>, selected: &BTreeSet<String>) -> bool {
    let ns = match ev {
        watcher::Event::InitApply(o) | watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
            o.metadata.namespace.as_deref()
        }
        watcher::Event::Init | watcher::Event::InitDone => return true,
    };
    ns.is_some_and(|n| selected.contains(n))
}
