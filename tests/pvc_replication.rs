//! PVC data replication driven by the controller against a real apiserver. There is no
//! kubelet, scheduler, snapshot or Job controller: the test plays them, setting snapshot,
//! pod and Job status the way they would, and checks every object the controller creates.
//! The end-to-end test runs the real agent, bastion and `pvc-sync` binaries with the keys,
//! pins and allow-lists the controller generated, written to files as a kubelet would mount
//! them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, eventually, free_addr, install_crds, start_controller_with};
use dr_syncer::api::NamespaceMapping;
use dr_syncer::datasync::keys::KeyRing;
use dr_syncer_testkit::envtest::{self, ControlPlane};
use dr_syncer_testkit::objects::Applier;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, PodSpec, Secret,
};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const TEMP: &str = "dr-syncer.io/temporary=true";

fn snapshot_ar() -> ApiResource {
    dr_syncer::datasync::run::snapshot_resource()
}

/// Installs the CSI VolumeSnapshot and VolumeGroupSnapshot CRDs (from external-snapshotter's
/// module) once.
async fn snapshot_crds(plane: &ControlPlane) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let dir = dr_syncer_testkit::tools::helm_dir().join("crds/snapshot");
        let out = plane
            .kubectl()
            .unwrap()
            .args(["apply", "--server-side", "-f"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let client = plane.client().await.unwrap();
        dr_syncer_testkit::objects::wait_established(
            &client,
            &[
                "volumesnapshots.snapshot.storage.k8s.io",
                "volumegroupsnapshots.groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io",
            ],
        )
        .await;
    })
    .await;
}

fn start_controller(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
    http: &str,
    extra: &[&str],
) -> Running {
    let cache = tempfile::tempdir().unwrap().keep();
    let mut args = vec!["--image", "registry.test/dr-syncer:e2e"];
    args.extend_from_slice(extra);
    start_controller_with(&plane.kubeconfig_path(), ns, &cache, name, http, &args)
}

async fn labeled<K>(client: &Client, ns: &str, selector: &str) -> Vec<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

/// Waits for the one object of kind `K` labelled `selector` in `ns`.
async fn one<K>(client: &Client, ns: &str, selector: &str, what: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    eventually(what, Duration::from_secs(60), || async {
        labeled::<K>(client, ns, selector).await.into_iter().next()
    })
    .await
}

/// Plays the kubelet: the pod runs with `ip` and is Ready.
async fn run_pod(client: &Client, ns: &str, name: &str, ip: &str) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
}

/// Plays the Job controller and kubelet: a pod of the Job ended with `message` as its
/// termination message, and the Job counts it.
async fn finish_job(client: &Client, job: &Job, ok: bool, message: &str) {
    let ns = job.namespace().unwrap();
    let name = job.name_any();
    let labels = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": format!("{name}-pod"), "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "dr-syncer", "image": "x"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(&format!("{name}-pod"), &PatchParams::default(), &Patch::Merge(json!({"status": {
        "phase": if ok { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": "dr-syncer", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": if ok { 0 } else { 3 }, "message": message}}}]}})))
        .await
        .unwrap();
    let status = if ok {
        json!({"startTime": "2026-01-01T00:00:00Z", "succeeded": 1})
    } else {
        json!({"startTime": "2026-01-01T00:00:00Z", "failed": 1})
    };
    Api::<Job>::namespaced(client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
}

async fn trigger(client: &Client, ns: &str, mapping: &str, key: &str, value: &str) {
    Api::<NamespaceMapping>::namespaced(client.clone(), ns)
        .patch(
            mapping,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

async fn volume_status(
    client: &Client,
    ns: &str,
    mapping: &str,
    op: &str,
) -> Option<dr_syncer::api::PvcVolumeStatus> {
    let nm = Api::<NamespaceMapping>::namespaced(client.clone(), ns)
        .get(mapping)
        .await
        .ok()?;
    nm.status?
        .pvc_data?
        .volumes
        .into_iter()
        .find(|v| v.operation.as_deref() == Some(op))
}

/// Waits until the sync `op` of `mapping` has a final result (not `Running`).
async fn finished(
    client: &Client,
    ns: &str,
    mapping: &str,
    op: &str,
) -> dr_syncer::api::PvcVolumeStatus {
    eventually("sync result", Duration::from_secs(60), || async {
        volume_status(client, ns, mapping, op).await.filter(|v| {
            v.result
                .is_some_and(|r| r != dr_syncer::api::PvcSyncResult::Running)
        })
    })
    .await
}

/// Asks for a client-key rotation and waits until the mapping's status shows it.
async fn rotate(
    client: &Client,
    ns: &str,
    mapping: &str,
    token: &str,
) -> dr_syncer::api::PvcDataStatus {
    trigger(client, ns, mapping, "dr-syncer.io/rotate-keys", token).await;
    eventually("client key rotated", Duration::from_secs(60), || async {
        let nm = Api::<NamespaceMapping>::namespaced(client.clone(), ns)
            .get(mapping)
            .await
            .ok()?;
        nm.status?
            .pvc_data
            .filter(|d| d.last_rotate_keys.as_deref() == Some(token))
    })
    .await
}

async fn ring(client: &Client, ns: &str, secret: &str) -> KeyRing {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret)
        .await
        .unwrap();
    KeyRing::from_secret(&s).unwrap().unwrap()
}

fn secret_text(s: &Secret, key: &str) -> String {
    let data = s.data.clone().unwrap_or_default();
    if let Some(v) = data.get(key) {
        return String::from_utf8(v.0.clone()).unwrap();
    }
    s.string_data
        .clone()
        .unwrap_or_default()
        .get(key)
        .cloned()
        .unwrap_or_default()
}

/// Names of the objects of kind `K` labelled `selector` that are not being deleted (the
/// controller asked for deletion; a kubelet or the PVC-protection controller, absent here,
/// would finish it).
async fn live<K>(client: &Client, ns: &str, selector: &str) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    labeled::<K>(client, ns, selector)
        .await
        .into_iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .map(|o| format!("{}/{ns}/{}", K::kind(&()), o.name_any()))
        .collect()
}

/// The agent's allow-list entries, by operation key.
async fn allow_entries(client: &Client, agent_ns: &str) -> BTreeMap<String, String> {
    Api::<ConfigMap>::namespaced(client.clone(), agent_ns)
        .get("dr-syncer-agent-allow")
        .await
        .unwrap()
        .data
        .unwrap_or_default()
}

/// The agent's client list (public key lines), by data key.
async fn client_entries(client: &Client, agent_ns: &str) -> BTreeMap<String, String> {
    let s: Secret = Api::namespaced(client.clone(), agent_ns)
        .get("dr-syncer-agent-clients")
        .await
        .unwrap();
    s.data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .map(|k| {
            let v = secret_text(&s, &k);
            (k, v)
        })
        .collect()
}

/// The public key line of an OpenSSH private key, without comment.
fn public_of(private: &str) -> String {
    russh::keys::PrivateKey::from_openssh(private.trim())
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The data-sync server pod in `ns` that is not being deleted, once there is one.
async fn server_pod(client: &Client, ns: &str, what: &str) -> Pod {
    eventually(what, Duration::from_secs(60), || async {
        labeled::<Pod>(client, ns, TEMP)
            .await
            .into_iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
    })
    .await
}

/// Everything temporary is gone on both sides, and so are the allow-list entries and locks.
async fn assert_clean(client: &Client, namespaces: &[&str], agent_ns: &str, ctl: &str) {
    eventually("everything cleaned up", Duration::from_secs(60), || async {
        let mut left = Vec::new();
        for ns in namespaces {
            let snaps: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), ns, &snapshot_ar());
            left.extend(live::<Pod>(client, ns, TEMP).await);
            left.extend(live::<Secret>(client, ns, TEMP).await);
            left.extend(live::<PersistentVolumeClaim>(client, ns, TEMP).await);
            left.extend(live::<Job>(client, ns, TEMP).await);
            left.extend(
                snaps
                    .list(&ListParams::default().labels(TEMP))
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .filter(|o| o.metadata.deletion_timestamp.is_none())
                    .map(|o| format!("VolumeSnapshot/{ns}/{}", o.name_any())),
            );
        }
        left.extend(
            allow_entries(client, agent_ns)
                .await
                .into_keys()
                .map(|k| format!("allow entry {k}")),
        );
        left.extend(
            client_entries(client, agent_ns)
                .await
                .into_keys()
                .map(|k| format!("client key entry {k}")),
        );
        left.extend(live::<Lease>(client, ctl, "dr-syncer.io/mapping").await);
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
}

struct Env {
    client: Client,
    ctl: String,
    agent_ns: String,
}

/// The shared objects: kubeconfig Secret, source RemoteCluster with the agent, and a
/// ClusterMapping with the key settings.
async fn base(plane: &ControlPlane, ctl: &str, port: u16, grace: &str) -> Env {
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    snapshot_crds(plane).await;
    let applier = Applier::new(client.clone(), "test");
    let agent_ns = format!("{ctl}-agent");
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ctl}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prod-kubeconfig", "namespace": ctl},
               "stringData": {"kubeconfig": serde_saphyr::to_string(&plane.kubeconfig()).unwrap()}}),
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "prod", "namespace": ctl},
               "spec": {"kubeconfigSecretRef": {"name": "prod-kubeconfig"}, "healthCheckInterval": "1h",
                        "pvcSync": {"enabled": true, "namespace": agent_ns, "port": port}}}),
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "ClusterMapping", "metadata": {"name": "cm", "namespace": ctl},
               "spec": {"sourceCluster": "prod", "sshKeys": {"rotationInterval": "720h", "gracePeriod": grace}}}),
    ] {
        applier.apply(&o).await;
    }
    Env {
        client,
        ctl: ctl.into(),
        agent_ns,
    }
}

/// A source namespace with a bound PVC `data` mounted by a running app pod on `node-b`.
async fn source_namespace(env: &Env, ns: &str) {
    let applier = Applier::new(env.client.clone(), "test");
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": ns},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeName": format!("pv-{ns}"),
                        "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "scratch", "namespace": ns,
               "labels": {"dr-syncer.io/ignore": "true"}},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": ns},
               "spec": {"nodeName": "node-b", "containers": [{"name": "app", "image": "app"}],
                        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}),
    ] {
        applier.apply(&o).await;
    }
    for pvc in ["data", "scratch"] {
        Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), ns)
            .patch_status(
                pvc,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Bound"}})),
            )
            .await
            .unwrap();
    }
    run_pod(&env.client, ns, "app", "10.9.9.9").await;
}

async fn mapping(env: &Env, name: &str, source: &str, data: Value) {
    let git = json!({"git": {"url": "ssh://git@127.0.0.1:9/unused.git"}});
    mapping_to(env, name, source, git, data).await;
}

/// Like [`mapping`], with `destination` as the mapping's `spec.destination`.
async fn mapping_to(env: &Env, name: &str, source: &str, destination: Value, data: Value) {
    Applier::new(env.client.clone(), "test")
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": name, "namespace": env.ctl},
            "spec": {"replicationMode": "Manual", "sourceNamespace": source, "destinationNamespace": format!("{source}-dr"),
                     "clusterMappingRef": {"name": "cm"},
                     "destination": destination,
                     "pvcConfig": {"syncData": true, "storageClassMappings": [{"from": "fast", "to": "dr-fast"}],
                                   "dataSyncConfig": data}}}))
        .await;
}

/// Like [`mapping`], with the destination StorageClass `class` for the source's `fast`.
async fn mapping_with_class(env: &Env, name: &str, source: &str, class: &str, data: Value) {
    Applier::new(env.client.clone(), "test")
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": name, "namespace": env.ctl},
            "spec": {"replicationMode": "Manual", "sourceNamespace": source, "destinationNamespace": format!("{source}-dr"),
                     "clusterMappingRef": {"name": "cm"},
                     "destination": {"git": {"url": "ssh://git@127.0.0.1:9/unused.git"}},
                     "pvcConfig": {"syncData": true, "storageClassMappings": [{"from": "fast", "to": class}],
                                   "dataSyncConfig": data}}}))
        .await;
}

