//! The PVC agent in a source cluster (a RemoteCluster with `pvcSync.enabled`): a DaemonSet
//! running `dr-syncer agent bastion` on port 2222 with the cluster's host key, the one-off
//! client keys of the running operations (Secret `dr-syncer-agent-clients`, one data key per
//! operation, each with an `expiry-time` at the operation's deadline) and the per-operation
//! allow-list (ConfigMap `dr-syncer-agent-allow`, one key per operation). Both lists are re-read by the bastion on every login and forwarding request,
//! so operations and rotations never restart it; only a new host key rolls the DaemonSet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::keys::KeyRing;
use crate::api::{AgentStatus, PvcSyncSpec, RemoteCluster};

/// Name of the agent's DaemonSet, ServiceAccount and label value.
pub const NAME: &str = "dr-syncer-agent";
/// Secret with the agent's host key (in the source cluster).
pub const HOST_SECRET: &str = "dr-syncer-agent-host";
/// Secret with the client keys, one data key per running operation.
pub const CLIENTS_SECRET: &str = "dr-syncer-agent-clients";
/// ConfigMap with the forwarding allow-list, one data key per operation.
pub const ALLOW_CONFIGMAP: &str = "dr-syncer-agent-allow";
/// Label naming the RemoteCluster an agent belongs to.
pub const CLUSTER_LABEL: &str = "dr-syncer.io/remote-cluster";

/// The controller-cluster Secret holding a RemoteCluster's agent host-key ring.
pub fn host_ring_secret(rc: &str) -> String {
    format!("dr-syncer-agent-{rc}")
}

/// Labels of the agent pods.
pub fn pod_labels(rc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), NAME.into()),
        ("app.kubernetes.io/managed-by".into(), "dr-syncer".into()),
        (CLUSTER_LABEL.into(), rc.chars().take(63).collect()),
    ])
}

/// The agent DaemonSet. `host_key_fingerprint` goes into a pod annotation so that a new
/// host key rolls the pods (the bastion reads its host key once, at start).
pub fn daemonset(
    rc: &str,
    spec: &PvcSyncSpec,
    image: &str,
    host_key_fingerprint: &str,
) -> DaemonSet {
    // The bastion only forwards connections; it never touches volumes, so it runs as the
    // non-root user without capabilities whatever `runAsRoot` says.
    let user = super::objects::USER;
    let mut container = json!({
        "name": "bastion", "image": image,
        "args": ["agent", "bastion",
                 "--listen", format!("0.0.0.0:{}", spec.port),
                 "--host-key", "/etc/dr-syncer/host/host_key",
                 "--authorized-keys", "/etc/dr-syncer/clients",
                 "--allow-from", "/etc/dr-syncer/allow"],
        "ports": [{"name": "ssh", "containerPort": spec.port}],
        "readinessProbe": {"tcpSocket": {"port": spec.port}, "periodSeconds": 10},
        "livenessProbe": {"tcpSocket": {"port": spec.port}, "periodSeconds": 30, "initialDelaySeconds": 10},
        "securityContext": {"allowPrivilegeEscalation": false, "privileged": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "host", "mountPath": "/etc/dr-syncer/host", "readOnly": true},
            {"name": "clients", "mountPath": "/etc/dr-syncer/clients", "readOnly": true},
            {"name": "allow", "mountPath": "/etc/dr-syncer/allow", "readOnly": true},
        ],
    });
    if let Some(r) = &spec.resources {
        container["resources"] = serde_json::to_value(r).expect("resources serialize");
    }
    if let Some(p) = spec.image.as_ref().and_then(|i| i.pull_policy) {
        container["imagePullPolicy"] = serde_json::to_value(p).expect("enum serializes");
    }
    let mut pod_spec = json!({
        "serviceAccountName": NAME,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "hostNetwork": spec.host_network,
        "dnsPolicy": if spec.host_network { "ClusterFirstWithHostNet" } else { "ClusterFirst" },
        "securityContext": {"runAsNonRoot": true, "runAsUser": user, "runAsGroup": user,
                            "fsGroup": user, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "host", "secret": {"secretName": HOST_SECRET, "defaultMode": 0o440}},
            {"name": "clients", "secret": {"secretName": CLIENTS_SECRET, "defaultMode": 0o444}},
            {"name": "allow", "configMap": {"name": ALLOW_CONFIGMAP}},
        ],
    });
    if !spec.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(spec.node_selector);
    }
    if !spec.tolerations.is_empty() {
        pod_spec["tolerations"] = serde_json::to_value(&spec.tolerations).expect("serializes");
    }
    if let Some(p) = &spec.priority_class_name {
        pod_spec["priorityClassName"] = json!(p);
    }
    let labels = pod_labels(rc);
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME, CLUSTER_LABEL: labels[CLUSTER_LABEL]}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels,
                             "annotations": {"dr-syncer.io/host-key": host_key_fingerprint}},
                "spec": pod_spec,
            },
        },
    }))
    .expect("valid DaemonSet")
}

/// The image of the agent and the operation pods: `pvcSync.image` or the controller's own.
pub fn image(spec: &PvcSyncSpec, default: &str) -> String {
    match &spec.image {
        Some(i) => match &i.tag {
            Some(t) if t.starts_with("sha256:") => format!("{}@{t}", i.repository),
            Some(t) => format!("{}:{t}", i.repository),
            None => i.repository.clone(),
        },
        None => default.to_string(),
    }
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &K, manager: &str) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
}

