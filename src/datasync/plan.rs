//! Pure decisions of a data sync: which PVCs replicate, how their point-in-time copy is
//! made, on which node a live volume is mounted, which agent pod is the bastion, and what a
//! finished Job reported.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use serde::Deserialize;

use crate::api::{CopyMethod, DataSyncConfig, keys};

/// Why a PVC is not replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `dr-syncer.io/ignore: "true"` label or annotation.
    Ignored,
    /// Not bound yet: there is no data to copy.
    NotBound,
    /// Being deleted.
    Deleting,
}

/// Whether a PVC replicates, or why not.
pub fn eligible(pvc: &PersistentVolumeClaim) -> Result<(), Skip> {
    let flagged = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(keys::IGNORE))
            .is_some_and(|v| v == "true")
    };
    if flagged(&pvc.metadata.labels) || flagged(&pvc.metadata.annotations) {
        return Err(Skip::Ignored);
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(Skip::Deleting);
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Bound") {
        return Err(Skip::NotBound);
    }
    Ok(())
}

/// The copy method: as configured, else `Snapshot` when a VolumeSnapshotClass is set,
/// else `Clone` (a point in time without snapshot support); `Direct` only when asked for,
/// since the live volume is not a consistent point in time.
pub fn copy_method(cfg: Option<&DataSyncConfig>) -> CopyMethod {
    match cfg {
        Some(c) => c
            .copy_method
            .unwrap_or(if c.volume_snapshot_class_name.is_some() {
                CopyMethod::Snapshot
            } else {
                CopyMethod::Clone
            }),
        None => CopyMethod::Clone,
    }
}

/// The node a PVC is mounted on: a running (else scheduled) pod using the claim, else a
/// VolumeAttachment of its volume. `None` when nothing mounts it (any node can then).
pub fn mount_node(
    pvc: &PersistentVolumeClaim,
    pods: &[Pod],
    attachments: &[VolumeAttachment],
) -> Option<String> {
    let name = pvc.metadata.name.as_deref()?;
    let using = |p: &&Pod| {
        p.spec.as_ref().is_some_and(|s| {
            s.volumes.iter().flatten().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == name)
            })
        }) && p.metadata.deletion_timestamp.is_none()
    };
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let running = |p: &&Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let scheduled = pods
        .iter()
        .filter(using)
        .filter_map(|p| Some((running(&p), node(p)?)));
    if let Some((_, n)) = scheduled.max_by_key(|(r, _)| *r) {
        return Some(n);
    }
    let volume = pvc.spec.as_ref()?.volume_name.as_deref()?;
    attachments
        .iter()
        .filter(|a| a.spec.source.persistent_volume_name.as_deref() == Some(volume))
        .find(|a| a.status.as_ref().is_some_and(|s| s.attached))
        .map(|a| a.spec.node_name.clone())
}

/// The bastion address: a ready agent pod on `node` if there is one (data stays on the
/// node), else any ready agent pod.
pub fn agent_address(pods: &[Pod], node: Option<&str>, port: i32) -> Option<String> {
    let ready = |p: &&Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    && s.pod_ip.is_some()
            })
    };
    let on_node =
        |p: &&Pod| node.is_some() && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == node;
    let mut candidates: Vec<&Pod> = pods.iter().filter(ready).collect();
    candidates.sort_by_key(|p| (!on_node(p), p.metadata.name.clone()));
    let ip = candidates.first()?.status.as_ref()?.pod_ip.clone()?;
    Some(address(&ip, port))
}

