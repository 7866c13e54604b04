//! Shared watches: one WATCH per (source cluster, type) for all the Continuous mappings
//! that export a single namespace, fanned out by namespace. With one watch per mapping and
//! type, a thousand mappings held tens of thousands of WATCH requests (and connections) on
//! the source apiserver; now their number follows the types, not the mappings.
//!
//! A subscriber gets what a watch of its own would give: a listing first (`Init`,
//! `InitApply` for each object of its namespace, `InitDone`), then the changes. A late
//! subscriber lists its namespace itself while the shared watch's events for it are held
//! back, then gets those events after its listing: they are newer or the same, so the
//! subscriber ends at the current state (its tracker keeps hashes, so a repeat is no change).
//!
//! A cluster-wide watch streams every object of its type in the cluster, also those of
//! namespaces nobody maps, so the first [`NAMESPACE_WATCHES_BEFORE_SHARING`] namespaces of a
//! type get a watch of their own (shared by the mappings of that namespace) and only the
//! namespaces after them share the cluster-wide one: watches stay bounded, and a few
//! mapped namespaces in a big cluster cost no more than before. Where the source
//! credentials may not list a type cluster-wide (a kubeconfig limited to some namespaces),
//! every namespace keeps a watch of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

/// Namespaces of one type (and source cluster) that get a watch of their own before the
/// next ones share one cluster-wide watch.
pub const NAMESPACE_WATCHES_BEFORE_SHARING: usize = 8;

/// An event as a subscriber sees it.
pub type Event = watcher::Event<DynamicObject>;

/// Which source cluster a hub watches: the RemoteCluster (`namespace/name`), or `None` for
/// the controller's own cluster.
pub type ClusterKey = Option<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HubKey {
    cluster: ClusterKey,
    /// `group/version/plural`.
    resource: String,
    /// `None`: cluster-wide; `Some(ns)`: this namespace only (no cluster-wide listing).
    namespace: Option<String>,
}

/// What a subscriber receives: objects of `namespace` (namespaced types), or the object
/// named `name` (the Namespace type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Objects in this namespace.
    InNamespace(String),
    /// The cluster-scoped object of this name.
    Named(String),
}

impl Filter {
    fn matches(&self, o: &DynamicObject) -> bool {
        match self {
            Filter::InNamespace(ns) => o.metadata.namespace.as_deref() == Some(ns.as_str()),
            Filter::Named(name) => o.metadata.name.as_deref() == Some(name.as_str()),
        }
    }
}

#[derive(Clone)]
struct Subscriber {
    filter: Filter,
    /// Boxed: a channel allocates its first block of 32 slots at once, and an unboxed
    /// event made that 14 KiB per subscriber — 370 KiB per mapping over 26 types, most of
    /// the controller's memory with 1 000 mappings.
    tx: mpsc::UnboundedSender<Box<Event>>,
    /// `Some` while the subscriber's own listing runs: the shared events held back.
    held: Option<Vec<Event>>,
    /// Joined while the shared watch was (re)listing: the rest of that listing is not a
    /// listing for this subscriber (it missed its `Init` and part of its objects; fed to
    /// a tracker, its `InitDone` would delete what was not seen), so it is skipped until
    /// its `InitDone`. The subscriber's own listing covers that state.
    skip_listing: bool,
}

#[derive(Default)]
struct Subscribers {
    by_id: HashMap<u64, Subscriber>,
    /// Between the shared watch's `Init` and `InitDone`.
    listing: bool,
    /// Set when the last subscriber left and the watch was stopped: a new subscriber must
    /// not join it (it would never see an event), but start a new hub.
    closed: bool,
}

