//! Resource types: the names a user may write in `resourceTypes` (plural, singular, kind,
//! short name, `plural.group`, `*`) and the path segment each type gets in the output.
//!
//! Live exports learn types from discovery; offline exports use the built-in table below
//! plus any CustomResourceDefinition found in the input.

use std::collections::HashMap;

use serde_json::Value;

/// One API resource type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version used to read it (preferred version when discovered).
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name, e.g. `deployments`.
    pub plural: String,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Short names, e.g. `deploy`.
    pub short_names: Vec<String>,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Directory segment for the group: `core` for the core group (a group name never is).
    pub fn group_dir(&self) -> &str {
        if self.group.is_empty() {
            "core"
        } else {
            &self.group
        }
    }

    /// The kube `ApiResource` for dynamic API calls.
    pub fn api_resource(&self) -> kube::api::ApiResource {
        kube::api::ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `plural.group` (or `plural` for core), the unambiguous spelling used in summaries.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether a `resourceTypes`-style entry names this type. Case-insensitive; `*`
    /// matches everything; `name.group` requires the group (`core` names the core group).
    pub fn matches(&self, entry: &str) -> bool {
        let entry = entry.to_ascii_lowercase();
        if entry == "*" {
            return true;
        }
        let (name, group) = match entry.split_once('.') {
            Some((n, g)) => (n.to_string(), Some(g.to_string())),
            None => (entry.clone(), None),
        };
        if let Some(g) = group {
            let own = if self.group.is_empty() {
                "core"
            } else {
                self.group.as_str()
            };
            if g != own {
                return false;
            }
        }
        name == self.plural
            || name == self.singular
            || name == self.kind.to_ascii_lowercase()
            || self.short_names.contains(&name)
    }
}

/// Known resource types, looked up by `(group, kind)` regardless of version.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_group_kind: HashMap<(String, String), ResourceType>,
}

/// `(group, version, kind, plural, short names, namespaced)` of a built-in type.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    bool,
);

/// The built-in types.
const BUILTIN: &[Builtin] = &[
    ("", "v1", "Pod", "pods", &["po"], true),
    ("", "v1", "Service", "services", &["svc"], true),
    ("", "v1", "ConfigMap", "configmaps", &["cm"], true),
    ("", "v1", "Secret", "secrets", &[], true),
    ("", "v1", "ServiceAccount", "serviceaccounts", &["sa"], true),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        &["pvc"],
        true,
    ),
    ("", "v1", "Endpoints", "endpoints", &["ep"], true),
    ("", "v1", "Event", "events", &["ev"], true),
    ("", "v1", "LimitRange", "limitranges", &["limits"], true),
    (
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        &["quota"],
        true,
    ),
    (
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        &["rc"],
        true,
    ),
    ("", "v1", "PodTemplate", "podtemplates", &[], true),
    ("", "v1", "Namespace", "namespaces", &["ns"], false),
    (
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        &["pv"],
        false,
    ),
    ("apps", "v1", "Deployment", "deployments", &["deploy"], true),
    ("apps", "v1", "StatefulSet", "statefulsets", &["sts"], true),
    ("apps", "v1", "DaemonSet", "daemonsets", &["ds"], true),
    ("apps", "v1", "ReplicaSet", "replicasets", &["rs"], true),
    (
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        &[],
        true,
    ),
    ("batch", "v1", "Job", "jobs", &[], true),
    ("batch", "v1", "CronJob", "cronjobs", &["cj"], true),
    (
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        &["hpa"],
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        &["ing"],
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        &["netpol"],
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        &[],
        false,
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        &["pdb"],
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        &[],
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        &[],
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        &[],
        false,
    ),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        &[],
        true,
    ),
    ("events.k8s.io", "v1", "Event", "events", &["ev"], true),
    ("coordination.k8s.io", "v1", "Lease", "leases", &[], true),
    (
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        &["sc"],
        false,
    ),
    (
        "storage.k8s.io",
        "v1",
        "CSIStorageCapacity",
        "csistoragecapacities",
        &[],
        true,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        false,
    ),
    (
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        &["vs"],
        true,
    ),
];