/// Plays the DaemonSet controller and kubelet: one ready agent pod on `node` at `ip`.
async fn agent_pod(env: &Env, node: &str, ip: &str) {
    let ds = eventually("agent DaemonSet", Duration::from_secs(60), || async {
        Api::<DaemonSet>::namespaced(env.client.clone(), &env.agent_ns)
            .get_opt("dr-syncer-agent")
            .await
            .unwrap()
    })
    .await;
    let labels = ds.spec.template.metadata.unwrap().labels;
    let name = format!("dr-syncer-agent-{node}");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "bastion", "image": "x"}]}}))
    .unwrap();
    Api::<Pod>::namespaced(env.client.clone(), &env.agent_ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    run_pod(&env.client, &env.agent_ns, &name, ip).await;
}

fn op_of(pod: &Pod) -> String {
    pod.labels()["dr-syncer.io/operation"].clone()
}

/// What the data-sync tests share: their own controller namespace `ctl` (the objects of
/// [`base`]), a controller watching it, and two ready agent pods (`node-a` at 10.0.0.1,
/// `node-b` at 10.0.0.2, bastion port 2222). Each test has its own, so none depends on
/// another's state.
struct Fixture {
    env: Env,
    plane: &'static ControlPlane,
    /// Where the controller serves `/metrics`.
    http: String,
    /// `None` only while [`Fixture::restart`] replaces it.
    controller: Option<Running>,
}

/// A sync report as `pvc-sync` writes it to the termination log.
const REPORT: &str =
    r#"{"filesTransferred":3,"bytesLiteral":100,"bytesMatched":50,"duration":0.5}"#;

impl Fixture {
    async fn start(ctl: &str) -> Fixture {
        Self::start_with(ctl, &[]).await
    }

    /// Like [`Fixture::start`], with extra controller arguments.
    async fn start_with(ctl: &str, extra: &[&str]) -> Fixture {
        let plane = envtest::shared().await;
        let env = base(plane, ctl, 2222, "1h").await;
        let http = free_addr();
        let controller = start_controller(plane, ctl, ctl, &http, extra);
        agent_pod(&env, "node-a", "10.0.0.1").await;
        agent_pod(&env, "node-b", "10.0.0.2").await;
        Fixture {
            env,
            plane,
            http,
            controller: Some(controller),
        }
    }

    fn client(&self) -> &Client {
        &self.env.client
    }

    /// The label value (and client-list key) of mapping `name`.
    fn label(&self, name: &str) -> String {
        format!("{}.{name}", self.env.ctl)
    }

    /// Kills the controller (SIGKILL, as a crash), then starts a new one named `name`.
    fn restart(&mut self, name: &str) {
        self.controller = None;
        self.controller = Some(start_controller(
            self.plane,
            &self.env.ctl,
            name,
            &free_addr(),
            &[],
        ));
    }

    /// The source namespace `src` (see [`source_namespace`]) and a mapping `name`
    /// replicating its volumes to `<src>-dr` with `data` as `dataSyncConfig`.
    async fn replicate(&self, name: &str, src: &str, data: Value) {
        source_namespace(&self.env, src).await;
        mapping(&self.env, name, src, data).await;
    }

    /// Asks for a sync of `name` and returns its server pod in `src`, once there.
    async fn trigger_sync(&self, name: &str, src: &str, value: &str, what: &str) -> Pod {
        trigger(
            self.client(),
            &self.env.ctl,
            name,
            "dr-syncer.io/sync-data-now",
            value,
        )
        .await;
        server_pod(self.client(), src, what).await
    }

    /// Plays the kubelet for the server pod (ready at `ip`) and returns the operation's
    /// `pvc-sync` Job in `<src>-dr`.
    async fn serve(&self, src: &str, pod: &Pod, ip: &str, what: &str) -> Job {
        run_pod(self.client(), src, &pod.name_any(), ip).await;
        let sel = format!("dr-syncer.io/operation={}", op_of(pod));
        one(self.client(), &format!("{src}-dr"), &sel, what).await
    }

    /// One whole successful sync of `name`; returns its operation id.
    async fn sync_ok(&self, name: &str, src: &str, value: &str, ip: &str) -> String {
        let pod = self.trigger_sync(name, src, value, "server pod").await;
        let op = op_of(&pod);
        let job = self.serve(src, &pod, ip, "sync Job").await;
        finish_job(self.client(), &job, true, REPORT).await;
        let v = finished(self.client(), &self.env.ctl, name, &op).await;
        assert_eq!(
            v.result,
            Some(dr_syncer::api::PvcSyncResult::Succeeded),
            "{name}: {:?}",
            v.message
        );
        op
    }
}

/// The agent DaemonSet, and for each copy method (Snapshot, Clone, Direct) every object an
/// operation creates on both sides, its status while running and after, the cleanup, the
/// kept DR images and the metrics.
#[tokio::test]
async fn replication_objects_per_copy_method() {
    let fx = Fixture::start("pvcobj").await;
    let env = &fx.env;
    let client = fx.client().clone();
    // The agent: non-root DaemonSet with the bastion and its lists.
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &env.agent_ns)
        .get("dr-syncer-agent")
        .await
        .unwrap();
    let ds = serde_json::to_value(&ds).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "registry.test/dr-syncer:e2e");
    assert_eq!(
        pod["containers"][0]["args"],
        json!([
            "agent",
            "bastion",
            "--listen",
            "0.0.0.0:2222",
            "--host-key",
            "/etc/dr-syncer/host/host_key",
            "--authorized-keys",
            "/etc/dr-syncer/clients",
            "--allow-from",
            "/etc/dr-syncer/allow"
        ])
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["containers"][0]["securityContext"]["privileged"], false);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let host = ring(&client, &env.ctl, "dr-syncer-agent-prod").await;
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["dr-syncer.io/host-key"],
        host.fingerprint()
    );

    let methods = [
        (
            "snap",
            "pvcobj-snap",
            json!({"copyMethod": "Snapshot", "volumeSnapshotClassName": "csi-snap", "keepSnapshots": 2}),
            "10.1.0.1",
        ),
        (
            "clone",
            "pvcobj-clone",
            json!({"copyMethod": "Clone"}),
            "10.1.0.2",
        ),
        (
            "direct",
            "pvcobj-direct",
            json!({"copyMethod": "Direct"}),
            "10.1.0.3",
        ),
    ];
    for (name, src, data, _) in &methods {
        fx.replicate(name, src, data.clone()).await;
    }
    for (name, ..) in &methods {
        trigger(&client, &env.ctl, name, "dr-syncer.io/sync-data-now", "1").await;
    }
    // Snapshot: the VolumeSnapshot first; the snapshot controller makes it ready.
    let snaps: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "pvcobj-snap", &snapshot_ar());
    let snap = eventually("source VolumeSnapshot", Duration::from_secs(60), || async {
        snaps
            .list(&ListParams::default().labels(TEMP))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        snap.data["spec"],
        json!({"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "csi-snap"})
    );
    snaps
        .patch_status(
            &snap.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "readyToUse": true, "restoreSize": "2Gi", "creationTime": "2026-11-26T08:00:00Z"}})),
        )
        .await
        .unwrap();
    let mut ops = BTreeMap::new();
    for (name, src, _, ip) in &methods {
        let pod: Pod = one(&client, src, TEMP, "server pod").await;
        let op = op_of(&pod);
        let running = eventually("running status", Duration::from_secs(30), || async {
            volume_status(&client, &env.ctl, name, &op).await
        })
        .await;
        assert_eq!(
            running.result,
            Some(dr_syncer::api::PvcSyncResult::Running),
            "{name}"
        );
        let p = serde_json::to_value(&pod).unwrap();
        let claim = &p["spec"]["volumes"][0]["persistentVolumeClaim"];
        assert_eq!(claim["readOnly"], true, "{name}");
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["readOnly"], true,
            "{name}"
        );
        // Issue 16 §1: the default reader is uid 0 with DAC_READ_SEARCH only.
        assert_eq!(p["spec"]["securityContext"]["runAsUser"], 0, "{name}");
        assert_eq!(
            p["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}),
            "{name}"
        );
        assert!(
            p["spec"]["securityContext"].get("fsGroup").is_none(),
            "{name}: never chown a source volume"
        );
        assert_eq!(
            p["spec"]["containers"][0]["image"],
            "registry.test/dr-syncer:e2e"
        );
        assert_eq!(
            p["spec"]["volumes"][1]["secret"]["secretName"],
            format!("dr-syncer-{op}-serve")
        );
        match *name {
            "direct" => {
                assert_eq!(claim["claimName"], "data");
                assert_eq!(
                    p["spec"]["nodeName"], "node-b",
                    "Direct runs where the volume is mounted"
                );
            }
            _ => {
                assert_eq!(claim["claimName"], format!("dr-syncer-{op}-src"));
                assert!(p["spec"].get("nodeName").is_none());
                let temp = Api::<PersistentVolumeClaim>::namespaced(client.clone(), src)
                    .get(&format!("dr-syncer-{op}-src"))
                    .await
                    .unwrap();
                let ds = serde_json::to_value(temp.spec.unwrap().data_source.unwrap()).unwrap();
                let want = if *name == "snap" {
                    json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": format!("dr-syncer-{op}-snap")})
                } else {
                    json!({"kind": "PersistentVolumeClaim", "name": "data"})
                };
                assert_eq!(ds, want, "{name}");
            }
        }
        // The server's Secret authorizes exactly one key, the operation's own, until its
        // deadline: never the mapping's long-lived key.
        let client_ring = ring(&client, &env.ctl, &format!("dr-syncer-pvc-{name}")).await;
        let serve: Secret = Api::namespaced(client.clone(), src)
            .get(&format!("dr-syncer-{op}-serve"))
            .await
            .unwrap();
        let authorized = secret_text(&serve, "authorized_keys");
        assert_eq!(authorized.lines().count(), 1, "{authorized}");
        assert!(authorized.starts_with("expiry-time=\""), "{authorized}");
        assert!(
            !authorized.contains(client_ring.public.split_whitespace().nth(1).unwrap()),
            "{name}: the mapping's key is authorized at the volume server"
        );
        run_pod(&client, src, &pod.name_any(), ip).await;
        ops.insert(*name, (op, client_ring));
    }
    for (name, src, _, ip) in &methods {
        let (op, client_ring) = &ops[name];
        let dest = format!("{src}-dr");
        let job: Job = one(&client, &dest, TEMP, "sync Job").await;
        let j = serde_json::to_value(&job).unwrap();
        let args: Vec<String> =
            serde_json::from_value(j["spec"]["template"]["spec"]["containers"][0]["args"].clone())
                .unwrap();
        let bastion = if *name == "direct" {
            "10.0.0.2:2222"
        } else {
            "10.0.0.1:2222"
        };
        assert_eq!(
            &args[..5],
            [
                "pvc-sync",
                "--from",
                &format!("ssh://{ip}:2223"),
                "--jump",
                &format!("ssh://{bastion}")
            ],
            "{name}"
        );
        assert_eq!(
            j["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data"
        );
        // The default writer: uid 0 with exactly the capabilities that keep ownership, and
        // the mapping defaults for ownership and the deletion breaker.
        let pod_spec = &j["spec"]["template"]["spec"];
        assert_eq!(pod_spec["securityContext"]["runAsUser"], 0, "{name}");
        assert!(
            pod_spec["securityContext"].get("fsGroup").is_none(),
            "{name}"
        );
        assert_eq!(
            pod_spec["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]}),
            "{name}"
        );
        // A live volume (Direct) is also read a second time and compared a third.
        let tail: &[&str] = if *name == "direct" {
            &[
                "--ownership",
                "require",
                "--max-delete-percent",
                "50",
                "--recheck",
            ]
        } else {
            &["--ownership", "require", "--max-delete-percent", "50"]
        };
        assert_eq!(&args[args.len() - tail.len()..], tail, "{name}");
        // Pins: the agent's host key at the bastion, the one-off key at the server.
        let js: Secret = Api::namespaced(client.clone(), &dest)
            .get(&format!("dr-syncer-{op}-job"))
            .await
            .unwrap();
        let known = secret_text(&js, "known_hosts");
        assert!(
            known.contains(&format!(
                "[{}]:2222 {}",
                &bastion[..8],
                host.pins(jiff::Timestamp::now())[0]
            )),
            "{known}"
        );
        let serve: Secret = Api::namespaced(client.clone(), src)
            .get(&format!("dr-syncer-{op}-serve"))
            .await
            .unwrap();
        let serve_pub = russh::keys::PrivateKey::from_openssh(secret_text(&serve, "host_key"))
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap();
        assert!(
            known.contains(&format!(
                "[{ip}]:2223 {}",
                serve_pub
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            "{known}"
        );
        // Issue 14 §3: the Job Secret holds the operation's one-off key, not the mapping's
        // long-lived key; that one-off key is what the server, the bastion's client list
        // and the allow-list entry accept, each until the deadline.
        let identity = secret_text(&js, "identity");
        assert_ne!(identity.trim(), client_ring.private.trim(), "{name}");
        for s in labeled::<Secret>(&client, &dest, TEMP).await {
            for v in s.data.clone().unwrap_or_default().values() {
                assert!(
                    !String::from_utf8_lossy(&v.0).contains(client_ring.private.trim()),
                    "{dest}/{}: the mapping's private key is in a DR namespace",
                    s.name_any()
                );
            }
        }
        let authorized = secret_text(&serve, "authorized_keys");
        let one_off = public_of(&identity);
        assert!(authorized.contains(&one_off), "{authorized}");
        let key = format!("{}..{op}", fx.label(name));
        let clients = client_entries(&client, &env.agent_ns).await;
        assert_eq!(clients.get(&key), Some(&authorized), "{clients:?}");
        assert!(
            !clients.contains_key(&fx.label(name)),
            "the mapping's key is published at the agent: {clients:?}"
        );
        let fp = dr_syncer::datasync::keys::fingerprint_of(&one_off);
        let entry = allow_entries(&client, &env.agent_ns).await[&key].clone();
        assert!(
            entry.starts_with(&format!("{ip}:2223 {fp} expires=")),
            "{entry}"
        );
        // The destination PVC, shaped by the export rules.
        let dpvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &dest)
            .get("data")
            .await
            .unwrap();
        assert_eq!(
            dpvc.spec.unwrap().storage_class_name.as_deref(),
            Some("dr-fast")
        );
        finish_job(&client, &job, true, REPORT).await;
    }
    for (name, ..) in &methods {
        let (op, _) = &ops[name];
        let v = finished(&client, &env.ctl, name, op).await;
        assert_eq!(
            v.result,
            Some(dr_syncer::api::PvcSyncResult::Succeeded),
            "{name}: {:?}",
            v.message
        );
        assert_eq!(
            (v.bytes_literal, v.bytes_matched, v.files_transferred),
            (100, 50, 3),
            "{name}"
        );
        assert!(v.rpo_seconds.is_some());
        if *name == "snap" {
            assert_eq!(
                v.point_in_time.unwrap().0.to_string(),
                "2026-11-26T08:00:00Z"
            );
        }
        let nm = Api::<NamespaceMapping>::namespaced(client.clone(), &env.ctl)
            .get(name)
            .await
            .unwrap();
        assert_eq!(
            nm.status.unwrap().pvc_data.unwrap().volumes.len(),
            1,
            "the ignored PVC is not replicated"
        );
    }
    assert_clean(
        &client,
        &[
            "pvcobj-snap",
            "pvcobj-snap-dr",
            "pvcobj-clone",
            "pvcobj-clone-dr",
            "pvcobj-direct",
            "pvcobj-direct-dr",
        ],
        &env.agent_ns,
        &env.ctl,
    )
    .await;
    // keepSnapshots: the destination image is kept.
    let images: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "pvcobj-snap-dr", &snapshot_ar());
    let kept = images
        .list(&ListParams::default().labels("dr-syncer.io/image=true"))
        .await
        .unwrap()
        .items;
    assert_eq!(kept.len(), 1);
    let metrics = reqwest_metrics(&fx.http).await;
    assert!(
        metrics.contains(&format!(
            r#"dr_syncer_pvc_syncs_total{{mapping="{}/clone",result="Succeeded"}} 1"#,
            env.ctl
        )),
        "{metrics}"
    );
    // The PVC metrics the chart's alerts and dashboard read are series of this scrape
    // (the others are checked by controller_envtest's monitoring test).
    for name in common::chart_metric_names()
        .into_iter()
        .filter(|n| n.starts_with("dr_syncer_pvc_"))
    {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "{name}, used by the chart's alerts or dashboard, is not exported:\n{metrics}"
        );
    }
}