/// Creates `obj` unless it exists (lists the controller fills entry by entry are never
/// replaced wholesale).
pub async fn create_missing<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deploys or updates the agent in the source cluster and reports its state.
pub async fn deploy(
    source: &Client,
    rc: &RemoteCluster,
    spec: &PvcSyncSpec,
    image: &str,
    host: &KeyRing,
    manager: &str,
) -> Result<AgentStatus, kube::Error> {
    let ns = &spec.namespace;
    let rc_name = rc.name_any();
    let managed = json!({"app.kubernetes.io/managed-by": "dr-syncer"});
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": managed}}))
    .expect("valid Namespace");
    apply(&Api::all(source.clone()), ns, &namespace, manager).await?;
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": ns, "labels": managed},
        "automountServiceAccountToken": false}))
    .expect("valid ServiceAccount");
    apply(&Api::namespaced(source.clone(), ns), NAME, &sa, manager).await?;
    let host_secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": HOST_SECRET, "namespace": ns, "labels": managed},
        "type": "Opaque", "stringData": {"host_key": host.private}}))
    .expect("valid Secret");
    let secrets: Api<Secret> = Api::namespaced(source.clone(), ns);
    apply(&secrets, HOST_SECRET, &host_secret, manager).await?;
    let clients: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CLIENTS_SECRET, "namespace": ns, "labels": managed}, "type": "Opaque"}))
    .expect("valid Secret");
    create_missing(&secrets, &clients).await?;
    let allow: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ALLOW_CONFIGMAP, "namespace": ns, "labels": managed}}))
    .expect("valid ConfigMap");
    create_missing(&Api::namespaced(source.clone(), ns), &allow).await?;
    let ds = daemonset(&rc_name, spec, image, &host.fingerprint());
    let dss: Api<DaemonSet> = Api::namespaced(source.clone(), ns);
    apply(&dss, NAME, &ds, manager).await?;
    let live = dss.get(NAME).await?;
    let st = live.status.unwrap_or_default();
    let now = jiff::Timestamp::now();
    Ok(AgentStatus {
        desired: st.desired_number_scheduled,
        ready: st.number_ready,
        host_key_fingerprint: Some(host.fingerprint()),
        previous_host_key_fingerprint: host
            .live_previous(now)
            .map(|(p, _)| super::keys::fingerprint_of(p)),
        previous_host_key_expires: host
            .live_previous(now)
            .map(|(_, t)| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(*t)),
        host_key_rotated_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            host.rotated_at,
        )),
    })
}

/// Sets (or with `None` removes) one entry of a map-shaped list object (the clients
/// Secret or the allow ConfigMap) with a merge patch: entries of other mappings and
/// operations are untouched, so concurrent writers never conflict.
pub async fn set_entry(
    source: &Client,
    namespace: &str,
    secret: bool,
    key: &str,
    value: Option<&str>,
) -> Result<(), kube::Error> {
    let params = PatchParams::default();
    if secret {
        let v: Value = value
            .map(|v| {
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    v
                ))
            })
            .unwrap_or(Value::Null);
        Api::<Secret>::namespaced(source.clone(), namespace)
            .patch(
                CLIENTS_SECRET,
                &params,
                &Patch::Merge(json!({"data": {key: v}})),
            )
            .await
            .map(|_| ())
    } else {
        let v = value.map(|v| json!(v)).unwrap_or(Value::Null);
        Api::<ConfigMap>::namespaced(source.clone(), namespace)
            .patch(
                ALLOW_CONFIGMAP,
                &params,
                &Patch::Merge(json!({"data": {key: v}})),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bastion never touches volumes: uid 65532 without capabilities, whatever
    /// `runAsRoot` (which only concerns the volume server and the Job) says.
    #[test]
    fn daemonset_runs_as_non_root_whatever_run_as_root() {
        for (name, setting) in [
            ("default", json!({"enabled": true})),
            ("root", json!({"enabled": true, "runAsRoot": true})),
            ("non_root", json!({"enabled": true, "runAsRoot": false})),
        ] {
            let spec: PvcSyncSpec = serde_json::from_value(setting).unwrap();
            let ds = serde_json::to_value(daemonset("prod", &spec, "img", "SHA256:x")).unwrap();
            let pod = &ds["spec"]["template"]["spec"];
            assert_eq!(
                pod["securityContext"],
                json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                       "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}),
                "{name}"
            );
            assert_eq!(
                pod["containers"][0]["securityContext"]["capabilities"],
                json!({"drop": ["ALL"]}),
                "{name}"
            );
        }
    }

    /// `runAsRoot` defaults to on (keeping ownership needs uid 0 in a pod); `hostUsers`
    /// stays unset unless given.
    #[test]
    fn pvc_sync_spec_defaults() {
        let spec: PvcSyncSpec = serde_json::from_value(json!({"enabled": true})).unwrap();
        assert!(spec.run_as_root);
        assert_eq!(spec.host_users, None);
        let spec: PvcSyncSpec =
            serde_json::from_value(json!({"runAsRoot": false, "hostUsers": false})).unwrap();
        assert!(!spec.run_as_root);
        assert_eq!(spec.host_users, Some(false));
    }
}
