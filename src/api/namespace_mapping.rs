//! `NamespaceMapping`: one source namespace (or a label-selected set) replicated to one
//! destination — a path in a git repository (primary) or a DR cluster (direct apply).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DURATION_PATTERN, GitDestination, ObjectRef, SecretsSpec};

/// Desired replication of a namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "dr-syncer.io",
    version = "v1alpha1",
    kind = "NamespaceMapping",
    namespaced,
    status = "NamespaceMappingStatus",
    shortname = "nsm",
    category = "dr-syncer",
    doc = "Replicates one source namespace (or a label-selected set) into a git repository or a DR cluster",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.replicationMode"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourceNamespace"),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".spec.destinationNamespace"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Commit",
        type_ = "string",
        json_path = ".status.lastCommit.sha",
        priority = 1
    ),
    printcolumn(
        name = "Next Sync",
        type_ = "date",
        json_path = ".status.nextSyncTime",
        priority = 1
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".status.owner",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("has(self.sourceNamespace) != has(self.namespaceSelector)").message("exactly one of spec.sourceNamespace or spec.namespaceSelector must be set").field_path(".sourceNamespace"),
    validation = Rule::new("self.replicationMode != 'Scheduled' || has(self.schedule)").message("spec.schedule is required when replicationMode is Scheduled").field_path(".schedule"),
    validation = Rule::new("has(self.destination) || has(self.clusterMappingRef)").message("spec.destination is required unless spec.clusterMappingRef provides a default destination").field_path(".destination"),
    validation = Rule::new("!has(self.destinationNamespaceSuffix) || has(self.namespaceSelector)").message("spec.destinationNamespaceSuffix only applies together with spec.namespaceSelector").field_path(".destinationNamespaceSuffix"),
    validation = Rule::new("!has(self.destinationNamespace) || has(self.sourceNamespace)").message("spec.destinationNamespace cannot be combined with spec.namespaceSelector; use destinationNamespaceSuffix").field_path(".destinationNamespace")
)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceMappingSpec {
    /// Stop all syncing for this mapping; status is kept.
    #[serde(default)]
    pub paused: bool,
    /// When to sync: `Continuous` (watch and commit after a debounce window), `Scheduled`
    /// (on `schedule`) or `Manual` (on the `dr-syncer.io/sync-now` annotation).
    #[serde(default)]
    pub replication_mode: ReplicationMode,
    /// The recovery point objective: how old the last complete sync (and each PVC's last
    /// good copy) may get. `dr-syncer status` shows an RPO above it in red; unset: the
    /// default of the tool that reads it (`status --rpo-target`, 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub rpo_target: Option<String>,
    /// Cron schedule (5 fields: minute hour day-of-month month day-of-week, UTC; ranges,
    /// lists, steps and names; or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    /// Required in `Scheduled` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(schedule_rule()).message("schedule must be a 5-field cron expression (minute hour day-of-month month day-of-week, values in range; '*', ranges a-b, lists a,b and steps /n) or one of @yearly, @monthly, @weekly, @daily, @hourly"))]
    pub schedule: Option<String>,
    /// Tuning of `Continuous` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<ContinuousSpec>,
    /// RemoteCluster to read from; empty means the cluster the controller runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub source_cluster: Option<String>,
    /// Namespace to replicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub source_namespace: Option<String>,
    /// Replicate every namespace whose labels match (one export per namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// With `namespaceSelector`: appended to each source namespace name to form its
    /// destination namespace (e.g. `-dr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[-a-z0-9]*[a-z0-9]$"))]
    pub destination_namespace_suffix: Option<String>,
    /// Namespace name on the DR side; defaults to the source namespace's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub destination_namespace: Option<String>,
    /// ClusterMapping providing clusters and defaults (git destination, age recipients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_mapping_ref: Option<ObjectRef>,
    /// Resource types to export: plural (`deployments`), `plural.group`
    /// (`deployments.apps`), short names (`pvc`) or `*`. Empty means every namespaced type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*|[A-Za-z0-9-]+(\.[A-Za-z0-9.-]+)?)$")
        )
    )]
    pub resource_types: Vec<String>,
    /// Resource types never exported, in the same notation as `resourceTypes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[A-Za-z0-9-]+(\.[A-Za-z0-9.-]+)?$")
        )
    )]
    pub exclude_resource_types: Vec<String>,
    /// Objects never exported, as `name` or `resource/name` (e.g. `configmaps/cache`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 512)))]
    pub exclude_names: Vec<String>,
    /// Objects whose labels match are never exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_selector: Option<LabelSelector>,
    /// Scale Deployments, StatefulSets and ReplicaSets to zero (recording the original in
    /// `dr-syncer.io/original-replicas`) and suspend CronJobs on the DR side.
    #[serde(default = "default_true")]
    pub scale_to_zero: bool,
    /// Keep Service `nodePort`s the apiserver allocated (not only those set explicitly), for
    /// load balancers outside the cluster that point at fixed node ports.
    #[serde(default)]
    pub preserve_node_ports: bool,
    /// Write the CustomResourceDefinition of every exported custom resource into
    /// `_cluster/` (applied before the namespaces, never pruned), so the DR cluster can
    /// apply the custom resources. Turn off where the DR platform installs CRDs itself.
    #[serde(default = "default_true", rename = "exportCRDs")]
    pub export_crds: bool,
    /// PersistentVolumeClaim handling and volume data replication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_config: Option<PvcConfig>,
    /// Container image prefixes rewritten on the DR side (registry mirrors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub image_mappings: Vec<StringMapping>,
    /// Ingress hosts rewritten on the DR side (exact host, or `*.domain` suffix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ingress_host_mappings: Vec<StringMapping>,
    /// User patches applied after the built-in transforms and before encryption.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub transforms: Vec<Transform>,
    /// Where the manifests go; may be omitted when the ClusterMapping provides a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Secret encryption (SOPS with age); without recipients Secrets are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSpec>,
    /// Mass-deletion breaker: a sync that would delete more than this is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_safety: Option<DeletionSafety>,
}