/// Locking: a second mapping of the same PVC is skipped while the first one's sync runs;
/// the lock goes with the run.
#[tokio::test]
async fn replication_locking_skips_a_second_mapping_of_a_busy_pvc() {
    let fx = Fixture::start("pvclock").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let src = "pvclock-src";
    fx.replicate("clone", src, json!({"copyMethod": "Clone"}))
        .await;
    mapping(env, "clone2", src, json!({"copyMethod": "Clone"})).await;
    let pod = fx.trigger_sync("clone", src, "1", "server pod").await;
    let op = op_of(&pod);
    let job = fx.serve(src, &pod, "10.1.0.4", "sync Job").await;
    trigger(
        &client,
        &env.ctl,
        "clone2",
        "dr-syncer.io/sync-data-now",
        "1",
    )
    .await;
    let skipped = eventually("clone2 skipped", Duration::from_secs(60), || async {
        let nm = Api::<NamespaceMapping>::namespaced(client.clone(), &env.ctl)
            .get("clone2")
            .await
            .ok()?;
        nm.status?
            .pvc_data?
            .volumes
            .into_iter()
            .find(|v| v.result != Some(dr_syncer::api::PvcSyncResult::Running))
    })
    .await;
    assert_eq!(skipped.result, Some(dr_syncer::api::PvcSyncResult::Skipped));
    assert!(
        skipped
            .message
            .unwrap()
            .contains("another sync of this PVC is running")
    );
    assert_eq!(
        labeled::<Pod>(&client, src, TEMP).await.len(),
        1,
        "never two syncs of one PVC"
    );
    // The first sync ends: its lock (a Lease) goes with its other objects.
    finish_job(&client, &job, true, REPORT).await;
    let v = finished(&client, &env.ctl, "clone", &op).await;
    assert_eq!(v.result, Some(dr_syncer::api::PvcSyncResult::Succeeded));
    assert_clean(&client, &[src, "pvclock-src-dr"], &env.agent_ns, &env.ctl).await;
}

/// Cleanup after a failure: the failed sync is recorded with its cause, the numbers of
/// the last good sync stay, and nothing temporary is left on either side.
#[tokio::test]
async fn replication_failed_sync_keeps_the_last_good_numbers_and_cleans_up() {
    let fx = Fixture::start("pvcfail").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let src = "pvcfail-src";
    fx.replicate("clone", src, json!({"copyMethod": "Clone"}))
        .await;
    fx.sync_ok("clone", src, "1", "10.1.0.2").await;
    let pod = fx
        .trigger_sync("clone", src, "2", "server pod of the second run")
        .await;
    let op = op_of(&pod);
    let job = fx.serve(src, &pod, "10.1.0.4", "second Job").await;
    finish_job(
        &client,
        &job,
        false,
        r#"{"error":"ssh: 10.1.0.4:2223: connection refused","exitCode":3}"#,
    )
    .await;
    let failed = eventually("failure recorded", Duration::from_secs(60), || async {
        volume_status(&client, &env.ctl, "clone", &op)
            .await
            .filter(|v| v.result == Some(dr_syncer::api::PvcSyncResult::Failed))
    })
    .await;
    assert!(
        failed
            .message
            .unwrap()
            .contains("connection refused (exit code 3)")
    );
    assert_eq!(
        failed.bytes_literal, 100,
        "the last good sync's numbers stay"
    );
    assert_clean(&client, &[src, "pvcfail-src-dr"], &env.agent_ns, &env.ctl).await;
}

/// Rotation on demand: a new mapping key in the controller's namespace (never published at
/// the agent: operations use one-off keys), and the agent host key, which the DaemonSet
/// rolls to.
#[tokio::test]
async fn replication_rotation_of_client_and_host_keys() {
    let fx = Fixture::start("pvcrot").await;
    let env = &fx.env;
    let client = fx.client().clone();
    fx.replicate("clone", "pvcrot-src", json!({"copyMethod": "Clone"}))
        .await;
    let host = ring(&client, &env.ctl, "dr-syncer-agent-prod").await;
    // The mapping's key, made by the task's first pass.
    let label = fx.label("clone");
    let old = eventually("client key made", Duration::from_secs(60), || async {
        let s = Api::<Secret>::namespaced(client.clone(), &env.ctl)
            .get_opt("dr-syncer-pvc-clone")
            .await
            .ok()??;
        KeyRing::from_secret(&s).ok()?
    })
    .await;
    let data = rotate(&client, &env.ctl, "clone", "r1").await;
    assert_eq!(
        data.previous_key_fingerprint.as_deref(),
        Some(old.fingerprint().as_str())
    );
    assert_ne!(
        data.client_key_fingerprint.as_deref(),
        Some(old.fingerprint().as_str())
    );
    let clients = client_entries(&client, &env.agent_ns).await;
    assert!(
        !clients.contains_key(&label),
        "the mapping's key is published at the agent: {clients:?}"
    );
    // The agent host key rotates too; the DaemonSet rolls to it. (Its pods are ready now,
    // as the DaemonSet controller reports; the ClusterMapping shows the connectivity.)
    Api::<DaemonSet>::namespaced(client.clone(), &env.agent_ns)
        .patch_status("dr-syncer-agent", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 2}})))
        .await
        .unwrap();
    Api::<dr_syncer::api::RemoteCluster>::namespaced(client.clone(), &env.ctl)
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"dr-syncer.io/rotate-keys": "h1"}}})),
        )
        .await
        .unwrap();
    eventually("host key rotated", Duration::from_secs(60), || async {
        let rc = Api::<dr_syncer::api::RemoteCluster>::namespaced(client.clone(), &env.ctl)
            .get("prod")
            .await
            .ok()?;
        let a = rc.status?.agent?;
        (a.previous_host_key_fingerprint.as_deref() == Some(host.fingerprint().as_str()))
            .then_some(())
    })
    .await;
    eventually(
        "ClusterMapping reports the agent",
        Duration::from_secs(60),
        || async {
            let cm = Api::<dr_syncer::api::ClusterMapping>::namespaced(client.clone(), &env.ctl)
                .get("cm")
                .await
                .ok()?;
            let c = cm
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "PvcAgentReady")?;
            (c.status == "True" && c.message == "source prod: 2/2 agent pods ready").then_some(())
        },
    )
    .await;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &env.agent_ns)
        .get("dr-syncer-agent")
        .await
        .unwrap();
    let fp =
        ds.spec.template.metadata.unwrap().annotations.unwrap()["dr-syncer.io/host-key"].clone();
    assert_ne!(fp, host.fingerprint());
}

