//! The Kubernetes objects of one PVC sync operation, built as pure functions of the
//! operation: the point-in-time source (VolumeSnapshot and/or temporary PVC), the volume
//! server pod and its key Secret on the source side; the destination PVC, the job Secret and
//! the `pvc-sync` Job on the DR side. Every temporary object carries the operation's labels,
//! which is how cleanup (and the sweep after a restart) finds it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceRequirements, Secret};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::api::{CopyMethod, Ownership};
use crate::export::policy::Policy;
use crate::export::resource::Registry;

/// Port the volume server listens on inside its pod.
pub const SERVE_PORT: u16 = 2223;
/// Where volumes are mounted in the server pod and the Job.
pub const DATA_DIR: &str = "/data";
/// Where key Secrets are mounted.
pub const KEYS_DIR: &str = "/etc/dr-syncer/keys";
/// Label on every temporary object: the operation id.
pub const OPERATION: &str = "dr-syncer.io/operation";
/// Label on every temporary object: the mapping (`<namespace>.<name>`, shortened to fit).
pub const MAPPING: &str = "dr-syncer.io/mapping";
/// Label on every temporary object: `"true"`.
pub const TEMPORARY: &str = "dr-syncer.io/temporary";
/// Label: the source PVC name.
pub const PVC: &str = "dr-syncer.io/pvc";
/// The non-root user of the agent's bastion, and of the volume server and the Job when
/// `runAsRoot` is off (distroless `nonroot`).
pub const USER: i64 = 65532;
/// Capabilities of the volume server (reader) as uid 0: read whatever the mode and owner.
pub const READER_CAPS: &[&str] = &["DAC_READ_SEARCH"];
/// Capabilities of the `pvc-sync` Job (writer) as uid 0: create and replace files in any
/// directory, give them their owners, keep their modes (setgid included) and times.
pub const WRITER_CAPS: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"];
/// Default percentage of the DR copy's files or bytes a sync may delete before the
/// deletion breaker holds it.
pub const DEFAULT_MAX_DELETE_PERCENT: i32 = 50;

/// Everything that shapes the objects of one operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Short random id, unique per operation.
    pub id: String,
    /// Mapping label value (see [`mapping_label`]).
    pub mapping: String,
    /// How the point-in-time source is made.
    pub method: CopyMethod,
    /// The source PVC as read from the source cluster.
    pub source: PersistentVolumeClaim,
    /// Destination namespace.
    pub dest_namespace: String,
    /// Container image running `dr-syncer`.
    pub image: String,
    /// Image pull policy.
    pub pull_policy: Option<String>,
    /// Run the server pod and the Job as uid 0 with only the capabilities each needs
    /// ([`READER_CAPS`], [`WRITER_CAPS`]); else as [`USER`] without capabilities.
    pub run_as_root: bool,
    /// `Some(false)`: run the server pod and the Job in a user namespace.
    pub host_users: Option<bool>,
    /// Keep file ownership (`--ownership require`) or not (`ignore`).
    pub ownership: Ownership,
    /// The deletion breaker's threshold (`--max-delete-percent`).
    pub max_delete_percent: i32,
    /// The batch the user released (`--allow-deletions`), from the mapping's
    /// `dr-syncer.io/allow-data-deletion` annotation.
    pub allow_deletions: Option<String>,
    /// Resources of the server's and the Job's containers (default when `None`).
    pub resources: Option<ResourceRequirements>,
    /// Node of the live volume (`Direct`).
    pub node: Option<String>,
    /// VolumeSnapshotClass (`Snapshot`).
    pub snapshot_class: Option<String>,
    /// Deadline of the whole operation.
    pub timeout: Duration,
    /// Bandwidth limit in KiB/s.
    pub bwlimit_kib: Option<i32>,
    /// Commands run in the pods that use the volume around the point in time (empty for
    /// a consistency group's member: the group ran them around its snapshot).
    pub hooks: Vec<crate::api::VolumeHook>,
    /// The member snapshot to copy when the PVC belongs to a consistency group.
    pub group: Option<super::group::GroupMember>,
}

/// A label value for a mapping: `<namespace>.<name>` (see [`label_value`]).
pub fn mapping_label(namespace: &str, name: &str) -> String {
    label_value(&format!("{namespace}.{name}"))
}

