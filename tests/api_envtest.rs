//! The CRDs on a real kube-apiserver: they install, every example is accepted, invalid
//! objects are rejected with a message naming the field, and the test harness itself holds
//! (RBAC enforced for ServiceAccount tokens, two instances side by side).

mod common;

use std::path::Path;

use common::install_crds;
use dr_syncer::api::{ClusterMapping, NamespaceMapping, RemoteCluster};
use dr_syncer_testkit::envtest::{self, ControlPlane};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const MANAGER: &str = "dr-syncer-tests";

async fn plane_with_crds() -> (&'static ControlPlane, Client) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let plane = envtest::shared().await;
    let client = plane.client().await.unwrap();
    INSTALLED.get_or_init(|| install_crds(&client)).await;
    (plane, client)
}

async fn ensure_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&ns))
        .await
        .unwrap();
}

fn dynamic_api(client: &Client, obj: &DynamicObject) -> Api<DynamicObject> {
    let types = obj.types.as_ref().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).unwrap();
    // kube's plural rule (TenantPolicy → tenantpolicies), which the CRDs follow.
    let ar = ApiResource::from_gvk(&gvk);
    Api::namespaced_with(
        client.clone(),
        obj.metadata.namespace.as_deref().unwrap(),
        &ar,
    )
}

#[tokio::test]
async fn crds_become_established_with_expected_names() {
    let (_, client) = plane_with_crds().await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    // (name, short name, has a status subresource: a TenantPolicy is only read)
    for (name, short, status) in [
        ("namespacemappings.dr-syncer.io", "nsm", true),
        ("remoteclusters.dr-syncer.io", "rc", true),
        ("tenantpolicies.dr-syncer.io", "tp", false),
        ("clustermappings.dr-syncer.io", "clm", true),
    ] {
        let crd = api.get(name).await.unwrap();
        let names = crd.status.unwrap().accepted_names.unwrap();
        let shorts = names.short_names.unwrap_or_default();
        assert_eq!(shorts, vec![short.to_string()], "{name} short names");
        assert!(
            !shorts.contains(&"cm".to_string()),
            "{name} must not take ConfigMap's short name"
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            status,
            "{name}: status subresource"
        );
    }
}

#[tokio::test]
async fn examples_are_accepted_by_server_side_apply() {
    let (_, client) = plane_with_crds().await;
    ensure_namespace(&client, "dr-syncer").await;
    ensure_namespace(&client, "team-a").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/crs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 7, "examples/crs holds the examples");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let obj: DynamicObject =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = obj.metadata.name.clone().unwrap();
        let applied = dynamic_api(&client, &obj)
            .patch(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{} rejected: {e}", file.display()));
        // What the server stored (defaults applied) reads back into our typed API.
        let stored = serde_json::to_value(&applied).unwrap();
        let kind = obj.types.as_ref().unwrap().kind.as_str();
        let parsed = match kind {
            "NamespaceMapping" => serde_json::from_value::<NamespaceMapping>(stored).map(|_| ()),
            "RemoteCluster" => serde_json::from_value::<RemoteCluster>(stored).map(|_| ()),
            "ClusterMapping" => serde_json::from_value::<ClusterMapping>(stored).map(|_| ()),
            "TenantPolicy" => {
                serde_json::from_value::<dr_syncer::api::TenantPolicy>(stored).map(|_| ())
            }
            other => panic!("unexpected kind {other} in {}", file.display()),
        };
        parsed.unwrap_or_else(|e| panic!("{} does not read back as {kind}: {e}", file.display()));
    }
    // Defaults land on the server, not just in our code.
    let nsm: Api<NamespaceMapping> = Api::namespaced(client.clone(), "dr-syncer");
    let selector = nsm.get("labelled-teams").await.unwrap();
    assert!(selector.spec.scale_to_zero, "scaleToZero defaults to true");
    let rc: Api<RemoteCluster> = Api::namespaced(client, "dr-syncer");
    let dr = rc.get("prod").await.unwrap();
    assert_eq!(dr.spec.kubeconfig_secret_ref.key, "kubeconfig");
    assert_eq!(dr.spec.pvc_sync.unwrap().port, 2222);
}

