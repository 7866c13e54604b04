use super::*;
use crate::api::NamespaceMappingSpec;

fn source() -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                 "resources": {"requests": {"storage": "5Gi"}}, "volumeName": "pv-1"},
        "status": {"phase": "Bound"},
    }))
    .unwrap()
}

fn op(method: CopyMethod, root: bool) -> Operation {
    Operation {
        id: "ab12cd34ef".into(),
        mapping: "dr.shop".into(),
        method,
        source: source(),
        dest_namespace: "shop-dr".into(),
        image: "registry.example/dr-syncer:1.0".into(),
        pull_policy: None,
        run_as_root: root,
        host_users: None,
        ownership: Ownership::Preserve,
        max_delete_percent: DEFAULT_MAX_DELETE_PERCENT,
        allow_deletions: None,
        resources: None,
        node: (method == CopyMethod::Direct).then(|| "node-2".to_string()),
        snapshot_class: Some("csi-snap".into()),
        timeout: Duration::from_secs(600),
        bwlimit_kib: Some(1024),
        hooks: Vec::new(),
        group: None,
    }
}

fn v<T: serde::Serialize>(x: &T) -> Value {
    serde_json::to_value(x).unwrap()
}

#[test]
fn serve_pod_by_copy_method() {
    let cases = [
        (CopyMethod::Snapshot, "dr-syncer-ab12cd34ef-src", None),
        (CopyMethod::Clone, "dr-syncer-ab12cd34ef-src", None),
        (CopyMethod::Direct, "data", Some("node-2")),
    ];
    for (method, claim, node) in cases {
        let pod = v(&op(method, false).serve_pod());
        let spec = &pod["spec"];
        assert_eq!(pod["metadata"]["namespace"], "shop", "{method:?}");
        assert_eq!(spec["nodeName"].as_str(), node, "{method:?}");
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"],
            json!({"claimName": claim, "readOnly": true})
        );
        assert_eq!(
            spec["volumes"][1]["secret"]["secretName"],
            "dr-syncer-ab12cd34ef-serve"
        );
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "registry.example/dr-syncer:1.0");
        assert_eq!(
            c["volumeMounts"][0],
            json!({"name": "data", "mountPath": "/data", "readOnly": true})
        );
        assert_eq!(
            c["args"],
            json!([
                "agent",
                "serve-volume",
                "--root",
                "/data",
                "--listen",
                "0.0.0.0:2223",
                "--host-key",
                "/etc/dr-syncer/keys/host_key",
                "--authorized-keys",
                "/etc/dr-syncer/keys/authorized_keys"
            ])
        );
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["runAsUser"], USER);
        assert!(
            spec["securityContext"].get("fsGroup").is_none(),
            "never chown a source volume"
        );
        assert_eq!(c["securityContext"]["privileged"], false);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(pod["metadata"]["labels"][OPERATION], "ab12cd34ef");
        assert_eq!(pod["metadata"]["labels"][TEMPORARY], "true");
    }
}

