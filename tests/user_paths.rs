//! The documented setups, run as a user runs them: the controller installed by the Helm
//! chart (rendered args, its ServiceAccount) in the cluster that holds the mappings, the
//! source cluster reached through a RemoteCluster kubeconfig Secret, the custom resources
//! taken from `examples/crs/` with only hosts, ports, keys and recipients substituted, and
//! git over `ssh://` to a real OpenSSH server with a Flux-style deploy-key Secret
//! (`identity`, `known_hosts`).
//!
//! The mapping objects live in a second apiserver ("the DR cluster", where the controller is
//! installed) that holds look-alike objects in the same namespaces, so reading the wrong
//! cluster shows up in what is committed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::chart::{self, ChartController};
use dr_syncer::api::{NamespaceMapping, RemoteCluster};
use dr_syncer_testkit::envtest::{self, ControlPlane};
use dr_syncer_testkit::git::{Sshd, bare_repo, git};
use dr_syncer_testkit::objects::Applier;
use dr_syncer_testkit::tools::sops;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The controller's namespace in every example.
const NS: &str = "dr-syncer";

/// An example custom resource from `examples/crs/`, as JSON.
fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/crs")
        .join(file);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A source cluster (shared by the tests of this file, one namespace each), a DR cluster
/// with the chart-installed controller, and a git server over SSH.
struct Site {
    // Dropped first (fields drop in declaration order): an apiserver stopped under a
    // controller's open watches waits a minute for them to drain.
    controller: Option<ChartController>,
    prod: &'static ControlPlane,
    prod_applier: Applier,
    _dr: ControlPlane,
    dr_admin: Client,
    dr_applier: Applier,
    sshd: Sshd,
    repo: PathBuf,
    url: String,
    identity: age::x25519::Identity,
    recipient: String,
    work: tempfile::TempDir,
}

async fn site(name: &str) -> Site {
    site_with(name, &[]).await
}

/// [`site`] with chart values set (`--set`).
async fn site_with(name: &str, sets: &[&str]) -> Site {
    let prod = envtest::shared_named("prod").await;
    let prod_applier = Applier::new(prod.client().await.unwrap(), "test");
    let dr = ControlPlane::start().await.unwrap();
    let dr_admin = dr.client().await.unwrap();
    let dr_applier = Applier::new(dr_admin.clone(), "test");
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"));
    let repo = bare_repo(&work.path().join("srv/platform"), "dr-state.git");
    let url = sshd.url(&repo);
    let controller = chart::start(&dr, NS, sets, &work.path().join("controller"), name, &[]).await;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let site = Site {
        controller: Some(controller),
        prod,
        prod_applier,
        _dr: dr,
        dr_admin,
        dr_applier,
        sshd,
        repo,
        url,
        identity,
        recipient,
        work,
    };
    // The source cluster: examples/crs/02 (prod) without its PVC agent, which these tests
    // do not exercise; its kubeconfig Secret holds an admin kubeconfig of the source.
    let mut rc = example("02-remotecluster-pvc-agent.yaml");
    rc["spec"].as_object_mut().unwrap().remove("pvcSync");
    site.kubeconfig_secret("prod-kubeconfig", &site.prod.kubeconfig())
        .await;
    site.dr_applier.apply(&rc).await;
    site
}

impl Site {
    async fn kubeconfig_secret(&self, name: &str, kc: &kube::config::Kubeconfig) {
        let yaml = serde_saphyr::to_string(kc).unwrap();
        self.dr_applier
            .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                "stringData": {"kubeconfig": yaml}}))
            .await;
    }

    /// The Flux-style deploy-key Secret: `identity`, `identity.pub`, `known_hosts`.
    async fn deploy_key_secret(&self, name: &str, with_identity: bool) {
        let key = std::fs::read_to_string(&self.sshd.client_key).unwrap();
        let public = std::fs::read_to_string(self.sshd.client_key.with_extension("pub")).unwrap();
        let known_hosts = std::fs::read_to_string(&self.sshd.known_hosts).unwrap();
        let mut data = json!({"identity.pub": public, "known_hosts": known_hosts});
        if with_identity {
            data["identity"] = json!(key);
        }
        // Replace, not merge: a key dropped from the Secret must be gone.
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.dr_admin.clone(), NS);
        let _ = api.delete(name, &Default::default()).await;
        self.dr_applier
            .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                "type": "Opaque", "stringData": data}))
            .await;
    }

    /// examples/crs/03 with the repository URL and the recipient substituted.
    async fn cluster_mapping(&self) {
        let mut cm = example("03-clustermapping.yaml");
        cm["spec"]["defaults"]["git"]["url"] = json!(self.url);
        cm["spec"]["defaults"]["secrets"]["ageRecipients"] = json!([self.recipient]);
        self.dr_applier.apply(&cm).await;
    }

    async fn mapping(&self, name: &str) -> NamespaceMapping {
        Api::<NamespaceMapping>::namespaced(self.dr_admin.clone(), NS)
            .get(name)
            .await
            .unwrap()
    }

    /// Sets `dr-syncer.io/sync-now` and waits until the mapping reports that trigger done,
    /// or a new error (returned).
    async fn trigger(&self, name: &str, value: &str) -> Result<NamespaceMapping, String> {
        let before = self.mapping(name).await.status.and_then(|s| s.last_error);
        // Error times have one-second resolution: make a new error tell from the last one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        Api::<NamespaceMapping>::namespaced(self.dr_admin.clone(), NS)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"dr-syncer.io/sync-now": value}}}),
                ),
            )
            .await
            .unwrap();
        self.outcome_after(name, before, |s| s.last_sync_now.as_deref() == Some(value))
            .await
    }

    /// Waits until `done` holds (and no error is recorded) or an error is recorded.
    async fn outcome(
        &self,
        name: &str,
        done: impl Fn(&dr_syncer::api::NamespaceMappingStatus) -> bool,
    ) -> Result<NamespaceMapping, String> {
        self.outcome_after(name, None, done).await
    }

    /// Like [`Site::outcome`], ignoring the error `before` (an earlier attempt's).
    async fn outcome_after(
        &self,
        name: &str,
        before: Option<dr_syncer::api::SyncError>,
        done: impl Fn(&dr_syncer::api::NamespaceMappingStatus) -> bool,
    ) -> Result<NamespaceMapping, String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let nm = self.mapping(name).await;
            let s = nm.status.clone().unwrap_or_default();
            if done(&s) && s.last_error.is_none() {
                return Ok(nm);
            }
            if let Some(e) = s
                .last_error
                .as_ref()
                .filter(|e| Some(*e) != before.as_ref())
            {
                return Err(e.message.clone());
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no outcome in 90 s: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn show(&self, path: &str) -> Option<String> {
        let out = Command::new("git")
            .args(["show", &format!("main:{path}")])
            .current_dir(&self.repo)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    }

    fn head(&self) -> String {
        git(&self.repo, &["rev-parse", "main"]).trim().to_string()
    }

    /// Waits until the committed file at `path` satisfies `ok`.
    async fn committed(&self, path: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(body) = self.show(path).filter(|b| ok(b)) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {path} is {:?} after 60 s",
                self.show(path)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Decrypts a committed SOPS file with the real `sops` and our age identity.
    fn sops_decrypt(&self, path: &str) -> String {
        let file = self.work.path().join("decrypt.sops.yaml");
        std::fs::write(&file, self.show(path).expect("committed")).unwrap();
        let out = Command::new(sops())
            .args(["decrypt"])
            .arg(&file)
            .env("SOPS_AGE_KEY", self.identity_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "sops: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `dr-syncer failover|failback --repo <ssh url> --path <path> --yes` with the deploy
    /// key and pinned host key as files, as docs/runbook.md runs it.
    fn promotion(&self, verb: &str, path: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .args([
                verb, "--repo", &self.url, "--branch", "main", "--path", path, "--yes",
            ])
            .arg("--ssh-key")
            .arg(&self.sshd.client_key)
            .arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--cache-dir")
            .arg(self.work.path().join("cli-cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{verb}: {}", stderr(&out));
    }

    fn identity_string(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.identity.to_string().expose_secret().to_string()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns,
        "annotations": {"sidecar.example.com/inject": "true"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "registry.prod.example.com/app:1"}]}}}})
}

