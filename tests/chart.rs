//! The Helm chart, with helm built from its pinned Go module: `helm lint --strict`, the
//! schema refusing bad values, optional parts rendered on demand, and the rendered chart
//! applied to a real apiserver — its RBAC checked verb by verb, then the controller run from
//! the rendered Deployment's args and env with the chart's ServiceAccount token, syncing.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::chart::{CHART, deployment, render, strings};
use common::{Running, free_addr, install_crds};
use dr_syncer::api::NamespaceMapping;
use dr_syncer_testkit::envtest;
use dr_syncer_testkit::git::{GitDaemon, bare_repo, git};
use dr_syncer_testkit::objects::Applier;
use dr_syncer_testkit::tools::helm;
use kube::{Api, Client};
use serde_json::{Value, json};

fn helm_run(args: &[&str]) -> Output {
    Command::new(helm()).args(args).output().unwrap()
}

fn kinds(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn chart_lints_and_renders_its_options() {
    let lint = helm_run(&["lint", "--strict", CHART]);
    let text = String::from_utf8_lossy(&lint.stdout);
    assert!(
        lint.status.success() && !text.contains("[WARNING]") && !text.contains("[ERROR]"),
        "{text}"
    );

    let default = render("dr", &[]);
    assert_eq!(
        kinds(&default),
        [
            "ServiceAccount/dr-syncer",
            "ClusterRole/dr-syncer",
            "ClusterRole/dr-syncer-tenant",
            "ClusterRoleBinding/dr-syncer",
            "Role/dr-syncer",
            "RoleBinding/dr-syncer",
            "Service/dr-syncer-metrics",
            "Deployment/dr-syncer"
        ]
    );
    let d = deployment(&default);
    assert_eq!(d["spec"]["replicas"], 1);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert!(!strings(&pod["containers"][0]["args"]).contains(&"--leader-election".to_string()));

    // Two replicas turn sharding on (not leader election); optional parts appear when
    // asked for.
    let ha = render(
        "dr",
        &[
            "replicaCount=2",
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
        ],
    );
    let args = strings(&deployment(&ha)["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.contains(&"--sharding".to_string())
            && args.contains(&"--lease-duration=15".to_string())
            && !args.contains(&"--leader-election".to_string()),
        "{args:?}"
    );
    // Leader election when asked for, with any replica count; a static shard's name.
    for (sets, want, not) in [
        (
            &["replicaCount=2", "leaderElection.enabled=true"][..],
            "--leader-election",
            "--sharding",
        ),
        (
            &["replicaCount=3", "sharding.shard=tenant-a"][..],
            "--shard=tenant-a",
            "--leader-election",
        ),
    ] {
        let objs = render("dr", sets);
        let args = strings(&deployment(&objs)["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert!(
            args.contains(&want.to_string()) && !args.contains(&not.to_string()),
            "{sets:?}: {args:?}"
        );
    }
    let k = kinds(&ha);
    assert!(
        k.contains(&"ServiceMonitor/dr-syncer".to_string())
            && k.contains(&"NetworkPolicy/dr-syncer".to_string()),
        "{k:?}"
    );

    // The PVC agent's bastion DaemonSet, on request: non-root, read-only, its allow-list
    // as arguments, keys from a Secret, no API token.
    let with_agent = render(
        "dr",
        &[
            "agent.enabled=true",
            "agent.keysSecret=agent-keys",
            "agent.allow={10.0.0.5:2223,10.0.0.6:2223}",
        ],
    );
    let ds = with_agent
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("agent DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let args = strings(&pod["containers"][0]["args"]);
    assert!(
        args.contains(&"--allow=10.0.0.5:2223".to_string())
            && args.contains(&"--allow=10.0.0.6:2223".to_string()),
        "{args:?}"
    );
    assert_eq!(&args[..2], ["agent", "bastion"]);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "agent-keys");
    for (sets, message) in [
        (
            &["agent.enabled=true", "agent.allow={10.0.0.5:2223}"][..],
            "agent.keysSecret",
        ),
        (
            &["agent.enabled=true", "agent.keysSecret=k"][..],
            "agent.allow",
        ),
    ] {
        let mut args = vec!["template", "dr-syncer", CHART];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm_run(&args);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(message),
            "{sets:?}"
        );
    }

    // An in-house git CA: a ConfigMap mounted read-only, its path in SSL_CERT_FILE (which
    // libgit2's OpenSSL reads; tests/user_paths_https.rs proves it), pods rolled on change.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    for (sets, configmap, key) in [
        (
            vec![format!("git.caBundle={pem}")],
            "dr-syncer-git-ca",
            "ca.crt",
        ),
        (
            vec![
                "git.caBundleConfigMap.name=corp-ca".to_string(),
                "git.caBundleConfigMap.key=bundle.pem".to_string(),
            ],
            "corp-ca",
            "bundle.pem",
        ),
    ] {
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let objs = render("dr", &sets);
        let rendered_cm = objs
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == configmap);
        let template = &deployment(&objs)["spec"]["template"];
        let pod = &template["spec"];
        let container = &pod["containers"][0];
        assert!(
            container["env"].as_array().unwrap().contains(
                &json!({"name": "SSL_CERT_FILE", "value": "/etc/dr-syncer/git-ca/ca.crt"})
            ),
            "{sets:?}: {}",
            container["env"]
        );
        assert!(
            container["volumeMounts"].as_array().unwrap().contains(
                &json!({"name": "git-ca", "mountPath": "/etc/dr-syncer/git-ca", "readOnly": true})
            ),
            "{sets:?}"
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "git-ca",
                "configMap": {"name": configmap, "items": [{"key": key, "path": "ca.crt"}]}})),
            "{sets:?}: {}",
            pod["volumes"]
        );
        if configmap == "dr-syncer-git-ca" {
            let cm = rendered_cm.expect("the chart renders the bundle's ConfigMap");
            assert_eq!(cm["data"]["ca.crt"], pem, "the PEM as given");
            assert!(
                template["metadata"]["annotations"]["checksum/git-ca"].is_string(),
                "a new bundle rolls the pods"
            );
        } else {
            assert!(
                rendered_cm.is_none(),
                "an existing ConfigMap is only mounted"
            );
        }
    }
    let both = helm_run(&[
        "template",
        "dr-syncer",
        CHART,
        "--set",
        &format!("git.caBundle={pem}"),
        "--set",
        "git.caBundleConfigMap.name=corp-ca",
    ]);
    assert!(
        !both.status.success()
            && String::from_utf8_lossy(&both.stderr).contains("exclusive: set one"),
        "{both:?}"
    );

    // The schema names the bad value.
    let cases = [
        ("replicaCount=-1", "/replicaCount"),
        ("log.format=xml", "/log/format"),
        (
            "tenancy.namespaces={Not_A_Namespace}",
            "/tenancy/namespaces/0",
        ),
        ("metrics.port=70000", "/metrics/port"),
        ("sharding.shard=-bad-", "/sharding/shard"),
        (
            "leaderElection.leaseDuration=2",
            "/leaderElection/leaseDuration",
        ),
        ("unknownKey=1", "unknownKey"),
        ("agent.allow={no-port}", "/agent/allow/0"),
        // A path where the PEM belongs (`--set` instead of `--set-file`).
        ("git.caBundle=/etc/ssl/corp-ca.crt", "/git/caBundle"),
    ];
    for (set, field) in cases {
        let out = helm_run(&["template", "dr-syncer", CHART, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(field), "{set}: {err}");
    }
}