/// `host:port`, with brackets around IPv6 addresses.
pub fn address(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What `pvc-sync --summary-file` wrote, as read back from the Job pod's termination
/// message.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Files transferred.
    #[serde(default)]
    pub files_transferred: i64,
    /// Bytes sent literally.
    #[serde(default)]
    pub bytes_literal: i64,
    /// Bytes matched from the destination.
    #[serde(default)]
    pub bytes_matched: i64,
    /// Error, when the sync failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Exit code on failure.
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// The report of a finished Job pod, if its termination message holds one.
pub fn report(pod: &Pod) -> Option<Report> {
    let msg = pod
        .status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())?;
    serde_json::from_str(msg.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn eligible_table() {
        let base = json!({"metadata": {"name": "d"}, "status": {"phase": "Bound"}});
        let mut ignored = base.clone();
        ignored["metadata"]["labels"] = json!({"dr-syncer.io/ignore": "true"});
        let mut annotated = base.clone();
        annotated["metadata"]["annotations"] = json!({"dr-syncer.io/ignore": "true"});
        let mut pending = base.clone();
        pending["status"]["phase"] = json!("Pending");
        let mut deleting = base.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T10:00:00Z");
        let mut not_ignored = base.clone();
        not_ignored["metadata"]["labels"] = json!({"dr-syncer.io/ignore": "false"});
        let cases = [
            (base, Ok(())),
            (ignored, Err(Skip::Ignored)),
            (annotated, Err(Skip::Ignored)),
            (pending, Err(Skip::NotBound)),
            (deleting, Err(Skip::Deleting)),
            (not_ignored, Ok(())),
        ];
        for (v, want) in cases {
            assert_eq!(eligible(&pvc(v.clone())), want, "{v}");
        }
    }

    #[test]
    fn copy_method_table() {
        let cfg = |v: serde_json::Value| serde_json::from_value::<DataSyncConfig>(v).unwrap();
        let cases = [
            (None, CopyMethod::Clone),
            (Some(cfg(json!({}))), CopyMethod::Clone),
            (
                Some(cfg(json!({"volumeSnapshotClassName": "csi"}))),
                CopyMethod::Snapshot,
            ),
            (
                Some(cfg(
                    json!({"volumeSnapshotClassName": "csi", "copyMethod": "Direct"}),
                )),
                CopyMethod::Direct,
            ),
            (Some(cfg(json!({"copyMethod": "Clone"}))), CopyMethod::Clone),
        ];
        for (c, want) in cases {
            assert_eq!(copy_method(c.as_ref()), want, "{c:?}");
        }
    }

    #[test]
    fn mount_node_table() {
        let claim = pvc(json!({"metadata": {"name": "data"}, "spec": {"volumeName": "pv-1"}}));
        let pod = |name: &str, node: &str, phase: &str, claim: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [],
                         "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
                "status": {"phase": phase}}))
            .unwrap()
        };
        let va = |node: &str, pv: &str, attached: bool| -> VolumeAttachment {
            serde_json::from_value(json!({"metadata": {"name": format!("va-{node}")},
                "spec": {"attacher": "csi", "nodeName": node, "source": {"persistentVolumeName": pv}},
                "status": {"attached": attached}}))
            .unwrap()
        };
        let cases: Vec<(Vec<Pod>, Vec<VolumeAttachment>, Option<&str>)> = vec![
            (vec![pod("a", "n1", "Running", "data")], vec![], Some("n1")),
            (
                vec![
                    pod("a", "n1", "Pending", "data"),
                    pod("b", "n2", "Running", "data"),
                ],
                vec![],
                Some("n2"),
            ),
            (
                vec![pod("a", "n1", "Running", "other")],
                vec![va("n3", "pv-1", true)],
                Some("n3"),
            ),
            (
                vec![],
                vec![va("n3", "pv-1", false), va("n4", "pv-2", true)],
                None,
            ),
            (vec![], vec![], None),
        ];
        for (pods, vas, want) in cases {
            assert_eq!(mount_node(&claim, &pods, &vas).as_deref(), want);
        }
    }

    #[test]
    fn agent_address_prefers_the_volume_node() {
        let agent = |name: &str, node: &str, ip: &str, ready: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"nodeName": node, "containers": []},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        let pods = vec![
            agent("a", "n1", "10.0.0.1", "True"),
            agent("b", "n2", "10.0.0.2", "True"),
            agent("c", "n3", "fd00::3", "False"),
        ];
        assert_eq!(
            agent_address(&pods, Some("n2"), 2222).as_deref(),
            Some("10.0.0.2:2222")
        );
        assert_eq!(
            agent_address(&pods, Some("n3"), 2222).as_deref(),
            Some("10.0.0.1:2222")
        );
        assert_eq!(
            agent_address(&pods, None, 2222).as_deref(),
            Some("10.0.0.1:2222")
        );
        assert_eq!(agent_address(&pods[2..], None, 2222), None);
        assert_eq!(address("fd00::3", 2222), "[fd00::3]:2222");
    }

    #[test]
    fn report_from_termination_message() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": "{\"filesTransferred\":3,\"bytesLiteral\":10,\"bytesMatched\":5,\"duration\":0.1}"}}}]}}))
        .unwrap();
        let r = report(&pod).unwrap();
        assert_eq!(
            (r.files_transferred, r.bytes_literal, r.bytes_matched),
            (3, 10, 5)
        );
        assert_eq!(report(&Pod::default()), None);
    }
}