fn config_map(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// README "Into git": examples/crs/03 (ClusterMapping defaults: ssh:// repository, deploy
/// key Secret, recipients) + examples/crs/11 (Scheduled, `clusterMappingRef`), source from
/// the ClusterMapping's `sourceCluster`.
#[tokio::test]
async fn ssh_deploy_key_through_cluster_mapping_defaults() {
    let s = site("user-path-ssh-defaults").await;
    // Source "billing" on prod; a look-alike on the DR cluster that must never be read.
    for (applier, region, replicas) in [
        (&s.prod_applier, "prod-east", 3),
        (&s.dr_applier, "dr-west", 0),
    ] {
        applier.apply(&namespace("billing")).await;
        applier.apply(&deployment("billing", "api", replicas)).await;
        applier
            .apply(&config_map(
                "billing",
                "billing-settings",
                json!({"LOG_LEVEL": "info", "region": region}),
            ))
            .await;
    }
    s.prod_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "billing-db", "namespace": "billing"},
            "stringData": {"password": "prod-db-password"}}))
        .await;
    s.cluster_mapping().await;
    // A deploy-key Secret without `identity`: the error names the Secret and the key.
    s.deploy_key_secret("dr-state-deploy-key", false).await;
    let mut nm = example("11-namespacemapping-scheduled.yaml");
    nm["metadata"]["annotations"] = json!({"dr-syncer.io/sync-now": "first"});
    s.dr_applier.apply(&nm).await;
    let err = s
        .outcome("billing", |st| st.last_sync_now.as_deref() == Some("first"))
        .await
        .expect_err("no deploy key, no push");
    assert!(
        err.contains("Secret dr-syncer/dr-state-deploy-key key \"identity\""),
        "the error names the Secret and key: {err}"
    );
    assert!(
        !err.contains("--ssh-key"),
        "no CLI flags in a controller error: {err}"
    );

    // With the key: committed over SSH, from the source cluster, transformed.
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    s.trigger("billing", "second")
        .await
        .expect("sync over ssh://");
    let base = "clusters/prod/billing/billing-dr";
    let deploy = s
        .show(&format!("{base}/apps/deployments/api.yaml"))
        .expect("deployment committed");
    assert!(deploy.contains("replicas: 0"), "{deploy}");
    assert!(
        deploy.contains("dr-syncer.io/original-replicas: \"3\""),
        "the source's count: {deploy}"
    );
    assert!(
        !deploy.contains("sidecar.example.com/inject"),
        "the example's jsonPatch ran: {deploy}"
    );
    let settings = s
        .show(&format!("{base}/core/configmaps/billing-settings.yaml"))
        .unwrap();
    assert!(
        settings.contains("region: prod-east"),
        "read from prod, not DR: {settings}"
    );
    assert!(
        settings.contains("LOG_LEVEL: debug"),
        "the example's mergePatch ran: {settings}"
    );
    let secret = s.sops_decrypt(&format!("{base}/core/secrets/billing-db.sops.yaml"));
    assert!(secret.contains(&base64_of("prod-db-password")), "{secret}");
    let message = git(&s.repo, &["log", "-1", "--format=%B", "main"]);
    assert!(message.contains("Source-Cluster: prod"), "{message}");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A RemoteCluster whose kubeconfig turns TLS verification off is refused before any
