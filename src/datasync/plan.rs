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
    /// Entries deleted from the destination (a directory with its contents counts once).
    #[serde(default)]
    pub deleted: u64,
    /// Files deleted from the destination, inside deleted directories included.
    #[serde(default)]
    pub deleted_files: u64,
    /// Bytes deleted from the destination.
    #[serde(default)]
    pub deleted_bytes: u64,
    /// Files whose owner or group could not be set (`--ownership ignore`).
    #[serde(default)]
    pub ownership_not_kept: u64,
    /// Source entries the reader could not read (the destination keeps its copy).
    #[serde(default)]
    pub unreadable: u64,
    /// The first unreadable source paths (at most 20).
    #[serde(default)]
    pub unreadable_paths: Vec<String>,
    /// Set when the deletion breaker held the sync (exit code 7): nothing changed.
    #[serde(default)]
    pub held: Option<HeldBatch>,
    /// Error, when the sync failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Exit code on failure.
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// The deletion set the breaker held, as `pvc-sync` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldBatch {
    /// Batch id: the value of `dr-syncer.io/allow-data-deletion` that releases exactly
    /// this deletion set.
    pub batch: String,
    /// Files the sync would delete.
    #[serde(default)]
    pub files: u64,
    /// Bytes the sync would delete.
    #[serde(default)]
    pub bytes: u64,
    /// Files on the destination.
    #[serde(default)]
    pub files_total: u64,
    /// Bytes on the destination.
    #[serde(default)]
    pub bytes_total: u64,
}

/// Exit code of `pvc-sync` when ownership could not be kept under `--ownership require`.
pub const EXIT_OWNERSHIP: i64 = 6;
/// Exit code of `pvc-sync` when the deletion breaker held the sync.
pub const EXIT_HELD: i64 = 7;

fn percent(part: u64, total: u64) -> u64 {
    part.saturating_mul(100).checked_div(total).unwrap_or(100)
}

/// The status message and Event note of a held sync: what would be deleted, and the
/// command that releases exactly this batch (mirrors the manifest breaker's wording).
pub fn held_message(held: &HeldBatch, mapping_namespace: &str, mapping: &str) -> String {
    format!(
        "data deletion breaker: this sync would delete {} of {} files ({}%) and {} of {} bytes ({}%) of the DR copy, above the mapping's maxDeletePercent; nothing on the DR volume was changed. Check the source volume; if the deletions are intended, release batch {} with: kubectl annotate nsm {mapping} -n {mapping_namespace} {}={} --overwrite",
        held.files,
        held.files_total,
        percent(held.files, held.files_total),
        held.bytes,
        held.bytes_total,
        percent(held.bytes, held.bytes_total),
        held.batch,
        crate::api::keys::ALLOW_DATA_DELETION,
        held.batch,
    )
}

/// What the failure message of a Job that could not keep ownership adds: the setting to
/// change (fail closed, but say how to open).
pub fn ownership_hint(run_as_root: bool) -> &'static str {
    if run_as_root {
        "; the pvc-sync Job runs as uid 0 with CHOWN and FOWNER, so the DR volume refuses ownership changes (a user namespace without a mapping for these ids, or storage that ignores chown); set dataSyncConfig.ownership: Ignore to copy without them"
    } else {
        "; the pvc-sync Job runs as uid 65532 without capabilities (spec.pvcSync.runAsRoot: false on the source RemoteCluster) and cannot give files other owners: set runAsRoot: true (uid 0 with CHOWN, DAC_OVERRIDE, FOWNER, FSETID only), or dataSyncConfig.ownership: Ignore to copy without ownership"
    }
}