/// `s` as a label value: itself when it fits the 63 characters a label value may have,
/// else a prefix and a hash of the whole (distinct names stay distinct); never ending in
/// `-`, `_` or `.`, which label values may not.
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 && s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return s.to_string();
    }
    let hash = blake3::hash(s.as_bytes()).to_hex();
    let prefix: String = s.chars().take(54).collect();
    let prefix = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        hash[..16].to_string()
    } else {
        format!("{prefix}-{}", &hash[..8])
    }
}

impl Operation {
    /// Source PVC name.
    pub fn pvc_name(&self) -> String {
        self.source.metadata.name.clone().unwrap_or_default()
    }

    /// Source namespace.
    pub fn source_namespace(&self) -> String {
        self.source.metadata.namespace.clone().unwrap_or_default()
    }

    /// Name of a temporary object of this operation.
    pub fn name(&self, role: &str) -> String {
        format!("dr-syncer-{}-{role}", self.id)
    }

    /// Labels of every temporary object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), "dr-syncer".into()),
            ("app.kubernetes.io/name".into(), "dr-syncer-pvc-sync".into()),
            (TEMPORARY.into(), "true".into()),
            (OPERATION.into(), self.id.clone()),
            (MAPPING.into(), self.mapping.clone()),
            (PVC.into(), label_value(&self.pvc_name())),
        ])
    }

    fn meta(&self, role: &str, namespace: &str) -> Value {
        json!({"name": self.name(role), "namespace": namespace, "labels": self.labels()})
    }

    /// `Snapshot`: the VolumeSnapshot the copy reads — the consistency group's member
    /// snapshot, else the operation's own.
    pub fn snapshot_name(&self) -> String {
        match &self.group {
            Some(m) => m.snapshot.clone(),
            None => self.name("snap"),
        }
    }

    /// `Snapshot`: the VolumeSnapshot of the source PVC.
    pub fn source_snapshot(&self) -> DynamicObject {
        let mut spec = json!({"source": {"persistentVolumeClaimName": self.pvc_name()}});
        if let Some(c) = &self.snapshot_class {
            spec["volumeSnapshotClassName"] = json!(c);
        }
        serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": self.meta("snap", &self.source_namespace()),
            "spec": spec,
        }))
        .expect("valid VolumeSnapshot")
    }

    /// `Snapshot` and `Clone`: the temporary PVC the server pod reads, restored from the
    /// snapshot (`restore_size` when the snapshot reports one) or cloned from the source.
    pub fn temp_claim(&self, restore_size: Option<&str>) -> PersistentVolumeClaim {
        let spec = self.source.spec.clone().unwrap_or_default();
        let requested = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone());
        let size = restore_size
            .map(str::to_string)
            .or(requested)
            .unwrap_or("1Gi".into());
        let source = match self.method {
            CopyMethod::Snapshot => json!({
                "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                "name": self.snapshot_name(),
            }),
            _ => json!({"kind": "PersistentVolumeClaim", "name": self.pvc_name()}),
        };
        let mut s = json!({
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "resources": {"requests": {"storage": size}},
            "dataSource": source,
        });
        if let Some(sc) = spec.storage_class_name {
            s["storageClassName"] = json!(sc);
        }
        if let Some(m) = spec.volume_mode {
            s["volumeMode"] = json!(m);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": self.meta("src", &self.source_namespace()),
            "spec": s,
        }))
        .expect("valid PVC")
    }

    /// The pod and container security contexts of the server (`writer` false) or the Job.
    /// Kubernetes grants added capabilities only to uid-0 containers (a non-root container
    /// gets no ambient capabilities, and `allowPrivilegeEscalation: false` disables file
    /// capabilities), so keeping ownership means uid 0 with exactly the capabilities the
    /// side needs, and nothing else.
    pub fn security(&self, writer: bool) -> (Value, Value) {
        let caps = match (self.run_as_root, writer) {
            (true, false) => json!({"drop": ["ALL"], "add": READER_CAPS}),
            (true, true) => json!({"drop": ["ALL"], "add": WRITER_CAPS}),
            (false, _) => json!({"drop": ["ALL"]}),
        };
        let user = if self.run_as_root { 0 } else { USER };
        let mut pod = json!({
            "runAsNonRoot": !self.run_as_root,
            "runAsUser": user, "runAsGroup": user,
            "seccompProfile": {"type": "RuntimeDefault"},
        });
        // fsGroup makes the kubelet chown the volume: fine for our own DR volume, never for
        // a source volume (Direct would rewrite the live data's group).
        if writer && !self.run_as_root {
            pod["fsGroup"] = json!(USER);
            pod["fsGroupChangePolicy"] = json!("OnRootMismatch");
        }
        let container = json!({
            "allowPrivilegeEscalation": false, "privileged": false,
            "readOnlyRootFilesystem": true, "capabilities": caps,
        });
        (pod, container)
    }

    fn container(&self, args: Vec<String>, writer: bool, claim_read_only: bool) -> Value {
        let (_, sc) = self.security(writer);
        let mut c = json!({
            "name": "dr-syncer", "image": self.image, "args": args,
            "securityContext": sc,
            "volumeMounts": [
                {"name": "data", "mountPath": DATA_DIR, "readOnly": claim_read_only},
                {"name": "keys", "mountPath": KEYS_DIR, "readOnly": true},
            ],
            "resources": match &self.resources {
                Some(r) => serde_json::to_value(r).expect("resources serialize"),
                None => json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}),
            },
            "terminationMessagePolicy": "File",
        });
        if let Some(p) = &self.pull_policy {
            c["imagePullPolicy"] = json!(p);
        }
        c
    }

    /// The Secret of the volume server: its one-off host key and the one client key it
    /// accepts (the operation's, with an `expiry-time`).
    pub fn serve_secret(&self, host_key: &str, authorized_keys: &str) -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": self.meta("serve", &self.source_namespace()),
            "type": "Opaque",
            "stringData": {"host_key": host_key, "authorized_keys": authorized_keys},
        }))
        .expect("valid Secret")
    }

    /// The volume server pod: mounts the point-in-time copy (or, `Direct`, the live PVC on
    /// its node) read-only and serves it with `dr-syncer agent serve-volume`.
    pub fn serve_pod(&self) -> Pod {
        let claim = match self.method {
            CopyMethod::Direct => self.pvc_name(),
            _ => self.name("src"),
        };
        let args = [
            "agent",
            "serve-volume",
            "--root",
            DATA_DIR,
            "--listen",
            &format!("0.0.0.0:{SERVE_PORT}"),
            "--host-key",
            &format!("{KEYS_DIR}/host_key"),
            "--authorized-keys",
            &format!("{KEYS_DIR}/authorized_keys"),
        ]
        .map(String::from)
        .to_vec();
        let mut container = self.container(args, false, true);
        container["ports"] = json!([{"name": "ssh", "containerPort": SERVE_PORT}]);
        // The root file system is read-only; the server keeps what it needs per manifest
        // entry (about 60 bytes) in temporary files here instead of in memory.
        container["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"name": "scratch", "mountPath": "/tmp"}));
        container["readinessProbe"] =
            json!({"tcpSocket": {"port": SERVE_PORT}, "periodSeconds": 2});
        let (pod_sc, _) = self.security(false);
        let mut spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 5,
            "activeDeadlineSeconds": self.timeout.as_secs().max(60),
            "securityContext": pod_sc,
            "containers": [container],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}},
                // 0444: the pod sets no fsGroup (see `security`), so the non-root user reads
                // the one-off key as "other"; the container runs nothing else.
                {"name": "keys", "secret": {"secretName": self.name("serve"), "defaultMode": 0o444}},
                // 60 bytes per entry: room for 30 million files.
                {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}},
            ],
        });
        if let Some(node) = &self.node {
            spec["nodeName"] = json!(node);
        }
        if let Some(h) = self.host_users {
            spec["hostUsers"] = json!(h);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": self.meta("serve", &self.source_namespace()),
            "spec": spec,
        }))
        .expect("valid Pod")
    }

    /// The DR job's Secret: the operation's one-off client key (never the mapping's) and
    /// the pinned host keys.
    pub fn job_secret(&self, client_key: &str, known_hosts: &str) -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": self.meta("job", &self.dest_namespace),
            "type": "Opaque",
            "stringData": {"identity": client_key, "known_hosts": known_hosts},
        }))
        .expect("valid Secret")
    }

    /// The DR Job: `dr-syncer pvc-sync` from the server pod through the bastion into the
    /// destination PVC; its summary lands in the termination message.
    pub fn sync_job(&self, dest_pvc: &str, server: &str, bastion: &str) -> Job {
        let mut args = [
            "pvc-sync",
            "--from",
            &format!("ssh://{server}"),
            "--jump",
            &format!("ssh://{bastion}"),
            "--to",
            DATA_DIR,
            "--identity",
            &format!("{KEYS_DIR}/identity"),
            "--known-hosts",
            &format!("{KEYS_DIR}/known_hosts"),
            "--connect-timeout",
            "3m",
            "--summary-file",
            "/dev/termination-log",
            "-o",
            "json",
        ]
        .map(String::from)
        .to_vec();
        if let Some(kib) = self.bwlimit_kib.filter(|k| *k > 0) {
            args.extend(["--bwlimit".into(), (i64::from(kib) * 1024).to_string()]);
        }
        let ownership = match self.ownership {
            Ownership::Preserve => "require",
            Ownership::Ignore => "ignore",
        };
        args.extend([
            "--ownership".into(),
            ownership.into(),
            "--max-delete-percent".into(),
            self.max_delete_percent.clamp(0, 100).to_string(),
        ]);
        if let Some(batch) = self.allow_deletions.as_deref().filter(|b| !b.is_empty()) {
            args.extend(["--allow-deletions".into(), batch.into()]);
        }
        // A live volume is not a point in time: resend what changed while it was read,
        // and report what is still changing.
        if self.method == CopyMethod::Direct {
            args.push("--recheck".into());
        }
        let (pod_sc, _) = self.security(true);
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": pod_sc,
            "containers": [self.container(args, true, false)],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": dest_pvc}},
                {"name": "keys", "secret": {"secretName": self.name("job"), "defaultMode": 0o440}},
            ],
        });
        if let Some(h) = self.host_users {
            pod_spec["hostUsers"] = json!(h);
        }
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": self.meta("job", &self.dest_namespace),
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": self.timeout.as_secs().max(60),
                "template": {
                    "metadata": {"labels": self.labels()},
                    "spec": pod_spec,
                },
            },
        }))
        .expect("valid Job")
    }
}