/// connection, with a condition naming the field; a good one reports TLS verified only
/// once a call to its apiserver succeeded.
#[tokio::test]
async fn remote_cluster_refuses_insecure_skip_tls_verify() {
    let s = site("user-path-tls").await;
    let mut kc = s.prod.kubeconfig();
    for c in &mut kc.clusters {
        let cluster = c.cluster.as_mut().unwrap();
        cluster.insecure_skip_tls_verify = Some(true);
        cluster.certificate_authority_data = None;
    }
    s.kubeconfig_secret("insecure-kubeconfig", &kc).await;
    let mut rc = example("01-remotecluster.yaml");
    rc["metadata"]["name"] = json!("insecure");
    rc["spec"]["kubeconfigSecretRef"]["name"] = json!("insecure-kubeconfig");
    s.dr_applier.apply(&rc).await;
    let api: Api<RemoteCluster> = Api::namespaced(s.dr_admin.clone(), NS);
    let condition = |rc: &RemoteCluster, t: &str| {
        rc.status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == t).cloned())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (insecure, prod) = loop {
        let (a, b) = (
            api.get("insecure").await.unwrap(),
            api.get("prod").await.unwrap(),
        );
        if let (Some(x), Some(y)) = (condition(&a, "KubeconfigValid"), condition(&b, "Ready")) {
            break (x, y);
        }
        assert!(Instant::now() < deadline, "no RemoteCluster status in 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(insecure.status, "False", "{insecure:?}");
    assert!(
        insecure.message.contains("insecure-skip-tls-verify"),
        "names the field: {}",
        insecure.message
    );
    assert!(!insecure.message.contains("TLS verified"));
    assert_eq!(prod.status, "True", "{prod:?}");
    assert!(prod.message.contains("TLS verified"), "{}", prod.message);
}

/// examples/crs/10 (Continuous) inheriting the ClusterMapping's source and repository: the
/// watch follows the source cluster named by the ClusterMapping — never the cluster the
/// controller runs in — so patch commits carry source objects. Then `dr-syncer failover`
/// (git mode, as the runbook runs it) promotes the path, and neither a patch sync nor a full
/// sync scales the promoted DR side down.
#[tokio::test]
async fn continuous_watch_follows_the_cluster_mappings_source() {
    let s = site("user-path-continuous").await;
    for (applier, color, replicas) in [(&s.prod_applier, "blue", 2), (&s.dr_applier, "dr-only", 0)]
    {
        applier.apply(&namespace("shop")).await;
        applier.apply(&deployment("shop", "web", replicas)).await;
        applier
            .apply(&config_map("shop", "shop-config", json!({"color": color})))
            .await;
    }
    s.cluster_mapping().await;
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    s.dr_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dr-age-recipients", "namespace": NS},
            "stringData": {"recipients.txt": format!("# DR site\n{}\n", s.recipient)}}))
        .await;
    // examples/crs/10 with the ClusterMapping's destination instead of its own https one.
    let mut nm = example("10-namespacemapping-git.yaml");
    let spec = nm["spec"].as_object_mut().unwrap();
    spec.remove("destination");
    spec.insert("clusterMappingRef".into(), json!({"name": "prod-to-dr"}));
    spec["secrets"]["ageRecipients"] = json!([s.recipient]);
    spec["continuous"]["debounce"] = json!("1s");
    s.dr_applier.apply(&nm).await;
    let path = "clusters/prod/shop/shop/core/configmaps/shop-config.yaml";
    s.committed(path, "first sync", |b| b.contains("color: blue"))
        .await;

    // A change on each cluster: only the source's may arrive, through the watch.
    s.prod_applier
        .apply(&config_map(
            "shop",
            "shop-config",
            json!({"color": "green"}),
        ))
        .await;
    s.prod_applier.apply(&deployment("shop", "web", 4)).await;
    s.dr_applier
        .apply(&config_map(
            "shop",
            "shop-config",
            json!({"color": "dr-changed"}),
        ))
        .await;
    s.committed(path, "the source's change", |b| b.contains("color: green"))
        .await;
    let deploy_path = "clusters/prod/shop/shop/apps/deployments/web.yaml";
    s.committed(deploy_path, "the source's scale", |b| {
        b.contains("dr-syncer.io/original-replicas: \"4\"")
    })
    .await;
    let history = git(&s.repo, &["log", "-p", "main", "--", path]);
    assert!(
        !history.contains("dr-changed"),
        "a DR object was committed: {history}"
    );
    let metrics = chart::metrics(&s.controller.as_ref().unwrap().http);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dr_syncer_syncs_total") && l.contains("path=\"patch\"")),
        "the change came as a patch sync: {metrics}"
    );

    // Failover in git mode, as docs/runbook.md runs it (deploy key and pins as files).
    s.promotion("failover", "clusters/prod/shop");
    let promoted = s.head();
    let live = s.show(deploy_path).unwrap();
    assert!(
        live.contains("replicas: 4"),
        "failover restored the replicas: {live}"
    );

    // Patch path: a watched change while promoted is refused, nothing pushed.
    s.prod_applier
        .apply(&config_map(
            "shop",
            "shop-config",
            json!({"color": "while-promoted"}),
        ))
        .await;
    let err = s
        .outcome("shop", |_| false)
        .await
        .expect_err("a promoted path refuses the patch sync");
    assert!(err.contains("dr-syncer failback"), "{err}");
    // Full path: a requested full sync is refused as well.
    let err = s
        .trigger("shop", "while-promoted")
        .await
        .expect_err("full sync refused");
    assert!(err.contains("promoted"), "{err}");
    assert_eq!(s.head(), promoted, "nothing was pushed while promoted");
    assert!(
        s.show(deploy_path).unwrap().contains("replicas: 4"),
        "still live"
    );

    // Failback (git mode): the standby form again, and syncs flow.
    s.promotion("failback", "clusters/prod/shop");
    assert!(
        s.show("clusters/prod/shop/.dr-syncer/promoted.yaml")
            .is_none()
    );
    s.trigger("shop", "after-failback")
        .await
        .expect("syncs again after failback");
    let standby = s.show(deploy_path).unwrap();
    assert!(standby.contains("replicas: 0"), "standby form: {standby}");
    s.committed(path, "the change made while promoted", |b| {
        b.contains("color: while-promoted")
    })
    .await;
}

/// examples/crs/13 (direct apply into the DR RemoteCluster of examples/crs/01): a promoted
/// DR namespace is never scaled down, also when the promotion marker cannot be read (the
/// DR credentials may patch Namespaces but not read them): the sync fails closed.
#[tokio::test]
async fn direct_apply_never_scales_down_a_promoted_namespace() {
    let s = site("user-path-direct").await;
    let target = ControlPlane::start().await.unwrap();
    let target_applier = Applier::new(target.client().await.unwrap(), "test");
    s.prod_applier.apply(&namespace("legacy")).await;
    s.prod_applier.apply(&deployment("legacy", "app", 3)).await;
    // The DR cluster after `dr-syncer failover`: live replicas, Namespace marked promoted.
    target_applier
        .apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy",
            "annotations": {"dr-syncer.io/promoted": "2026-12-01T00:00:00Z"}}}),
        )
        .await;
    target_applier.apply(&deployment("legacy", "app", 3)).await;
    // Credentials that may apply everything but cannot read Namespaces.
    target_applier
        .apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dr-applier", "namespace": "legacy"}}))
        .await;
    target_applier
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "dr-applier"},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create", "patch", "update"]},
                      {"apiGroups": [""], "resources": ["configmaps", "services", "persistentvolumeclaims"], "verbs": ["*"]},
                      {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["*"]}]}))
        .await;
    target_applier
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "dr-applier"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dr-applier"},
            "subjects": [{"kind": "ServiceAccount", "name": "dr-applier", "namespace": "legacy"}]}))
        .await;
    s.kubeconfig_secret("dr-kubeconfig", &target.kubeconfig())
        .await;
    s.dr_applier.apply(&example("01-remotecluster.yaml")).await;
    let replicas = || async {
        let api: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(target.client().await.unwrap(), "legacy");
        api.get("app").await.unwrap().spec.replicas.unwrap()
    };

    // Marker readable: refused because promoted.
    s.dr_applier
        .apply(&example("13-namespacemapping-direct.yaml"))
        .await;
    let err = s
        .outcome("legacy-direct", |st| st.last_sync_now.is_some())
        .await
        .expect_err("promoted: refused");
    assert!(err.contains("was promoted"), "{err}");
    assert_eq!(replicas().await, 3, "the live site kept its replicas");

    // Marker unreadable: refused as well (fail closed), with the reason in status.
    let limited = target
        .service_account_kubeconfig("legacy", "dr-applier")
        .await
        .unwrap();
    s.kubeconfig_secret("dr-kubeconfig", &limited).await;
    let err = s
        .trigger("legacy-direct", "unreadable-marker")
        .await
        .expect_err("an unreadable marker is no proof of standby");
    assert!(
        err.contains("cannot tell whether namespace legacy"),
        "{err}"
    );
    assert_eq!(replicas().await, 3, "the live site kept its replicas");

    // Failback (direct mode, as the README runs it), then the controller applies the
    // standby form again.
    let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(["failback", "--kubeconfig"])
        .arg(target.kubeconfig_path())
        .args(["-n", "legacy", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "failback: {}", stderr(&out));
    s.kubeconfig_secret("dr-kubeconfig", &target.kubeconfig())
        .await;
    s.trigger("legacy-direct", "after-failback")
        .await
        .expect("applies again after failback");
    assert_eq!(replicas().await, 0, "standby again");
}

