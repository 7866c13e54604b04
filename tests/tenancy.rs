//! Who may replicate what, attacked the way a tenant would: real ServiceAccounts with the
//! chart's tenant role on a real apiserver create NamespaceMappings that try to export
//! another namespace, borrow another team's Secrets, push to a repository or DR namespace
//! nobody granted, or grant themselves a policy. The controller is the chart's, with
//! `tenancy.namespaces` set; git goes over ssh:// to a real OpenSSH server.
//!
//! The second test feeds Secret values that are wrong in every way the controller reports
//! (a bad recipient line, a kubeconfig, an SSH key and an HTTPS token) and checks that none
//! of them appears in any status, Event or the controller's debug log.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::chart::{self, ChartController};
use common::eventually;
use dr_syncer::api::{NamespaceMapping, RemoteCluster};
use dr_syncer_testkit::envtest::ControlPlane;
use dr_syncer_testkit::git::{Sshd, bare_repo, git};
use dr_syncer_testkit::git_https::HttpsGit;
use dr_syncer_testkit::objects::Applier;
use kube::{Api, Client};
use serde_json::{Value, json};

/// The controller's (admin's) namespace.
const NS: &str = "dr-syncer";

struct Site {
    // Dropped first: an apiserver stopped under a controller's watches drains for a minute.
    controller: Option<ChartController>,
    plane: ControlPlane,
    admin: Client,
    applier: Applier,
    sshd: Sshd,
    work: tempfile::TempDir,
    recipient: String,
}

async fn site(name: &str, sets: &[&str]) -> Site {
    let plane = ControlPlane::start().await.unwrap();
    let admin = plane.client().await.unwrap();
    let applier = Applier::new(admin.clone(), "test");
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"));
    let controller =
        chart::start(&plane, NS, sets, &work.path().join("controller"), name, &[]).await;
    Site {
        controller: Some(controller),
        plane,
        admin,
        applier,
        sshd,
        work,
        recipient: age::x25519::Identity::generate().to_public().to_string(),
    }
}

impl Site {
    async fn namespace(&self, ns: &str) {
        self.applier
            .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await;
    }

    /// The Flux-style deploy-key Secret in `ns`, applied by `applier`.
    async fn deploy_key(&self, applier: &Applier, ns: &str) {
        let data = json!({
            "identity": std::fs::read_to_string(&self.sshd.client_key).unwrap(),
            "known_hosts": std::fs::read_to_string(&self.sshd.known_hosts).unwrap(),
        });
        applier
            .apply(&json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "deploy-key", "namespace": ns}, "stringData": data}))
            .await;
    }

    fn repo(&self, team: &str) -> PathBuf {
        let dir = self.work.path().join("srv/dr").join(team);
        if dir.join("state.git").exists() {
            return dir.join("state.git");
        }
        bare_repo(&dir, "state.git")
    }

    async fn status(&self, ns: &str, name: &str) -> Option<dr_syncer::api::NamespaceMappingStatus> {
        Api::<NamespaceMapping>::namespaced(self.admin.clone(), ns)
            .get(name)
            .await
            .unwrap()
            .status
    }

    /// Waits for the mapping's recorded error and returns its message.
    async fn error_of(&self, ns: &str, name: &str) -> String {
        eventually(
            &format!("{ns}/{name} reports an error"),
            Duration::from_secs(60),
            || async {
                let s = self.status(ns, name).await;
                match s.as_ref().and_then(|s| s.last_error.clone()) {
                    Some(e) => Ok(e.message),
                    None => Err(s),
                }
            },
        )
        .await
    }
}