/// A restart in the middle of an operation: the new process sweeps what the old one left
/// (temporary objects on both sides, the allow-list entry and the one-off client key at the
/// agent, the PVC lock) before it runs the still unanswered trigger again.
#[tokio::test]
async fn replication_restart_sweeps_what_the_old_process_left() {
    let mut fx = Fixture::start("pvcrestart").await;
    let client = fx.client().clone();
    let (src, dest) = ("pvcrestart-src", "pvcrestart-src-dr");
    fx.replicate("direct", src, json!({"copyMethod": "Direct"}))
        .await;
    let pod = fx
        .trigger_sync("direct", src, "1", "server pod before the restart")
        .await;
    let old = op_of(&pod);
    let _job = fx
        .serve(src, &pod, "10.1.0.5", "Job before the restart")
        .await;
    let old_entry = format!("{}..{old}", fx.label("direct"));
    let entries = allow_entries(&client, &fx.env.agent_ns).await;
    assert!(entries.contains_key(&old_entry), "{entries:?}");
    let clients = client_entries(&client, &fx.env.agent_ns).await;
    assert!(clients.contains_key(&old_entry), "{clients:?}");
    fx.restart("pvcrestart-restarted");
    let env = &fx.env;
    let sel = format!("dr-syncer.io/operation={old}");
    let locks = format!("dr-syncer.io/mapping={}", fx.label("direct"));
    eventually(
        "sweep after the restart",
        Duration::from_secs(60),
        || async {
            let mut left = Vec::new();
            for ns in [src, dest] {
                left.extend(live::<Pod>(&client, ns, &sel).await);
                left.extend(live::<Secret>(&client, ns, &sel).await);
                left.extend(live::<Job>(&client, ns, &sel).await);
            }
            let entries = allow_entries(&client, &env.agent_ns).await;
            let stale_lock = labeled::<Lease>(&client, &env.ctl, &locks)
                .await
                .into_iter()
                .any(|l| {
                    l.spec
                        .and_then(|s| s.holder_identity)
                        .is_some_and(|h| h.ends_with(&old))
                });
            if entries.contains_key(&old_entry) {
                left.push(format!("allow entry {old_entry}"));
            }
            if client_entries(&client, &env.agent_ns)
                .await
                .contains_key(&old_entry)
            {
                left.push(format!("client key entry {old_entry}"));
            }
            if stale_lock {
                left.push("lock of the old operation".into());
            }
            if left.is_empty() { Ok(()) } else { Err(left) }
        },
    )
    .await;
    // The trigger was never answered: the new process runs it again.
    let pod = server_pod(&client, src, "server pod of the re-run").await;
    assert_ne!(op_of(&pod), old);
}

/// Deleting a mapping while its sync waits for its server pod cancels the sync: its
/// objects go, its lock is released and its operation's key leaves the agent's client list.
#[tokio::test]
async fn replication_deleting_the_mapping_cancels_its_run_and_revokes_its_key() {
    let fx = Fixture::start("pvccancel").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let src = "pvccancel-src";
    fx.replicate("direct", src, json!({"copyMethod": "Direct"}))
        .await;
    let pod = fx.trigger_sync("direct", src, "1", "server pod").await;
    let run = format!("dr-syncer.io/operation={}", op_of(&pod));
    let label = fx.label("direct");
    let op_key = format!("{label}..{}", op_of(&pod));
    assert!(
        client_entries(&client, &env.agent_ns)
            .await
            .contains_key(&op_key),
        "the operation's key is published while the sync runs"
    );
    Api::<NamespaceMapping>::namespaced(client.clone(), &env.ctl)
        .delete("direct", &Default::default())
        .await
        .unwrap();
    let locks = format!("dr-syncer.io/mapping={label}");
    eventually("cancelled and revoked", Duration::from_secs(60), || async {
        let mut left = live::<Pod>(&client, src, &run).await;
        left.extend(live::<Secret>(&client, src, &run).await);
        let clients = client_entries(&client, &env.agent_ns).await;
        let revoked = !clients.contains_key(&label) && !clients.contains_key(&op_key);
        let locks = labeled::<Lease>(&client, &env.ctl, &locks).await;
        (left.is_empty() && revoked && locks.is_empty()).then_some(())
    })
    .await;
}

/// Item 10 of issue 13: a scheduled data sync whose slot passed while no controller ran
/// is caught up as soon as the controller starts, not at the next slot.
#[tokio::test]
async fn replication_catches_up_a_scheduled_run_missed_while_the_controller_was_down() {
    let plane = envtest::shared().await;
    let env = base(plane, "pvcmiss", 2222, "1h").await;
    let client = env.client.clone();
    // A first controller deploys the agent (its Secrets and DaemonSet), then goes down:
    // the restarted one finds the agent ready, so its first pass can sync.
    {
        let _first = start_controller(plane, &env.ctl, "pvcmiss-first", &free_addr(), &[]);
        eventually("agent DaemonSet", Duration::from_secs(60), || async {
            Api::<DaemonSet>::namespaced(client.clone(), &env.agent_ns)
                .get_opt("dr-syncer-agent")
                .await
                .unwrap()
        })
        .await;
    }
    source_namespace(&env, "pvcmiss-src").await;
    // Daily at the minute two hours ago: the latest slot passed about 2 h ago, the next
    // one is about 22 h away, so only a catch-up can run a sync within the test.
    let now = jiff::Timestamp::now();
    let slot = (now - jiff::SignedDuration::from_hours(2)).to_zoned(jiff::tz::TimeZone::UTC);
    let cron = format!("{} {} * * *", slot.minute(), slot.hour());
    mapping(
        &env,
        "missed",
        "pvcmiss-src",
        json!({"copyMethod": "Clone", "schedule": cron}),
    )
    .await;
    // What the controller recorded before it went down: a sync three hours ago, before
    // the slot it then missed.
    let attempt = now - jiff::SignedDuration::from_hours(3);
    let nms = Api::<NamespaceMapping>::namespaced(client.clone(), &env.ctl);
    nms.patch_status(
        "missed",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"pvcData": {
            "nextSyncTime": (attempt + jiff::SignedDuration::from_hours(1)).to_string(),
            "volumes": [{"source": "pvcmiss-src/data", "destination": "pvcmiss-src-dr/data",
                         "copyMethod": "Clone", "result": "Succeeded", "operation": "before",
                         "lastAttemptTime": attempt.to_string(),
                         "lastSuccessTime": (attempt + jiff::SignedDuration::from_secs(60)).to_string()}]}}})),
    )
    .await
    .unwrap();

    let started = Instant::now();
    let _controller = start_controller(plane, &env.ctl, "pvcmiss", &free_addr(), &[]);
    agent_pod(&env, "node-a", "10.0.0.1").await;
    // Within seconds (the old task waited for the next slot, 22 h away); 30 s leave room
    // for a loaded machine, far from any slot.
    let pod = eventually("catch-up server pod", Duration::from_secs(30), || async {
        labeled::<Pod>(&client, "pvcmiss-src", TEMP)
            .await
            .into_iter()
            .next()
    })
    .await;
    let within = started.elapsed();
    assert!(
        within < Duration::from_secs(30),
        "the missed run started only after {within:?}"
    );
    let op = op_of(&pod);
    assert_ne!(op, "before");
    run_pod(&client, "pvcmiss-src", &pod.name_any(), "10.1.0.9").await;
    let job: Job = one(&client, "pvcmiss-src-dr", TEMP, "catch-up Job").await;
    finish_job(
        &client,
        &job,
        true,
        r#"{"filesTransferred":1,"bytesLiteral":7,"bytesMatched":0,"duration":0.1}"#,
    )
    .await;
    let v = finished(&client, &env.ctl, "missed", &op).await;
    assert_eq!(
        v.result,
        Some(dr_syncer::api::PvcSyncResult::Succeeded),
        "{:?}",
        v.message
    );
    // One run for the missed slot, then the schedule: the next sync is tomorrow's slot,
    // and no second operation starts.
    let tomorrow = slot
        .with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .unwrap()
        .checked_add(jiff::Span::new().days(1))
        .unwrap()
        .timestamp();
    let next = eventually(
        "next sync time after the catch-up",
        Duration::from_secs(30),
        || async {
            let data = nms.get("missed").await.ok()?.status?.pvc_data?;
            data.next_sync_time.filter(|t| t.0 > now).map(|t| t.0)
        },
    )
    .await;
    assert_eq!(next, tomorrow);
    assert_clean(
        &client,
        &["pvcmiss-src", "pvcmiss-src-dr"],
        &env.agent_ns,
        &env.ctl,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        live::<Pod>(&client, "pvcmiss-src", TEMP).await,
        Vec::<String>::new(),
        "exactly one catch-up run"
    );
    let v = volume_status(&client, &env.ctl, "missed", &op).await;
    assert!(v.is_some(), "the catch-up is still the last operation");
}