/// `known_hosts` for the DR job: the agent's host keys at the bastion address and the
/// operation's one-off host key at the server address.
pub fn known_hosts(bastion: &str, agent_pins: &[String], server: &str, server_pin: &str) -> String {
    let pattern = |addr: &str| match crate::pvc::access::parse_target(addr) {
        Ok((host, port)) => format!("[{host}]:{port}"),
        Err(_) => addr.to_string(),
    };
    let mut out = String::new();
    for pin in agent_pins {
        out.push_str(&format!("{} {pin}\n", pattern(bastion)));
    }
    out.push_str(&format!("{} {}\n", pattern(server), server_pin.trim()));
    out
}

/// One allow-list line: the server pod, only for the operation's one-off client key, until
/// the operation's deadline.
pub fn allow_line(server: &str, client_fingerprint: &str, until: jiff::Timestamp) -> String {
    format!("{server} {client_fingerprint} expires={until}\n")
}

/// The destination PVC when it does not exist yet: the source PVC through the same
/// cleaning and transforms as a manifest export (storage-class and access-mode mappings,
/// namespace), so the git-managed copy and this one agree.
pub fn destination_claim(
    source: &PersistentVolumeClaim,
    dest_ns: &str,
    policy: &Policy,
) -> PersistentVolumeClaim {
    let registry = Registry::builtin_shared();
    let rt = registry
        .lookup("v1", "PersistentVolumeClaim")
        .expect("built-in PVC type")
        .clone();
    let mut value = serde_json::to_value(source).expect("PVC serializes");
    let source_ns = source.metadata.namespace.clone().unwrap_or_default();
    crate::export::clean::clean(&mut value, &rt, policy);
    crate::export::builtin::apply(
        &mut value,
        &rt,
        &source_ns,
        dest_ns,
        policy,
        &Default::default(),
    );
    value["metadata"]["namespace"] = json!(dest_ns);
    let labels = value["metadata"]
        .as_object_mut()
        .expect("metadata is a map")
        .entry("labels")
        .or_insert_with(|| json!({}));
    labels[crate::api::keys::MANAGED_BY] = json!("dr-syncer");
    serde_json::from_value(value).expect("a cleaned PVC is a PVC")
}

#[cfg(test)]
mod tests;
