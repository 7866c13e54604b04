//! Shared watches: one WATCH per (source cluster, type) for all the Continuous mappings
//! that export a single namespace, fanned out by namespace. With one watch per mapping and
//! type, a thousand mappings held tens of thousands of WATCH requests (and connections) on
//! the source apiserver; now their number follows the types, not the mappings.
//!
//! A subscriber gets what a watch of its own would give: a listing first (`Init`,
//! `InitApply` for each object of its namespace, `InitDone`), then the changes. Where it
//! can, the shared watch gives that listing: its own first listing when the subscriber
//! joins before it, or an empty one when the watch has seen no object of the subscriber's
//! namespace (it keeps the names, never the objects). Otherwise the subscriber lists its
//! namespace itself while the shared watch's events for it are held back, then gets those
//! events after its listing: they are newer or the same, so the subscriber ends at the
//! current state (its tracker keeps hashes, so a repeat is no change). With a thousand
//! mappings starting together, most of a mapping's two dozen types are empty in its
//! namespace: their listings were most of the requests the apiserver served.
//!
//! A cluster-wide watch streams every object of its type in the cluster, also those of
//! namespaces nobody maps, so the first [`NAMESPACE_WATCHES_BEFORE_SHARING`] namespaces of a
//! type get a watch of their own (shared by the mappings of that namespace). The next one
//! starts the cluster-wide watch, which takes over those namespaces (their subscribers get
//! its first listing as a relist) and stops their watches: a type has at most that many
//! watches or one, however many mappings, and a few mapped namespaces in a big cluster
//! cost no more than before. Where the source credentials may not list a type
//! cluster-wide (a kubeconfig limited to some namespaces), every namespace keeps a watch
//! of its own.

use std::collections::{HashMap, HashSet};
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

/// Where a subscription is delivered from now: the hub it joined, or the cluster-wide hub
/// that took over its namespace's hub (see [`Hubs::subscribe`]).
type Home = Arc<Mutex<Arc<Hub>>>;

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
    home: Home,
}

/// Names of the objects a watch has seen, by namespace (`""`: cluster-scoped).
type Names = HashMap<String, HashSet<Box<str>>>;

#[derive(Default)]
struct Subscribers {
    by_id: HashMap<u64, Subscriber>,
    /// Between the shared watch's `Init` and `InitDone`.
    listing: bool,
    /// Set when the last subscriber left and the watch was stopped (or a cluster-wide
    /// watch took its subscribers): a new subscriber must not join it (it would never see
    /// an event), but start a new hub.
    closed: bool,
    /// The objects as of the watch's last event, once a listing completed: which
    /// namespaces hold none of this type is then known without asking the apiserver. Names
    /// only, never objects (some 50 bytes per object).
    seen: Option<Names>,
    /// The listing in progress.
    relisting: Option<Names>,
    /// A listing of the watch completed (its first one is no longer to come).
    listed_once: bool,
}

/// How a joining subscriber gets its first listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    /// The watch's own first listing is still to come: it is the subscriber's listing too.
    FromWatch,
    /// The watch knows the subscriber's objects are none: `Init`, `InitDone` at once.
    Empty,
    /// The subscriber lists itself (the shared events are held back meanwhile).
    OwnListing,
}

impl Subscribers {
    /// Adds subscriber `id`, deciding how it gets its listing (the `Empty` one is sent).
    fn join(&mut self, id: u64, mut sub: Subscriber) -> Baseline {
        let baseline = if self.listing {
            Baseline::OwnListing
        } else if !self.listed_once {
            Baseline::FromWatch
        } else if self.holds_none(&sub.filter) {
            Baseline::Empty
        } else {
            Baseline::OwnListing
        };
        sub.skip_listing = self.listing;
        sub.held = (baseline == Baseline::OwnListing).then(Vec::new);
        if baseline == Baseline::Empty {
            let _ = sub.tx.send(Box::new(watcher::Event::Init));
            let _ = sub.tx.send(Box::new(watcher::Event::InitDone));
        }
        self.by_id.insert(id, sub);
        baseline
    }