fn default_true() -> bool {
    true
}

/// The CEL rule validating `schedule`, built from per-field ranges so out-of-range values
/// (minute 60, month 13, ...) are rejected by the apiserver, not just malformed ones.
pub fn schedule_rule() -> String {
    format!("self.matches('{}')", schedule_pattern())
}

/// Regular expression (RE2 and Rust `regex` compatible) matching a valid `schedule`.
pub fn schedule_pattern() -> String {
    const MINUTE: &str = "[0-5]?[0-9]";
    const HOUR: &str = "([01]?[0-9]|2[0-3])";
    const DAY: &str = "(0?[1-9]|[12][0-9]|3[01])";
    const MONTH: &str = "(0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))";
    const WEEKDAY: &str = "([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat))";
    let field = |v: &str| {
        let item = format!("([*]|{v}(-{v})?)(/[1-9][0-9]?)?");
        format!("{item}(,{item})*")
    };
    let fields = [MINUTE, HOUR, DAY, MONTH, WEEKDAY].map(field).join(" +");
    format!("^( *@(yearly|annually|monthly|weekly|daily|midnight|hourly) *| *{fields} *)$")
}

/// Replication trigger.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReplicationMode {
    /// Watch the source and commit changes after a debounce window (the default).
    #[default]
    Continuous,
    /// Sync on `schedule`.
    Scheduled,
    /// Sync when the `dr-syncer.io/sync-now` annotation gets a new value.
    Manual,
}

/// Tuning of `Continuous` mode: bursts of changes become one commit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousSpec {
    /// Quiet time after the last change before a sync starts.
    #[serde(default = "default_debounce")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub debounce: String,
    /// Longest a change waits while changes keep arriving.
    #[serde(default = "default_max_delay")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub max_delay: String,
    /// Full re-export even without watch events (catches anything a watch missed).
    #[serde(default = "default_resync")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub resync_interval: String,
}

fn default_debounce() -> String {
    "5s".into()
}
fn default_max_delay() -> String {
    "60s".into()
}
fn default_resync() -> String {
    "1h".into()
}