struct Hub {
    subscribers: Mutex<Subscribers>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Hub {
    fn deliver(&self, ev: Event) {
        let mut subs = self.subscribers.lock().expect("not poisoned");
        match &ev {
            watcher::Event::Init => subs.listing = true,
            watcher::Event::InitDone => subs.listing = false,
            _ => {}
        }
        for sub in subs.by_id.values_mut() {
            let wanted = match &ev {
                watcher::Event::Init => {
                    sub.skip_listing = false;
                    true
                }
                watcher::Event::InitDone if sub.skip_listing => {
                    sub.skip_listing = false;
                    false
                }
                watcher::Event::InitApply(_) if sub.skip_listing => false,
                watcher::Event::InitDone => true,
                watcher::Event::InitApply(o)
                | watcher::Event::Apply(o)
                | watcher::Event::Delete(o) => sub.filter.matches(o),
            };
            if !wanted {
                continue;
            }
            match &mut sub.held {
                Some(held) => held.push(ev.clone()),
                None => {
                    let _ = sub.tx.send(Box::new(ev.clone()));
                }
            }
        }
    }
}

/// The shared watches of this process.
#[derive(Default)]
pub struct Hubs {
    hubs: Mutex<HashMap<HubKey, Weak<Hub>>>,
    /// Whether a type may be listed cluster-wide, per (cluster, resource).
    cluster_wide: Mutex<HashMap<(ClusterKey, String), bool>>,
    next_id: AtomicU64,
}

/// Keeps a subscription; dropping it unsubscribes, and the last one stops the watch.
struct Subscription {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.hub.subscribers.lock().expect("not poisoned");
        subs.by_id.remove(&self.id);
        if subs.by_id.is_empty() {
            subs.closed = true;
            if let Some(task) = self.hub.task.lock().expect("not poisoned").take() {
                task.abort();
            }
        }
    }
}

fn resource_id(ar: &ApiResource) -> String {
    format!("{}/{}/{}", ar.group, ar.version, ar.plural)
}