impl Registry {
    /// The built-in Kubernetes types (enough to read any `kubectl get -o yaml` dump of
    /// standard objects).
    /// The built-in registry, built once: lookups in per-object paths (patches, failover)
    /// must not rebuild it every time.
    pub fn builtin_shared() -> &'static Registry {
        static SHARED: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(Registry::builtin);
        &SHARED
    }

    pub fn builtin() -> Self {
        let mut registry = Registry::default();
        for (group, version, kind, plural, shorts, namespaced) in BUILTIN {
            registry.add(ResourceType {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                singular: kind.to_ascii_lowercase(),
                short_names: shorts.iter().map(|s| s.to_string()).collect(),
                namespaced: *namespaced,
            });
        }
        registry
    }

    /// Adds (or replaces) a type.
    pub fn add(&mut self, rt: ResourceType) {
        self.by_group_kind
            .insert((rt.group.clone(), rt.kind.clone()), rt);
    }

    /// Adds the type a CustomResourceDefinition object defines; `None` when the object is
    /// not a readable CRD.
    pub fn add_crd(&mut self, crd: &Value) -> Option<ResourceType> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let version = spec
            .get("versions")
            .and_then(Value::as_array)
            .and_then(|vs| {
                let storage = vs
                    .iter()
                    .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true));
                storage.or(vs.first()).and_then(|v| str_of(v, "name"))
            })
            .unwrap_or_else(|| "v1".into());
        let kind = str_of(names, "kind")?;
        let rt = ResourceType {
            group: str_of(spec, "group")?,
            version,
            plural: str_of(names, "plural")?,
            singular: str_of(names, "singular").unwrap_or_else(|| kind.to_ascii_lowercase()),
            short_names: names
                .get("shortNames")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            namespaced: str_of(spec, "scope").as_deref() != Some("Cluster"),
            kind,
        };
        self.add(rt.clone());
        Some(rt)
    }

    /// The type of an object with this `apiVersion` and `kind`.
    pub fn lookup(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        self.by_group_kind
            .get(&(group.to_string(), kind.to_string()))
    }

    /// Every known type.
    pub fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.by_group_kind.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_type_matches_table() {
        let reg = Registry::builtin();
        let deploy = reg.lookup("apps/v1", "Deployment").unwrap();
        let pvc = reg.lookup("v1", "PersistentVolumeClaim").unwrap();
        let cases = [
            (deploy, "deployments", true),
            (deploy, "deployments.apps", true),
            (deploy, "Deployment", true),
            (deploy, "deploy", true),
            (deploy, "deployment.apps", true),
            (deploy, "deployments.extensions", false),
            (deploy, "statefulsets", false),
            (deploy, "*", true),
            (pvc, "pvc", true),
            (pvc, "persistentvolumeclaims.core", true),
            (pvc, "persistentvolumeclaims.apps", false),
        ];
        for (rt, entry, expected) in cases {
            assert_eq!(rt.matches(entry), expected, "{} vs {entry}", rt.qualified());
        }
    }

    #[test]
    fn registry_learns_crds() {
        let mut reg = Registry::builtin();
        let crd = serde_json::json!({"spec": {"group": "shop.example.com", "scope": "Namespaced",
            "names": {"kind": "Coupon", "plural": "coupons", "singular": "coupon", "shortNames": ["cpn"]},
            "versions": [{"name": "v1beta1", "storage": false}, {"name": "v1", "storage": true}]}});
        reg.add_crd(&crd).unwrap();
        let rt = reg.lookup("shop.example.com/v1beta1", "Coupon").unwrap();
        assert_eq!((rt.version.as_str(), rt.namespaced), ("v1", true));
        assert!(rt.matches("cpn") && rt.matches("coupons.shop.example.com"));
    }
}