/// A `from` → `to` rewrite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct StringMapping {
    /// Value (or prefix, for images) on the source side.
    #[schemars(length(min = 1, max = 512))]
    pub from: String,
    /// Replacement on the DR side.
    #[schemars(length(min = 1, max = 512))]
    pub to: String,
}

/// PersistentVolumeClaim handling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcConfig {
    /// StorageClass names rewritten on the DR side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub storage_class_mappings: Vec<StringMapping>,
    /// Access modes rewritten on the DR side (e.g. `ReadWriteMany` → `ReadWriteOnce`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub access_mode_mappings: Vec<AccessModeMapping>,
    /// Keep volume attributes (volumeMode, dataSource, selector) exactly as on the source.
    #[serde(default)]
    pub preserve_volume_attributes: bool,
    /// Keep `volumeName` and binding annotations (static provisioning with pre-created PVs).
    #[serde(default)]
    pub sync_persistent_volumes: bool,
    /// Replicate volume contents with the PVC agent.
    #[serde(default)]
    pub sync_data: bool,
    /// Volume data replication settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sync_config: Option<DataSyncConfig>,
}

/// Access mode rewrite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct AccessModeMapping {
    /// Access mode on the source side.
    pub from: AccessMode,
    /// Access mode on the DR side.
    pub to: AccessMode,
}

/// A PersistentVolume access mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(clippy::enum_variant_names)] // the names are Kubernetes' own
pub enum AccessMode {
    /// Read-write by one node.
    ReadWriteOnce,
    /// Read-only by many nodes.
    ReadOnlyMany,
    /// Read-write by many nodes.
    ReadWriteMany,
    /// Read-write by one pod.
    ReadWriteOncePod,
}

/// Volume data replication settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSyncConfig {
    /// Cron schedule for data syncs; defaults to the mapping's `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(schedule_rule()).message("dataSyncConfig.schedule must be a 5-field cron expression or @hourly-style macro"))]
    pub schedule: Option<String>,
    /// Point-in-time source: `Snapshot` (default when `volumeSnapshotClassName` is set),
    /// `Clone`, or `Direct` (the live volume, mounted read-only on its node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_method: Option<CopyMethod>,
    /// VolumeSnapshotClass for `Snapshot` copies on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_snapshot_class_name: Option<String>,
    /// Keep this many VolumeSnapshots of the destination after good syncs (0 = none).
    /// Unset: 2 (the last two good copies) when the DR cluster has a VolumeSnapshotClass whose
    /// `driver` is the provisioner of the destination PVC's StorageClass (that class is
    /// used), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub keep_snapshots: Option<i32>,
    /// File ownership on the DR copy (see [`Ownership`]; default `Preserve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<Ownership>,
    /// Deletion breaker: a sync that would delete more than this percentage of the DR
    /// copy's files or bytes (and at least 10 files or 1 MiB) changes nothing and is held
    /// until the annotation `dr-syncer.io/allow-data-deletion` names its batch (shown in
    /// the volume's status and the `PvcDeletionsHeld` Event). Default 50; 100 turns the
    /// breaker off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_delete_percent: Option<i32>,
    /// Resources of the `pvc-sync` Job's and the volume server's containers (default:
    /// requests cpu 100m, memory 64Mi; limit memory 512Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Bandwidth limit in KiB/s (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bandwidth_limit_kib: Option<i32>,
    /// Give up a single PVC sync after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Commands run in the application's pods around the point in time (Velero-style
    /// pre/post hooks, through the source cluster's `pods/exec`): e.g. a database's
    /// checkpoint or `fsfreeze` before the VolumeSnapshot and the thaw after it. Needs the
    /// chart's `rbac.execHooks` (and, for a tenant, its TenantPolicy's `execHooks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hooks: Vec<VolumeHook>,
    /// Volumes that must share one point in time (a database's data and WAL volumes):
    /// each group is taken as one CSI VolumeGroupSnapshot, and each member PVC is copied
    /// from its member snapshot (copy method `Snapshot` for them, whatever `copyMethod`
    /// says). The source cluster must serve `groupsnapshot.storage.k8s.io/v1` and its
    /// driver group snapshots; a group that cannot be taken whole fails all its members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub consistency_groups: Vec<ConsistencyGroup>,
}

