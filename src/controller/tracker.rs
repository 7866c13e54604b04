//! What Continuous mode remembers between syncs: one hash per watched object (of what the
//! export would write for it, so status-only updates count for nothing), the objects that
//! changed since the last sync — the only whole objects it keeps — and the HPA targets
//! the export needs. Pure: fed watch events, it hands out batches for `export::patch`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::Value;

use crate::export::builtin::{self, HpaTargets};
use crate::export::patch::Change;
use crate::export::{Origin, Policy, ResourceType, SourceObject, Summary, clean, filter};

/// `(plural.group, namespace, name)`.
type Key = (String, String, String);

/// The remembered state of one object: `hash` of its cleaned form (0 when excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: u64,
    exported: bool,
}

/// A batch of changes for one sync.
#[derive(Debug, Default)]
pub struct Batch {
    /// Changed objects, latest state (`None` = deleted), in key order.
    pub changes: Vec<Change>,
    /// Why only a full sync will do, if so.
    pub full: Option<String>,
    /// Counts over everything watched, as a full export would report them.
    pub summary: Summary,
    /// HPA targets per source namespace.
    pub hpa: HashMap<String, HpaTargets>,
}

/// Per-mapping watch state.
pub struct Tracker {
    policy: Policy,
    entries: HashMap<Key, Entry>,
    dirty: BTreeMap<Key, (ResourceType, Option<Value>)>,
    /// Objects seen during a (re)list in progress, per type.
    seen: HashMap<String, HashSet<(String, String)>>,
    /// Types whose first listing is complete: that listing is the baseline, not a change.
    ready: HashSet<String>,
    hpa: HashMap<(String, String), (String, String, String)>,
    full: Option<String>,
}

fn entry(rt: &ResourceType, value: &Value, policy: &Policy) -> Entry {
    let obj = SourceObject {
        rt: rt.clone(),
        value: value.clone(),
        origin: Origin::Live,
    };
    if filter::exclusion(&obj, policy).is_some() {
        return Entry {
            hash: 0,
            exported: false,
        };
    }
    let mut cleaned = obj.value;
    clean::clean(&mut cleaned, rt, policy);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cleaned.to_string().hash(&mut h);
    Entry {
        hash: h.finish(),
        exported: true,
    }
}

impl Tracker {
    /// An empty tracker for a mapping's policy.
    pub fn new(policy: Policy) -> Self {
        Tracker {
            policy,
            entries: HashMap::new(),
            dirty: BTreeMap::new(),
            seen: HashMap::new(),
            ready: HashSet::new(),
            hpa: HashMap::new(),
            full: None,
        }
    }

    /// Feeds one watch event of type `rt`; true when it changed what the export writes.
    pub fn observe(&mut self, rt: &ResourceType, event: Event<DynamicObject>) -> bool {
        let kind = rt.qualified();
        match event {
            Event::Init => {
                self.seen.insert(kind, HashSet::new());
                false
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                let ns = obj.metadata.namespace.clone().unwrap_or_default();
                let name = obj.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = self.seen.get_mut(&kind) {
                    seen.insert((ns.clone(), name.clone()));
                }
                let value = serde_json::to_value(&obj).unwrap_or_default();
                let new = entry(rt, &value, &self.policy);
                if builtin::is_hpa(rt) {
                    match builtin::hpa_target(&value) {
                        Some(t) => self.hpa.insert((ns.clone(), name.clone()), t),
                        None => self.hpa.remove(&(ns.clone(), name.clone())),
                    };
                }
                let key = (kind.clone(), ns, name);
                let old = self.entries.insert(key.clone(), new);
                let changed = old != Some(new) && self.ready.contains(&kind);
                if changed {
                    self.mark(rt, key, Some(value));
                }
                changed
            }
            Event::Delete(obj) => {
                let key = (
                    kind,
                    obj.metadata.namespace.clone().unwrap_or_default(),
                    obj.metadata.name.clone().unwrap_or_default(),
                );
                self.forget(rt, key)
            }
            Event::InitDone => {
                // Objects gone while the watch was down — only after a whole listing: an
                // `InitDone` without its `Init` saw nothing, and would delete everything.
                let Some(seen) = self.seen.remove(&kind) else {
                    self.ready.insert(kind);
                    return false;
                };
                let gone: Vec<Key> = self
                    .entries
                    .keys()
                    .filter(|(k, ns, n)| k == &kind && !seen.contains(&(ns.clone(), n.clone())))
                    .cloned()
                    .collect();
                self.ready.insert(kind);
                let mut changed = false;
                for key in gone {
                    changed |= self.forget(rt, key);
                }
                changed
            }
        }
    }