/// examples/crs/12 as written (every namespace labelled `dr=enabled`, exported to
/// `<name>-dr`, via the ClusterMapping's repository and source), triggered once.
#[tokio::test]
async fn selector_mapping_exports_every_labelled_namespace() {
    let s = site("user-path-selector").await;
    for (ns, labelled) in [
        ("team-red", true),
        ("team-blue", true),
        ("team-grey", false),
    ] {
        let labels = if labelled {
            json!({"dr": "enabled"})
        } else {
            json!({})
        };
        s.prod_applier
            .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}))
            .await;
        s.prod_applier
            .apply(&config_map(ns, "team-config", json!({"team": ns})))
            .await;
    }
    // A labelled namespace that exists only on the DR cluster must not appear.
    s.dr_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-dr-only", "labels": {"dr": "enabled"}}}))
        .await;
    s.cluster_mapping().await;
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    let mut nm = example("12-namespacemapping-selector.yaml");
    nm["metadata"]["annotations"] = json!({"dr-syncer.io/sync-now": "go"});
    s.dr_applier.apply(&nm).await;
    s.outcome("labelled-teams", |st| {
        st.last_sync_now.as_deref() == Some("go")
    })
    .await
    .expect("selector sync");
    let files = git(
        &s.repo,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            "main",
            "clusters/prod/labelled-teams",
        ],
    );
    for wanted in [
        "team-red-dr/core/configmaps/team-config.yaml",
        "team-blue-dr/core/configmaps/team-config.yaml",
    ] {
        assert!(files.contains(wanted), "{wanted} in {files}");
    }
    assert!(
        !files.contains("team-grey"),
        "unlabelled namespace exported: {files}"
    );
    assert!(
        !files.contains("team-dr-only"),
        "a DR-only namespace exported: {files}"
    );
}

/// Credentials on the source that may read Namespaces and the listed namespaced resources
/// of `ns` only: a kubeconfig for ServiceAccount `ns/dr-reader`.
async fn reader_kubeconfig(
    prod: &ControlPlane,
    applier: &Applier,
    ns: &str,
    resources: &[&str],
) -> kube::config::Kubeconfig {
    applier
        .apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dr-reader", "namespace": ns}}))
        .await;
    applier
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": format!("{ns}-dr-reader")},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]}))
        .await;
    applier
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": format!("{ns}-dr-reader")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-dr-reader")},
            "subjects": [{"kind": "ServiceAccount", "name": "dr-reader", "namespace": ns}]}))
        .await;
    applier
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "dr-reader", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": resources, "verbs": ["get", "list", "watch"]}]}))
        .await;
    applier
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "dr-reader", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dr-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "dr-reader", "namespace": ns}]}))
        .await;
    prod.service_account_kubeconfig(ns, "dr-reader")
        .await
        .unwrap()
}

fn condition<'a>(
    nm: &'a NamespaceMapping,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    nm.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
}