/// PVCs of a source namespace snapshotted together (see `consistencyGroups`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyGroup {
    /// Name shown in status messages.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The PVCs of the group (the VolumeGroupSnapshot's `source.selector`). A PVC may
    /// belong to one group only.
    pub pvc_selector: LabelSelector,
    /// VolumeGroupSnapshotClass; unset: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_group_snapshot_class_name: Option<String>,
}

/// Commands run in the pods that use a volume, before and after its point in time is taken.
///
/// For each PVC sync, the hook runs in every Running pod of the source namespace that
/// mounts the PVC and matches `podSelector`. `pre` runs before the point in time is taken;
/// `post` once it is fixed — after the VolumeSnapshot is ready (`Snapshot`), after the
/// clone's volume is attached to the copy's server pod (`Clone`), after the whole copy
/// (`Direct`) — and also when the sync fails or times out after `pre` started, so a frozen
/// application is always thawed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeHook {
    /// Name shown in status messages and logs.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Which of the pods that mount the volume run the hook; unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Container the commands run in; unset: the pod's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
    /// Run before the point in time is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<HookCommand>,
    /// Run once the point in time is fixed (or the sync failed after `pre` started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<HookCommand>,
}

/// One hook command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookCommand {
    /// The command and its arguments, run without a shell (use `["sh", "-c", "..."]` for
    /// one).
    #[schemars(length(min = 1, max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Give up waiting after this long (default 30s). The command is not killed in the
    /// container then; bound it itself (e.g. with `timeout`) when that matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// What a failure (exit code other than 0, exec error, timeout) does; default `Fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<HookErrorPolicy>,
}

/// What a failed hook command does to the sync.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HookErrorPolicy {
    /// The sync fails with the hook's error (a failed `pre` copies nothing; `post` still
    /// runs where `pre` started).
    #[default]
    Fail,
    /// The sync goes on; the error is named in the volume's status message.
    Continue,
}

/// File ownership on the DR copy: `Preserve` (default) gives every file its source owner
/// and group, and fails the sync when one cannot be set (the `pvc-sync` Job needs the
/// source RemoteCluster's `spec.pvcSync.runAsRoot`, the default); `Ignore` keeps the
/// writer's ids where the source's cannot be set and counts those files in
/// `status.pvcData.volumes[].ownershipNotKept` (applications that check the owner of their
/// data directory, like PostgreSQL, may then refuse to start on the copy).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Ownership {
    /// Every file gets its source owner and group; a sync that cannot set one fails.
    #[default]
    Preserve,
    /// Files keep the writer's ids where the source's cannot be set (counted in status).
    Ignore,
}

/// How the point-in-time source of a volume sync is made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CopyMethod {
    /// VolumeSnapshot, then a temporary PVC from it.
    Snapshot,
    /// CSI clone into a temporary PVC.
    Clone,
    /// The live volume, mounted read-only on the node that has it.
    Direct,
}

/// A user patch and the objects it applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jsonPatch) != has(self.mergePatch)").message("each transform needs exactly one of jsonPatch or mergePatch"))]
pub struct Transform {
    /// Name shown in logs and the export summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub name: Option<String>,
    /// Which objects the patch applies to; all conditions must hold. Empty matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TransformMatch>,
    /// RFC 6902 JSON patch (a failing `test` op skips the object's patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub json_patch: Option<Vec<JsonPatchOp>>,
    /// RFC 7386 JSON merge patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::any_object")]
    pub merge_patch: Option<serde_json::Value>,
}

/// Conditions selecting the objects a transform applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformMatch {
    /// Resource types (`deployments`, `deployments.apps`, short names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub resource_types: Vec<String>,
    /// Source namespaces (useful with `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Regular expression the object name must match (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub name_regex: Option<String>,
    /// Labels the object must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// One RFC 6902 operation.