/// Item 3 of issue 13: volume data goes to the DR cluster the manifests go to. The
/// mapping's `destination.cluster.remoteClusterRef` names `dr` in another namespace; a
/// decoy RemoteCluster `dr` in the mapping's own namespace points at the controller's own
/// apiserver. The destination PVC and the `pvc-sync` Job must be created in the cluster of
/// `<ctl>-clusters/dr` (a second apiserver), nothing in the decoy's (the data sync once
/// looked the name up in the mapping's namespace and wrote to the decoy).
#[tokio::test]
async fn replication_writes_to_the_remote_cluster_ref_namespace_not_a_namesake() {
    // A RemoteCluster in another namespace is an admin's choice the controller must allow.
    let fx = Fixture::start_with("pvcref", &["--allow-cross-namespace-refs"]).await;
    let env = &fx.env;
    let client = fx.client().clone();
    let dr_plane = envtest::shared_named("dr").await;
    let dr = dr_plane.client().await.unwrap();
    let clusters = "pvcref-clusters";
    let src = "pvcref-src";
    let dest = "pvcref-src-dr";
    let applier = Applier::new(client.clone(), "test");
    let kubeconfig = |plane: &ControlPlane| serde_saphyr::to_string(&plane.kubeconfig()).unwrap();
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": clusters}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dr-kubeconfig", "namespace": clusters},
               "stringData": {"kubeconfig": kubeconfig(dr_plane)}}),
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "dr", "namespace": clusters},
               "spec": {"kubeconfigSecretRef": {"name": "dr-kubeconfig"}, "healthCheckInterval": "1h"}}),
        // The namesake in the mapping's namespace: a working kubeconfig of another cluster.
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "decoy-kubeconfig", "namespace": env.ctl},
               "stringData": {"kubeconfig": kubeconfig(fx.plane)}}),
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "dr", "namespace": env.ctl},
               "spec": {"kubeconfigSecretRef": {"name": "decoy-kubeconfig"}, "healthCheckInterval": "1h"}}),
    ] {
        applier.apply(&o).await;
    }
    source_namespace(env, src).await;
    mapping_to(
        env,
        "ref",
        src,
        json!({"cluster": {"remoteClusterRef": {"name": "dr", "namespace": clusters}}}),
        json!({"copyMethod": "Clone"}),
    )
    .await;
    let pod = fx.trigger_sync("ref", src, "1", "server pod").await;
    let op = op_of(&pod);
    run_pod(&client, src, &pod.name_any(), "10.1.0.7").await;
    // Wherever the Job appears first says which cluster the data sync wrote to.
    let sel = format!("dr-syncer.io/operation={op}");
    let (cluster, job) = eventually(
        "pvc-sync Job in either cluster",
        Duration::from_secs(60),
        || async {
            for (cluster, c) in [("DR", &dr), ("decoy", &client)] {
                if let Some(job) = labeled::<Job>(c, dest, &sel).await.into_iter().next() {
                    return Some((cluster, job));
                }
            }
            None
        },
    )
    .await;
    assert_eq!(
        cluster, "DR",
        "the pvc-sync Job went to the decoy RemoteCluster {}/dr, not to {clusters}/dr",
        env.ctl
    );
    let dpvc = Api::<PersistentVolumeClaim>::namespaced(dr.clone(), dest)
        .get("data")
        .await
        .unwrap();
    assert_eq!(
        dpvc.spec.unwrap().storage_class_name.as_deref(),
        Some("dr-fast")
    );
    let decoy_pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), dest);
    assert!(
        decoy_pvcs.get_opt("data").await.unwrap().is_none(),
        "destination PVC {dest}/data created in the decoy's cluster"
    );
    finish_job(&dr, &job, true, REPORT).await;
    let v = finished(&client, &env.ctl, "ref", &op).await;
    assert_eq!(
        v.result,
        Some(dr_syncer::api::PvcSyncResult::Succeeded),
        "{:?}",
        v.message
    );
    assert_eq!(v.destination, format!("{dest}/data"));
    assert_clean(&client, &[src, dest], &env.agent_ns, &env.ctl).await;
    eventually("DR side cleaned up", Duration::from_secs(60), || async {
        let mut left = live::<Job>(&dr, dest, TEMP).await;
        left.extend(live::<Secret>(&dr, dest, TEMP).await);
        left.extend(live::<Pod>(&dr, dest, TEMP).await);
        left.extend(live::<PersistentVolumeClaim>(&dr, dest, TEMP).await);
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    // The decoy's cluster never saw the destination namespace's objects.
    assert_eq!(
        decoy_pvcs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0,
        "no PersistentVolumeClaim in the decoy's {dest}"
    );
}

async fn reqwest_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Plays the kubelet's volume plugin: mirrors a Secret's or ConfigMap's keys into `dir`
/// (atomically per file; vanished keys removed) until the test ends.
fn mirror(
    client: Client,
    ns: String,
    name: &'static str,
    secret: bool,
    dir: PathBuf,
) -> tokio::task::JoinHandle<()> {
    std::fs::create_dir_all(&dir).unwrap();
    tokio::spawn(async move {
        loop {
            let data: BTreeMap<String, String> = if secret {
                match Api::<Secret>::namespaced(client.clone(), &ns)
                    .get_opt(name)
                    .await
                {
                    Ok(Some(s)) => s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                        .collect(),
                    _ => BTreeMap::new(),
                }
            } else {
                match Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get_opt(name)
                    .await
                {
                    Ok(Some(c)) => c.data.unwrap_or_default(),
                    _ => BTreeMap::new(),
                }
            };
            write_dir(&dir, &data);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

fn write_dir(dir: &Path, data: &BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && !data.contains_key(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for (k, v) in data {
        let tmp = dir.join(format!(".{k}.tmp"));
        std::fs::write(&tmp, v).unwrap();
        std::fs::rename(&tmp, dir.join(k)).unwrap();
    }
}

/// Rewrites a pod's arguments for a local process: mount paths → local directories, the
/// wildcard listen address → the pod's IP.
fn localize(args: &[String], mounts: &[(&str, &Path)], ip: &str) -> Vec<String> {
    args.iter()
        .map(|a| {
            let mut a = a.replace("0.0.0.0", ip);
            for (from, to) in mounts {
                if let Some(rest) = a.strip_prefix(from) {
                    a = format!("{}{rest}", to.display());
                }
            }
            a
        })
        .collect()
}

/// Plays the kubelet and the container runtime for a local process: the pod's and its
/// first container's securityContext as a `setpriv` command line — user and group,
/// `fsGroup` and `supplementalGroups` as supplementary groups, no inheritable capabilities,
/// a bounding set of exactly the added ones (a uid-0 process then holds just those; any
/// other uid holds none, as Kubernetes gives non-root containers no ambient
/// capabilities), `no_new_privs` for `allowPrivilegeEscalation: false`. Only `drop: [ALL]`
/// is modelled: the pods the controller makes drop everything.
fn kubelet(pod: &PodSpec) -> Command {
    let psc = pod.security_context.clone().unwrap_or_default();
    let csc = pod.containers[0]
        .security_context
        .clone()
        .unwrap_or_default();
    let uid = csc.run_as_user.or(psc.run_as_user).unwrap_or(0);
    let gid = csc.run_as_group.or(psc.run_as_group).unwrap_or(0);
    if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) {
        assert_ne!(uid, 0, "the kubelet refuses runAsNonRoot with uid 0");
    }
    let caps = csc.capabilities.unwrap_or_default();
    assert_eq!(
        caps.drop.unwrap_or_default(),
        ["ALL"],
        "the harness models drop: [ALL] only"
    );
    let bounding: String = std::iter::once("-all".to_string())
        .chain(
            caps.add
                .unwrap_or_default()
                .iter()
                .map(|c| format!("+{}", c.to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let groups: Vec<String> = psc
        .fs_group
        .into_iter()
        .chain(psc.supplemental_groups.unwrap_or_default())
        .map(|g| g.to_string())
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.args(["--groups", &groups.join(",")]);
    }
    cmd.args(["--inh-caps", "-all", "--bounding-set", &bounding]);
    if csc.allow_privilege_escalation == Some(false) {
        cmd.arg("--no-new-privs");
    }
    cmd.args(["--", env!("CARGO_BIN_EXE_dr-syncer")]);
    cmd
}

/// Starts `dr-syncer` with `args` as a container of `pod` would run (see [`kubelet`]).
fn spawn(pod: &PodSpec, args: &[String], log: &str) -> Running {
    let dir = dr_syncer_testkit::target_dir().join("test-logs");
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Running::spawn(
        kubelet(pod)
            .args(args)
            .env("DR_SYNCER_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// Runs `dr-syncer pvc-sync` with `args` as the container of the Job's pod `pod` would
/// (see [`kubelet`]); returns (exit code, stderr).
fn pvc_sync(pod: &PodSpec, args: &[String]) -> (i32, String) {
    let out = kubelet(pod).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_secret(dir: &Path, s: &Secret) {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = BTreeMap::new();
    for k in s
        .data
        .clone()
        .unwrap_or_default()
        .keys()
        .chain(s.string_data.clone().unwrap_or_default().keys())
    {
        data.insert(k.clone(), secret_text(s, k));
    }
    write_dir(dir, &data);
}

/// Owner, group and permission bits of every entry beneath `root`.
fn owners(root: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, u32, u32)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            out.insert(rel, (meta.uid(), meta.gid(), meta.mode() & 0o7777));
            if meta.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .as_bytes()
                        .to_vec(),
                );
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Issue 14 §3: one mapping serving two namespaces. The credential in namespace A's Job
/// Secret (whoever can read Secrets there has it) is refused by namespace B's volume
/// server, the real `agent serve-volume` with the Secret the controller made for B, while
/// B's own credential works there. (With the mapping's key in every Job Secret, A's
/// credential was B's.)
#[tokio::test]
async fn replication_credential_of_one_namespace_is_refused_by_anothers_server() {
    let fx = Fixture::start("pvcns").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let (a, b) = ("pvcns-a", "pvcns-b");
    for ns in [a, b] {
        source_namespace(env, ns).await;
        Api::<Namespace>::all(client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"dr-data": "pvcns"}}})),
            )
            .await
            .unwrap();
    }
    Applier::new(client.clone(), "test")
        .apply(
            &json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "both", "namespace": env.ctl},
            "spec": {"replicationMode": "Manual",
                     "namespaceSelector": {"matchLabels": {"dr-data": "pvcns"}},
                     "destinationNamespaceSuffix": "-dr",
                     "clusterMappingRef": {"name": "cm"},
                     "destination": {"git": {"url": "ssh://git@127.0.0.1:9/unused.git"}},
                     "pvcConfig": {"syncData": true, "dataSyncConfig": {"copyMethod": "Clone"}}}}),
        )
        .await;
    trigger(&client, &env.ctl, "both", "dr-syncer.io/sync-data-now", "1").await;
    // Both operations run at once (the agent's default concurrency is 4).
    let pod_a = server_pod(&client, a, "server pod in a").await;
    let pod_b = server_pod(&client, b, "server pod in b").await;
    let (op_a, op_b) = (op_of(&pod_a), op_of(&pod_b));
    let job_a = fx.serve(a, &pod_a, "127.0.0.81", "Job of a").await;
    let job_b = fx.serve(b, &pod_b, "127.0.0.82", "Job of b").await;
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("source-b");
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::write(src_dir.join("secret-of-b"), b"b's data").unwrap();
    // B's volume server, as the kubelet would run its pod.
    let serve_keys = work.path().join("serve-b");
    let serve: Secret = Api::namespaced(client.clone(), b)
        .get(&format!("dr-syncer-{op_b}-serve"))
        .await
        .unwrap();
    write_secret(&serve_keys, &serve);
    let args = pod_b.spec.clone().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let _server = spawn(
        &pod_b.spec.clone().unwrap(),
        &localize(
            &args,
            &[("/data", &src_dir), ("/etc/dr-syncer/keys", &serve_keys)],
            "127.0.0.82",
        ),
        "pvcns-serve-b.log",
    );
    let job_pod = job_b.spec.clone().unwrap().template.spec.unwrap();
    // The Job Secrets of both namespaces, as files.
    let keys = |op: &str, ns: &str| {
        let (client, op, ns) = (client.clone(), op.to_string(), format!("{ns}-dr"));
        let dir = work.path().join(format!("job-{ns}"));
        async move {
            let js: Secret = Api::namespaced(client, &ns)
                .get(&format!("dr-syncer-{op}-job"))
                .await
                .unwrap();
            write_secret(&dir, &js);
            dir
        }
    };
    let (keys_a, keys_b) = (keys(&op_a, a).await, keys(&op_b, b).await);
    let attempt = |identity: &Path, to: &str, wait: &str| {
        let args: Vec<String> = [
            "pvc-sync",
            "--from",
            "ssh://127.0.0.82:2223",
            "--to",
            work.path().join(to).to_str().unwrap(),
            "--identity",
            identity.to_str().unwrap(),
            "--known-hosts",
            keys_b.join("known_hosts").to_str().unwrap(),
            "--connect-timeout",
            wait,
        ]
        .map(String::from)
        .to_vec();
        std::fs::create_dir_all(work.path().join(to)).unwrap();
        pvc_sync(&job_pod, &args)
    };
    // B's own credential reaches B's volume (the server is up and B's pin is right)...
    let (code, stderr) = attempt(&keys_b.join("identity"), "with-b", "20s");
    assert_eq!(code, 0, "B's credential at B's server: {stderr}");
    // ...and A's is refused there.
    let (code, stderr) = attempt(&keys_a.join("identity"), "with-a", "0s");
    assert_eq!(code, 3, "A's credential at B's server: {stderr}");
    assert!(stderr.contains("authentication refused"), "{stderr}");
    assert!(
        !work.path().join("with-a/secret-of-b").exists(),
        "A read B's volume"
    );
    // The mapping's status is written once both operations have ended.
    for job in [&job_a, &job_b] {
        finish_job(&client, job, true, REPORT).await;
    }
    for op in [&op_a, &op_b] {
        finished(&client, &env.ctl, "both", op).await;
    }
    assert_clean(
        &client,
        &[a, b, "pvcns-a-dr", "pvcns-b-dr"],
        &env.agent_ns,
        &env.ctl,
    )
    .await;
}

#[tokio::test]
async fn replication_end_to_end_with_real_binaries() {
    let plane = envtest::shared().await;
    let bastion_port: u16 = free_addr().rsplit(':').next().unwrap().parse().unwrap();
    let env = base(plane, "pvce2e", bastion_port, "6s").await;
    let client = env.client.clone();
    let (agent_ip, server_ip) = ("127.0.0.71", "127.0.0.72");
    let work = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (work.path().join("source"), work.path().join("dest"));
    std::fs::create_dir_all(src_dir.join("db/wal")).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(src_dir.join("db/base.dat"), &big).unwrap();
    std::fs::write(src_dir.join("db/wal/000001"), b"wal record").unwrap();
    std::fs::write(src_dir.join("README"), b"hello DR").unwrap();
    std::os::unix::fs::symlink("db/base.dat", src_dir.join("current")).unwrap();
    // Issue 16 §1–2: a database-like tree of another user, in 0700 directories: the reader
    // (uid 0 with DAC_READ_SEARCH only) must read it and the writer (uid 0 with CHOWN,
    // DAC_OVERRIDE, FOWNER, FSETID only) must recreate it with its owners and modes.
    {
        use std::os::unix::fs::PermissionsExt;
        let own = |p: &Path, mode: u32| {
            std::os::unix::fs::lchown(p, Some(999), Some(999)).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        own(&src_dir.join("db/base.dat"), 0o600);
        own(&src_dir.join("db/wal/000001"), 0o600);
        own(&src_dir.join("db/wal"), 0o700);
        own(&src_dir.join("db"), 0o700);
        // The bastion runs as uid 65532: the mounted files it reads must be reachable.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _controller = start_controller(plane, &env.ctl, "pvce2e", &free_addr(), &[]);
    source_namespace(&env, "pvce2e-src").await;
    mapping(
        &env,
        "e2e",
        "pvce2e-src",
        json!({"copyMethod": "Clone", "timeout": "5m"}),
    )
    .await;

    // The agent: its mounted Secrets/ConfigMap mirrored to files, the bastion started with
    // the DaemonSet's arguments.
    let ds = eventually("agent DaemonSet", Duration::from_secs(60), || async {
        Api::<DaemonSet>::namespaced(client.clone(), &env.agent_ns)
            .get_opt("dr-syncer-agent")
            .await
            .unwrap()
    })
    .await;
    let agent_root = work.path().join("agent");
    let _mirrors = [
        mirror(
            client.clone(),
            env.agent_ns.clone(),
            "dr-syncer-agent-host",
            true,
            agent_root.join("host"),
        ),
        mirror(
            client.clone(),
            env.agent_ns.clone(),
            "dr-syncer-agent-clients",
            true,
            agent_root.join("clients"),
        ),
        mirror(
            client.clone(),
            env.agent_ns.clone(),
            "dr-syncer-agent-allow",
            false,
            agent_root.join("allow"),
        ),
    ];
    eventually("host key mirrored", Duration::from_secs(30), || async {
        agent_root.join("host/host_key").exists().then_some(())
    })
    .await;
    let ds_pod = ds.spec.template.spec.unwrap();
    let ds_args = ds_pod.containers[0].args.clone().unwrap();
    let _bastion = spawn(
        &ds_pod,
        &localize(&ds_args, &[("/etc/dr-syncer", &agent_root)], agent_ip),
        "pvce2e-bastion.log",
    );
    agent_pod(&env, "node-a", agent_ip).await;

    // One sync: the server pod becomes a local serve-volume over the source directory.
    trigger(&client, &env.ctl, "e2e", "dr-syncer.io/sync-data-now", "1").await;
    let pod: Pod = one(&client, "pvce2e-src", TEMP, "server pod").await;
    let op = op_of(&pod);
    let serve_keys = work.path().join("serve-keys");
    let serve: Secret = Api::namespaced(client.clone(), "pvce2e-src")
        .get(&format!("dr-syncer-{op}-serve"))
        .await
        .unwrap();
    write_secret(&serve_keys, &serve);
    let pod_args = pod.spec.clone().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let _server = spawn(
        &pod.spec.clone().unwrap(),
        &localize(
            &pod_args,
            &[("/data", &src_dir), ("/etc/dr-syncer/keys", &serve_keys)],
            server_ip,
        ),
        "pvce2e-serve.log",
    );
    run_pod(&client, "pvce2e-src", &pod.name_any(), server_ip).await;
    // The Job becomes a local pvc-sync with its Secret as files.
    let job: Job = one(&client, "pvce2e-src-dr", TEMP, "sync Job").await;
    let job_keys = work.path().join("job-keys");
    let js: Secret = Api::namespaced(client.clone(), "pvce2e-src-dr")
        .get(&format!("dr-syncer-{op}-job"))
        .await
        .unwrap();
    write_secret(&job_keys, &js);
    let summary = work.path().join("termination-log");
    let job_args = job.spec.clone().unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let mut local = localize(
        &job_args,
        &[("/data", &dst_dir), ("/etc/dr-syncer/keys", &job_keys)],
        "0.0.0.0",
    );
    for a in local.iter_mut() {
        if a == "/dev/termination-log" {
            *a = summary.display().to_string();
        }
    }
    let job_pod = job.spec.clone().unwrap().template.spec.unwrap();
    let (code, stderr) = tokio::task::spawn_blocking({
        let (local, job_pod) = (local.clone(), job_pod.clone());
        move || pvc_sync(&job_pod, &local)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "pvc-sync: {stderr}");
    assert_eq!(
        tree(&dst_dir),
        tree(&src_dir),
        "the DR volume equals the source"
    );
    assert_eq!(
        owners(&dst_dir),
        owners(&src_dir),
        "owners, groups and modes are kept"
    );
    let report = std::fs::read_to_string(&summary).unwrap();
    finish_job(&client, &job, true, &report).await;
    let v = finished(&client, &env.ctl, "e2e", &op).await;
    assert_eq!(
        v.result,
        Some(dr_syncer::api::PvcSyncResult::Succeeded),
        "{:?}",
        v.message
    );
    assert!(v.bytes_literal >= big.len() as i64, "{v:?}");
    assert_clean(
        &client,
        &["pvce2e-src", "pvce2e-src-dr"],
        &env.agent_ns,
        &env.ctl,
    )
    .await;

    // The operation's entries are gone: the same Job arguments are now refused by the
    // bastion, which no longer knows the one-off key (the server process is still up).
    eventually(
        "allow-list and client list mirrored empty",
        Duration::from_secs(10),
        || async {
            let visible = |d: &str| {
                std::fs::read_dir(agent_root.join(d))
                    .unwrap()
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            };
            (visible("allow") == 0 && visible("clients") == 0).then_some(())
        },
    )
    .await;
    let mut no_retry = local.clone();
    let i = no_retry
        .iter()
        .position(|a| a == "--connect-timeout")
        .unwrap();
    no_retry[i + 1] = "0s".into();
    let (code, stderr) = pvc_sync(&job_pod, &no_retry);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("authentication refused"),
        "the one-off key after its operation: {stderr}"
    );
}

/// What `pvc-sync` writes when the deletion breaker holds a sync (exit code 7).
const HELD: &str = r#"{"held":{"batch":"0123456789ab","files":90,"bytes":9000,"filesTotal":100,"bytesTotal":10000},"error":"deletion breaker: would delete 90 of 100 files","exitCode":7}"#;

/// Issue 16 §3: a Job that ended with a held report gives the volume result `Held` (not a
/// failure, not a success: the last good numbers and point in time stay), a
/// `PvcDeletionsHeld` Warning Event and the `Held` metric, with the exact release command;
/// after the user runs it, the next Job carries `--allow-deletions <batch>`.
#[tokio::test]
async fn replication_held_sync_shows_the_batch_and_the_release_reaches_the_next_job() {
    let fx = Fixture::start("pvcheld").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let src = "pvcheld-src";
    fx.replicate(
        "clone",
        src,
        json!({"copyMethod": "Clone", "maxDeletePercent": 20, "ownership": "Ignore"}),
    )
    .await;
    let first = fx.sync_ok("clone", src, "1", "10.1.0.2").await;
    let good = finished(&client, &env.ctl, "clone", &first).await;
    let pod = fx
        .trigger_sync("clone", src, "2", "server pod of the held run")
        .await;
    let op = op_of(&pod);
    let job = fx.serve(src, &pod, "10.1.0.4", "held Job").await;
    let args = job_args(&job);
    assert_eq!(
        &args[args.len() - 4..],
        ["--ownership", "ignore", "--max-delete-percent", "20"]
    );
    assert!(!args.contains(&"--allow-deletions".to_string()), "{args:?}");
    finish_job(&client, &job, false, HELD).await;
    let held = eventually("held recorded", Duration::from_secs(60), || async {
        volume_status(&client, &env.ctl, "clone", &op)
            .await
            .filter(|v| v.result == Some(dr_syncer::api::PvcSyncResult::Held))
    })
    .await;
    let release = "kubectl annotate nsm clone -n pvcheld dr-syncer.io/allow-data-deletion=0123456789ab --overwrite";
    let message = held.message.clone().unwrap();
    assert!(message.contains(release), "{message}");
    assert!(
        message.contains("would delete 90 of 100 files (90%) and 9000 of 10000 bytes (90%)"),
        "{message}"
    );
    assert_eq!(
        (held.bytes_literal, held.files_transferred),
        (100, 3),
        "the last good sync's numbers stay"
    );
    assert_eq!(
        held.point_in_time, good.point_in_time,
        "the RPO keeps growing"
    );
    assert_eq!(held.last_success_time, good.last_success_time);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &env.ctl);
    let event = eventually(
        "PvcDeletionsHeld Event",
        Duration::from_secs(30),
        || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("PvcDeletionsHeld"))
        },
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.starts_with(&format!("{src}/data: ")), "{note}");
    assert!(note.contains(release), "{note}");
    let metrics = reqwest_metrics(&fx.http).await;
    assert!(
        metrics.contains(&format!(
            r#"dr_syncer_pvc_syncs_total{{mapping="{}/clone",result="Held"}} 1"#,
            env.ctl
        )),
        "{metrics}"
    );
    assert_clean(&client, &[src, "pvcheld-src-dr"], &env.agent_ns, &env.ctl).await;

    // The user checked the source and releases the batch: the next Job passes it on.
    trigger(
        &client,
        &env.ctl,
        "clone",
        "dr-syncer.io/allow-data-deletion",
        "0123456789ab",
    )
    .await;
    let pod = fx
        .trigger_sync("clone", src, "3", "server pod of the released run")
        .await;
    let op = op_of(&pod);
    let job = fx.serve(src, &pod, "10.1.0.5", "released Job").await;
    let args = job_args(&job);
    assert!(
        args.windows(2)
            .any(|w| w == ["--allow-deletions", "0123456789ab"]),
        "{args:?}"
    );
    finish_job(
        &client,
        &job,
        true,
        r#"{"filesTransferred":0,"bytesLiteral":0,"bytesMatched":0,"deleted":1,"deletedFiles":90,"deletedBytes":9000,"ownershipNotKept":2,"duration":0.2}"#,
    )
    .await;
    let v = finished(&client, &env.ctl, "clone", &op).await;
    assert_eq!(v.result, Some(dr_syncer::api::PvcSyncResult::Succeeded));
    assert_eq!((v.deleted_files, v.ownership_not_kept), (90, 2));
    assert!(
        v.message
            .unwrap_or_default()
            .contains("2 files keep the DR writer's owner"),
        "ownership: Ignore shows what was not kept"
    );
    assert!(v.point_in_time > good.point_in_time);
    // A release is used once: the controller removed it after the pass that used it.
    let nm: dr_syncer::api::NamespaceMapping = Api::namespaced(client.clone(), &env.ctl)
        .get("clone")
        .await
        .unwrap();
    assert!(
        !nm.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("dr-syncer.io/allow-data-deletion"),
        "the release annotation is gone"
    );
}

fn job_args(job: &Job) -> Vec<String> {
    job.spec.clone().unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap()
}

/// Issue 16 §3: `keepSnapshots` unset keeps the two last good destination snapshots, with the
/// DR cluster's VolumeSnapshotClass whose driver provisions the destination PVC's
/// StorageClass; none without such a class; an explicit 0 means none.
#[tokio::test]
async fn replication_keep_snapshots_defaults_to_two_with_a_matching_snapshot_class() {
    let fx = Fixture::start("pvckeep").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let applier = Applier::new(client.clone(), "test");
    dr_syncer_testkit::objects::wait_established(
        &client,
        &["volumesnapshotclasses.snapshot.storage.k8s.io"],
    )
    .await;
    // Cluster-scoped, so named for this test only.
    for o in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "pvckeep-csi"}, "provisioner": "keep.csi.test"}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "pvckeep-plain"}, "provisioner": "plain.csi.test"}),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "pvckeep-other"}, "driver": "other.csi.test", "deletionPolicy": "Delete"}),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "pvckeep-snap"}, "driver": "keep.csi.test", "deletionPolicy": "Delete"}),
    ] {
        applier.apply(&o).await;
    }
    let cases = [
        ("matching", "pvckeep-csi", json!({"copyMethod": "Clone"}), 1),
        (
            "no_class",
            "pvckeep-plain",
            json!({"copyMethod": "Clone"}),
            0,
        ),
        (
            "explicit_zero",
            "pvckeep-csi",
            json!({"copyMethod": "Clone", "keepSnapshots": 0}),
            0,
        ),
    ];
    for (i, (name, class, data, want)) in cases.into_iter().enumerate() {
        let mapping = name.replace('_', "-");
        let src = format!("pvckeep-{mapping}");
        source_namespace(env, &src).await;
        mapping_with_class(env, &mapping, &src, class, data).await;
        fx.sync_ok(&mapping, &src, "1", &format!("10.1.1.{}", i + 1))
            .await;
        let images: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &format!("{src}-dr"), &snapshot_ar());
        let kept = images
            .list(&ListParams::default().labels("dr-syncer.io/image=true"))
            .await
            .unwrap()
            .items;
        assert_eq!(kept.len(), want, "{name}");
        if want > 0 {
            assert_eq!(
                kept[0].data["spec"],
                json!({"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "pvckeep-snap"}),
                "{name}"
            );
        }
    }
    // The default keeps two: the newest image and the one before it, so a sync that
    // succeeded with bad data (an encrypted source) still leaves the previous good one.
    for value in ["2", "3"] {
        fx.sync_ok("matching", "pvckeep-matching", value, "10.1.1.1")
            .await;
    }
    let images: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "pvckeep-matching-dr", &snapshot_ar());
    let kept = images
        .list(&ListParams::default().labels("dr-syncer.io/image=true"))
        .await
        .unwrap()
        .items;
    assert_eq!(kept.len(), 2, "the last two good images");
}