    /// Whether the watch, listed and not relisting, has seen no object `filter` selects.
    fn holds_none(&self, filter: &Filter) -> bool {
        let Some(seen) = self.seen.as_ref().filter(|_| !self.listing && !self.closed) else {
            return false;
        };
        match filter {
            Filter::InNamespace(ns) => seen.get(ns).is_none_or(HashSet::is_empty),
            Filter::Named(name) => seen
                .get("")
                .is_none_or(|names| !names.contains(name.as_str())),
        }
    }

    /// Drops what the watch saw, after a watch error: until its next complete listing no
    /// namespace is known to hold none (a sync lists, a subscriber lists itself), so a
    /// stale or revoked watch never makes a sync skip a type, nor report one as read.
    fn forget_seen(&mut self) {
        self.seen = None;
    }

    /// Keeps [`Subscribers::seen`] up to date with one event of the watch.
    fn track(&mut self, ev: &Event) {
        let key = |o: &DynamicObject| {
            (
                o.metadata.namespace.clone().unwrap_or_default(),
                Box::<str>::from(o.metadata.name.as_deref().unwrap_or_default()),
            )
        };
        match ev {
            watcher::Event::Init => self.relisting = Some(Names::new()),
            watcher::Event::InitApply(o) => {
                let (ns, name) = key(o);
                if let Some(names) = self.relisting.as_mut() {
                    names.entry(ns).or_default().insert(name);
                }
            }
            watcher::Event::InitDone => {
                self.listed_once = true;
                self.seen = Some(self.relisting.take().unwrap_or_default());
            }
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                if let Some(seen) = self.seen.as_mut() {
                    seen.entry(ns).or_default().insert(name);
                }
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                if let Some(seen) = self.seen.as_mut()
                    && let Some(names) = seen.get_mut(&ns)
                {
                    names.remove(&name);
                    if names.is_empty() {
                        seen.remove(&ns);
                    }
                }
            }
        }
    }
}

