//! Consistency groups: the PVCs of one application taken at one point in time as a CSI
//! VolumeGroupSnapshot (`groupsnapshot.storage.k8s.io/v1`), with the mapping's hooks
//! around it; each member PVC is then copied from its own member VolumeSnapshot.
//!
//! Finding a PVC's member snapshot follows the API's documented chain, since member
//! snapshots carry no PVC name: PVC → its PersistentVolume's CSI `volumeHandle` → the
//! group content's `volumeSnapshotInfoList` entry → `snapshotHandle` → the
//! VolumeSnapshotContent with that handle → the member VolumeSnapshot bound to it (in
//! this group). Any broken link fails the whole group: copying some members from the
//! group and others from elsewhere would break the one point in time the group promises.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::hooks::HookRun;
use super::objects::{self, Operation};
use super::run::Outcome;
use crate::api::{ConsistencyGroup, CopyMethod, PvcSyncResult, VolumeHook};

/// The VolumeGroupSnapshot API.
pub fn group_resource() -> ApiResource {
    ApiResource {
        group: "groupsnapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "groupsnapshot.storage.k8s.io/v1".into(),
        kind: "VolumeGroupSnapshot".into(),
        plural: "volumegroupsnapshots".into(),
    }
}

fn group_content_resource() -> ApiResource {
    ApiResource {
        group: "groupsnapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "groupsnapshot.storage.k8s.io/v1".into(),
        kind: "VolumeGroupSnapshotContent".into(),
        plural: "volumegroupsnapshotcontents".into(),
    }
}

fn snapshot_content_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotContent".into(),
        plural: "volumesnapshotcontents".into(),
    }
}

/// A PVC's place in a group: which member snapshot to copy and the group's point in time.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMember {
    /// The group's name (from the mapping).
    pub group: String,
    /// The member VolumeSnapshot in the source namespace.
    pub snapshot: String,
    /// When the group snapshot was cut.
    pub point_in_time: Timestamp,
    /// Errors of the group's hooks under `onError: Continue`.
    pub warnings: Vec<String>,
}

/// The group `claim` belongs to (index into `groups`); `Err` names a PVC that two groups
/// select, and a selector that cannot be used.
pub fn group_of(
    groups: &[ConsistencyGroup],
    claim: &PersistentVolumeClaim,
) -> Result<Option<usize>, String> {
    let labels = claim.metadata.labels.clone().unwrap_or_default();
    let mut found = None;
    for (i, g) in groups.iter().enumerate() {
        let sel = Selector::try_from(g.pvc_selector.clone()).map_err(|e| {
            format!(
                "consistency group {:?}: pvcSelector cannot be used: {e}",
                g.name
            )
        })?;
        if sel.matches(&labels) {
            if let Some(j) = found {
                let first: &ConsistencyGroup = &groups[j];
                return Err(format!(
                    "PVC {} is selected by consistency groups {:?} and {:?}; a PVC may belong to one group only",
                    claim.name_any(),
                    first.name,
                    g.name
                ));
            }
            found = Some(i);
        }
    }
    Ok(found)
}

/// Member snapshot of each claim (PVC name → VolumeSnapshot name) from the objects of a
/// ready group snapshot `group_name`: its content's `volumeSnapshotInfoList`, the
/// PersistentVolumes, the namespace's VolumeSnapshots and the VolumeSnapshotContents.
pub fn members(
    group_name: &str,
    claims: &[PersistentVolumeClaim],
    volumes: &[PersistentVolume],
    info: &[Value],
    snapshots: &[DynamicObject],
    contents: &[DynamicObject],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for claim in claims {
        let pvc = claim.name_any();
        let pv_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .ok_or_else(|| format!("PVC {pvc} is not bound to a volume"))?;
        let handle = volumes
            .iter()
            .find(|v| v.name_any() == pv_name)
            .and_then(|v| v.spec.as_ref()?.csi.as_ref())
            .map(|c| c.volume_handle.clone())
            .ok_or_else(|| format!("PVC {pvc}: volume {pv_name} is not a CSI volume"))?;
        let snap_handle = info
            .iter()
            .find(|i| i["volumeHandle"].as_str() == Some(handle.as_str()))
            .and_then(|i| i["snapshotHandle"].as_str())
            .ok_or_else(|| {
                format!("PVC {pvc}: the group snapshot has no member for volume handle {handle}")
            })?;
        let content = contents
            .iter()
            .find(|c| {
                c.data["status"]["snapshotHandle"].as_str() == Some(snap_handle)
                    || c.data["spec"]["source"]["snapshotHandle"].as_str() == Some(snap_handle)
            })
            .map(|c| c.name_any())
            .ok_or_else(|| {
                format!("PVC {pvc}: no VolumeSnapshotContent has snapshot handle {snap_handle}")
            })?;
        let snapshot = snapshots
            .iter()
            .find(|s| {
                s.data["status"]["boundVolumeSnapshotContentName"].as_str()
                    == Some(content.as_str())
                    && s.data["status"]["volumeGroupSnapshotName"].as_str() == Some(group_name)
            })
            .map(|s| s.name_any())
            .ok_or_else(|| {
                format!("PVC {pvc}: no member VolumeSnapshot of {group_name} is bound to {content}")
            })?;
        out.insert(pvc, snapshot);
    }
    Ok(out)
}