///
/// That `add`, `replace` and `test` carry a `value` is checked when the transform is
/// compiled, not by CEL: `value` is schemaless, and CEL cannot see fields without a type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!(self.op in ['move', 'copy']) || has(self.from)").message("move and copy operations need from"))]
pub struct JsonPatchOp {
    /// Operation.
    pub op: JsonPatchVerb,
    /// JSON pointer to the target location.
    #[schemars(length(max = 1024), regex(pattern = r"^(/.*)?$"))]
    pub path: String,
    /// JSON pointer to the source location (`move`, `copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^(/.*)?$"))]
    pub from: Option<String>,
    /// Value (`add`, `replace`, `test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::any_value")]
    pub value: Option<serde_json::Value>,
}

/// RFC 6902 operation names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JsonPatchVerb {
    /// Add a value.
    Add,
    /// Remove a value.
    Remove,
    /// Replace a value.
    Replace,
    /// Move a value.
    Move,
    /// Copy a value.
    Copy,
    /// Require a value to be equal (else the patch is not applied).
    Test,
}

/// Exactly one destination.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.git) != has(self.cluster)").message("exactly one of destination.git or destination.cluster must be set"))]
pub struct Destination {
    /// Commit manifests to a git repository (reviewable, pulled by Flux or Argo CD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitDestination>,
    /// Server-side apply straight into a DR cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterDestination>,
}

/// Direct apply into a RemoteCluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDestination {
    /// The DR RemoteCluster.
    pub remote_cluster_ref: ObjectRef,
    /// Delete objects this mapping applied earlier that no longer exist on the source
    /// (never touches objects without `dr-syncer.io/managed-by`).
    #[serde(default = "default_true")]
    pub prune: bool,
}

/// Mass-deletion breaker thresholds. A sync that would delete more than `maxDeletePercent`
/// of the mapping's objects, or more than `maxDeleteCount`, is held until released with the
/// `dr-syncer.io/allow-mass-deletion` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionSafety {
    /// Largest share of objects one sync may delete, in percent (100 disables the check).
    #[serde(default = "default_max_delete_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_delete_percent: i32,
    /// Largest number of objects one sync may delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_delete_count: Option<i32>,
}

fn default_max_delete_percent() -> i32 {
    50
}

/// Observed state of a NamespaceMapping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceMappingStatus {
    /// Summary: Pending, Syncing, Synced, Held (breaker), Failed or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MappingPhase>,
    /// `Ready` (configuration valid, destination reachable), `Synced` (last sync succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// End of the last successful sync (complete or not; schedules count from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// End of the last sync that listed every type: the recovery point (RPO = now minus
    /// this). A sync that could not list some types does not move it (phase `Degraded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_complete_sync_time: Option<Time>,
    /// Next scheduled sync (`Scheduled` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<Time>,
    /// The last commit written (git destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<CommitRef>,
    /// Counts of the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_stats: Option<SyncStats>,
    /// The last failure; cleared by a successful sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SyncError>,
    /// The controller replica that reconciles this mapping (its pod name). With sharding
    /// (`replicaCount > 1`) each mapping has one owner among the live replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The `dr-syncer.io/sync-now` value already handled, so one trigger runs one sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_now: Option<String>,
    /// Volume data replication (`pvcConfig.syncData`); written by the data-sync task only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_data: Option<PvcDataStatus>,
}

/// Observed state of a mapping's volume data replication.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcDataStatus {
    /// SHA-256 fingerprint of the mapping's long-lived SSH client key (`SHA256:…`). It stays
    /// in the controller's namespace and authenticates nothing: every volume sync gets a
    /// one-off key valid until its deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_fingerprint: Option<String>,
    /// The previous long-lived client key (kept for its grace window, `previousKeyExpires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_fingerprint: Option<String>,
    /// End of the previous key's grace window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_expires: Option<Time>,
    /// When the client key was last generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotated_at: Option<Time>,
    /// The `dr-syncer.io/rotate-keys` value already handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_keys: Option<String>,
    /// The `dr-syncer.io/sync-data-now` value already handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_data_now: Option<String>,
    /// Next scheduled data sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<Time>,
    /// One entry per replicated PVC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<PvcVolumeStatus>,
}