/// A sync that cannot list some types keeps their files but is `Degraded` (condition and
/// Event naming the types) and does not move the recovery point (`lastCompleteSyncTime`,
/// `dr_syncer_last_success_timestamp_seconds`); an emptied recipients Secret refuses the
/// sync instead of dropping every Secret from git.
#[tokio::test]
async fn partial_sync_is_degraded_and_empty_recipients_refuse() {
    let s = site("user-path-degraded").await;
    s.prod_applier.apply(&namespace("ledger")).await;
    s.prod_applier
        .apply(&config_map(
            "ledger",
            "ledger-config",
            json!({"currency": "EUR"}),
        ))
        .await;
    s.prod_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ledger-db", "namespace": "ledger"},
            "stringData": {"password": "ledger-password"}}))
        .await;
    // The source credentials cannot list Secrets.
    let kc = reader_kubeconfig(s.prod, &s.prod_applier, "ledger", &["configmaps"]).await;
    s.kubeconfig_secret("prod-reader-kubeconfig", &kc).await;
    let mut rc = example("01-remotecluster.yaml");
    rc["metadata"]["name"] = json!("prod-reader");
    rc["spec"]["kubeconfigSecretRef"]["name"] = json!("prod-reader-kubeconfig");
    s.dr_applier.apply(&rc).await;
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    let recipients = |body: String| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ledger-recipients", "namespace": NS},
            "stringData": {"recipients.txt": body}})
    };
    s.dr_applier
        .apply(&recipients(format!("{}\n", s.recipient)))
        .await;
    s.dr_applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "ledger", "namespace": NS, "annotations": {"dr-syncer.io/sync-now": "one"}},
            "spec": {"replicationMode": "Manual", "sourceCluster": "prod-reader", "sourceNamespace": "ledger",
                     "resourceTypes": ["configmaps", "secrets"],
                     "destination": {"git": {"url": s.url, "path": "ledger", "credentialsSecretRef": {"name": "dr-state-deploy-key"}}},
                     "secrets": {"ageRecipientsSecretRef": {"name": "ledger-recipients"}}}}))
        .await;
    let nm = s
        .outcome("ledger", |st| st.last_sync_now.as_deref() == Some("one"))
        .await
        .expect("a partial sync is no failure");
    let status = nm.status.clone().unwrap();
    assert_eq!(
        status.phase,
        Some(dr_syncer::api::MappingPhase::Degraded),
        "{status:?}"
    );
    let degraded = condition(&nm, "Degraded").expect("Degraded condition");
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("secrets"),
        "names the type: {}",
        degraded.message
    );
    assert!(
        status.last_complete_sync_time.is_none(),
        "no recovery point yet"
    );
    let http = s.controller.as_ref().unwrap().http.clone();
    let rpo_line = |m: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("dr_syncer_last_success_timestamp_seconds")
                    && l.contains("dr-syncer/ledger")
            })
            .map(String::from)
    };
    assert_eq!(
        rpo_line(&chart::metrics(&http)),
        None,
        "RPO must not advance"
    );
    assert!(
        s.show("ledger/ledger/core/configmaps/ledger-config.yaml")
            .is_some()
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.dr_admin.clone(), NS);
    let listed = events.list(&Default::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("SyncDegraded")
                && e.type_.as_deref() == Some("Warning")
                && e.note.as_deref().is_some_and(|n| n.contains("secrets"))),
        "a SyncDegraded Warning Event"
    );

    // Allowed to list Secrets: complete, the recovery point moves.
    reader_kubeconfig(
        s.prod,
        &s.prod_applier,
        "ledger",
        &["configmaps", "secrets"],
    )
    .await;
    let nm = s.trigger("ledger", "two").await.expect("complete sync");
    let status = nm.status.clone().unwrap();
    assert_eq!(status.phase, Some(dr_syncer::api::MappingPhase::Synced));
    assert_eq!(condition(&nm, "Degraded").unwrap().status, "False");
    assert!(status.last_complete_sync_time.is_some());
    assert!(rpo_line(&chart::metrics(&http)).is_some(), "RPO advanced");
    let secret_path = "ledger/ledger/core/secrets/ledger-db.sops.yaml";
    assert!(
        s.sops_decrypt(secret_path)
            .contains(&base64_of("ledger-password"))
    );

    // Secrets may not be listed again: the committed Secret file stays (a failed listing
    // never deletes) while the ConfigMap's change goes in; listed again, the Secret's file
    // is reused byte for byte, not re-encrypted.
    let secret_before = s.show(secret_path).unwrap();
    reader_kubeconfig(s.prod, &s.prod_applier, "ledger", &["configmaps"]).await;
    s.prod_applier
        .apply(&config_map(
            "ledger",
            "ledger-config",
            json!({"currency": "CHF"}),
        ))
        .await;
    let mut attempt = 0;
    let nm = loop {
        // RBAC reaches the authorizer within moments; retry until the listing is refused.
        attempt += 1;
        let nm = s
            .trigger("ledger", &format!("revoked-{attempt}"))
            .await
            .expect("a partial sync is no failure");
        let phase = nm.status.as_ref().and_then(|st| st.phase);
        if phase == Some(dr_syncer::api::MappingPhase::Degraded) || attempt == 10 {
            break nm;
        }
    };
    assert_eq!(
        nm.status.as_ref().and_then(|st| st.phase),
        Some(dr_syncer::api::MappingPhase::Degraded)
    );
    assert_eq!(
        s.show(secret_path).as_deref(),
        Some(secret_before.as_str()),
        "the Secret's file is kept"
    );
    assert!(
        s.show("ledger/ledger/kustomization.yaml")
            .unwrap()
            .contains("core/secrets/ledger-db.sops.yaml")
    );
    assert!(
        s.show("ledger/ledger/core/configmaps/ledger-config.yaml")
            .unwrap()
            .contains("CHF")
    );
    reader_kubeconfig(
        s.prod,
        &s.prod_applier,
        "ledger",
        &["configmaps", "secrets"],
    )
    .await;
    let nm = s
        .trigger("ledger", "relisted")
        .await
        .expect("complete sync");
    assert_eq!(
        nm.status.unwrap().phase,
        Some(dr_syncer::api::MappingPhase::Synced)
    );
    assert_eq!(
        s.show(secret_path).as_deref(),
        Some(secret_before.as_str()),
        "the Secret's file is reused"
    );

    // The recipients Secret emptied: refused, nothing deleted.
    let head = s.head();
    s.dr_applier
        .apply(&recipients("# the DR key was removed by mistake\n".into()))
        .await;
    let err = s
        .trigger("ledger", "three")
        .await
        .expect_err("no recipients: refused");
    assert!(
        err.contains(
            "Secret dr-syncer/ledger-recipients key \"recipients.txt\" holds no age recipient"
        ),
        "{err}"
    );
    assert!(
        !err.contains("the DR key was removed"),
        "Secret text in status: {err}"
    );
    assert_eq!(s.head(), head, "nothing committed");
    assert!(s.show(secret_path).is_some(), "the Secret stays in git");
}

fn lease_holder(lease: &k8s_openapi::api::coordination::v1::Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn signal(pid: u32, sig: &str) {
    let out = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "kill -{sig}: {}", stderr(&out));
}