fn nsm(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
           "metadata": {"name": name}, "spec": spec})
}

fn base_spec() -> Value {
    json!({"sourceNamespace": "shop", "destination": {"git": {"url": "https://git.example.com/dr.git"}}})
}

fn with(mut spec: Value, patch: Value) -> Value {
    json_patch_merge(&mut spec, &patch);
    spec
}

/// RFC 7386 merge, enough for building test specs (null removes a field).
fn json_patch_merge(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().unwrap();
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                json_patch_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

#[tokio::test]
async fn invalid_objects_are_rejected_naming_the_field() {
    let (_, client) = plane_with_crds().await;
    let ns = "invalid-crs";
    ensure_namespace(&client, ns).await;
    let git = json!({"url": "https://git.example.com/dr.git"});
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "both-source-and-selector",
            nsm(
                "a",
                with(
                    base_spec(),
                    json!({"namespaceSelector": {"matchLabels": {"dr": "on"}}}),
                ),
            ),
            &[
                "spec.sourceNamespace",
                "exactly one of spec.sourceNamespace or spec.namespaceSelector",
            ],
        ),
        (
            "neither-source-nor-selector",
            nsm("b", with(base_spec(), json!({"sourceNamespace": null}))),
            &["spec.sourceNamespace", "exactly one of"],
        ),
        (
            "unknown-replication-mode",
            nsm(
                "c",
                with(base_spec(), json!({"replicationMode": "Sometimes"})),
            ),
            &["spec.replicationMode", "Unsupported value"],
        ),
        (
            "cron-minute-out-of-range",
            nsm(
                "d",
                with(
                    base_spec(),
                    json!({"replicationMode": "Scheduled", "schedule": "61 * * * *"}),
                ),
            ),
            &["spec.schedule", "5-field cron"],
        ),
        (
            "cron-four-fields",
            nsm(
                "e",
                with(
                    base_spec(),
                    json!({"replicationMode": "Scheduled", "schedule": "*/5 * * *"}),
                ),
            ),
            &["spec.schedule", "5-field cron"],
        ),
        (
            "cron-garbage",
            nsm(
                "f",
                with(
                    base_spec(),
                    json!({"replicationMode": "Scheduled", "schedule": "every five minutes"}),
                ),
            ),
            &["spec.schedule"],
        ),
        (
            "scheduled-without-schedule",
            nsm(
                "g",
                with(base_spec(), json!({"replicationMode": "Scheduled"})),
            ),
            &[
                "spec.schedule",
                "required when replicationMode is Scheduled",
            ],
        ),
        (
            "two-destinations",
            nsm(
                "h",
                with(
                    base_spec(),
                    json!({"destination": {"cluster": {"remoteClusterRef": {"name": "dr"}}}}),
                ),
            ),
            &[
                "spec.destination",
                "exactly one of destination.git or destination.cluster",
            ],
        ),
        (
            "no-destination",
            nsm("i", with(base_spec(), json!({"destination": null}))),
            &["spec.destination", "required unless spec.clusterMappingRef"],
        ),
        (
            "empty-destination",
            nsm(
                "j",
                with(base_spec(), json!({"destination": {"git": null}})),
            ),
            &["spec.destination", "exactly one of"],
        ),
        (
            "bad-age-recipient",
            nsm(
                "k",
                with(
                    base_spec(),
                    json!({"secrets": {"ageRecipients": ["age1notarecipient"]}}),
                ),
            ),
            &["spec.secrets.ageRecipients", "age X25519 recipient"],
        ),
        (
            "ssh-key-as-recipient",
            nsm(
                "l",
                with(
                    base_spec(),
                    json!({"secrets": {"ageRecipients": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk"]}}),
                ),
            ),
            &["spec.secrets.ageRecipients"],
        ),
        (
            "ftp-git-url",
            nsm(
                "m",
                with(
                    base_spec(),
                    json!({"destination": {"git": {"url": "ftp://git.example.com/dr.git"}}}),
                ),
            ),
            &["spec.destination.git.url", "https://"],
        ),
        (
            "http-git-url",
            nsm(
                "n",
                with(
                    base_spec(),
                    json!({"destination": {"git": {"url": "http://git.example.com/dr.git"}}}),
                ),
            ),
            &["spec.destination.git.url"],
        ),
        (
            "git-path-escapes",
            nsm(
                "o",
                with(
                    base_spec(),
                    json!({"destination": {"git": {"url": "https://g.example.com/r.git", "path": "ns/../../etc"}}}),
                ),
            ),
            &["spec.destination.git.path", "must not contain '..'"],
        ),
        (
            "negative-delete-percent",
            nsm(
                "p",
                with(
                    base_spec(),
                    json!({"deletionSafety": {"maxDeletePercent": -1}}),
                ),
            ),
            &[
                "spec.deletionSafety.maxDeletePercent",
                "greater than or equal to 0",
            ],
        ),
        (
            "delete-percent-over-100",
            nsm(
                "q",
                with(
                    base_spec(),
                    json!({"deletionSafety": {"maxDeletePercent": 101}}),
                ),
            ),
            &[
                "spec.deletionSafety.maxDeletePercent",
                "less than or equal to 100",
            ],
        ),
        (
            "negative-delete-count",
            nsm(
                "r",
                with(
                    base_spec(),
                    json!({"deletionSafety": {"maxDeleteCount": -3}}),
                ),
            ),
            &["spec.deletionSafety.maxDeleteCount"],
        ),
        (
            "negative-bandwidth",
            nsm(
                "s",
                with(
                    base_spec(),
                    json!({"pvcConfig": {"dataSyncConfig": {"bandwidthLimitKib": -5}}}),
                ),
            ),
            &["spec.pvcConfig.dataSyncConfig.bandwidthLimitKib"],
        ),
        (
            "negative-keep-snapshots",
            nsm(
                "t",
                with(
                    base_spec(),
                    json!({"pvcConfig": {"dataSyncConfig": {"keepSnapshots": -1}}}),
                ),
            ),
            &["spec.pvcConfig.dataSyncConfig.keepSnapshots"],
        ),
        (
            "bad-duration",
            nsm(
                "u",
                with(
                    base_spec(),
                    json!({"continuous": {"debounce": "5 seconds"}}),
                ),
            ),
            &["spec.continuous.debounce"],
        ),
        (
            "transform-two-patches",
            nsm(
                "v",
                with(
                    base_spec(),
                    json!({"transforms": [{"mergePatch": {"a": 1}, "jsonPatch": [{"op": "remove", "path": "/a"}]}]}),
                ),
            ),
            &[
                "spec.transforms[0]",
                "exactly one of jsonPatch or mergePatch",
            ],
        ),
        (
            "json-patch-move-without-from",
            nsm(
                "w",
                with(
                    base_spec(),
                    json!({"transforms": [{"jsonPatch": [{"op": "move", "path": "/a"}]}]}),
                ),
            ),
            &["spec.transforms[0].jsonPatch[0]", "need from"],
        ),
        (
            "suffix-without-selector",
            nsm(
                "x",
                with(base_spec(), json!({"destinationNamespaceSuffix": "-dr"})),
            ),
            &["spec.destinationNamespaceSuffix"],
        ),
        (
            "uppercase-namespace",
            nsm(
                "y",
                with(base_spec(), json!({"destinationNamespace": "Shop_DR"})),
            ),
            &["spec.destinationNamespace"],
        ),
        (
            "unknown-access-mode",
            nsm(
                "z",
                with(
                    base_spec(),
                    json!({"pvcConfig": {"accessModeMappings": [{"from": "ReadWriteMany", "to": "WriteOnly"}]}}),
                ),
            ),
            &[
                "spec.pvcConfig.accessModeMappings[0].to",
                "Unsupported value",
            ],
        ),
        (
            "remotecluster-port-zero",
            json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "rc1"},
            "spec": {"kubeconfigSecretRef": {"name": "k"}, "pvcSync": {"enabled": true, "port": 0}}}),
            &["spec.pvcSync.port", "greater than or equal to 1"],
        ),
        (
            "remotecluster-without-kubeconfig",
            json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "rc2"},
            "spec": {}}),
            &["spec.kubeconfigSecretRef", "Required value"],
        ),
        (
            "clustermapping-same-clusters",
            json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "ClusterMapping", "metadata": {"name": "cm1"},
            "spec": {"sourceCluster": "prod", "targetCluster": "prod", "defaults": {"git": git}}}),
            &["spec.targetCluster", "must differ"],
        ),
    ];
    let mut failures = Vec::new();
    for (case, object, expected) in &cases {
        let mut obj: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        obj.metadata.namespace = Some(ns.into());
        let name = obj.metadata.name.clone().unwrap();
        let result = dynamic_api(&client, &obj)
            .create(&PostParams::default(), &obj)
            .await;
        match result {
            Ok(_) => failures.push(format!("{case}: accepted, expected rejection")),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = expected
                    .iter()
                    .filter(|s| !status.message.contains(*s))
                    .collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{case} ({name}): code {} message {:?} lacks {missing:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{case}: unexpected error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn valid_schedules_are_accepted() {
    let (_, client) = plane_with_crds().await;
    let ns = "valid-schedules";
    ensure_namespace(&client, ns).await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, ns, &ApiResource::erase::<NamespaceMapping>(&()));
    for (i, schedule) in [
        "*/5 * * * *",
        "0 8-18/2 * * MON-FRI",
        "15,45 0 1 jan,jul *",
        "@daily",
        "0 0 29 2 0",
        "5 4 * * sun",
    ]
    .iter()
    .enumerate()
    {
        let obj: DynamicObject = serde_json::from_value(nsm(
            &format!("s{i}"),
            with(
                base_spec(),
                json!({"replicationMode": "Scheduled", "schedule": schedule}),
            ),
        ))
        .unwrap();
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{schedule:?} rejected: {e}"));
    }
}

#[tokio::test]
async fn kubectl_shows_printer_columns() {
    let (plane, client) = plane_with_crds().await;
    let ns = "printer-columns";
    ensure_namespace(&client, ns).await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, ns, &ApiResource::erase::<NamespaceMapping>(&()));
    let obj: DynamicObject = serde_json::from_value(nsm("shop", base_spec())).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let out = plane
        .kubectl()
        .unwrap()
        .args(["get", "nsm", "-n", ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MODE",
            "SOURCE",
            "DESTINATION",
            "PHASE",
            "LAST",
            "SYNC",
            "AGE"
        ]
    );
    assert!(
        text.contains("Continuous") && text.contains("shop"),
        "{text}"
    );
}

#[tokio::test]
async fn service_account_tokens_are_bound_by_rbac() {
    let (plane, admin) = plane_with_crds().await;
    let ns = "rbac-check";
    ensure_namespace(&admin, ns).await;
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .patch("reader", &PatchParams::apply(MANAGER), &Patch::Apply(&sa))
        .await
        .unwrap();
    let as_sa = plane.service_account_client(ns, "reader").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(as_sa, ns);
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("a ServiceAccount without RBAC must be forbidden, got {other:?}"),
    }
    let role: Role = serde_json::from_value(json!({"metadata": {"name": "read-cm"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "read-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // RBAC changes propagate to the authorizer's cache asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match cms.list(&Default::default()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still forbidden after the RoleBinding: {e}"),
        }
    }
    // Still no write permission.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert!(
        matches!(cms.create(&PostParams::default(), &cm).await, Err(kube::Error::Api(s)) if s.code == 403)
    );
}

#[tokio::test]
async fn two_control_planes_run_side_by_side() {
    let source = ControlPlane::start().await.unwrap();
    let dr = ControlPlane::start().await.unwrap();
    assert_ne!(source.server(), dr.server());
    let (src_client, dr_client) = (source.client().await.unwrap(), dr.client().await.unwrap());
    let version = src_client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37"),
        "apiserver matches k8s-openapi's v1_37"
    );
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "only-on-source"}})).unwrap();
    Api::<ConfigMap>::namespaced(src_client.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    assert!(
        Api::<ConfigMap>::namespaced(dr_client, "default")
            .get_opt("only-on-source")
            .await
            .unwrap()
            .is_none()
    );
    let dir = source.dir().to_path_buf();
    drop(source);
    assert!(
        !dir.exists(),
        "a dropped control plane removes its directory"
    );
    assert!(
        src_client.apiserver_version().await.is_err(),
        "a dropped control plane is stopped"
    );
}