/// Files on `main` of a bare repository (empty when the branch does not exist).
fn tree(repo: &Path) -> Vec<String> {
    let out = std::process::Command::new("git")
        .args(["ls-tree", "-r", "--name-only", "main"])
        .current_dir(repo)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An example custom resource from `examples/crs/`, as JSON.
fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/crs")
        .join(file);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// examples/crs/21 as team-a's tenant writes it (repository URL, path and recipient
/// substituted); `patch` changes one part of the spec for an attack.
fn tenant_mapping(name: &str, url: &str, recipient: &str, patch: Value) -> Value {
    let mut nm = example("21-namespacemapping-tenant.yaml");
    nm["metadata"]["name"] = json!(name);
    nm["spec"]["destination"]["git"]["url"] = json!(url);
    nm["spec"]["destination"]["git"]["path"] = json!(format!("apps/{name}"));
    nm["spec"]["secrets"]["ageRecipients"] = json!([recipient]);
    json_patch_merge(&mut nm["spec"], patch);
    nm
}

fn json_patch_merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                json_patch_merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

#[tokio::test]
async fn tenants_are_held_to_their_policy() {
    let s = site("tenancy", &["tenancy.namespaces={team-a,team-b}"]).await;
    for ns in ["team-a", "team-b", "team-c", "kube-system"] {
        s.namespace(ns).await;
    }
    // Source data: the tenant's own objects and secrets of others it must not reach.
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "app-config", "namespace": "team-a"}, "data": {"k": "v"}}))
        .await;
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cluster-root", "namespace": "kube-system"},
            "stringData": {"token": "kube-system-root-token"}}))
        .await;
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "git-token", "namespace": "team-b"},
            "stringData": {"username": "b", "password": "team-b-git-token"}}))
        .await;
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "recipients", "namespace": "team-b"},
            "stringData": {"recipients.txt": "age1notateambrecipient"}}))
        .await;
    // The tenant: a ServiceAccount bound to the chart's tenant role in its namespace, and
    // allowed to manage its own Secrets.
    for o in [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant", "namespace": "team-a"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "dr-syncer-tenant", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dr-syncer-tenant"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "team-a"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "secrets", "namespace": "team-a"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "secrets", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "team-a"}]}),
    ] {
        s.applier.apply(&o).await;
    }
    let tenant = s
        .plane
        .service_account_client("team-a", "tenant")
        .await
        .unwrap();
    let as_tenant = Applier::new(tenant.clone(), "tenant");
    s.deploy_key(&as_tenant, "team-a").await;
    let repo_a = s.repo("team-a");
    let repo_b = s.repo("team-b");
    let url_a = s.sshd.url(&repo_a);
    // The admin grants team-a its directory of the git server, below `apps`: examples/crs/20
    // with the server's URL substituted.
    let mut policy = example("20-tenantpolicy.yaml");
    policy["spec"]["git"][0]["urlPrefix"] = json!(s.sshd.url(repo_a.parent().unwrap()));
    s.applier.apply(&policy).await;

    // A tenant cannot grant itself anything: policies live in the admin's namespace.
    let own_policy = json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "TenantPolicy",
        "metadata": {"name": "mine", "namespace": NS},
        "spec": {"namespaces": ["team-a"], "git": [{"urlPrefix": "https://attacker.example/"}]}});
    let api: Api<dr_syncer::api::TenantPolicy> = Api::namespaced(tenant.clone(), NS);
    let refused = api
        .create(
            &Default::default(),
            &serde_json::from_value(own_policy).unwrap(),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403),
        "{refused:?}"
    );

    // The legitimate use works: its own namespace into its granted repository.
    // Its transform tries to turn the ConfigMap into a ClusterRoleBinding (applied on DR
    // with the admin's rights): the transform is undone, the ConfigMap stays one.
    let escalate = json!({"transforms": [{"name": "escalate", "mergePatch": {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "team-a"}]}}]});
    as_tenant
        .apply(&tenant_mapping("good", &url_a, &s.recipient, escalate))
        .await;
    let config = eventually(
        "team-a/good is committed",
        Duration::from_secs(90),
        || async {
            let files = tree(&repo_a);
            let Some(file) = files.iter().find(|f| f.contains("app-config")) else {
                return Err(files);
            };
            Ok(git(&repo_a, &["show", &format!("main:{file}")]))
        },
    )
    .await;
    assert!(
        config.contains("kind: ConfigMap") && !config.contains("cluster-admin"),
        "{config}"
    );

    // Each attack: what the tenant writes, and the field the refusal must name.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let attacker = format!(
        "https://127.0.0.1:{}/dr/team-a/x.git",
        listener.local_addr().unwrap().port()
    );
    listener.set_nonblocking(true).unwrap();
    let attacks = [
        (
            "kube-system",
            json!({"sourceNamespace": "kube-system"}),
            "spec.sourceNamespace",
        ),
        (
            "token",
            json!({"destination": {"git": {"url": attacker,
                "credentialsSecretRef": {"name": "git-token", "namespace": "team-b"}}}}),
            "spec.destination.git.credentialsSecretRef.namespace",
        ),
        (
            "recipients",
            json!({"secrets": {"ageRecipientsSecretRef": {"name": "recipients", "namespace": "team-b"}}}),
            "spec.secrets.ageRecipientsSecretRef.namespace",
        ),
        (
            "cluster-mapping",
            json!({"clusterMappingRef": {"name": "prod-to-dr", "namespace": NS}}),
            "spec.clusterMappingRef.namespace",
        ),
        (
            "other-repo",
            json!({"destination": {"git": {"url": s.sshd.url(&repo_b)}}}),
            "spec.destination.git",
        ),
        (
            "outside-path",
            json!({"destination": {"git": {"path": "platform/flux"}}}),
            "spec.destination.git",
        ),
        (
            "dr-namespace",
            json!({"destinationNamespace": "kube-system"}),
            "spec.destinationNamespace",
        ),
        (
            "path-name",
            json!({"destination": {"git": {"credentialsSecretRef": {"name": "../../dr-syncer/secrets/deploy-key"}}}}),
            "spec.destination.git.credentialsSecretRef.name",
        ),
    ];
    for (name, patch, _) in &attacks {
        as_tenant
            .apply(&tenant_mapping(name, &url_a, &s.recipient, patch.clone()))
            .await;
    }
    for (name, _, field) in &attacks {
        let message = s.error_of("team-a", name).await;
        assert!(
            message.contains(field) && message.contains("not allowed"),
            "{name}: {message}"
        );
    }
    // Nothing of the attacks arrived anywhere: team-a's repository holds only the good
    // mapping's files, team-b's none, and the attacker's server was never contacted.
    let files = tree(&repo_a);
    assert!(
        files.iter().all(|f| f.starts_with("apps/good/")),
        "{files:?}"
    );
    assert!(
        dr_syncer_testkit::git::all_blobs(&repo_a)
            .iter()
            .all(|b| !String::from_utf8_lossy(b).contains("cluster-root")),
        "kube-system's Secret reached the tenant's repository"
    );
    assert!(tree(&repo_b).is_empty(), "{:?}", tree(&repo_b));
    assert!(
        listener.accept().is_err(),
        "the attacker's server was contacted"
    );

    // A listed namespace without a policy gets nothing; an unlisted one is not touched.
    let spec = json!({"replicationMode": "Continuous", "sourceNamespace": "team-b",
        "destination": {"git": {"url": s.sshd.url(&repo_b), "branch": "main", "path": "apps/b"}}});
    s.applier
        .apply(
            &json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "b", "namespace": "team-b"}, "spec": spec}),
        )
        .await;
    let message = s.error_of("team-b", "b").await;
    assert!(message.contains("no TenantPolicy"), "{message}");
    let mut spec_c = spec.clone();
    spec_c["sourceNamespace"] = json!("team-c");
    s.applier
        .apply(
            &json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "c", "namespace": "team-c"}, "spec": spec_c}),
        )
        .await;

    // Revoking the policy stops the tenant at once (the policy watch re-judges its
    // mappings); a revoked mapping reports it.
    Api::<dr_syncer::api::TenantPolicy>::namespaced(s.admin.clone(), NS)
        .delete("team-a", &Default::default())
        .await
        .unwrap();
    let message = s.error_of("team-a", "good").await;
    assert!(message.contains("no TenantPolicy"), "{message}");
    assert_eq!(
        s.status("team-c", "c").await,
        None,
        "team-c is not a tenant namespace"
    );
    assert!(tree(&repo_b).is_empty(), "{:?}", tree(&repo_b));
}