/// Waits up to `secs` for `process` to exit and returns how it exited.
async fn exited_within(
    process: &mut std::process::Child,
    secs: u64,
    who: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = process.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{who} did not exit in {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two replicas with the chart's leader election: the leader is paused (SIGSTOP) past its
/// lease while a change waits in its debounce window, the standby takes over and commits
/// newer changes, then the old leader resumes (SIGCONT): it pushes nothing (writes are
/// fenced by the lease) and exits, as the README says a replica that loses the lease does.
#[tokio::test]
async fn a_deposed_leader_pushes_nothing_after_resuming() {
    let mut s = site("user-path-fence-a").await;
    // The site's controller runs without leader election: replace it by two that elect.
    s.controller = None;
    let sets = [
        "leaderElection.enabled=true".to_string(),
        "leaderElection.leaseDuration=5".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let work = s.work.path().join("controller");
    let mut a = chart::start(&s._dr, NS, &sets, &work, "user-path-fence-a", &[]).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(s.dr_admin.clone(), NS);
    let wait_holder = |who: &'static str| {
        let leases = leases.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(l) = leases.get("dr-syncer-controller").await
                    && lease_holder(&l).starts_with(who)
                {
                    return;
                }
                assert!(Instant::now() < deadline, "{who} never became leader");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_holder("user-path-fence-a").await;
    s.prod_applier.apply(&namespace("orders")).await;
    s.prod_applier
        .apply(&config_map("orders", "orders-config", json!({"v": "1"})))
        .await;
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    s.dr_applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "orders", "namespace": NS},
            "spec": {"replicationMode": "Continuous", "continuous": {"debounce": "3s", "maxDelay": "10s"},
                     "sourceNamespace": "orders", "sourceCluster": "prod", "resourceTypes": ["configmaps"],
                     "destination": {"git": {"url": s.url, "path": "orders", "credentialsSecretRef": {"name": "dr-state-deploy-key"}}}}}))
        .await;
    let path = "orders/orders/core/configmaps/orders-config.yaml";
    s.committed(path, "first sync by a", |b| b.contains("v: \"1\""))
        .await;
    let b = chart::start(&s._dr, NS, &sets, &work, "user-path-fence-b", &[]).await;

    // A change waits in a's debounce window; a is paused before it fires.
    s.prod_applier
        .apply(&config_map("orders", "orders-config", json!({"v": "2"})))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a_pid = a.process.0.id();
    signal(a_pid, "STOP");
    wait_holder("user-path-fence-b").await;
    s.committed(path, "b's startup sync", |body| body.contains("v: \"2\""))
        .await;
    s.prod_applier
        .apply(&config_map("orders", "orders-config", json!({"v": "3"})))
        .await;
    s.committed(path, "b's patch sync", |body| body.contains("v: \"3\""))
        .await;
    let head = s.head();

    // a resumes with its stale batch (v: 2) due at once.
    signal(a_pid, "CONT");
    let exit = exited_within(&mut a.process.0, 30, "the deposed leader").await;
    assert!(!exit.success(), "exits with an error: {exit:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.head(), head, "the deposed leader pushed after resuming");
    assert!(s.show(path).unwrap().contains("v: \"3\""));
    drop(b);
}

/// The YAML block of `docs/runbook.md` that follows `heading`.
fn runbook_yaml(heading: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let section = &doc[doc.find(heading).expect("runbook section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = section[start..].find("```").unwrap();
    section[start..start + end].to_string()
}

/// docs/runbook.md §2–§4 as written, in the controller's own cluster: the age key from the
/// real `age-keygen`, the deploy-key Secret made with `kubectl create secret generic
/// --from-file` exactly as §2 shows, the NamespaceMapping of §3 (URL and recipient
/// substituted), and §4's checks: `kubectl get nsm -o wide` shows Synced and `dr-syncer
/// decrypt` round-trips a Secret with the age key file.
#[tokio::test]
async fn runbook_keys_mapping_and_verify_as_written() {
    let s = site("user-path-runbook").await;
    let dir = s.work.path().join("runbook");
    std::fs::create_dir_all(&dir).unwrap();
    let keygen = Command::new(dr_syncer_testkit::tools::debian("age-keygen", "age"))
        .arg("-o")
        .arg(dir.join("dr.agekey"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "age-keygen: {}", stderr(&keygen));
    let agekey = std::fs::read_to_string(dir.join("dr.agekey")).unwrap();
    let recipient = agekey
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen prints the public key")
        .to_string();
    // §2: the deploy key and pinned host key, as files, into a Secret with kubectl.
    let kubectl = |args: &[&str]| {
        let out = s._dr.kubectl().unwrap().args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "dr-git",
        &format!("--from-file=identity={}", s.sshd.client_key.display()),
        &format!("--from-file=known_hosts={}", s.sshd.known_hosts.display()),
    ]);
    // The source: the controller's own cluster.
    s.dr_applier.apply(&namespace("shop")).await;
    s.dr_applier
        .apply(&config_map("shop", "shop-config", json!({"color": "blue"})))
        .await;
    s.dr_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"},
            "stringData": {"password": "runbook-password"}}))
        .await;
    // §3, with the host and the recipient substituted.
    let yaml = runbook_yaml("## 3. Describe what to replicate")
        .replace("ssh://git@git.example.com/platform/dr.git", &s.url)
        .replace("age1…", &recipient);
    std::fs::write(dir.join("shop.yaml"), &yaml).unwrap();
    kubectl(&["apply", "-f", dir.join("shop.yaml").to_str().unwrap()]);
    s.committed(
        "prod/shop/core/configmaps/shop-config.yaml",
        "runbook sync",
        |b| b.contains("color: blue"),
    )
    .await;
    // §4: verify.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wide = kubectl(&["get", "nsm", "-n", NS, "-o", "wide"]);
        if wide.contains("Synced") {
            break;
        }
        assert!(Instant::now() < deadline, "kubectl get nsm: {wide}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let file = dir.join("db.sops.yaml");
    std::fs::write(
        &file,
        s.show("prod/shop/core/secrets/db.sops.yaml").unwrap(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .arg("decrypt")
        .arg(&file)
        .arg("-i")
        .arg(dir.join("dr.agekey"))
        .output()
        .unwrap();
    assert!(out.status.success(), "decrypt: {}", stderr(&out));
    let plain = String::from_utf8(out.stdout).unwrap();
    assert!(
        plain.contains("runbook-password") || plain.contains(&base64_of("runbook-password")),
        "{plain}"
    );
}

/// DrReady (README "Will DR come up?"): the ClusterMapping of examples/crs/03 names the DR
/// cluster (examples/crs/01's RemoteCluster, its kubeconfig Secret holding the DR
/// apiserver's); the chart's `drCheck.interval` runs the check. An admission policy on the
/// DR cluster that refuses the production registry's images shows as DrReady=False naming
/// the Deployment's file and the policy's message, a Warning Event and
/// `dr_syncer_dr_rejected_objects`; once the policy is gone, DrReady=True and 0.
#[tokio::test]
async fn dr_ready_reports_what_the_dr_cluster_would_reject() {
    let s = site_with("user-path-dr-ready", &["drCheck.interval=2s"]).await;
    s.prod_applier.apply(&namespace("billing")).await;
    s.prod_applier.apply(&deployment("billing", "api", 2)).await;
    s.prod_applier
        .apply(&config_map(
            "billing",
            "billing-settings",
            json!({"region": "prod-east"}),
        ))
        .await;
    s.prod_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "billing-db", "namespace": "billing"},
            "stringData": {"password": "prod-db-password"}}))
        .await;
    // The DR cluster's own rule: only images from the DR registry run there.
    s.dr_applier
        .apply(&json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "dr-registry-only"},
            "spec": {"failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                "validations": [{"expression":
                    "object.spec.template.spec.containers.all(c, !c.image.startsWith('registry.prod.example.com/'))",
                    "message": "DR runs images from the DR registry only"}]}}))
        .await;
    s.dr_applier
        .apply(&json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": "dr-registry-only"},
            "spec": {"policyName": "dr-registry-only", "validationActions": ["Deny"]}}))
        .await;
    // The DR namespace exists, as the `_cluster/` Kustomization leaves it; without it the
    // namespaced objects are deferred (the tree creates it first), not dry-run.
    s.dr_applier.apply(&namespace("billing-dr")).await;
    s.kubeconfig_secret("dr-kubeconfig", &s._dr.kubeconfig())
        .await;
    s.dr_applier.apply(&example("01-remotecluster.yaml")).await;
    s.cluster_mapping().await;
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    let mut nm = example("11-namespacemapping-scheduled.yaml");
    nm["metadata"]["annotations"] = json!({"dr-syncer.io/sync-now": "first"});
    s.dr_applier.apply(&nm).await;
    s.outcome("billing", |st| st.last_sync_now.as_deref() == Some("first"))
        .await
        .expect("exported over ssh://");

    let http = s.controller.as_ref().unwrap().http.clone();
    let rejected_metric = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("dr_syncer_dr_rejected_objects{")
                    && l.contains("mapping=\"dr-syncer/billing\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    let dr_ready = |want: &'static str, says: &'static str| {
        let s = &s;
        move || async move {
            let nm = s.mapping("billing").await;
            match condition(&nm, "DrReady") {
                Some(c) if c.status == want && c.message.contains(says) => Ok(c.message.clone()),
                other => Err(format!("{other:?}")),
            }
        }
    };
    let event = |reason: &'static str, type_: &'static str| {
        let s = &s;
        move || async move {
            let events: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(s.dr_admin.clone(), NS);
            let listed = events.list(&Default::default()).await.unwrap().items;
            listed
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
                .then_some(())
                .ok_or_else(|| format!("{} events, none {type_} {reason}", listed.len()))
        }
    };
    let message = common::eventually(
        "DrReady=False",
        Duration::from_secs(60),
        dr_ready("False", "DR registry only"),
    )
    .await;
    assert!(
        message.contains("billing-dr/apps/deployments/api.yaml")
            && message.contains("DR runs images from the DR registry only"),
        "{message}"
    );
    assert!(message.contains("1 rejected"), "{message}");
    assert!(!message.contains("prod-db-password"), "{message}");
    assert_eq!(
        rejected_metric(&chart::metrics(&http)).as_deref(),
        Some("1")
    );
    common::eventually(
        "a DrNotReady Warning Event",
        Duration::from_secs(30),
        event("DrNotReady", "Warning"),
    )
    .await;
    // Nothing was applied to the DR cluster by the check.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.dr_admin.clone(), "billing-dr");
    assert!(deployments.get_opt("api").await.unwrap().is_none());

    // The DR cluster drops the rule: DR would come up.
    Api::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>::all(
        s.dr_admin.clone(),
    )
    .delete("dr-registry-only", &Default::default())
    .await
    .unwrap();
    let message = common::eventually(
        "DrReady=True",
        Duration::from_secs(60),
        dr_ready("True", "0 rejected"),
    )
    .await;
    assert!(
        message.contains("0 rejected") && message.contains("1 Secrets verified"),
        "{message}"
    );
    assert_eq!(
        rejected_metric(&chart::metrics(&http)).as_deref(),
        Some("0")
    );
    common::eventually(
        "a DrReady Normal Event",
        Duration::from_secs(30),
        event("DrReady", "Normal"),
    )
    .await;
}