impl Hubs {
    /// The events of `filter` for type `ar` in `cluster` (reached with `client`): a
    /// listing, then the changes. The stream ends only when dropped.
    pub async fn subscribe(
        &self,
        cluster: ClusterKey,
        client: &Client,
        ar: &ApiResource,
        filter: Filter,
    ) -> impl Stream<Item = Event> + Send + 'static {
        let resource = resource_id(ar);
        let namespace = match &filter {
            Filter::InNamespace(ns) => {
                let wide = self.wants_wide(&cluster, &resource, ns)
                    && self.may_list_all(&cluster, client, ar).await;
                (!wide).then(|| ns.clone())
            }
            Filter::Named(_) => None,
        };
        let key = HubKey {
            cluster,
            resource,
            namespace: namespace.clone(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Subscriber {
            filter: filter.clone(),
            tx: tx.clone(),
            held: Some(Vec::new()),
            skip_listing: false,
        };
        let hub = {
            let mut hubs = self.hubs.lock().expect("not poisoned");
            // Joined under the hub's own lock, so it cannot close in between.
            let joined = hubs.get(&key).and_then(Weak::upgrade).filter(|h| {
                let mut subs = h.subscribers.lock().expect("not poisoned");
                if subs.closed {
                    return false;
                }
                let skip_listing = subs.listing;
                subs.by_id.insert(
                    id,
                    Subscriber {
                        skip_listing,
                        ..subscriber.clone()
                    },
                );
                true
            });
            match joined {
                Some(h) => h,
                None => {
                    let hub = Arc::new(Hub {
                        subscribers: Mutex::default(),
                        task: Mutex::default(),
                    });
                    let api: Api<DynamicObject> = match &namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
                        None => Api::all_with(client.clone(), ar),
                    };
                    let weak = Arc::downgrade(&hub);
                    let task = tokio::spawn(async move {
                        // Streaming lists: the initial state arrives as watch events.
                        let mut events = watcher(api, watcher::Config::default().streaming_lists())
                            .default_backoff()
                            .boxed();
                        while let Some(ev) = events.next().await {
                            let Ok(ev) = ev else { continue };
                            match weak.upgrade() {
                                Some(hub) => hub.deliver(ev),
                                None => return,
                            }
                        }
                    });
                    *hub.task.lock().expect("not poisoned") = Some(task);
                    hub.subscribers
                        .lock()
                        .expect("not poisoned")
                        .by_id
                        .insert(id, subscriber);
                    hubs.retain(|_, h| h.strong_count() > 0);
                    hubs.insert(key.clone(), Arc::downgrade(&hub));
                    hub
                }
            }
        };
        // The subscriber's own listing, then what the shared watch held back for it.
        let list_api: Api<DynamicObject> = match &filter {
            Filter::InNamespace(ns) => Api::namespaced_with(client.clone(), ns, ar),
            Filter::Named(_) => Api::all_with(client.clone(), ar),
        };
        let types = kube::api::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        };
        let lister = {
            let hub = hub.clone();
            tokio::spawn(async move {
                // Boxed: the task's cell lives as long as the subscription (its abort
                // handle); the listing's large future is freed when the listing ends.
                let mut items = Box::pin(list_with_retry(&list_api, &filter)).await;
                // List items carry no apiVersion/kind; watch events do.
                for o in &mut items {
                    o.types.get_or_insert_with(|| types.clone());
                }
                let mut subs = hub.subscribers.lock().expect("not poisoned");
                let Some(sub) = subs.by_id.get_mut(&id) else {
                    return;
                };
                let _ = sub.tx.send(Box::new(watcher::Event::Init));
                for o in items {
                    let _ = sub.tx.send(Box::new(watcher::Event::InitApply(o)));
                }
                let _ = sub.tx.send(Box::new(watcher::Event::InitDone));
                for ev in sub.held.take().unwrap_or_default() {
                    let _ = sub.tx.send(Box::new(ev));
                }
            })
        };
        let guard = (Subscription { hub, id }, AbortOnDrop(lister));
        futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            let ev = rx.recv().await?;
            Some((*ev, (rx, guard)))
        })
    }

    /// Whether namespace `ns` should join (or start) the cluster-wide watch of `resource`:
    /// one runs already, or [`NAMESPACE_WATCHES_BEFORE_SHARING`] other namespaces have a
    /// watch of their own. A namespace with a watch of its own keeps it.
    fn wants_wide(&self, cluster: &ClusterKey, resource: &str, ns: &str) -> bool {
        let hubs = self.hubs.lock().expect("not poisoned");
        let alive = |k: &HubKey| hubs.get(k).is_some_and(|h| h.strong_count() > 0);
        let own = HubKey {
            cluster: cluster.clone(),
            resource: resource.to_string(),
            namespace: Some(ns.to_string()),
        };
        if alive(&own) {
            return false;
        }
        let wide = HubKey {
            namespace: None,
            ..own
        };
        if alive(&wide) {
            return true;
        }
        let per_namespace = hubs
            .iter()
            .filter(|(k, h)| {
                &k.cluster == cluster
                    && k.resource == resource
                    && k.namespace.is_some()
                    && h.strong_count() > 0
            })
            .count();
        per_namespace >= NAMESPACE_WATCHES_BEFORE_SHARING
    }

    /// Whether `ar` may be listed cluster-wide with `client` (probed once per cluster and
    /// type; an error other than "forbidden" is not remembered and means "no": the
    /// per-namespace watch works either way).
    async fn may_list_all(&self, cluster: &ClusterKey, client: &Client, ar: &ApiResource) -> bool {
        let key = (cluster.clone(), resource_id(ar));
        if let Some(known) = self.cluster_wide.lock().expect("not poisoned").get(&key) {
            return *known;
        }
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let probe = tokio::time::timeout(
            Duration::from_secs(30),
            api.list_metadata(&ListParams::default().limit(1)),
        )
        .await;
        let answer = match probe {
            Ok(Ok(_)) => true,
            Ok(Err(kube::Error::Api(e))) if e.code == 403 => false,
            _ => return false,
        };
        self.cluster_wide
            .lock()
            .expect("not poisoned")
            .insert(key, answer);
        answer
    }
}