/// The note of a successful sync that did not copy everything as it is on the source
/// (files with the writer's ids, unreadable source entries); `None` for a full copy.
pub fn success_note(r: &Report) -> Option<String> {
    let mut parts = Vec::new();
    if r.ownership_not_kept > 0 {
        parts.push(format!(
            "{} files keep the DR writer's owner instead of the source's (ownership: Ignore)",
            r.ownership_not_kept
        ));
    }
    if r.unreadable > 0 {
        let mut p = format!(
            "{} source entries could not be read; the DR copy keeps its earlier version of them",
            r.unreadable
        );
        if !r.unreadable_paths.is_empty() {
            p.push_str(&format!(": {}", r.unreadable_paths.join(", ")));
            if r.unreadable > r.unreadable_paths.len() as u64 {
                p.push_str(", ...");
            }
        }
        parts.push(p);
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Namespace label naming the Pod Security level the apiserver enforces there.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Why a namespace enforcing Pod Security `level` refuses an operation's pod (the volume
/// server in the source namespace, or with `writer` the `pvc-sync` Job's pod in the DR
/// namespace), and what to change; `None` when the pod is allowed. As uid 0 the reader's
/// `DAC_READ_SEARCH` needs `privileged`; the writer's capabilities are all within
/// `baseline`; neither runs as uid 0 under `restricted`. Without `runAsRoot` both meet
/// `restricted`.
pub fn pod_security_conflict(
    namespace: &str,
    level: Option<&str>,
    run_as_root: bool,
    writer: bool,
) -> Option<String> {
    let refused = match (run_as_root, writer, level) {
        (false, _, _) => false,
        (true, false, Some("baseline" | "restricted")) => true,
        (true, true, Some("restricted")) => true,
        _ => false,
    };
    if !refused {
        return None;
    }
    let (pod, caps, needed) = if writer {
        (
            "pvc-sync Job",
            "CHOWN, DAC_OVERRIDE, FOWNER, FSETID",
            "baseline",
        )
    } else {
        ("volume server", "DAC_READ_SEARCH", "privileged")
    };
    Some(format!(
        "namespace {namespace} enforces Pod Security \"{}\", which refuses the {pod} (uid 0 with {caps} only): label the namespace {POD_SECURITY_ENFORCE}={needed}, or set spec.pvcSync.runAsRoot: false on the source RemoteCluster (uid 65532 without capabilities: files it may not read fail the sync, and keeping ownership then needs dataSyncConfig.ownership: Ignore)",
        level.unwrap_or_default()
    ))
}

/// A report of success that breaks the mapping's ownership setting is a failure: under
/// `Preserve` no file may keep the writer's ids (the engine fails such a sync itself; this
/// keeps a lost owner from ever being shown as a good copy).
pub fn ownership_breach(r: &Report, ownership: crate::api::Ownership) -> Option<String> {
    (ownership == crate::api::Ownership::Preserve && r.ownership_not_kept > 0).then(|| {
        format!(
            "pvc-sync reported {} files without their source owner under ownership: Preserve; the copy is not counted as good",
            r.ownership_not_kept
        )
    })
}

/// Annotation marking the default VolumeSnapshotClass of a driver.
const DEFAULT_SNAPSHOT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// The VolumeSnapshotClass of `classes` (as listed: `driver` at the top level) for
/// volumes of `provisioner`: one whose `driver` is the provisioner, preferring the one
/// marked default, then the first by name. `None` when no class fits.
pub fn snapshot_class_for(provisioner: &str, classes: &[serde_json::Value]) -> Option<String> {
    let mut fit: Vec<(bool, String)> = classes
        .iter()
        .filter(|c| c["driver"].as_str() == Some(provisioner))
        .filter_map(|c| {
            let name = c["metadata"]["name"].as_str()?.to_string();
            let default = c["metadata"]["annotations"][DEFAULT_SNAPSHOT_CLASS] == "true";
            Some((!default, name))
        })
        .collect();
    fit.sort();
    fit.into_iter().next().map(|(_, n)| n)
}

/// The report of a finished Job pod, if its termination message holds one.
pub fn report(pod: &Pod) -> Option<Report> {
    report_of(pod)
}

/// Why a Job pod's container was killed without writing a report, when Kubernetes says:
/// out of memory gets what to change, other reasons are named as they are.
pub fn killed_why(pod: &Pod) -> Option<String> {
    let reason = pod
        .status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone())?;
    Some(match reason.as_str() {
        "OOMKilled" => "the pvc-sync Job ran out of memory (OOMKilled): the receiver holds about 500 bytes per file and directory of the volume; raise spec.pvcConfig.dataSyncConfig.resources.limits.memory".into(),
        "Error" | "Completed" => return None,
        other => format!("the pvc-sync Job's container was terminated ({other})"),
    })
}

fn report_of(pod: &Pod) -> Option<Report> {
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
mod killed_tests {
    use super::*;

    #[test]
    fn killed_why_table() {
        let pod = |reason: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "status": {"containerStatuses": [{
                    "name": "dr-syncer", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 137, "reason": reason}},
                }]},
            }))
            .unwrap()
        };
        let cases = [
            ("oom", Some("OOMKilled"), Some("resources.limits.memory")),
            ("plain error", Some("Error"), None),
            ("evicted", Some("Evicted"), Some("(Evicted)")),
            ("no reason", None, None),
        ];
        for (case, reason, want) in cases {
            let got = killed_why(&pod(reason));
            match want {
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{case}: {got:?}"
                ),
                None => assert_eq!(got, None, "{case}"),
            }
        }
    }
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

    /// The summary of every outcome `pvc-sync` reports parses into the fields the status
    /// uses.
    #[test]
    fn report_parses_engine_summaries() {
        let cases = [
            (
                "success_with_counts",
                json!({"filesTransferred": 4, "bytesLiteral": 10, "bytesMatched": 2, "deleted": 3,
                       "deletedBytes": 300, "ownershipNotKept": 2, "unreadable": 1,
                       "unreadablePaths": ["lost+found"]}),
                Report {
                    files_transferred: 4,
                    bytes_literal: 10,
                    bytes_matched: 2,
                    deleted: 3,
                    deleted_bytes: 300,
                    ownership_not_kept: 2,
                    unreadable: 1,
                    unreadable_paths: vec!["lost+found".into()],
                    ..Default::default()
                },
            ),
            (
                "held",
                json!({"held": {"batch": "0123456789ab", "files": 90, "bytes": 9000,
                                "filesTotal": 100, "bytesTotal": 10000},
                       "error": "deletion breaker", "exitCode": 7}),
                Report {
                    held: Some(HeldBatch {
                        batch: "0123456789ab".into(),
                        files: 90,
                        bytes: 9000,
                        files_total: 100,
                        bytes_total: 10000,
                    }),
                    error: Some("deletion breaker".into()),
                    exit_code: Some(EXIT_HELD),
                    ..Default::default()
                },
            ),
            (
                "ownership_failure",
                json!({"error": "chown /data/pg: EPERM (and 9 more)", "exitCode": 6}),
                Report {
                    error: Some("chown /data/pg: EPERM (and 9 more)".into()),
                    exit_code: Some(EXIT_OWNERSHIP),
                    ..Default::default()
                },
            ),
        ];
        for (name, summary, want) in cases {
            let got: Report = serde_json::from_value(summary).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }

    /// A held sync names the counts, the shares and the exact release command.
    #[test]
    fn held_message_names_batch_counts_and_command() {
        let held = HeldBatch {
            batch: "0123456789ab".into(),
            files: 90,
            bytes: 9000,
            files_total: 100,
            bytes_total: 10000,
        };
        let m = held_message(&held, "dr", "shop");
        for want in [
            "would delete 90 of 100 files (90%) and 9000 of 10000 bytes (90%)",
            "nothing on the DR volume was changed",
            "release batch 0123456789ab with: kubectl annotate nsm shop -n dr dr-syncer.io/allow-data-deletion=0123456789ab --overwrite",
        ] {
            assert!(m.contains(want), "{want} not in {m}");
        }
    }

    /// A success note only when something was not copied as is.
    #[test]
    fn success_note_table() {
        let paths: Vec<String> = (0..20).map(|i| format!("d/{i}")).collect();
        let cases = [
            ("full_copy", Report::default(), None),
            (
                "ownership_not_kept",
                Report {
                    ownership_not_kept: 5,
                    ..Default::default()
                },
                Some(
                    "5 files keep the DR writer's owner instead of the source's (ownership: Ignore)"
                        .to_string(),
                ),
            ),
            (
                "unreadable_truncated",
                Report {
                    unreadable: 21,
                    unreadable_paths: paths[..2].to_vec(),
                    ..Default::default()
                },
                Some("21 source entries could not be read; the DR copy keeps its earlier version of them: d/0, d/1, ...".into()),
            ),
        ];
        for (name, r, want) in cases {
            assert_eq!(success_note(&r), want, "{name}");
        }
    }

    #[test]
    fn snapshot_class_for_table() {
        let class = |name: &str, driver: &str, default: bool| {
            let mut c =
                json!({"metadata": {"name": name}, "driver": driver, "deletionPolicy": "Delete"});
            if default {
                c["metadata"]["annotations"] =
                    json!({"snapshot.storage.kubernetes.io/is-default-class": "true"});
            }
            c
        };
        let cases = [
            ("none", vec![], None),
            ("other_driver", vec![class("a", "ebs.csi", false)], None),
            (
                "matching",
                vec![class("a", "ebs.csi", false), class("b", "rbd.csi", false)],
                Some("b"),
            ),
            (
                "default_wins",
                vec![class("a", "rbd.csi", false), class("z", "rbd.csi", true)],
                Some("z"),
            ),
            (
                "first_by_name",
                vec![class("y", "rbd.csi", false), class("x", "rbd.csi", false)],
                Some("x"),
            ),
        ];
        for (name, classes, want) in cases {
            assert_eq!(
                snapshot_class_for("rbd.csi", &classes).as_deref(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn pod_security_conflict_table() {
        let cases = [
            (
                "root_reader_privileged",
                Some("privileged"),
                true,
                false,
                None,
            ),
            ("root_reader_unlabelled", None, true, false, None),
            (
                "root_reader_baseline",
                Some("baseline"),
                true,
                false,
                Some("privileged"),
            ),
            (
                "root_reader_restricted",
                Some("restricted"),
                true,
                false,
                Some("privileged"),
            ),
            ("root_writer_baseline", Some("baseline"), true, true, None),
            (
                "root_writer_restricted",
                Some("restricted"),
                true,
                true,
                Some("baseline"),
            ),
            (
                "user_reader_restricted",
                Some("restricted"),
                false,
                false,
                None,
            ),
            (
                "user_writer_restricted",
                Some("restricted"),
                false,
                true,
                None,
            ),
        ];
        for (name, level, root, writer, needed) in cases {
            let got = pod_security_conflict("shop", level, root, writer);
            match needed {
                None => assert_eq!(got, None, "{name}"),
                Some(n) => {
                    let m = got.unwrap_or_else(|| panic!("{name}: allowed"));
                    assert!(
                        m.contains(&format!("pod-security.kubernetes.io/enforce={n}")),
                        "{name}: {m}"
                    );
                    assert!(m.contains("runAsRoot: false"), "{name}: {m}");
                }
            }
        }
    }

    #[test]
    fn ownership_breach_table() {
        use crate::api::Ownership;
        let lost = Report {
            ownership_not_kept: 3,
            ..Default::default()
        };
        let cases = [
            (
                "preserve_full",
                Report::default(),
                Ownership::Preserve,
                false,
            ),
            ("preserve_lost", lost.clone(), Ownership::Preserve, true),
            ("ignore_lost", lost, Ownership::Ignore, false),
        ];
        for (name, r, o, breach) in cases {
            assert_eq!(ownership_breach(&r, o).is_some(), breach, "{name}");
        }
    }
}