/// Issue 16 §1–2: a source RemoteCluster with `runAsRoot: false` (namespaces enforcing
/// Pod Security `restricted`) and `hostUsers: false` gets uid-65532 pods without any
/// capability, in a user namespace; a Job that could not keep ownership (exit code 6)
/// fails closed with a message naming both settings that would let it through.
#[tokio::test]
async fn replication_non_root_cluster_runs_without_capabilities_and_says_what_to_change() {
    let fx = Fixture::start("pvcnoroot").await;
    let env = &fx.env;
    let client = fx.client().clone();
    Api::<dr_syncer::api::RemoteCluster>::namespaced(client.clone(), &env.ctl)
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pvcSync": {"runAsRoot": false, "hostUsers": false}}})),
        )
        .await
        .unwrap();
    let src = "pvcnoroot-src";
    fx.replicate("clone", src, json!({"copyMethod": "Clone"}))
        .await;
    let pod = fx.trigger_sync("clone", src, "1", "server pod").await;
    let op = op_of(&pod);
    let p = serde_json::to_value(&pod).unwrap();
    assert_eq!(p["spec"]["hostUsers"], false);
    assert_eq!(
        p["spec"]["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        p["spec"]["containers"][0]["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    let job = fx.serve(src, &pod, "10.1.0.6", "sync Job").await;
    let j = serde_json::to_value(&job).unwrap();
    let spec = &j["spec"]["template"]["spec"];
    assert_eq!(spec["hostUsers"], false);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(spec["securityContext"]["fsGroup"], 65532);
    assert_eq!(
        spec["containers"][0]["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    finish_job(
        &client,
        &job,
        false,
        r#"{"error":"cannot keep ownership: chown pg/base/1 to 999:999: Operation not permitted (12 files)","exitCode":6}"#,
    )
    .await;
    let v = finished(&client, &env.ctl, "clone", &op).await;
    assert_eq!(v.result, Some(dr_syncer::api::PvcSyncResult::Failed));
    let message = v.message.unwrap_or_default();
    for want in [
        "(exit code 6)",
        "spec.pvcSync.runAsRoot: false",
        "set runAsRoot: true",
        "dataSyncConfig.ownership: Ignore",
    ] {
        assert!(message.contains(want), "{want} not in {message}");
    }
    assert_eq!(v.point_in_time, None, "nothing good was ever copied");
}

/// Issue 16 §1: Pod Security. A source namespace enforcing `baseline` would refuse the
/// uid-0 reader (DAC_READ_SEARCH is not a baseline capability): the sync fails before
/// creating anything, naming the label and the RemoteCluster setting that would let it
/// run.
#[tokio::test]
async fn replication_pod_security_conflict_fails_before_creating_anything() {
    let fx = Fixture::start("pvcpsa").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let src = "pvcpsa-src";
    source_namespace(env, src).await;
    Api::<Namespace>::all(client.clone())
        .patch(
            src,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}),
            ),
        )
        .await
        .unwrap();
    mapping(env, "clone", src, json!({"copyMethod": "Clone"})).await;
    trigger(
        &client,
        &env.ctl,
        "clone",
        "dr-syncer.io/sync-data-now",
        "1",
    )
    .await;
    let v = eventually("failure recorded", Duration::from_secs(60), || async {
        let nm = Api::<NamespaceMapping>::namespaced(client.clone(), &env.ctl)
            .get("clone")
            .await
            .ok()?;
        nm.status?
            .pvc_data?
            .volumes
            .into_iter()
            .find(|v| v.result == Some(dr_syncer::api::PvcSyncResult::Failed))
    })
    .await;
    let message = v.message.unwrap_or_default();
    for want in [
        "namespace pvcpsa-src enforces Pod Security \"baseline\"",
        "pod-security.kubernetes.io/enforce=privileged",
        "spec.pvcSync.runAsRoot: false",
    ] {
        assert!(message.contains(want), "{want} not in {message}");
    }
    assert!(
        labeled::<PersistentVolumeClaim>(&client, src, TEMP)
            .await
            .is_empty(),
        "nothing was created"
    );
    assert_clean(&client, &[src, "pvcpsa-src-dr"], &env.agent_ns, &env.ctl).await;
}