/// A group snapshot taken for one pass.
#[derive(Debug)]
pub struct Taken {
    /// Id in the temporary objects' operation label (for cleanup and restart sweeps).
    pub id: String,
    /// PVC name → its place in the group.
    pub members: BTreeMap<String, GroupMember>,
}

/// Takes `group` over `claims` in `namespace`: `pre` hooks of the pods using any member,
/// the VolumeGroupSnapshot, `post` once it is ready (or failed), then each member's
/// snapshot. `id` names the temporary objects ([`remove`] deletes them).
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
pub async fn take(
    source: &Client,
    namespace: &str,
    mapping: &str,
    id: &str,
    group: &ConsistencyGroup,
    claims: &[PersistentVolumeClaim],
    hooks: &[VolumeHook],
    timeout: Duration,
) -> Result<Taken, String> {
    let names: Vec<String> = claims.iter().map(|c| c.name_any()).collect();
    let mut run = HookRun::new(source, namespace, &names, hooks);
    let taken = tokio::time::timeout(timeout, async {
        run.pre().await?;
        let cut = snapshot_group(source, namespace, mapping, id, group).await;
        run.post().await?;
        let (name, pit, info) = cut?;
        let members = resolve(source, namespace, &name, claims, &info).await?;
        Ok::<_, String>((members, pit))
    })
    .await
    .unwrap_or_else(|_| Err(format!("timed out after {}s", timeout.as_secs())));
    // Thaw even after a timeout (a no-op when `post` ran).
    let post = run.post().await;
    let (members, pit) = match (taken, post) {
        (Ok(t), Ok(())) => t,
        (Err(e), Err(p)) => {
            return Err(format!("consistency group {:?}: {e}; then {p}", group.name));
        }
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!("consistency group {:?}: {e}", group.name));
        }
    };
    Ok(Taken {
        id: id.into(),
        members: members
            .into_iter()
            .map(|(pvc, snapshot)| {
                let m = GroupMember {
                    group: group.name.clone(),
                    snapshot,
                    point_in_time: pit,
                    warnings: run.warnings().to_vec(),
                };
                (pvc, m)
            })
            .collect(),
    })
}

/// Takes the consistency groups of a pass's `ops`: each group of one source namespace
/// once, its members then copy from their member snapshots (method `Snapshot`, no hooks
/// of their own). Returns the ops that must not run, with their failed outcome (a PVC in
/// two groups, a group not taken whole), and the (namespace, id) of each group taken, to
/// [`remove`] after the pass.
pub async fn prepare(
    source: &Client,
    groups: &[ConsistencyGroup],
    hooks: &[VolumeHook],
    ops: &mut Vec<Operation>,
    timeout: Duration,
) -> (Vec<(Operation, Outcome)>, Vec<(String, String)>) {
    let mut failed = Vec::new();
    let mut taken = Vec::new();
    if groups.is_empty() {
        return (failed, taken);
    }
    let started = Timestamp::now();
    let fail = |op: Operation, msg: String| {
        let out = Outcome {
            result: PvcSyncResult::Failed,
            message: Some(msg),
            report: None,
            point_in_time: None,
            started,
            duration: Duration::ZERO,
            cleanup_failed: false,
        };
        (op, out)
    };
    // (namespace, group) → members.
    let mut by: BTreeMap<(String, usize), Vec<Operation>> = BTreeMap::new();
    for op in std::mem::take(ops) {
        match group_of(groups, &op.source) {
            Ok(Some(g)) => by.entry((op.source_namespace(), g)).or_default().push(op),
            Ok(None) => ops.push(op),
            Err(e) => failed.push(fail(op, e)),
        }
    }
    for ((ns, g), mut members) in by {
        let claims: Vec<PersistentVolumeClaim> = members.iter().map(|o| o.source.clone()).collect();
        let id = format!("{}g", members[0].id);
        let mapping = members[0].mapping.clone();
        match take(
            source, &ns, &mapping, &id, &groups[g], &claims, hooks, timeout,
        )
        .await
        {
            Ok(t) => {
                for mut op in members.drain(..) {
                    op.group = t.members.get(&op.pvc_name()).cloned();
                    op.method = CopyMethod::Snapshot;
                    op.hooks.clear();
                    ops.push(op);
                }
                taken.push((ns, t.id));
            }
            Err(e) => {
                // The snapshot of a group that failed half-way is removed at once.
                if let Err(re) = remove(source, &ns, &id).await {
                    tracing::warn!(error = %re, "cannot remove a failed group snapshot; swept later");
                }
                failed.extend(members.drain(..).map(|op| fail(op, e.clone())));
            }
        }
    }
    (failed, taken)
}

