//! Continuous mode: one watch task per mapping over every exported type of its source
//! namespace. It keeps a hash per object (not the object), so status-only updates and
//! relists that change nothing are ignored; real changes are batched — a sync starts after
//! `debounce` of quiet, and at the latest `maxDelay` after the first change.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{NamespaceMapping, ReplicationMode};
use crate::export::resource::ResourceType;
use crate::export::source::live;
use crate::export::{Policy, clean};

use super::context::Ctx;
use super::schedule::parse_duration;

/// A running watch task and the mapping generation it was started for.
type WatchTask = (Option<i64>, JoinHandle<()>);

/// Running watch tasks, by mapping.
#[derive(Default)]
pub struct Watches {
    tasks: Mutex<HashMap<String, WatchTask>>,
}

impl Watches {
    /// Starts (or restarts after a spec change) the watch of a Continuous mapping; stops it
    /// for any other mode.
    pub fn ensure(&self, ctx: &Arc<Ctx>, nm: &NamespaceMapping) {
        let key = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let wanted = nm.spec.replication_mode == ReplicationMode::Continuous
            && !nm.spec.paused
            && nm.spec.source_namespace.is_some();
        match tasks.get(&key) {
            Some((generation, handle))
                if wanted && *generation == nm.metadata.generation && !handle.is_finished() =>
            {
                return;
            }
            Some((_, handle)) => handle.abort(),
            None => {}
        }
        tasks.remove(&key);
        if wanted {
            let handle = tokio::spawn(watch_mapping(ctx.clone(), nm.clone()));
            tasks.insert(key, (nm.metadata.generation, handle));
        }
    }

    /// Stops the watch of a deleted mapping.
    pub fn remove(&self, key: &str) {
        if let Some((_, h)) = self.tasks.lock().expect("not poisoned").remove(key) {
            h.abort();
        }
    }
}

/// A hash of what the export would write for an object: cleaning removes status and
/// server-managed metadata, so only meaningful changes count.
fn export_hash(rt: &ResourceType, obj: &DynamicObject, policy: &Policy) -> u64 {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    clean::clean(&mut value, rt, policy);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut h);
    h.finish()
}

async fn watch_mapping(ctx: Arc<Ctx>, nm: NamespaceMapping) {
    let (ns, name) = (nm.namespace().unwrap_or_default(), nm.name_any());
    let source_ns = nm.spec.source_namespace.clone().unwrap_or_default();
    let cont = nm.spec.continuous.clone();
    let debounce = cont
        .as_ref()
        .and_then(|c| parse_duration(&c.debounce))
        .unwrap_or(Duration::from_secs(5));
    let max_delay = cont
        .as_ref()
        .and_then(|c| parse_duration(&c.max_delay))
        .unwrap_or(Duration::from_secs(60));
    tracing::debug!(mapping = %name, "continuous watch starting");
    let Ok(policy) = Policy::from_spec(&nm.spec) else {
        return;
    };
    let client = match nm.spec.source_cluster.as_deref() {
        Some(rc) => {
            match super::refs::remote_client(&ctx.client, "spec.sourceCluster", &ns, rc).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(mapping = %name, error = %e, "continuous watch not started");
                    return;
                }
            }
        }
        None => ctx.client.clone(),
    };
    let types: Vec<ResourceType> = match live::discover(&client).await {
        Ok(d) => d
            .listable
            .into_iter()
            .filter(|rt| policy.wants_type(rt).is_ok())
            .collect(),
        Err(e) => {
            tracing::warn!(mapping = %name, error = %e, "continuous watch: discovery failed");
            return;
        }
    };
    let streams = types.iter().cloned().map(|rt| {
        let ar = rt.api_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &source_ns, &ar);
        // Streaming lists: the initial state arrives as watch events (no large LIST response).
        watcher(api, watcher::Config::default().streaming_lists())
            .default_backoff()
            .map(move |ev| (rt.clone(), ev))
            .boxed()
    });
    let mut events = stream::select_all(streams);
    let mut hashes: HashMap<(String, String), u64> = HashMap::new();
    let mut seen_in_relist: HashMap<String, HashSet<String>> = HashMap::new();
    // Types whose first listing is complete; that listing is the baseline, not a change.
    let mut ready: HashSet<String> = HashSet::new();
    let mut first_change: Option<Instant> = None;
    let mut last_change = Instant::now();
    tracing::info!(mapping = %name, types = types.len(), "continuous watch started");
    let pending = ctx
        .metrics
        .pending_changes
        .get_or_create(&super::metrics::MappingLabel {
            mapping: format!("{ns}/{name}"),
        })
        .clone();
    loop {
        let deadline = first_change.map(|f| (last_change + debounce).min(f + max_delay));
        let fire = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.next() => {
                let Some((rt, ev)) = ev else { break };
                let Ok(ev) = ev else { continue };
                let kind = rt.qualified();
                let changed = match ev {
                    watcher::Event::Init => {
                        seen_in_relist.insert(kind.clone(), HashSet::new());
                        false
                    }
                    watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                        let key = (kind.clone(), obj.name_any());
                        if let Some(seen) = seen_in_relist.get_mut(&kind) {
                            seen.insert(obj.name_any());
                        }
                        let h = export_hash(&rt, &obj, &policy);
                        hashes.insert(key, h) != Some(h) && ready.contains(&kind)
                    }
                    watcher::Event::Delete(obj) => hashes.remove(&(kind.clone(), obj.name_any())).is_some(),
                    watcher::Event::InitDone => {
                        // Objects gone while the watch was down.
                        let seen = seen_in_relist.remove(&kind).unwrap_or_default();
                        let before = hashes.len();
                        hashes.retain(|(k, n), _| k != &kind || seen.contains(n));
                        !ready.insert(kind.clone()) && hashes.len() != before
                    }
                };
                if changed {
                    pending.inc();
                    let now = Instant::now();
                    first_change.get_or_insert(now);
                    last_change = now;
                }
            }
            _ = fire => {
                first_change = None;
                pending.set(0);
                if let Err(e) = super::mapping::sync_triggered(&ctx, &ns, &name, "source changed").await {
                    tracing::warn!(mapping = %name, error = %e, "triggered sync failed");
                }
            }
        }
    }
}
