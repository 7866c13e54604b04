//! `RemoteCluster`: how to reach another cluster (a source or the DR side) and whether it
//! runs the PVC agent.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A cluster reached through a kubeconfig stored in a Secret.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dr-syncer.io",
    version = "v1alpha1",
    kind = "RemoteCluster",
    namespaced,
    status = "RemoteClusterStatus",
    shortname = "rc",
    category = "dr-syncer",
    doc = "A cluster dr-syncer reads from or applies to, reached through a kubeconfig Secret",
    printcolumn(name = "Health", type_ = "string", json_path = ".status.health"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "PVC Agent",
        type_ = "boolean",
        json_path = ".spec.pvcSync.enabled",
        priority = 1
    ),
    printcolumn(
        name = "Last Check",
        type_ = "date",
        json_path = ".status.lastCheckTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterSpec {
    /// Secret holding the kubeconfig. TLS is always verified: the kubeconfig must carry the
    /// cluster's CA unless the server has a publicly trusted certificate.
    pub kubeconfig_secret_ref: KubeconfigSecretRef,
    /// How often the controller re-checks the cluster's health.
    #[serde(default = "default_health_interval")]
    #[schemars(length(max = 32), regex(pattern = super::common::DURATION_PATTERN))]
    pub health_check_interval: String,
    /// PVC data-sync agent deployed into this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_sync: Option<PvcSyncSpec>,
}

fn default_health_interval() -> String {
    "5m".into()
}

/// Where the kubeconfig lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Secret namespace; defaults to the RemoteCluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Key of the kubeconfig inside the Secret.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

/// The PVC agent: a DaemonSet serving as SSH bastion on the source cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSyncSpec {
    /// Deploy the agent into this cluster.
    #[serde(default)]
    pub enabled: bool,
    /// Agent image; defaults to the controller's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// SSH port of the bastion.
    #[serde(default = "default_ssh_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Nodes the agent runs on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the agent pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Resources of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PriorityClass of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Run the volume server (reader) and the DR `pvc-sync` Job (writer) as uid 0 with
    /// only the capabilities each needs: the reader gets `DAC_READ_SEARCH` (read any file
    /// and directory, whatever its mode and owner), the writer `CHOWN`, `DAC_OVERRIDE`,
    /// `FOWNER` and `FSETID` (recreate files with their owners and modes); every other
    /// capability is dropped, privilege escalation is off and the root filesystem
    /// read-only. On by default: Kubernetes grants added capabilities only to uid-0
    /// containers (a non-root container gets no ambient capabilities), so a copy that keeps
    /// ownership needs uid 0. Pod Security: the writer's capabilities are within the
    /// `baseline` level, the reader's `DAC_READ_SEARCH` is not, so a source namespace
    /// enforcing `baseline` or `restricted` refuses the volume server pod (it needs
    /// `privileged`). `false` runs both as uid 65532 without any capability, as namespaces
    /// enforcing `restricted` require; then files the reader may not read fail the sync or
    /// are reported unreadable, and files of other owners fail the sync unless the
    /// mapping's `dataSyncConfig.ownership` is `Ignore`. The agent's bastion always runs as
    /// uid 65532 without capabilities: it never touches volumes.
    #[serde(default = "default_true")]
    pub run_as_root: bool,
    /// `false` runs the volume server and the `pvc-sync` Job in a user namespace
    /// (`hostUsers: false`, Kubernetes 1.33+ with a runtime and filesystems that support
    /// it), so their uid 0 and capabilities are not root on the node. Unset: the cluster
    /// default (the host's user namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_users: Option<bool>,
    /// Most PVC syncs running at once against this cluster.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,
    /// Namespace of the agent in this cluster.
    #[serde(default = "default_agent_namespace")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Run the agent in the node's network namespace, so DR jobs reach it at the node's
    /// address (no LoadBalancer needed). Needs a PodSecurity level that allows hostNetwork.
    #[serde(default = "default_true")]
    pub host_network: bool,
    /// A fixed `host:port` DR jobs use to reach the bastion (a LoadBalancer or NodePort in
    /// front of the agent); by default the address of the agent pod on the volume's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 260))]
    pub endpoint: Option<String>,
    /// Rotation of the agent's SSH host key (defaults: every 720h, old key pinned 1h more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_keys: Option<super::SshKeySettings>,
}

fn default_true() -> bool {
    true
}

fn default_agent_namespace() -> String {
    "dr-syncer-agent".into()
}

fn default_ssh_port() -> i32 {
    2222
}
fn default_concurrency() -> i32 {
    4
}

/// A container image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository, e.g. `ghcr.io/dr-syncer/dr-syncer`.
    #[schemars(length(min = 1, max = 512))]
    pub repository: String,
    /// Tag or digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub tag: Option<String>,
    /// Pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when not present on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Observed state of a RemoteCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterStatus {
    /// Result of the last health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Kubernetes version the cluster reported (`v1.37.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the health was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// Why the cluster is unhealthy, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` (reachable and authorized), `KubeconfigValid`, `PvcAgentReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The PVC agent (with `spec.pvcSync.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
}

/// Observed state of the PVC agent in a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Agent pods the DaemonSet wants.
    pub desired: i32,
    /// Agent pods ready.
    pub ready: i32,
    /// SHA-256 fingerprint of the agent's SSH host key (`SHA256:…`); DR jobs pin it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
    /// The previous host key, still pinned until `previousHostKeyExpires`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_host_key_fingerprint: Option<String>,
    /// End of the previous host key's grace window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_host_key_expires: Option<Time>,
    /// When the host key was last generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_rotated_at: Option<Time>,
}

/// Health of a RemoteCluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Health {
    /// Version and namespace list answered.
    Healthy,
    /// A check failed; see `message`.
    Unhealthy,
    /// Not checked yet.
    Unknown,
}