/// The result of the first sync of `mapping`'s PVC `data` whose operation is not `previous`.
async fn next_result(
    client: &Client,
    ns: &str,
    mapping: &str,
    previous: &str,
) -> dr_syncer::api::PvcVolumeStatus {
    eventually("next sync result", Duration::from_secs(60), || async {
        let nm = Api::<NamespaceMapping>::namespaced(client.clone(), ns)
            .get(mapping)
            .await
            .ok()?;
        nm.status?.pvc_data?.volumes.into_iter().find(|v| {
            v.operation.as_deref().is_some_and(|o| o != previous)
                && v.result
                    .is_some_and(|r| r != dr_syncer::api::PvcSyncResult::Running)
        })
    })
    .await
}

/// Issue 16 §7: volume hooks through the real apiserver's `pods/exec` (served by the
/// kubelet's own streaming code). `pre` runs in the selected container of the pod that
/// mounts the PVC before the VolumeSnapshot exists, `post` once it is ready; a failing
/// `pre` fails the sync with its exit code and stderr, copies nothing and still thaws; a
/// `pre` that hangs past its timeout under `onError: Continue` is named in the status of a
/// sync that goes on.
#[tokio::test]
async fn replication_hooks_quiesce_around_the_snapshot_and_always_thaw() {
    let fx = Fixture::start("pvchook").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let work = tempfile::tempdir().unwrap();
    let kubelet = dr_syncer_testkit::kubelet::ExecKubelet::start(work.path());
    kubelet.node(&client, "pvchook-node").await;
    let src = "pvchook-src";
    source_namespace(env, src).await;
    // The database: its pod on the exec-kubelet's node, the hook's container second.
    Applier::new(client.clone(), "test")
        .apply(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db", "namespace": src, "labels": {"app": "db"}},
            "spec": {"nodeName": "pvchook-node",
                     "containers": [{"name": "exporter", "image": "e"}, {"name": "postgres", "image": "pg"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}))
        .await;
    run_pod(&client, src, "db", "10.9.9.10").await;
    let dir = work.path().display().to_string();
    let hooks = |pre: Value, post_file: &str| {
        json!({"copyMethod": "Snapshot", "volumeSnapshotClassName": "csi-snap", "keepSnapshots": 0,
            "hooks": [
                {"name": "freeze", "podSelector": {"matchLabels": {"app": "db"}}, "container": "postgres",
                 "pre": pre,
                 "post": {"command": ["sh", "-c", format!("echo thawed > {dir}/{post_file}")]}},
                {"name": "elsewhere", "podSelector": {"matchLabels": {"app": "nothing"}},
                 "pre": {"command": ["false"]}}]})
    };
    let pre_ok =
        json!({"command": ["sh", "-c", format!("echo \"$DR_POD $DR_CONTAINER\" > {dir}/pre")]});
    mapping(env, "hooked", src, hooks(pre_ok, "post")).await;
    let snaps: Api<DynamicObject> = Api::namespaced_with(client.clone(), src, &snapshot_ar());
    let new_snapshot = || async {
        eventually("source VolumeSnapshot", Duration::from_secs(60), || async {
            snaps
                .list(&ListParams::default().labels(TEMP))
                .await
                .unwrap()
                .items
                .into_iter()
                .next()
        })
        .await
    };
    let make_ready = |name: String| {
        let snaps = snaps.clone();
        async move {
            snaps
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"readyToUse": true, "restoreSize": "1Gi",
                        "creationTime": "2026-12-03T08:00:00Z"}})),
                )
                .await
                .unwrap();
        }
    };

    // 1. pre before the snapshot, post after it is ready, then the copy.
    trigger(
        &client,
        &env.ctl,
        "hooked",
        "dr-syncer.io/sync-data-now",
        "1",
    )
    .await;
    let snap = new_snapshot().await;
    let pre = std::fs::read_to_string(work.path().join("pre"))
        .expect("pre ran before the VolumeSnapshot");
    assert_eq!(pre.trim(), format!("{src}/db postgres"));
    assert!(
        !work.path().join("post").exists(),
        "post ran before the snapshot was ready"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !work.path().join("post").exists(),
        "post must wait for readyToUse"
    );
    make_ready(snap.name_any()).await;
    eventually("post hook", Duration::from_secs(30), || async {
        work.path().join("post").exists().then_some(())
    })
    .await;
    let pod: Pod = one(&client, src, TEMP, "server pod").await;
    let op = op_of(&pod);
    let job = fx.serve(src, &pod, "10.1.0.9", "sync Job").await;
    finish_job(&client, &job, true, REPORT).await;
    let v = finished(&client, &env.ctl, "hooked", &op).await;
    assert_eq!(
        v.result,
        Some(dr_syncer::api::PvcSyncResult::Succeeded),
        "{:?}",
        v.message
    );
    let execs = kubelet.execs();
    let seen: Vec<(String, String, String)> = execs
        .iter()
        .map(|e| {
            (
                e["pod"].as_str().unwrap().to_string(),
                e["container"].as_str().unwrap().to_string(),
                e["command"][2].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                format!("{src}/db"),
                "postgres".into(),
                format!("echo \"$DR_POD $DR_CONTAINER\" > {dir}/pre")
            ),
            (
                format!("{src}/db"),
                "postgres".into(),
                format!("echo thawed > {dir}/post")
            ),
        ],
        "only the selected pod's container, pre then post; the app pod on node-b untouched"
    );

    // 2. A failing pre: the sync fails with its exit code and stderr (it never waited for a
    // snapshot, which nobody makes ready here), and the application is thawed anyway.
    let pre_fail = json!({"command": ["sh", "-c", "echo 'cannot freeze: disk busy' >&2; exit 3"]});
    mapping(env, "hooked", src, hooks(pre_fail, "post2")).await;
    trigger(
        &client,
        &env.ctl,
        "hooked",
        "dr-syncer.io/sync-data-now",
        "2",
    )
    .await;
    let v = next_result(&client, &env.ctl, "hooked", &op).await;
    assert_eq!(v.result, Some(dr_syncer::api::PvcSyncResult::Failed));
    let message = v.message.clone().unwrap_or_default();
    assert!(
        message.contains("hook \"freeze\" pre in pod db container postgres: exit code 3: cannot freeze: disk busy"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("post2"))
            .expect("post ran after the failed pre")
            .trim(),
        "thawed"
    );
    let after = kubelet.execs();
    assert_eq!(after.len(), 4, "pre (exit 3) and post: {after:?}");
    assert_eq!(after[2]["exit"], 3);
    assert_eq!(after[3]["exit"], 0);

    // 3. A pre that hangs past its timeout, onError: Continue: the sync goes on and says so.
    let pre_hang = json!({"command": ["sleep", "20"], "timeout": "1s", "onError": "Continue"});
    mapping(env, "hooked", src, hooks(pre_hang, "post3")).await;
    trigger(
        &client,
        &env.ctl,
        "hooked",
        "dr-syncer.io/sync-data-now",
        "3",
    )
    .await;
    let snap = new_snapshot().await;
    make_ready(snap.name_any()).await;
    let pod: Pod = one(&client, src, TEMP, "server pod").await;
    let op3 = op_of(&pod);
    let job = fx.serve(src, &pod, "10.1.0.10", "sync Job").await;
    finish_job(&client, &job, true, REPORT).await;
    let v = finished(&client, &env.ctl, "hooked", &op3).await;
    assert_eq!(
        v.result,
        Some(dr_syncer::api::PvcSyncResult::Succeeded),
        "{:?}",
        v.message
    );
    let message = v.message.unwrap_or_default();
    assert!(
        message.contains("hook \"freeze\" pre in pod db container postgres: no answer within 1s"),
        "{message}"
    );
    assert!(
        work.path().join("post3").exists(),
        "post after a timed-out pre"
    );
}