/// Each side gets exactly what it needs: as uid 0 the reader only DAC_READ_SEARCH, the
/// writer only what recreating owners and modes takes; without `runAsRoot` uid 65532 and
/// no capability at all (and an fsGroup only on the DR side's own volume).
#[test]
fn security_context_by_side_and_run_as_root() {
    let root_pod = json!({"runAsNonRoot": false, "runAsUser": 0, "runAsGroup": 0,
        "seccompProfile": {"type": "RuntimeDefault"}});
    let user_pod = json!({"runAsNonRoot": true, "runAsUser": USER, "runAsGroup": USER,
        "seccompProfile": {"type": "RuntimeDefault"}});
    let mut user_job = user_pod.clone();
    user_job["fsGroup"] = json!(USER);
    user_job["fsGroupChangePolicy"] = json!("OnRootMismatch");
    let cases = [
        (
            "root_reader",
            true,
            false,
            root_pod.clone(),
            json!({"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}),
        ),
        (
            "root_writer",
            true,
            true,
            root_pod,
            json!({"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]}),
        ),
        (
            "user_reader",
            false,
            false,
            user_pod,
            json!({"drop": ["ALL"]}),
        ),
        (
            "user_writer",
            false,
            true,
            user_job,
            json!({"drop": ["ALL"]}),
        ),
    ];
    for (name, root, writer, want_pod, want_caps) in cases {
        let o = op(CopyMethod::Clone, root);
        let (pod, c) = if writer {
            let job = v(&o.sync_job("data", "10.1.0.9:2223", "192.168.0.4:2222"));
            let spec = job["spec"]["template"]["spec"].clone();
            (
                spec["securityContext"].clone(),
                spec["containers"][0]["securityContext"].clone(),
            )
        } else {
            let p = v(&o.serve_pod());
            (
                p["spec"]["securityContext"].clone(),
                p["spec"]["containers"][0]["securityContext"].clone(),
            )
        };
        assert_eq!(pod, want_pod, "{name}");
        assert_eq!(
            c,
            json!({"allowPrivilegeEscalation": false, "privileged": false,
                   "readOnlyRootFilesystem": true, "capabilities": want_caps}),
            "{name}"
        );
    }
}

/// `hostUsers` appears on both pods only when set.
#[test]
fn host_users_by_setting() {
    for (name, setting, want) in [
        ("unset", None, Value::Null),
        ("user_namespace", Some(false), json!(false)),
        ("host", Some(true), json!(true)),
    ] {
        let mut o = op(CopyMethod::Clone, true);
        o.host_users = setting;
        let pod = v(&o.serve_pod());
        let job = v(&o.sync_job("data", "s:2223", "b:2222"));
        assert_eq!(pod["spec"]["hostUsers"], want, "{name}: server");
        assert_eq!(
            job["spec"]["template"]["spec"]["hostUsers"], want,
            "{name}: job"
        );
    }
}

/// The mapping's ownership, breaker threshold and released batch reach the Job's
/// arguments.
#[test]
fn sync_job_args_by_mapping_settings() {
    let cases = [
        (
            "defaults",
            Ownership::Preserve,
            50,
            None,
            vec!["--ownership", "require", "--max-delete-percent", "50"],
        ),
        (
            "ignore_and_breaker_off",
            Ownership::Ignore,
            100,
            None,
            vec!["--ownership", "ignore", "--max-delete-percent", "100"],
        ),
        (
            "released_batch",
            Ownership::Preserve,
            10,
            Some("0123456789ab"),
            vec![
                "--ownership",
                "require",
                "--max-delete-percent",
                "10",
                "--allow-deletions",
                "0123456789ab",
            ],
        ),
        (
            "empty_annotation_ignored",
            Ownership::Preserve,
            50,
            Some(""),
            vec!["--ownership", "require", "--max-delete-percent", "50"],
        ),
    ];
    for (name, ownership, percent, batch, want) in cases {
        let mut o = op(CopyMethod::Clone, true);
        o.ownership = ownership;
        o.max_delete_percent = percent;
        o.allow_deletions = batch.map(String::from);
        let job = v(&o.sync_job("data", "s:2223", "b:2222"));
        let args: Vec<String> = serde_json::from_value(
            job["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
        )
        .unwrap();
        assert_eq!(&args[args.len() - want.len()..], want, "{name}");
        assert_eq!(
            args.iter().filter(|a| *a == "--allow-deletions").count(),
            usize::from(want.contains(&"--allow-deletions")),
            "{name}"
        );
    }
}

/// Only a live volume (`Direct`) is read twice and compared a third time.
#[test]
fn sync_job_recheck_by_copy_method() {
    for (method, recheck) in [
        (CopyMethod::Snapshot, false),
        (CopyMethod::Clone, false),
        (CopyMethod::Direct, true),
    ] {
        let job = v(&op(method, true).sync_job("data", "s:2223", "b:2222"));
        let args: Vec<String> = serde_json::from_value(
            job["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
        )
        .unwrap();
        assert_eq!(
            args.contains(&"--recheck".to_string()),
            recheck,
            "{method:?}"
        );
    }
}

/// Resources: the default, or the mapping's on both the server and the Job.
#[test]
fn resources_default_or_configured() {
    let default =
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}});
    let custom = json!({"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "4Gi"}});
    for (name, setting, want) in [
        ("default", None, default),
        ("configured", Some(custom.clone()), custom),
    ] {
        let mut o = op(CopyMethod::Clone, true);
        o.resources = setting.map(|r| serde_json::from_value(r).unwrap());
        let pod = v(&o.serve_pod());
        let job = v(&o.sync_job("data", "s:2223", "b:2222"));
        assert_eq!(pod["spec"]["containers"][0]["resources"], want, "{name}");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["resources"], want,
            "{name}"
        );
    }
}

#[test]
fn temp_claim_by_copy_method() {
    let snap = v(&op(CopyMethod::Snapshot, false).temp_claim(Some("6Gi")));
    assert_eq!(
        snap["spec"]["dataSource"],
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "dr-syncer-ab12cd34ef-snap"})
    );
    assert_eq!(snap["spec"]["resources"]["requests"]["storage"], "6Gi");
    assert_eq!(snap["spec"]["storageClassName"], "fast");
    let clone = v(&op(CopyMethod::Clone, false).temp_claim(None));
    assert_eq!(
        clone["spec"]["dataSource"],
        json!({"kind": "PersistentVolumeClaim", "name": "data"})
    );
    assert_eq!(clone["spec"]["resources"]["requests"]["storage"], "5Gi");
    let vs = v(&op(CopyMethod::Snapshot, false).source_snapshot());
    assert_eq!(
        vs["spec"],
        json!({"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "csi-snap"})
    );
}

#[test]
fn sync_job_mounts_destination_and_keys() {
    let job =
        v(&op(CopyMethod::Clone, false).sync_job("data", "10.1.0.9:2223", "192.168.0.4:2222"));
    assert_eq!(job["metadata"]["namespace"], "shop-dr");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data"
    );
    assert_eq!(
        pod["volumes"][1]["secret"]["secretName"],
        "dr-syncer-ab12cd34ef-job"
    );
    assert_eq!(pod["securityContext"]["fsGroup"], USER);
    let c = &pod["containers"][0];
    assert_eq!(c["volumeMounts"][0]["readOnly"], false);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[..5],
        [
            "pvc-sync",
            "--from",
            "ssh://10.1.0.9:2223",
            "--jump",
            "ssh://192.168.0.4:2222"
        ]
    );
    assert!(args.windows(2).any(|w| w == ["--bwlimit", "1048576"]));
    assert!(
        args.windows(2)
            .any(|w| w == ["--summary-file", "/dev/termination-log"])
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"][OPERATION],
        "ab12cd34ef"
    );
}

#[test]
fn known_hosts_and_allow_line() {
    let kh = known_hosts(
        "192.168.0.4:2222",
        &["ssh-ed25519 AAAA1".into(), "ssh-ed25519 AAAA0".into()],
        "[fd00::9]:2223",
        "ssh-ed25519 BBBB c",
    );
    assert_eq!(
        kh,
        "[192.168.0.4]:2222 ssh-ed25519 AAAA1\n[192.168.0.4]:2222 ssh-ed25519 AAAA0\n[fd00::9]:2223 ssh-ed25519 BBBB c\n"
    );
    let line = allow_line(
        "10.1.0.9:2223",
        "SHA256:x",
        "2026-11-26T10:00:00Z".parse().unwrap(),
    );
    let parsed = crate::pvc::access::parse_allow(&line).unwrap();
    assert_eq!(parsed[0].key.as_deref(), Some("SHA256:x"));
    assert_eq!(parsed[0].port, 2223);
}

#[test]
fn destination_claim_uses_the_export_rules() {
    let spec: NamespaceMappingSpec = serde_json::from_value(json!({
        "sourceNamespace": "shop", "destinationNamespace": "shop-dr",
        "pvcConfig": {"storageClassMappings": [{"from": "fast", "to": "dr-fast"}],
                      "accessModeMappings": [{"from": "ReadWriteOnce", "to": "ReadWriteMany"}]},
        "destination": {"git": {"url": "ssh://git@example/x.git"}},
    }))
    .unwrap();
    let policy = Policy::from_spec(&spec).unwrap();
    let claim = v(&destination_claim(&source(), "shop-dr", &policy));
    assert_eq!(claim["metadata"]["namespace"], "shop-dr");
    assert_eq!(claim["spec"]["storageClassName"], "dr-fast");
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteMany"]));
    assert!(
        claim["spec"].get("volumeName").is_none(),
        "binding is cluster-specific"
    );
    assert!(claim.get("status").is_none());
    assert!(claim["metadata"].get("uid").is_none());
    assert_eq!(
        claim["metadata"]["labels"][crate::api::keys::MANAGED_BY],
        "dr-syncer"
    );
}

#[test]
fn mapping_label_fits() {
    assert_eq!(mapping_label("ns", "m"), "ns.m");
    let long = mapping_label(&"n".repeat(40), &"m".repeat(40));
    assert!(long.len() <= 63, "{long}");
    assert_ne!(long, mapping_label(&"n".repeat(40), &"m".repeat(41)));
    for s in [
        "a".repeat(62) + "-b-",
        "x".repeat(80),
        "data-".into(),
        "-".repeat(70),
    ] {
        let v = label_value(&s);
        assert!(
            v.len() <= 63 && v.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "{s} -> {v}"
        );
    }
}