/// A marker no status, Event or log line may contain.
const MARK: &str = "LEAKMARK7f3a9c";

#[tokio::test]
async fn secret_values_never_reach_status_events_or_logs() {
    // The HTTPS git server's CA is trusted the documented way (the chart's git.caBundle),
    // so the wrong token really is sent and rejected.
    let https_dir = tempfile::tempdir().unwrap();
    let https = HttpsGit::start(https_dir.path(), "bot", "right-token");
    https.bare_repo("dr/state.git");
    let ca = format!("git.caBundle={}", https.ca_pem);
    let mut s = site("tenancy-leaks", &[&ca]).await;
    let recipient = s.recipient.clone();
    // 1. A recipients Secret with a line that is not a recipient.
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "recipients", "namespace": NS},
            "stringData": {"recipients.txt": format!("{recipient}\nage1{MARK}\n")}}))
        .await;
    // 2. A kubeconfig whose token and key carry the marker (the key is bad base64 of it,
    //    the kind of value a parser quotes).
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:1'}}}}]\n\
         users: [{{name: u, user: {{token: {MARK}-token, client-key-data: '{MARK}!!'}}}}]\n\
         contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n"
    );
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "leaky-kubeconfig", "namespace": NS},
            "stringData": {"kubeconfig": kubeconfig}}))
        .await;
    s.applier
        .apply(
            &json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "RemoteCluster",
            "metadata": {"name": "leaky", "namespace": NS},
            "spec": {"kubeconfigSecretRef": {"name": "leaky-kubeconfig", "key": "kubeconfig"}}}),
        )
        .await;
    // 3. An SSH identity that is not a key, and 4. a wrong HTTPS token sent to a real
    //    server, which rejects it.
    let known_hosts = std::fs::read_to_string(&s.sshd.known_hosts).unwrap();
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bad-identity", "namespace": NS},
            "stringData": {"identity": format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{MARK}\n-----END OPENSSH PRIVATE KEY-----\n"),
                "known_hosts": known_hosts}}))
        .await;
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bad-token", "namespace": NS},
            "stringData": {"username": "bot", "password": format!("{MARK}-password")}}))
        .await;
    s.namespace("shop").await;
    s.applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": "shop"}, "data": {"k": "v"}}))
        .await;
    let repo = s.repo("admin");
    let mapping = |name: &str, spec: Value| {
        let mut base = json!({"replicationMode": "Continuous", "sourceNamespace": "shop",
            "destination": {"git": {"url": s.sshd.url(&repo), "branch": "main", "path": name,
                "credentialsSecretRef": {"name": "deploy-key"}}},
            "secrets": {"ageRecipients": [recipient]}});
        json_patch_merge(&mut base, spec);
        json!({"apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": name, "namespace": NS}, "spec": base})
    };
    s.deploy_key(&s.applier, NS).await;
    let cases = [
        (
            "leak-recipients",
            json!({"secrets": {"ageRecipientsSecretRef": {"name": "recipients"}}}),
        ),
        ("leak-kubeconfig", json!({"sourceCluster": "leaky"})),
        (
            "leak-identity",
            json!({"destination": {"git": {"credentialsSecretRef": {"name": "bad-identity"}}}}),
        ),
        (
            "leak-token",
            json!({"destination": {"git": {"url": https.url("dr/state.git"),
                "credentialsSecretRef": {"name": "bad-token"}}}}),
        ),
    ];
    for (name, spec) in &cases {
        s.applier.apply(&mapping(name, spec.clone())).await;
    }
    for (name, _) in &cases {
        let message = s.error_of(NS, name).await;
        assert!(!message.is_empty(), "{name}");
    }
    // The RemoteCluster's health check reported too.
    eventually(
        "RemoteCluster leaky reports",
        Duration::from_secs(60),
        || async {
            let rc = Api::<RemoteCluster>::namespaced(s.admin.clone(), NS)
                .get("leaky")
                .await
                .unwrap();
            rc.status.and_then(|st| st.message).ok_or(())
        },
    )
    .await;
    // The wrong token did reach the server (so its rejection was reported)...
    eventually(
        "the HTTPS server saw the push",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(&https.access_log).unwrap_or_default();
            log.contains("401").then_some(()).ok_or(log)
        },
    )
    .await;
    // ... and no status, Event or log line holds any of the Secret values.
    let mut seen = String::new();
    let mappings = Api::<NamespaceMapping>::namespaced(s.admin.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    seen.push_str(&serde_json::to_string(&mappings.items).unwrap());
    let clusters = Api::<RemoteCluster>::namespaced(s.admin.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    seen.push_str(&serde_json::to_string(&clusters.items).unwrap());
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(s.admin.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        !events.items.is_empty(),
        "the failures were reported as Events"
    );
    seen.push_str(&serde_json::to_string(&events.items).unwrap());
    s.controller = None; // flush and close the log
    let mut log = String::new();
    std::fs::File::open(dr_syncer_testkit::target_dir().join("test-logs/tenancy-leaks.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("sync failed"), "the log holds the failures");
    seen.push_str(&log);
    let encoded = base64::engine::general_purpose::STANDARD.encode(MARK);
    for needle in [MARK, &encoded[..12]] {
        if let Some(at) = seen.find(needle) {
            let from = at.saturating_sub(200);
            panic!(
                "Secret text {needle:?} leaked: …{}…",
                &seen[from..(at + 100).min(seen.len())]
            );
        }
    }
}