/// Issue 16 §7: a consistency group. The database's two PVCs (data and WAL) are taken as
/// one VolumeGroupSnapshot between the hooks (whatever `copyMethod` says), each PVC is
/// copied from its own member snapshot — found through the volume and snapshot handles,
/// not by name or order — and both DR copies carry the group's point in time; the group
/// snapshot is removed after the pass.
#[tokio::test]
async fn replication_consistency_group_copies_each_pvc_from_one_group_snapshot() {
    let fx = Fixture::start("pvcgrp").await;
    let env = &fx.env;
    let client = fx.client().clone();
    let work = tempfile::tempdir().unwrap();
    let kubelet = dr_syncer_testkit::kubelet::ExecKubelet::start(work.path());
    kubelet.node(&client, "pvcgrp-node").await;
    let src = "pvcgrp-src";
    source_namespace(env, src).await;
    let applier = Applier::new(client.clone(), "test");
    // PersistentVolumes with their CSI handles; `data` (from source_namespace) joins the group.
    for (pv, handle) in [
        (format!("pv-{src}"), "vol-data"),
        (format!("pv-{src}-wal"), "vol-wal"),
    ] {
        applier
            .apply(
                &json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "csi": {"driver": "csi.test", "volumeHandle": handle}}}),
            )
            .await;
    }
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), src)
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
        )
        .await
        .unwrap();
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "wal", "namespace": src, "labels": {"app": "db"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "volumeName": format!("pv-{src}-wal"), "resources": {"requests": {"storage": "1Gi"}}}}))
        .await;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), src)
        .patch_status(
            "wal",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await
        .unwrap();
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db", "namespace": src, "labels": {"app": "db"}},
            "spec": {"nodeName": "pvcgrp-node", "containers": [{"name": "postgres", "image": "pg"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                                 {"name": "w", "persistentVolumeClaim": {"claimName": "wal"}}]}}))
        .await;
    run_pod(&client, src, "db", "10.9.9.11").await;
    let dir = work.path().display().to_string();
    mapping(
        env,
        "grouped",
        src,
        json!({"copyMethod": "Clone",
            "consistencyGroups": [{"name": "db", "pvcSelector": {"matchLabels": {"app": "db"}},
                                   "volumeGroupSnapshotClassName": "grp"}],
            "hooks": [{"name": "checkpoint", "podSelector": {"matchLabels": {"app": "db"}},
                       "pre": {"command": ["sh", "-c", format!("touch {dir}/pre")]},
                       "post": {"command": ["sh", "-c", format!("touch {dir}/post")]}}]}),
    )
    .await;
    trigger(
        &client,
        &env.ctl,
        "grouped",
        "dr-syncer.io/sync-data-now",
        "1",
    )
    .await;

    // The group snapshot, after pre; nothing else yet.
    let groups: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        src,
        &dr_syncer::datasync::group::group_resource(),
    );
    let vgs = eventually("VolumeGroupSnapshot", Duration::from_secs(60), || async {
        groups
            .list(&ListParams::default().labels(TEMP))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        vgs.data["spec"],
        json!({"source": {"selector": {"matchLabels": {"app": "db"}}}, "volumeGroupSnapshotClassName": "grp"})
    );
    assert!(
        work.path().join("pre").exists(),
        "pre ran before the group snapshot"
    );
    assert!(
        !work.path().join("post").exists(),
        "post before the group snapshot was ready"
    );
    let snaps: Api<DynamicObject> = Api::namespaced_with(client.clone(), src, &snapshot_ar());
    assert!(
        snaps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no per-PVC VolumeSnapshot: the members come from the group"
    );
    assert!(
        labeled::<Pod>(&client, src, TEMP).await.is_empty(),
        "no copy before the group is ready"
    );

    // Play the group snapshot controller: contents with handles, member snapshots named
    // so that neither order nor name gives the PVC away.
    let vsc: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            group: "snapshot.storage.k8s.io".into(),
            version: "v1".into(),
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshotContent".into(),
            plural: "volumesnapshotcontents".into(),
        },
    );
    let vgsc: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            group: "groupsnapshot.storage.k8s.io".into(),
            version: "v1".into(),
            api_version: "groupsnapshot.storage.k8s.io/v1".into(),
            kind: "VolumeGroupSnapshotContent".into(),
            plural: "volumegroupsnapshotcontents".into(),
        },
    );
    let pp = PostParams::default();
    let status = |v: Value| Patch::Merge(json!({"status": v}));
    for (content, handle, member) in [
        ("pvcgrp-vsc-w", "snap-w", "member-1"),
        ("pvcgrp-vsc-d", "snap-d", "member-2"),
    ] {
        let c: DynamicObject = serde_json::from_value(json!({"apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent", "metadata": {"name": content},
            "spec": {"deletionPolicy": "Delete", "driver": "csi.test", "source": {"snapshotHandle": handle},
                     "volumeSnapshotRef": {"name": member, "namespace": src}}})).unwrap();
        vsc.create(&pp, &c).await.unwrap();
        vsc.patch_status(
            content,
            &PatchParams::default(),
            &status(json!({"snapshotHandle": handle, "readyToUse": true})),
        )
        .await
        .unwrap();
        let m: DynamicObject =
            serde_json::from_value(json!({"apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot", "metadata": {"name": member, "namespace": src},
            "spec": {"source": {"volumeSnapshotContentName": content}}}))
            .unwrap();
        snaps.create(&pp, &m).await.unwrap();
        snaps
            .patch_status(member, &PatchParams::default(), &status(json!({"readyToUse": true, "restoreSize": "1Gi",
                "boundVolumeSnapshotContentName": content, "volumeGroupSnapshotName": vgs.name_any(),
                "creationTime": "2026-12-03T09:00:00Z"})))
            .await
            .unwrap();
    }
    let gc: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1",
        "kind": "VolumeGroupSnapshotContent", "metadata": {"name": "pvcgrp-vgsc"},
        "spec": {"deletionPolicy": "Delete", "driver": "csi.test",
                 "source": {"volumeHandles": ["vol-data", "vol-wal"]},
                 "volumeGroupSnapshotRef": {"name": vgs.name_any(), "namespace": src}}}))
        .unwrap();
    vgsc.create(&pp, &gc).await.unwrap();
    vgsc.patch_status(
        "pvcgrp-vgsc",
        &PatchParams::default(),
        &status(json!({"readyToUse": true,
        "volumeSnapshotInfoList": [
            {"volumeHandle": "vol-wal", "snapshotHandle": "snap-w"},
            {"volumeHandle": "vol-data", "snapshotHandle": "snap-d"}]})),
    )
    .await
    .unwrap();
    groups
        .patch_status(&vgs.name_any(), &PatchParams::default(), &status(json!({"readyToUse": true,
            "creationTime": "2026-12-03T09:00:00Z", "boundVolumeGroupSnapshotContentName": "pvcgrp-vgsc"})))
        .await
        .unwrap();
    eventually("post hook", Duration::from_secs(30), || async {
        work.path().join("post").exists().then_some(())
    })
    .await;

    // Each PVC's copy reads its own member snapshot; both carry the group's point in time.
    let mut served = BTreeMap::new();
    while served.len() < 2 {
        let pod = eventually("next server pod", Duration::from_secs(60), || async {
            labeled::<Pod>(&client, src, TEMP)
                .await
                .into_iter()
                .find(|p| !served.contains_key(&op_of(p)))
        })
        .await;
        let op = op_of(&pod);
        let pvc = pod.labels()["dr-syncer.io/pvc"].clone();
        let temp = one::<PersistentVolumeClaim>(
            &client,
            src,
            &format!("dr-syncer.io/operation={op}"),
            "temporary PVC",
        )
        .await;
        let from = temp.spec.unwrap().data_source.unwrap();
        assert_eq!(
            (from.kind.as_str(), from.name.as_str()),
            (
                "VolumeSnapshot",
                if pvc == "data" {
                    "member-2"
                } else {
                    "member-1"
                }
            ),
            "{pvc}"
        );
        let job = fx
            .serve(
                src,
                &pod,
                &format!("10.1.0.{}", 20 + served.len()),
                "sync Job",
            )
            .await;
        finish_job(&client, &job, true, REPORT).await;
        served.insert(op, pvc);
    }
    // The status shows a pass's results once all of its syncs ended.
    for (op, pvc) in &served {
        let v = finished(&client, &env.ctl, "grouped", op).await;
        assert_eq!(
            v.result,
            Some(dr_syncer::api::PvcSyncResult::Succeeded),
            "{pvc}: {:?}",
            v.message
        );
        assert_eq!(
            v.point_in_time.unwrap().0.to_string(),
            "2026-12-03T09:00:00Z",
            "{pvc}"
        );
    }
    let mut pvcs: Vec<_> = served.into_values().collect();
    pvcs.sort();
    assert_eq!(pvcs, ["data", "wal"]);
    eventually(
        "group snapshot removed",
        Duration::from_secs(30),
        || async {
            groups
                .list(&ListParams::default().labels(TEMP))
                .await
                .unwrap()
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let execs = kubelet.execs();
    assert_eq!(
        execs.len(),
        2,
        "pre and post once for the group, not per PVC: {execs:?}"
    );
}