async fn can_i(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource.split('/').next().unwrap(),
                               "subresource": resource.split('/').nth(1).unwrap_or(""), "namespace": namespace}}}))
    .unwrap();
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    api.create(&Default::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn chart_installs_and_its_controller_syncs_with_least_privilege() {
    let plane = envtest::shared().await;
    let admin = plane.client().await.unwrap();
    install_crds(&admin).await;
    let ns = "dr-syncer-chart";
    let applier = Applier::new(admin.clone(), "test");
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await;
    let rendered = render(
        ns,
        &[
            "tenancy.namespaces={team-a,team-b}",
            "tenancy.allowCrossNamespaceRefs=true",
            "agent.enabled=true",
            "agent.keysSecret=agent-keys",
            "agent.allow={10.0.0.5:2223}",
        ],
    );
    assert!(
        rendered.iter().any(|o| o["kind"] == "DaemonSet"),
        "the agent is part of the install"
    );
    for o in &rendered {
        applier.apply(o).await;
    }
    let source = "case-chart";
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": source}}))
        .await;
    applier.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": source}, "data": {"mode": "prod"}})).await;
    applier.apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "admin", "namespace": source}, "stringData": {"password": "chart-secret"}})).await;

    // RBAC: what the controller needs, and nothing more.
    let user = format!("system:serviceaccount:{ns}:dr-syncer");
    let allowed = [
        ("list", "", "secrets", source),
        ("watch", "apps", "statefulsets", source),
        ("patch", "dr-syncer.io", "namespacemappings/status", ns),
        ("create", "events.k8s.io", "events", ns),
        ("create", "", "secrets", ns),
        ("update", "coordination.k8s.io", "leases", ns),
    ];
    let denied = [
        ("create", "", "configmaps", source),
        ("delete", "", "secrets", source),
        ("create", "", "secrets", source),
        ("update", "dr-syncer.io", "namespacemappings", ns),
        ("delete", "dr-syncer.io", "namespacemappings", ns),
        ("create", "apps", "deployments", ns),
        ("update", "coordination.k8s.io", "leases", source),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "",
        ),
        ("impersonate", "", "serviceaccounts", ns),
    ];
    for (verb, group, resource, namespace) in allowed {
        assert!(
            can_i(&admin, &user, verb, group, resource, namespace).await,
            "{verb} {resource} in {namespace} must be allowed"
        );
    }
    for (verb, group, resource, namespace) in denied {
        assert!(
            !can_i(&admin, &user, verb, group, resource, namespace).await,
            "{verb} {resource} in {namespace} must be denied"
        );
    }

    // The controller as the Deployment runs it: its args and env, the chart's ServiceAccount.
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("sa.kubeconfig");
    let sa = deployment(&rendered)["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(
        &kubeconfig,
        serde_saphyr::to_string(&plane.service_account_kubeconfig(ns, &sa).await.unwrap()).unwrap(),
    )
    .unwrap();
    let container = &deployment(&rendered)["spec"]["template"]["spec"]["containers"][0];
    let http = free_addr();
    let cache = tmp.path().join("cache");
    // Only what a pod provides differently here: a free port and a writable cache path.
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|a| {
            if a.starts_with("--http-addr=") {
                format!("--http-addr={http}")
            } else if a.starts_with("--cache-dir=") {
                format!("--cache-dir={}", cache.display())
            } else {
                a
            }
        })
        .collect();
    assert!(
        args.contains(&"--tenant-namespaces=team-a,team-b".to_string())
            && args.contains(&"--allow-cross-namespace-refs".to_string()),
        "{args:?}"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dr-syncer"));
    cmd.args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => ns.to_string(),
            Some("metadata.name") => "dr-syncer-7d9f-abcde".to_string(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_string(),
        };
        cmd.env(name, value);
    }
    let _controller = Running::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Command::new("curl")
        .args(["-sf", &format!("http://{http}/readyz")])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "controller never ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let srv = tmp.path().join("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    applier.apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
        "metadata": {"name": "chart", "namespace": ns, "annotations": {"dr-syncer.io/sync-now": "go"}},
        "spec": {"sourceNamespace": source, "replicationMode": "Manual", "resourceTypes": ["configmaps", "secrets"],
                 "destination": {"git": {"url": daemon.url("dr.git"), "branch": "main", "path": "chart"}},
                 "secrets": {"ageRecipients": [recipient]}}})).await;
    let nms: Api<NamespaceMapping> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let nm = nms.get("chart").await.unwrap();
        if let Some(s) = nm
            .status
            .filter(|s| s.last_sync_now.is_some() || s.last_error.is_some())
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no sync as the chart's ServiceAccount"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    let files = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("chart/case-chart/core/secrets/admin.sops.yaml"),
        "{files}"
    );
    assert!(
        files.contains("chart/case-chart/core/configmaps/settings.yaml"),
        "{files}"
    );
}