struct Hub {
    subscribers: Mutex<Subscribers>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Hub {
    fn new() -> Arc<Hub> {
        Arc::new(Hub {
            subscribers: Mutex::default(),
            task: Mutex::default(),
        })
    }

    fn deliver(&self, ev: Event) {
        let mut subs = self.subscribers.lock().expect("not poisoned");
        match &ev {
            watcher::Event::Init => subs.listing = true,
            watcher::Event::InitDone => subs.listing = false,
            _ => {}
        }
        subs.track(&ev);
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

    /// Takes over the subscribers of namespace hub `old` (this hub is a new cluster-wide
    /// one, not yet watching) and stops `old`. This hub's first listing becomes their next
    /// listing — a relist, which their trackers take as one — so an own listing under way
    /// is dropped together with what it held back: that listing is older.
    fn adopt(self: &Arc<Self>, old: &Arc<Hub>) {
        let mut from = old.subscribers.lock().expect("not poisoned");
        let mut into = self.subscribers.lock().expect("not poisoned");
        from.closed = true;
        for (id, mut sub) in from.by_id.drain() {
            sub.held = None;
            sub.skip_listing = false;
            *sub.home.lock().expect("not poisoned") = self.clone();
            into.by_id.insert(id, sub);
        }
        if let Some(task) = old.task.lock().expect("not poisoned").take() {
            task.abort();
        }
    }
}

/// Runs `f` on subscriber `id` where it is delivered from now (`home`), unless it left.
fn with_subscriber<T>(home: &Home, id: u64, f: impl FnOnce(&mut Subscribers) -> T) -> Option<T> {
    loop {
        let hub = home.lock().expect("not poisoned").clone();
        let mut subs = hub.subscribers.lock().expect("not poisoned");
        // A takeover moves the subscriber (and its home) under the old hub's lock: if the
        // home is unchanged now, the subscriber is in `subs` or gone for good.
        if !Arc::ptr_eq(&hub, &home.lock().expect("not poisoned")) {
            continue;
        }
        if !subs.by_id.contains_key(&id) {
            return None;
        }
        return Some(f(&mut subs));
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
    home: Home,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let home = self.home.clone();
        with_subscriber(&self.home, self.id, |subs| {
            subs.by_id.remove(&self.id);
            if subs.by_id.is_empty() {
                subs.closed = true;
                let hub = home.lock().expect("not poisoned").clone();
                if let Some(task) = hub.task.lock().expect("not poisoned").take() {
                    task.abort();
                }
            }
        });
    }
}

fn resource_id(ar: &ApiResource) -> String {
    format!("{}/{}/{}", ar.group, ar.version, ar.plural)
}

impl Hubs {
    /// The events of `filter` for type `ar` in `cluster` (reached with `client`): a
    /// listing, then the changes. The stream ends only when dropped.
    ///
    /// The listing comes from the shared watch where it can: its first listing when that
    /// is still to come, or an empty one when the watch has seen no object of the
    /// subscriber's namespace (most types in most namespaces). Otherwise the subscriber
    /// lists its namespace itself.
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
        let mut key = HubKey {
            cluster,
            resource,
            namespace,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (home, baseline) = {
            let mut hubs = self.hubs.lock().expect("not poisoned");
            // A cluster-wide watch started since `wants_wide` looked (and took over this
            // namespace's watch): join it rather than start a namespace watch beside it.
            let wide = HubKey {
                namespace: None,
                ..key.clone()
            };
            if key.namespace.is_some()
                && hubs
                    .get(&wide)
                    .and_then(Weak::upgrade)
                    .is_some_and(|h| !h.subscribers.lock().expect("not poisoned").closed)
            {
                key = wide;
            }
            let namespace = key.namespace.clone();
            // The subscriber, delivered from `hub`; `join` decides its listing.
            let subscriber = |hub: &Arc<Hub>| {
                let home: Home = Arc::new(Mutex::new(hub.clone()));
                let sub = Subscriber {
                    filter: filter.clone(),
                    tx: tx.clone(),
                    held: None,
                    skip_listing: false,
                    home: home.clone(),
                };
                (home, sub)
            };
            // Joined under the hub's own lock, so it cannot close in between.
            let joined = hubs.get(&key).and_then(Weak::upgrade).and_then(|hub| {
                let mut subs = hub.subscribers.lock().expect("not poisoned");
                if subs.closed {
                    return None;
                }
                let (home, sub) = subscriber(&hub);
                Some((home, subs.join(id, sub)))
            });
            match joined {
                Some(j) => j,
                None => {
                    let hub = Hub::new();
                    // A cluster-wide watch takes over the namespaces that had one of their
                    // own: the WATCH requests stay one per type, however the namespaces
                    // arrived.
                    if key.namespace.is_none() {
                        hubs.retain(|k, old| {
                            let own = k.cluster == key.cluster
                                && k.resource == key.resource
                                && k.namespace.is_some();
                            if own && let Some(old) = old.upgrade() {
                                hub.adopt(&old);
                            }
                            !own && old.strong_count() > 0
                        });
                    }
                    let (home, sub) = subscriber(&hub);
                    let baseline = hub.subscribers.lock().expect("not poisoned").join(id, sub);
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
                            let Ok(ev) = ev else {
                                // The watch may have missed events (or lost the right to
                                // list): what it saw is no longer known to be current.
                                if let Some(hub) = weak.upgrade() {
                                    hub.subscribers.lock().expect("not poisoned").forget_seen();
                                }
                                continue;
                            };
                            match weak.upgrade() {
                                Some(hub) => hub.deliver(ev),
                                None => return,
                            }
                        }
                    });
                    *hub.task.lock().expect("not poisoned") = Some(task);
                    hubs.retain(|_, h| h.strong_count() > 0);
                    hubs.insert(key.clone(), Arc::downgrade(&hub));
                    (home, baseline)
                }
            }
        };
        let lister = (baseline == Baseline::OwnListing).then(|| {
            // The subscriber's own listing, then what the shared watch held back for it.
            let list_api: Api<DynamicObject> = match &filter {
                Filter::InNamespace(ns) => Api::namespaced_with(client.clone(), ns, ar),
                Filter::Named(_) => Api::all_with(client.clone(), ar),
            };
            let types = kube::api::TypeMeta {
                api_version: ar.api_version.clone(),
                kind: ar.kind.clone(),
            };
            let home = home.clone();
            AbortOnDrop(tokio::spawn(async move {
                // Boxed: the task's cell lives as long as the subscription (its abort
                // handle); the listing's large future is freed when the listing ends.
                let mut items = Box::pin(list_with_retry(&list_api, &filter)).await;
                // List items carry no apiVersion/kind; watch events do.
                for o in &mut items {
                    o.types.get_or_insert_with(|| types.clone());
                }
                with_subscriber(&home, id, |subs| {
                    let Some(sub) = subs.by_id.get_mut(&id) else {
                        return;
                    };
                    // Taken over by a cluster-wide watch meanwhile: its listing is newer.
                    let Some(held) = sub.held.take() else {
                        return;
                    };
                    let _ = sub.tx.send(Box::new(watcher::Event::Init));
                    for o in items {
                        let _ = sub.tx.send(Box::new(watcher::Event::InitApply(o)));
                    }
                    let _ = sub.tx.send(Box::new(watcher::Event::InitDone));
                    for ev in held {
                        let _ = sub.tx.send(Box::new(ev));
                    }
                });
            }))
        });
        let guard = (Subscription { home, id }, lister);
        futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            let ev = rx.recv().await?;
            Some((*ev, (rx, guard)))
        })
    }

    /// Whether the shared watch of `ar` covering `namespace` in `cluster` has listed and
    /// seen no object there since. A sync may then skip listing that type in that
    /// namespace where nothing of it is committed: at worst an object the watch has not
    /// reported yet is exported by the change that reports it — never a file deleted.
    pub fn known_empty(&self, cluster: &ClusterKey, ar: &ApiResource, namespace: &str) -> bool {
        let hubs = self.hubs.lock().expect("not poisoned");
        [Some(namespace.to_string()), None].into_iter().any(|ns| {
            let key = HubKey {
                cluster: cluster.clone(),
                resource: resource_id(ar),
                namespace: ns,
            };
            hubs.get(&key).and_then(Weak::upgrade).is_some_and(|hub| {
                hub.subscribers
                    .lock()
                    .expect("not poisoned")
                    .holds_none(&Filter::InNamespace(namespace.to_string()))
            })
        })
    }

    /// Whether namespace `ns` should join (or start) the cluster-wide watch of `resource`:
    /// one runs already, or [`NAMESPACE_WATCHES_BEFORE_SHARING`] other namespaces have a
    /// watch of their own (the cluster-wide one takes them over).
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

    fn subscribe(
        hub: &Arc<Hub>,
        id: u64,
        ns: &str,
    ) -> (mpsc::UnboundedReceiver<Box<Event>>, Baseline, Subscription) {
        let (tx, rx) = mpsc::unbounded_channel();
        let home: Home = Arc::new(Mutex::new(hub.clone()));
        let sub = Subscriber {
            filter: Filter::InNamespace(ns.into()),
            tx,
            held: None,
            skip_listing: false,
            home: home.clone(),
        };
        let baseline = hub.subscribers.lock().unwrap().join(id, sub);
        (rx, baseline, Subscription { home, id })
    }

    /// Whether `hub` knows namespace `ns` holds none of its type.
    fn knows_empty(hub: &Hub, ns: &str) -> bool {
        hub.subscribers
            .lock()
            .unwrap()
            .holds_none(&Filter::InNamespace(ns.into()))
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
        let hub = Hub::new();
        let (mut early, baseline, _early) = subscribe(&hub, 1, "a");
        assert_eq!(baseline, Baseline::FromWatch);
        hub.deliver(watcher::Event::Init);
        hub.deliver(watcher::Event::InitApply(cm("a", "a1")));
        hub.deliver(watcher::Event::InitApply(cm("b", "b1")));
        // Joins while the shared watch lists: the rest of this listing is not its own, so
        // it lists itself (its events held back until then; released here by hand).
        let (mut late, baseline, _late) = subscribe(&hub, 2, "b");
        assert_eq!(baseline, Baseline::OwnListing);
        hub.deliver(watcher::Event::InitApply(cm("b", "b2")));
        hub.deliver(watcher::Event::InitDone);
        hub.deliver(watcher::Event::Apply(cm("a", "a1")));
        hub.deliver(watcher::Event::Delete(cm("b", "b1")));
        let held = hub
            .subscribers
            .lock()
            .unwrap()
            .by_id
            .get_mut(&2)
            .unwrap()
            .held
            .take()
            .unwrap();
        assert_eq!(held.len(), 1, "only the Delete after the listing is held");
        assert_eq!(
            names(&mut early),
            ["Init", "InitApply a1", "InitDone", "Apply a1"]
        );
        assert!(names(&mut late).is_empty());
        // The next listing is whole for both.
        hub.deliver(watcher::Event::Init);
        hub.deliver(watcher::Event::InitApply(cm("b", "b2")));
        hub.deliver(watcher::Event::InitDone);
        assert_eq!(names(&mut early), ["Init", "InitDone"]);
        assert_eq!(names(&mut late), ["Init", "InitApply b2", "InitDone"]);
    }

    #[test]
    fn hub_baseline_is_empty_where_the_watch_saw_nothing() {
        let hub = Hub::new();
        let (_rx, _, _first) = subscribe(&hub, 1, "a");
        hub.deliver(watcher::Event::Init);
        hub.deliver(watcher::Event::InitApply(cm("a", "a1")));
        hub.deliver(watcher::Event::InitApply(cm("b", "b1")));
        hub.deliver(watcher::Event::InitDone);
        // A namespace without objects of the type: no listing, an empty one at once.
        let (mut quiet, baseline, _quiet) = subscribe(&hub, 2, "c");
        assert_eq!(baseline, Baseline::Empty);
        assert_eq!(names(&mut quiet), ["Init", "InitDone"]);
        hub.deliver(watcher::Event::Apply(cm("c", "c1")));
        assert_eq!(names(&mut quiet), ["Apply c1"]);
        // One with objects lists itself.
        let (_rx, baseline, _b) = subscribe(&hub, 3, "b");
        assert_eq!(baseline, Baseline::OwnListing);
        // The names follow the watch: deleting the last object empties the namespace.
        hub.deliver(watcher::Event::Delete(cm("b", "b1")));
        let (_rx, baseline, _b2) = subscribe(&hub, 4, "b");
        assert_eq!(baseline, Baseline::Empty);
        assert!(knows_empty(&hub, "b"));
        assert!(!knows_empty(&hub, "c"));
        // While the watch relists, nothing is known.
        hub.deliver(watcher::Event::Init);
        assert!(!knows_empty(&hub, "b"));
        let (_rx, baseline, _b3) = subscribe(&hub, 5, "b");
        assert_eq!(baseline, Baseline::OwnListing);
        hub.deliver(watcher::Event::InitDone);
        assert!(knows_empty(&hub, "b"));
        // A watch error: nothing is known until the next complete listing, and a joining
        // subscriber lists itself (the watch may resume without listing again).
        hub.subscribers.lock().unwrap().forget_seen();
        assert!(!knows_empty(&hub, "b"));
        let (_rx, baseline, _b4) = subscribe(&hub, 6, "b");
        assert_eq!(baseline, Baseline::OwnListing);
    }

    #[test]
    fn hub_cluster_wide_takes_over_namespace_watches() {
        let own = Hub::new();
        let (mut rx, _, subscription) = subscribe(&own, 1, "a");
        own.deliver(watcher::Event::Init);
        own.deliver(watcher::Event::InitApply(cm("a", "a1")));
        own.deliver(watcher::Event::InitDone);
        assert_eq!(names(&mut rx), ["Init", "InitApply a1", "InitDone"]);
        let wide = Hub::new();
        wide.adopt(&own);
        assert!(own.subscribers.lock().unwrap().closed);
        assert!(own.subscribers.lock().unwrap().by_id.is_empty());
        // The cluster-wide watch's first listing is the subscriber's relist.
        wide.deliver(watcher::Event::Init);
        wide.deliver(watcher::Event::InitApply(cm("a", "a2")));
        wide.deliver(watcher::Event::InitApply(cm("z", "z1")));
        wide.deliver(watcher::Event::InitDone);
        own.deliver(watcher::Event::Apply(cm("a", "stale")));
        assert_eq!(names(&mut rx), ["Init", "InitApply a2", "InitDone"]);
        // Dropping the subscription leaves the hub it is delivered from now.
        drop(subscription);
        assert!(wide.subscribers.lock().unwrap().by_id.is_empty());
        assert!(wide.subscribers.lock().unwrap().closed);
    }
}