    fn forget(&mut self, rt: &ResourceType, key: Key) -> bool {
        if builtin::is_hpa(rt) {
            self.hpa.remove(&(key.1.clone(), key.2.clone()));
        }
        match self.entries.remove(&key) {
            Some(_) => {
                self.mark(rt, key, None);
                true
            }
            None => false,
        }
    }

    fn mark(&mut self, rt: &ResourceType, key: Key, value: Option<Value>) {
        // An HPA changes how its target is written: only a full export gets that right.
        if builtin::is_hpa(rt) {
            self.full
                .get_or_insert_with(|| "a HorizontalPodAutoscaler changed".into());
        }
        self.dirty.insert(key, (rt.clone(), value));
    }

    /// Asks for a full sync (the namespace set or a Namespace object changed).
    pub fn require_full(&mut self, why: impl Into<String>) {
        self.full.get_or_insert_with(|| why.into());
    }

    /// Forgets the objects of a namespace that left the selection.
    pub fn drop_namespace(&mut self, ns: &str) {
        self.entries.retain(|(_, n, _), _| n != ns);
        self.dirty.retain(|(_, n, _), _| n != ns);
        self.hpa.retain(|(n, _), _| n != ns);
    }

    /// How many types have completed their first listing.
    pub fn listed_types(&self) -> usize {
        self.ready.len()
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the pending changes; `namespaces` are the exported source namespaces.
    pub fn take_batch(&mut self, namespaces: &BTreeSet<String>) -> Batch {
        let changes = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|((_, namespace, name), (rt, object))| Change {
                rt,
                namespace,
                name,
                object,
            })
            .collect();
        let mut summary = Summary::default();
        for ((kind, _, _), e) in &self.entries {
            let counts = summary.kind(kind);
            if e.exported {
                counts.exported += 1;
            } else {
                counts.excluded += 1;
            }
        }
        for ns in namespaces {
            summary.kind("namespaces").exported += 1;
            summary
                .namespaces
                .insert(ns.clone(), self.policy.destination_for(ns));
        }
        let mut hpa: HashMap<String, HpaTargets> = HashMap::new();
        for ((ns, _), target) in &self.hpa {
            hpa.entry(ns.clone()).or_default().insert(target.clone());
        }
        Batch {
            changes,
            full: self.full.take(),
            summary,
            hpa,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::export::Registry;

    fn rt(api_version: &str, kind: &str) -> ResourceType {
        Registry::builtin()
            .lookup(api_version, kind)
            .unwrap()
            .clone()
    }

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    fn cm(name: &str, data: &str, rv: &str) -> DynamicObject {
        obj(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv}, "data": {"k": data}}),
        )
    }

    fn deploy(replicas: u32, ready: u32) -> DynamicObject {
        obj(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
                   "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}),
        )
    }

    fn listed(t: &mut Tracker, rt: &ResourceType, objs: Vec<DynamicObject>) -> bool {
        let mut changed = t.observe(rt, Event::Init);
        for o in objs {
            changed |= t.observe(rt, Event::InitApply(o));
        }
        changed | t.observe(rt, Event::InitDone)
    }

    /// (case, event after the baseline [a, web], changed?, dirty names with deleted?)
    type Case = (
        &'static str,
        ResourceType,
        Event<DynamicObject>,
        bool,
        Vec<(&'static str, bool)>,
    );

    #[test]
    fn tracker_events_table() {
        let cms = rt("v1", "ConfigMap");
        let deps = rt("apps/v1", "Deployment");
        let ignored = obj(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "shop", "labels": {"dr-syncer.io/ignore": "true"}}, "data": {"k": "1"}}),
        );
        // (case, event after the baseline [a, web], changed?, dirty keys as name → deleted?)
        let cases: Vec<Case> = vec![
            (
                "same content, new resourceVersion",
                cms.clone(),
                Event::Apply(cm("a", "1", "9")),
                false,
                vec![],
            ),
            (
                "data changed",
                cms.clone(),
                Event::Apply(cm("a", "2", "9")),
                true,
                vec![("a", false)],
            ),
            (
                "created",
                cms.clone(),
                Event::Apply(cm("b", "1", "9")),
                true,
                vec![("b", false)],
            ),
            (
                "deleted",
                cms.clone(),
                Event::Delete(cm("a", "1", "9")),
                true,
                vec![("a", true)],
            ),
            (
                "deleting an unknown object",
                cms.clone(),
                Event::Delete(cm("zz", "1", "9")),
                false,
                vec![],
            ),
            (
                "status only",
                deps.clone(),
                Event::Apply(deploy(3, 1)),
                false,
                vec![],
            ),
            (
                "spec changed",
                deps.clone(),
                Event::Apply(deploy(4, 3)),
                true,
                vec![("web", false)],
            ),
            (
                "ignore label added",
                cms.clone(),
                Event::Apply(ignored),
                true,
                vec![("a", false)],
            ),
        ];
        for (case, t_rt, event, changed, dirty) in cases {
            let mut t = Tracker::new(Policy::default());
            assert!(
                !listed(&mut t, &cms, vec![cm("a", "1", "1")]),
                "{case}: baseline"
            );
            assert!(
                !listed(&mut t, &deps, vec![deploy(3, 3)]),
                "{case}: baseline"
            );
            assert_eq!(t.observe(&t_rt, event), changed, "{case}");
            let batch = t.take_batch(&BTreeSet::from(["shop".to_string()]));
            let got: Vec<(&str, bool)> = batch
                .changes
                .iter()
                .map(|c| (c.name.as_str(), c.object.is_none()))
                .collect();
            assert_eq!(got, dirty, "{case}");
            assert!(batch.full.is_none(), "{case}");
            assert!(
                t.take_batch(&BTreeSet::new()).changes.is_empty(),
                "{case}: drained"
            );
        }
    }

    #[test]
    fn tracker_relist_finds_deletions_missed_while_disconnected() {
        let cms = rt("v1", "ConfigMap");
        let mut t = Tracker::new(Policy::default());
        listed(&mut t, &cms, vec![cm("a", "1", "1"), cm("b", "1", "1")]);
        assert!(listed(&mut t, &cms, vec![cm("a", "1", "1")]));
        let batch = t.take_batch(&BTreeSet::from(["shop".to_string()]));
        assert_eq!(batch.changes.len(), 1);
        assert_eq!(batch.changes[0].name, "b");
        assert!(batch.changes[0].object.is_none());
        assert_eq!(batch.summary.kinds["configmaps"].exported, 1);
        assert_eq!(batch.summary.kinds["namespaces"].exported, 1);
    }

    #[test]
    fn tracker_init_done_without_init_deletes_nothing() {
        let cms = rt("v1", "ConfigMap");
        let mut t = Tracker::new(Policy::default());
        listed(&mut t, &cms, vec![cm("a", "1", "1"), cm("b", "1", "1")]);
        // The tail of a listing whose start this watch never saw.
        assert!(!t.observe(&cms, Event::InitApply(cm("a", "1", "1"))));
        assert!(!t.observe(&cms, Event::InitDone));
        assert!(t.take_batch(&BTreeSet::new()).changes.is_empty());
    }

    #[test]
    fn tracker_hpa_change_needs_a_full_sync() {
        let hpas = rt("autoscaling/v2", "HorizontalPodAutoscaler");
        let hpa = |max: u32| {
            obj(
                json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"maxReplicas": max, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}),
            )
        };
        let mut t = Tracker::new(Policy::default());
        listed(&mut t, &hpas, vec![hpa(5)]);
        let batch = t.take_batch(&BTreeSet::new());
        assert!(batch.full.is_none());
        assert!(batch.hpa["shop"].contains(&("apps".into(), "Deployment".into(), "web".into())));
        assert!(t.observe(&hpas, Event::Apply(hpa(6))));
        assert!(t.take_batch(&BTreeSet::new()).full.is_some());
    }
}