/// Creates the VolumeGroupSnapshot and waits until it is ready; returns its name, point
/// in time and its content's `volumeSnapshotInfoList`.
async fn snapshot_group(
    source: &Client,
    namespace: &str,
    mapping: &str,
    id: &str,
    group: &ConsistencyGroup,
) -> Result<(String, Timestamp, Vec<Value>), String> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(source.clone(), namespace, &group_resource());
    let name = format!("dr-syncer-{id}-group");
    let mut spec = json!({"source": {"selector": group.pvc_selector}});
    if let Some(c) = &group.volume_group_snapshot_class_name {
        spec["volumeGroupSnapshotClassName"] = json!(c);
    }
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshot",
        "metadata": {"name": name, "namespace": namespace, "labels": {
            objects::TEMPORARY: "true", objects::OPERATION: id, objects::MAPPING: mapping,
            "app.kubernetes.io/managed-by": "dr-syncer"}},
        "spec": spec,
    }))
    .expect("valid VolumeGroupSnapshot");
    api.create(&PostParams::default(), &obj).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => "the source cluster does not serve groupsnapshot.storage.k8s.io/v1 VolumeGroupSnapshots (install the CSI external-snapshotter's group snapshot CRDs and controller)".to_string(),
        e => format!("create VolumeGroupSnapshot: {e}"),
    })?;
    let (pit, content) = super::run::wait("VolumeGroupSnapshot readyToUse", || async {
        let g = api
            .get(&name)
            .await
            .map_err(|e| format!("read VolumeGroupSnapshot: {e}"))?;
        let st = &g.data["status"];
        if let Some(msg) = st["error"]["message"].as_str() {
            return Err(format!("VolumeGroupSnapshot {name}: {msg}"));
        }
        Ok((st["readyToUse"] == json!(true)).then(|| {
            (
                st["creationTime"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(Timestamp::now),
                st["boundVolumeGroupSnapshotContentName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }))
    })
    .await?;
    let content = Api::<DynamicObject>::all_with(source.clone(), &group_content_resource())
        .get(&content)
        .await
        .map_err(|e| format!("read VolumeGroupSnapshotContent {content:?}: {e}"))?;
    let info = content.data["status"]["volumeSnapshotInfoList"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok((name, pit, info))
}

/// Reads what [`members`] needs and maps each claim to its member snapshot.
async fn resolve(
    source: &Client,
    namespace: &str,
    group_name: &str,
    claims: &[PersistentVolumeClaim],
    info: &[Value],
) -> Result<BTreeMap<String, String>, String> {
    let lp = ListParams::default();
    let volumes = Api::<PersistentVolume>::all(source.clone())
        .list(&lp)
        .await
        .map_err(|e| format!("list PersistentVolumes: {e}"))?
        .items;
    let snapshots = Api::<DynamicObject>::namespaced_with(
        source.clone(),
        namespace,
        &super::run::snapshot_resource(),
    )
    .list(&lp)
    .await
    .map_err(|e| format!("list VolumeSnapshots: {e}"))?
    .items;
    let contents = Api::<DynamicObject>::all_with(source.clone(), &snapshot_content_resource())
        .list(&lp)
        .await
        .map_err(|e| format!("list VolumeSnapshotContents: {e}"))?
        .items;
    members(group_name, claims, &volumes, info, &snapshots, &contents)
}

/// Deletes a group's VolumeGroupSnapshot (its member snapshots go with it, by their
/// owner references and the class's deletion policy).
pub async fn remove(source: &Client, namespace: &str, id: &str) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(source.clone(), namespace, &group_resource());
    match api
        .delete_collection(
            &DeleteParams::background(),
            &ListParams::default().labels(&format!("{}={id}", objects::OPERATION)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn claim(name: &str, pv: &str, labels: Value) -> PersistentVolumeClaim {
        obj(json!({"metadata": {"name": name, "labels": labels}, "spec": {"volumeName": pv}}))
    }

    /// Claims, volumes, the group's info list, snapshots, snapshot contents.
    type Fixture = (
        Vec<PersistentVolumeClaim>,
        Vec<PersistentVolume>,
        Vec<Value>,
        Vec<DynamicObject>,
        Vec<DynamicObject>,
    );

    fn fixture() -> Fixture {
        let claims = vec![
            claim("data", "pv-1", json!({})),
            claim("wal", "pv-2", json!({})),
        ];
        let pv = |n: &str, h: &str| -> PersistentVolume {
            obj(
                json!({"metadata": {"name": n}, "spec": {"csi": {"driver": "d", "volumeHandle": h}}}),
            )
        };
        let volumes = vec![pv("pv-1", "vol-data"), pv("pv-2", "vol-wal")];
        let info = vec![
            json!({"volumeHandle": "vol-wal", "snapshotHandle": "snap-w"}),
            json!({"volumeHandle": "vol-data", "snapshotHandle": "snap-d"}),
        ];
        let snap = |n: &str, content: &str, group: &str| -> DynamicObject {
            obj(
                json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": n}, "status": {"boundVolumeSnapshotContentName": content,
                "volumeGroupSnapshotName": group}}),
            )
        };
        let snapshots = vec![
            snap("member-1", "vsc-w", "g"),
            snap("member-2", "vsc-d", "g"),
            snap("older", "vsc-d-old", "g-old"),
        ];
        let content = |n: &str, h: &str| -> DynamicObject {
            obj(
                json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": n}, "status": {"snapshotHandle": h}}),
            )
        };
        let contents = vec![
            content("vsc-w", "snap-w"),
            content("vsc-d", "snap-d"),
            content("vsc-d-old", "snap-old"),
        ];
        (claims, volumes, info, snapshots, contents)
    }

    #[test]
    fn members_follow_the_handles() {
        let (claims, volumes, info, snapshots, contents) = fixture();
        let m = members("g", &claims, &volumes, &info, &snapshots, &contents).unwrap();
        assert_eq!(
            m,
            BTreeMap::from([
                ("data".into(), "member-2".into()),
                ("wal".into(), "member-1".into())
            ])
        );
    }

    #[test]
    fn members_broken_links_fail_naming_the_pvc() {
        type Break = fn(
            &mut Vec<PersistentVolume>,
            &mut Vec<Value>,
            &mut Vec<DynamicObject>,
            &mut Vec<DynamicObject>,
        );
        let cases: Vec<(&str, Break, &str)> = vec![
            (
                "no CSI volume",
                |v, _, _, _| v[1].spec.as_mut().unwrap().csi = None,
                "PVC wal: volume pv-2 is not a CSI volume",
            ),
            (
                "not in the group",
                |_, i, _, _| {
                    i.remove(0);
                },
                "PVC wal: the group snapshot has no member for volume handle vol-wal",
            ),
            (
                "no content",
                |_, _, _, c| {
                    c.remove(0);
                },
                "PVC wal: no VolumeSnapshotContent has snapshot handle snap-w",
            ),
            (
                "member of another group",
                |_, _, s, _| s[0].data["status"]["volumeGroupSnapshotName"] = json!("other"),
                "PVC wal: no member VolumeSnapshot of g is bound to vsc-w",
            ),
        ];
        for (name, brk, want) in cases {
            let (claims, mut volumes, mut info, mut snapshots, mut contents) = fixture();
            brk(&mut volumes, &mut info, &mut snapshots, &mut contents);
            let err = members("g", &claims, &volumes, &info, &snapshots, &contents).unwrap_err();
            assert_eq!(err, want, "{name}");
        }
    }

    #[test]
    fn group_of_table() {
        let groups: Vec<ConsistencyGroup> = obj(json!([
            {"name": "db", "pvcSelector": {"matchLabels": {"app": "db"}}},
            {"name": "wal", "pvcSelector": {"matchLabels": {"tier": "wal"}}},
        ]));
        let c = |labels: Value| claim("p", "pv", labels);
        assert_eq!(group_of(&groups, &c(json!({"app": "db"}))), Ok(Some(0)));
        assert_eq!(group_of(&groups, &c(json!({"tier": "wal"}))), Ok(Some(1)));
        assert_eq!(group_of(&groups, &c(json!({"app": "web"}))), Ok(None));
        let err = group_of(&groups, &c(json!({"app": "db", "tier": "wal"}))).unwrap_err();
        assert!(err.contains("\"db\" and \"wal\""), "{err}");
    }
}
