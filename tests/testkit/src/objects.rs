//! Loading objects into a test cluster, and generated namespaces of mixed objects for round
//! trips and benchmarks.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::{StreamExt, stream};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client};
use serde_json::{Value, json};

/// Waits (30 s at most) until the CRDs `names` — every CRD when empty — are served
/// (`Established`). Polls the API: `kubectl wait --for=condition=Established` fails outright
/// on a CRD whose status has no conditions yet, which happens right after it is created.
pub async fn wait_established(client: &Client, names: &[&str]) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let crds = api.list(&Default::default()).await.unwrap().items;
        let pending: Vec<String> = crds
            .iter()
            .filter(|c| {
                names.is_empty() || names.contains(&c.metadata.name.as_deref().unwrap_or_default())
            })
            .filter(|c| {
                !c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            })
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        let missing: Vec<&&str> = names
            .iter()
            .filter(|n| !crds.iter().any(|c| c.metadata.name.as_deref() == Some(**n)))
            .collect();
        if pending.is_empty() && missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRDs not Established within 30 s: {pending:?}, missing {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Applies arbitrary objects with server-side apply, resolving each kind once.
pub struct Applier {
    client: Client,
    manager: String,
    kinds: Mutex<HashMap<(String, String), (ApiResource, Scope)>>,
}

impl Applier {
    /// An applier using field manager `manager`.
    pub fn new(client: Client, manager: &str) -> Self {
        Applier {
            client,
            manager: manager.into(),
            kinds: Mutex::default(),
        }
    }

    /// The API for `obj`'s kind and namespace.
    pub async fn api_for(&self, obj: &Value) -> Api<DynamicObject> {
        let api_version = obj["apiVersion"].as_str().expect("apiVersion").to_string();
        let kind = obj["kind"].as_str().expect("kind").to_string();
        let key = (api_version.clone(), kind.clone());
        let cached = self.kinds.lock().unwrap().get(&key).cloned();
        let (ar, scope) = match cached {
            Some(v) => v,
            None => {
                let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
                let gvk = GroupVersionKind::gvk(group, version, &kind);
                let (ar, caps) = pinned_kind(&self.client, &gvk)
                    .await
                    .unwrap_or_else(|e| panic!("discovery of {gvk:?}: {e}"));
                self.kinds
                    .lock()
                    .unwrap()
                    .insert(key, (ar.clone(), caps.scope.clone()));
                (ar, caps.scope)
            }
        };
        match (obj["metadata"]["namespace"].as_str(), scope) {
            (Some(ns), Scope::Namespaced) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Applies one object (conflicts forced) and returns what the server stored.
    pub async fn apply(&self, obj: &Value) -> Value {
        let name = obj["metadata"]["name"].as_str().expect("metadata.name");
        let applied = self
            .api_for(obj)
            .await
            .patch(
                name,
                &PatchParams::apply(&self.manager).force(),
                &Patch::Apply(obj),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", obj["kind"]));
        serde_json::to_value(applied).expect("object serializes")
    }

    /// Applies many objects, `concurrency` at a time.
    pub async fn apply_all(&self, objects: &[Value], concurrency: usize) {
        stream::iter(objects)
            .for_each_concurrent(concurrency, |o| async move {
                self.apply(o).await;
            })
            .await;
    }
}

/// The resource types [`mixed_namespace`] creates, as `kubectl get` arguments.
pub const MIXED_TYPES: &str = "configmaps,deployments.apps,services,serviceaccounts,roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,cronjobs.batch,persistentvolumeclaims,ingresses.networking.k8s.io";

/// A Namespace `ns` and `n` objects of nine common kinds, deterministic in content.
pub fn mixed_namespace(ns: &str, n: usize) -> Vec<Value> {
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"generated": "yes"}}}),
    ];
    for i in 0..n {
        let name = format!("obj-{i:05}");
        let labels = json!({"app": format!("app-{}", i % 7), "index": i.to_string()});
        out.push(match i % 9 {
            0 => json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "labels": labels},
                        "data": {"config.yaml": format!("replicas: {i}\nname: {name}\n"), "flag": "yes", "number": "0755"}}),
            1 => json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
                        "spec": {"replicas": i % 5, "selector": {"matchLabels": {"app": name}},
                                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": format!("registry.example.com/app:{i}"), "env": [{"name": "I", "value": i.to_string()}]}]}}}}),
            2 => json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
                        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            3 => json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "labels": labels}}),
            4 => json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": ns},
                        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": [name]}]}),
            5 => json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}),
            6 => json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": ns},
                        "spec": {"schedule": format!("{} * * * *", i % 60), "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
            7 => json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": format!("{}Gi", 1 + i % 10)}}}}),
            _ => json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": ns},
                        "spec": {"rules": [{"host": format!("{name}.example.com"), "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}}),
        });
    }
    out
}