/// Lists what `filter` selects through `api` (paginated), retrying until it succeeds: the
/// subscriber's baseline must be complete.
async fn list_with_retry(api: &Api<DynamicObject>, filter: &Filter) -> Vec<DynamicObject> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match list_all(api, filter).await {
            Ok(items) => return items,
            Err(e) => {
                tracing::debug!(error = %e, "shared watch: listing for a subscriber");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn list_all(
    api: &Api<DynamicObject>,
    filter: &Filter,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let mut params = ListParams::default().limit(500);
    if let Filter::Named(name) = filter {
        params = params.fields(&format!("metadata.name={name}"));
    }
    let mut items = Vec::new();
    loop {
        let page = api.list(&params).await?;
        items.extend(page.items.into_iter().filter(|o| filter.matches(o)));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Namespace type, for [`Hubs::subscribe`] with [`Filter::Named`].
pub fn namespace_resource() -> ApiResource {
    ApiResource::erase::<Namespace>(&())
}

/// A DynamicObject event as a typed Namespace event (the Namespace watch of a mapping).
pub fn as_namespace(ev: Event) -> Option<watcher::Event<Namespace>> {
    let conv = |mut o: DynamicObject| -> Option<Namespace> {
        let name = o.name_any();
        o.types.get_or_insert_with(|| kube::api::TypeMeta {
            api_version: "v1".into(),
            kind: "Namespace".into(),
        });
        match o.try_parse::<Namespace>() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(namespace = %name, error = %e, "shared watch: not a Namespace");
                None
            }
        }
    };
    Some(match ev {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(conv(o)?),
        watcher::Event::Apply(o) => watcher::Event::Apply(conv(o)?),
        watcher::Event::Delete(o) => watcher::Event::Delete(conv(o)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(ns: &str, name: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns}
        }))
        .unwrap()
    }

    fn subscribe(hub: &Hub, id: u64, ns: &str) -> mpsc::UnboundedReceiver<Box<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = hub.subscribers.lock().unwrap();
        let skip_listing = subs.listing;
        subs.by_id.insert(
            id,
            Subscriber {
                filter: Filter::InNamespace(ns.into()),
                tx,
                held: None,
                skip_listing,
            },
        );
        rx
    }

    fn names(rx: &mut mpsc::UnboundedReceiver<Box<Event>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(match *ev {
                watcher::Event::Init => "Init".into(),
                watcher::Event::InitDone => "InitDone".into(),
                watcher::Event::InitApply(o) => format!("InitApply {}", o.name_any()),
                watcher::Event::Apply(o) => format!("Apply {}", o.name_any()),
                watcher::Event::Delete(o) => format!("Delete {}", o.name_any()),
            });
        }
        out
    }

    #[test]
    fn hub_fans_out_by_namespace_and_skips_a_listing_joined_midway() {
        let hub = Hub {
            subscribers: Mutex::default(),
            task: Mutex::default(),
        };
        let mut early = subscribe(&hub, 1, "a");
        hub.deliver(watcher::Event::Init);
        hub.deliver(watcher::Event::InitApply(cm("a", "a1")));
        hub.deliver(watcher::Event::InitApply(cm("b", "b1")));
        // Joins while the shared watch lists: the rest of this listing is not its own.
        let mut late = subscribe(&hub, 2, "b");
        hub.deliver(watcher::Event::InitApply(cm("b", "b2")));
        hub.deliver(watcher::Event::InitDone);
        hub.deliver(watcher::Event::Apply(cm("a", "a1")));
        hub.deliver(watcher::Event::Delete(cm("b", "b1")));
        assert_eq!(
            names(&mut early),
            ["Init", "InitApply a1", "InitDone", "Apply a1"]
        );
        assert_eq!(names(&mut late), ["Delete b1"]);
        // The next listing is whole for both.
        hub.deliver(watcher::Event::Init);
        hub.deliver(watcher::Event::InitApply(cm("b", "b2")));
        hub.deliver(watcher::Event::InitDone);
        assert_eq!(names(&mut early), ["Init", "InitDone"]);
        assert_eq!(names(&mut late), ["Init", "InitApply b2", "InitDone"]);
    }
}
