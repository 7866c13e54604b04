//! Cleaning: a deny-list of cluster-specific fields, plus per-kind rules. Anything not named
//! here is kept — new API fields and custom resources pass through untouched.

use std::collections::BTreeSet;

use serde_json::Value;

use super::policy::Policy;
use super::resource::ResourceType;
use super::value::{self, get, get_mut, remove};

/// Server-managed metadata, never meaningful on another cluster.
const METADATA_FIELDS: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "selfLink",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
    // A dangling owner UID on DR makes its garbage collector delete the object.
    "ownerReferences",
    // The DR cluster may lack the controller that would remove them: deletes would hang.
    "finalizers",
];

/// Annotations written by controllers or tools, or bookkeeping of the source's GitOps.
const ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "control-plane.alpha.kubernetes.io/leader",
    "kubernetes.io/service-account.uid",
    "endpoints.kubernetes.io/last-change-trigger-time",
    "argocd.argoproj.io/tracking-id",
    "argocd.argoproj.io/installation-id",
];

/// Prefixes of annotations and labels that belong to the source's tooling.
const PREFIXES: &[&str] = &[
    "autoscaling.alpha.kubernetes.io/",
    "kustomize.toolkit.fluxcd.io/",
    "applyset.kubernetes.io/",
];

/// Labels the Job controller adds; they embed the source Job's UID.
const JOB_LABELS: &[&str] = &[
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

/// Cleans `obj` in place.
pub fn clean(obj: &mut Value, rt: &ResourceType, policy: &Policy) {
    // Read what later rules need before metadata is stripped.
    if rt.group.is_empty() && rt.kind == "Service" {
        clean_service(obj, policy.preserve_node_ports);
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = get_mut(obj, &["metadata"]) {
        clean_metadata(meta);
    }
    value::for_each_template_metadata(obj, |m| {
        remove(m, &["annotations", "kubectl.kubernetes.io/restartedAt"]);
        value::drop_empty_metadata_maps(m);
    });
    drop_null_creation_timestamps(obj);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "PersistentVolumeClaim") => clean_pvc(obj, policy),
        ("", "ServiceAccount") => clean_service_account(obj),
        ("", "Pod") => value::for_each_pod_spec(obj, clean_pod_spec),
        ("", "Namespace") => {
            remove(obj, &["spec", "finalizers"]);
            drop_empty(obj, "spec");
            // The apiserver sets it from the name, which may be remapped.
            remove(obj, &["metadata", "labels", "kubernetes.io/metadata.name"]);
        }
        ("batch", "Job") => clean_job(obj),
        ("apps", "StatefulSet") => {
            if let Some(Value::Array(templates)) = get_mut(obj, &["spec", "volumeClaimTemplates"]) {
                for t in templates {
                    if let Some(o) = t.as_object_mut() {
                        o.remove("status");
                    }
                    if let Some(m) = get_mut(t, &["metadata"]) {
                        clean_metadata(m);
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(meta) = get_mut(obj, &["metadata"]) {
        value::drop_empty_metadata_maps(meta);
    }
}

fn clean_metadata(meta: &mut Value) {
    let Some(m) = meta.as_object_mut() else {
        return;
    };
    for f in METADATA_FIELDS {
        m.remove(*f);
    }
    if let Some(Value::Object(a)) = m.get_mut("annotations") {
        a.retain(|k, _| {
            !ANNOTATIONS.contains(&k.as_str()) && !PREFIXES.iter().any(|p| k.starts_with(p))
        });
    }
    if let Some(Value::Object(l)) = m.get_mut("labels") {
        l.retain(|k, _| !PREFIXES.iter().any(|p| k.starts_with(p)));
    }
    value::drop_empty_metadata_maps(meta);
}

/// `creationTimestamp: null` appears in every embedded template; it is noise.
fn drop_null_creation_timestamps(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("creationTimestamp").is_some_and(Value::is_null) {
                m.remove("creationTimestamp");
            }
            m.values_mut().for_each(drop_null_creation_timestamps);
            // Template metadata that held only the null timestamp.
            if m.get("metadata")
                .and_then(Value::as_object)
                .is_some_and(|o| o.is_empty())
            {
                m.remove("metadata");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(drop_null_creation_timestamps),
        _ => {}
    }
}

fn drop_empty(obj: &mut Value, key: &str) {
    if let Some(o) = obj.as_object_mut()
        && o.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| m.is_empty())
    {
        o.remove(key);
    }
}

/// Service ports (port, protocol) whose nodePort a client set explicitly, from
/// `last-applied-configuration` and from `managedFields` (server-side apply and edits).
fn explicit_node_ports(svc: &Value) -> (BTreeSet<(i64, String)>, bool) {
    let mut ports = BTreeSet::new();
    let mut health = false;
    let last_applied = value::str_at(
        svc,
        &[
            "metadata",
            "annotations",
            "kubectl.kubernetes.io/last-applied-configuration",
        ],
    )
    .and_then(|s| serde_json::from_str::<Value>(s).ok());
    if let Some(la) = last_applied {
        for p in get(&la, &["spec", "ports"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort").is_some() {
                ports.insert(port_key(p));
            }
        }
        health |= get(&la, &["spec", "healthCheckNodePort"]).is_some();
    }
    for entry in get(svc, &["metadata", "managedFields"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(spec) = get(entry, &["fieldsV1", "f:spec"]) else {
            continue;
        };
        health |= spec.get("f:healthCheckNodePort").is_some();
        for (key, fields) in spec
            .get("f:ports")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some(k) = key.strip_prefix("k:") else {
                continue;
            };
            if fields.get("f:nodePort").is_some()
                && let Ok(p) = serde_json::from_str::<Value>(k)
            {
                ports.insert(port_key(&p));
            }
        }
    }
    (ports, health)
}

fn port_key(p: &Value) -> (i64, String) {
    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
    let proto = p
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
        .to_string();
    (port, proto)
}

fn clean_service(svc: &mut Value, preserve_node_ports: bool) {
    let (explicit, explicit_health) = explicit_node_ports(svc);
    let Some(spec) = get_mut(svc, &["spec"]).and_then(Value::as_object_mut) else {
        return;
    };
    // Headless Services keep `clusterIP: None`; allocated IPs are per cluster.
    if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    if !preserve_node_ports {
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if !explicit.contains(&port_key(p))
                && let Some(o) = p.as_object_mut()
            {
                o.remove("nodePort");
            }
        }
        if !explicit_health {
            spec.remove("healthCheckNodePort");
        }
    }
    // Source addresses do not exist on the DR side.
    spec.remove("loadBalancerIP");
    spec.remove("externalIPs");
    // Defaults the DR apiserver fills in again; keeping them would pin the source's IP family.
    let defaults = [
        ("ipFamilies", serde_json::json!(["IPv4"])),
        ("ipFamilyPolicy", serde_json::json!("SingleStack")),
        ("internalTrafficPolicy", serde_json::json!("Cluster")),
    ];
    for (k, v) in defaults {
        if spec.get(k) == Some(&v) {
            spec.remove(k);
        }
    }
}

fn clean_pvc(pvc: &mut Value, policy: &Policy) {
    let keep_binding = policy.pvc.sync_persistent_volumes;
    let mut drop_annotations = vec![
        "volume.kubernetes.io/selected-node",
        "volume.kubernetes.io/storage-provisioner",
        "volume.beta.kubernetes.io/storage-provisioner",
    ];
    if !keep_binding {
        drop_annotations.extend([
            "pv.kubernetes.io/bind-completed",
            "pv.kubernetes.io/bound-by-controller",
        ]);
        remove(pvc, &["spec", "volumeName"]);
    }
    for a in drop_annotations {
        remove(pvc, &["metadata", "annotations", a]);
    }
    if !policy.pvc.preserve_volume_attributes {
        // Snapshots and source PVCs named here exist only on the source cluster.
        remove(pvc, &["spec", "dataSource"]);
        remove(pvc, &["spec", "dataSourceRef"]);
        if !keep_binding {
            remove(pvc, &["spec", "selector"]);
        }
    }
}

fn clean_service_account(sa: &mut Value) {
    let name = value::str_at(sa, &["metadata", "name"])
        .unwrap_or("")
        .to_string();
    let prefix = format!("{name}-token-");
    if let Some(Value::Array(secrets)) = get_mut(sa, &["secrets"]) {
        secrets.retain(|s| {
            !s.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with(&prefix))
        });
        if secrets.is_empty() {
            remove(sa, &["secrets"]);
        }
    }
}

fn clean_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    s.remove("nodeName");
    // Set by admission from priorityClassName, which is kept.
    s.remove("priority");
    // The projected token volume the ServiceAccount admission injected.
    let injected = |n: &str| n.starts_with("kube-api-access-");
    if let Some(Value::Array(vols)) = s.get_mut("volumes") {
        vols.retain(|v| !v.get("name").and_then(Value::as_str).is_some_and(injected));
    }
    for c in ["containers", "initContainers"] {
        for container in s
            .get_mut(c)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(Value::Array(mounts)) = container.get_mut("volumeMounts") {
                mounts.retain(|m| !m.get("name").and_then(Value::as_str).is_some_and(injected));
            }
        }
    }
}

fn clean_job(job: &mut Value) {
    // The selector and these labels embed the source Job's UID; the DR apiserver makes new ones.
    remove(job, &["spec", "selector"]);
    for path in [
        &["spec", "template", "metadata", "labels"][..],
        &["metadata", "labels"][..],
    ] {
        if let Some(Value::Object(labels)) = get_mut(job, path) {
            labels.retain(|k, _| !JOB_LABELS.contains(&k.as_str()));
        }
    }
    if let Some(m) = get_mut(job, &["spec", "template", "metadata"]) {
        value::drop_empty_metadata_maps(m);
    }
}