/// Replication state of one PVC.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcVolumeStatus {
    /// Source PVC, `namespace/name`.
    pub source: String,
    /// Destination PVC, `namespace/name`.
    pub destination: String,
    /// Copy method of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_method: Option<CopyMethod>,
    /// Result of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PvcSyncResult>,
    /// Why the last attempt failed, was held (with the command that releases it) or was
    /// skipped; after a success, what was not copied as it is on the source (files with
    /// the writer's owner under `ownership: Ignore`, unreadable source entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Start of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// End of the last successful sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// The source point in time the DR copy now holds (snapshot or clone time; the start
    /// of the read for `Direct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<Time>,
    /// Recovery point objective at the last status write: seconds between the held point
    /// in time and then (`dr_syncer_pvc_last_success_timestamp_seconds` tracks it live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,
    /// Bytes sent literally by the last successful sync.
    #[serde(default)]
    pub bytes_literal: i64,
    /// Bytes rebuilt from the destination's own data by the last successful sync.
    #[serde(default)]
    pub bytes_matched: i64,
    /// Files transferred by the last successful sync.
    #[serde(default)]
    pub files_transferred: i64,
    /// Files deleted from the DR copy by the last successful sync.
    #[serde(default)]
    pub deleted_files: i64,
    /// Files of the last successful sync whose owner or group could not be kept
    /// (`ownership: Ignore` only; with `Preserve` such a sync fails).
    #[serde(default)]
    pub ownership_not_kept: i64,
    /// Source entries the last successful sync could not read (the DR copy keeps its
    /// earlier version of them; the message names the first ones).
    #[serde(default)]
    pub unreadable: i64,
    /// Wall time of the last attempt in milliseconds.
    #[serde(default)]
    pub duration_millis: i64,
    /// The operation id of the last attempt (labels its temporary objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Result of one PVC sync.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PvcSyncResult {
    /// A sync is in progress (`operation` names it).
    Running,
    /// Data arrived and was verified.
    Succeeded,
    /// The sync failed; see `message`.
    Failed,
    /// Another sync of the same PVC was running.
    Skipped,
    /// The deletion breaker held the sync: it would have deleted more of the DR copy than
    /// `dataSyncConfig.maxDeletePercent` allows, so nothing changed; `message` names the
    /// batch and the annotation that releases it.
    Held,
}

/// Summary phase of a mapping.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MappingPhase {
    /// Not synced yet.
    Pending,
    /// A sync is running.
    Syncing,
    /// The last sync succeeded.
    Synced,
    /// The last sync wrote what it could read, but some types could not be listed: their
    /// files were kept as they were and may be stale (condition `Degraded` names them).
    /// `lastCompleteSyncTime` stays at the last complete sync.
    Degraded,
    /// The mass-deletion breaker holds the last batch.
    Held,
    /// The last sync failed.
    Failed,
    /// `spec.paused` is set.
    Paused,
}

/// A commit written by a sync.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CommitRef {
    /// Commit id.
    pub sha: String,
    /// Commit time.
    pub time: Time,
    /// First line of the commit message.
    pub message: String,
}

/// Counts of one sync.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStats {
    /// Objects in the export.
    pub objects: i64,
    /// Objects added by the sync.
    pub added: i64,
    /// Objects changed by the sync.
    pub changed: i64,
    /// Objects deleted by the sync.
    pub deleted: i64,
    /// Objects left out by filters and default exclusions.
    pub excluded: i64,
    /// Secrets written encrypted.
    pub secrets_encrypted: i64,
    /// Secrets skipped because no age recipient is configured.
    pub secrets_skipped: i64,
    /// Wall time of the sync in milliseconds.
    pub duration_millis: i64,
}

/// A sync failure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SyncError {
    /// What went wrong (never contains Secret data).
    pub message: String,
    /// When it happened.
    pub time: Time,
    /// The object involved, as `resource/namespace/name`, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}