/// `dr_syncer_members` as `controller`'s `/metrics` shows it.
fn members_seen(controller: &ChartController) -> i64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", controller.http)])
        .output()
        .unwrap();
    assert!(out.status.success(), "scraping {}", controller.http);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("dr_syncer_members "))
        .and_then(|v| v.trim().parse().ok())
        .expect("dr_syncer_members is exported")
}

/// `(mapping, replica)` of every commit on `main` after `since` (all when `None`), oldest
/// first, from the subject (`[dr-syncer] <mapping>: …`) and the `Replica:` trailer.
fn commits_by_replica(repo: &Path, since: Option<&str>) -> Vec<(String, String)> {
    let range = match since {
        Some(c) => format!("{c}..main"),
        None => "main".to_string(),
    };
    let log = git(repo, &["log", "--reverse", "--format=%B%x1e", &range]);
    log.split('\u{1e}')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let mapping = m
                .strip_prefix("[dr-syncer] ")
                .and_then(|s| s.split(':').next())
                .unwrap_or_else(|| panic!("not a controller commit: {m}"))
                .to_string();
            let replica = m
                .lines()
                .find_map(|l| l.strip_prefix("Replica: "))
                .unwrap_or_else(|| panic!("no Replica trailer: {m}"))
                .to_string();
            (mapping, replica)
        })
        .collect()
}

