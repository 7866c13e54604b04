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
                // Objects gone while the watch was down.
                let seen = self.seen.remove(&kind).unwrap_or_default();
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