/// Three replicas as the chart runs them with `replicaCount=3` share 30 Continuous
/// mappings: each mapping is owned by exactly one live replica (the one rendezvous hashing
/// picks, shown in `status.owner`) and only its owner commits it. A replica killed with
/// SIGKILL loses its mappings to the others, which commit the next changes; a replica
/// paused (SIGSTOP) past its lease with a change in its debounce window loses its mappings
/// too, and after SIGCONT it pushes nothing and exits.
#[tokio::test]
async fn three_replicas_share_mappings_and_hand_them_over() {
    let mut s = site("user-path-shard").await;
    s.controller = None;
    let sets = ["replicaCount=3", "leaderElection.leaseDuration=5"];
    let work = s.work.path().join("controller");
    let names = [
        "user-path-shard-a",
        "user-path-shard-b",
        "user-path-shard-c",
    ];
    let identity = |n: &str| format!("{n}-7d9f-abcde");
    let mut replicas = Vec::new();
    for n in names {
        let r = chart::start(&s._dr, NS, &sets, &work, n, &[]).await;
        assert!(r.args.contains(&"--sharding".to_string()), "{:?}", r.args);
        replicas.push(Some(r));
    }
    s.deploy_key_secret("dr-state-deploy-key", true).await;
    let count = 30;
    let source = |i: usize| format!("shard-src-{i:02}");
    let mapping = |i: usize| format!("shard-{i:02}");
    let path = |i: usize| format!("m{i:02}/{}/core/configmaps/cfg.yaml", source(i));
    let set_all = |v: &'static str, which: Vec<usize>| {
        let s = &s;
        async move {
            for i in which {
                s.prod_applier
                    .apply(&config_map(&source(i), "cfg", json!({"v": v})))
                    .await;
            }
        }
    };
    for i in 0..count {
        s.prod_applier.apply(&namespace(&source(i))).await;
    }
    set_all("1", (0..count).collect()).await;
    for i in 0..count {
        s.dr_applier
            .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
                "metadata": {"name": mapping(i), "namespace": NS},
                "spec": {"replicationMode": "Continuous", "continuous": {"debounce": "2s", "maxDelay": "10s"},
                         "sourceNamespace": source(i), "sourceCluster": "prod", "resourceTypes": ["configmaps"],
                         "destination": {"git": {"url": s.url, "path": format!("m{i:02}"), "credentialsSecretRef": {"name": "dr-state-deploy-key"}}}}}))
            .await;
    }
    let all_committed = |v: &'static str, which: Vec<usize>| {
        let s = &s;
        async move {
            for i in which {
                s.committed(&path(i), "sharded sync", |b| {
                    b.contains(&format!("v: \"{v}\""))
                })
                .await;
            }
        }
    };
    // Every mapping's status names one owner, the one the members hash it to.
    let owners_are = |live: Vec<String>| {
        let s = &s;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut owners = Vec::new();
                for i in 0..count {
                    let nm = s.mapping(&mapping(i)).await;
                    owners.push(nm.status.and_then(|st| st.owner).unwrap_or_default());
                }
                let want: Vec<String> = (0..count)
                    .map(|i| {
                        dr_syncer::controller::shard::owner(&live, &format!("{NS}/{}", mapping(i)))
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                if owners == want {
                    return owners;
                }
                assert!(
                    Instant::now() < deadline,
                    "owners {owners:?}, expected {want:?} for members {live:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let started = Instant::now();
    all_committed("1", (0..count).collect()).await;
    println!(
        "30 mappings on 3 replicas committed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let three: Vec<String> = names.iter().map(|n| identity(n)).collect();
    let owners = owners_are(three.clone()).await;
    for r in replicas.iter().flatten() {
        assert_eq!(members_seen(r), 3, "{}", r.http);
    }
    for r in &three {
        assert!(owners.contains(r), "{r} owns nothing: {owners:?}");
    }
    // Only the owner committed each mapping.
    for (m, replica) in commits_by_replica(&s.repo, None) {
        let i: usize = m.strip_prefix("shard-").unwrap().parse().unwrap();
        assert_eq!(
            replica, owners[i],
            "{m} committed by a replica that does not own it"
        );
    }

    // SIGKILL a: its mappings move to b and c, which commit the next change.
    let head = s.head();
    replicas[0] = None; // dropping the process kills it (SIGKILL)
    let killed = Instant::now();
    set_all("2", (0..count).collect()).await;
    let two: Vec<String> = three[1..].to_vec();
    owners_are(two.clone()).await;
    println!(
        "a's mappings moved {:.1} s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    all_committed("2", (0..count).collect()).await;
    let after_kill = commits_by_replica(&s.repo, Some(&head));
    assert!(
        after_kill.iter().all(|(_, r)| r != &three[0]),
        "a committed after it was killed: {after_kill:?}"
    );
    let owners = owners_are(two.clone()).await;
    for (m, replica) in &after_kill {
        let i: usize = m.strip_prefix("shard-").unwrap().parse().unwrap();
        assert_eq!(replica, &owners[i], "{m}: committed by a non-owner");
    }

    // b has a change of each of its mappings in its debounce window when it is paused past
    // its lease: c takes everything over and commits newer changes.
    let b_owns: Vec<usize> = (0..count).filter(|i| owners[*i] == three[1]).collect();
    assert!(!b_owns.is_empty());
    set_all("3", b_owns.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_pid = replicas[1].as_ref().unwrap().process.0.id();
    signal(b_pid, "STOP");
    owners_are(three[2..].to_vec()).await;
    assert_eq!(members_seen(replicas[2].as_ref().unwrap()), 1);
    set_all("4", (0..count).collect()).await;
    all_committed("4", (0..count).collect()).await;
    let head = s.head();

    // b resumes with its stale batches due at once: it pushes nothing and exits.
    signal(b_pid, "CONT");
    let exit = exited_within(
        &mut replicas[1].as_mut().unwrap().process.0,
        30,
        "b after resuming",
    )
    .await;
    assert!(!exit.success(), "exits with an error: {exit:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.head(),
        head,
        "b pushed after resuming: {:?}",
        commits_by_replica(&s.repo, Some(&head))
    );
    for i in 0..count {
        assert!(
            s.show(&path(i)).unwrap().contains("v: \"4\""),
            "{}",
            path(i)
        );
    }

    // A static shard (`sharding.shard`, Flux's convention): its replica takes only the
    // mapping labelled for it, and the default group leaves that one alone.
    let eu = chart::start(
        &s._dr,
        NS,
        &["sharding.shard=eu"],
        &work,
        "user-path-shard-eu",
        &[],
    )
    .await;
    assert!(eu.args.contains(&"--shard=eu".to_string()), "{:?}", eu.args);
    let head = s.head();
    let pinned = count;
    s.prod_applier.apply(&namespace(&source(pinned))).await;
    set_all("6", vec![pinned]).await;
    s.dr_applier
        .apply(&json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": mapping(pinned), "namespace": NS, "labels": {"dr-syncer.io/shard": "eu"}},
            "spec": {"replicationMode": "Continuous", "continuous": {"debounce": "1s", "maxDelay": "5s"},
                     "sourceNamespace": source(pinned), "sourceCluster": "prod", "resourceTypes": ["configmaps"],
                     "destination": {"git": {"url": s.url, "path": format!("m{pinned:02}"), "credentialsSecretRef": {"name": "dr-state-deploy-key"}}}}}))
        .await;
    all_committed("6", vec![pinned]).await;
    set_all("5", vec![0]).await;
    all_committed("5", vec![0]).await;
    let eu_identity = identity("user-path-shard-eu");
    for (m, replica) in commits_by_replica(&s.repo, Some(&head)) {
        let want = if m == mapping(pinned) {
            &eu_identity
        } else {
            &three[2]
        };
        assert_eq!(&replica, want, "{m}: written by the wrong group");
    }
    let nm = s.mapping(&mapping(pinned)).await;
    assert_eq!(nm.status.and_then(|st| st.owner), Some(eu_identity));
    drop(eu);
    drop(replicas);
}
