//! The documented HTTPS setup, run as a user runs it: `examples/crs/10-namespacemapping-git.yaml`
//! (destination `https://git.example.com/platform/dr-state.git`, token Secret
//! `dr-state-token`) pushing to a real HTTPS git server on loopback — nginx with TLS and
//! basic auth in front of `git http-backend` — whose certificate an in-house CA signed. The
//! controller is installed by the Helm chart (rendered args, env and ConfigMap volumes, its
//! ServiceAccount) with that CA in `git.caBundle` / `git.caBundleConfigMap`, in the DR
//! cluster; the source cluster is reached through the RemoteCluster of
//! `examples/crs/02-remotecluster-pvc-agent.yaml`. Only hosts, ports, keys, tokens and
//! recipients are substituted.
//!
//! A certificate from a CA the controller was not given is refused (no request, so no
//! token, reaches that server), and a wrong token is an authentication error; neither
//! pushes anything, and the token shows up in no status, Event or log line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::chart::{self, ChartController};
use dr_syncer::api::{NamespaceMapping, NamespaceMappingStatus};
use dr_syncer_testkit::envtest::{self, ControlPlane};
use dr_syncer_testkit::git::{all_blobs, git};
use dr_syncer_testkit::git_https::HttpsGit;
use dr_syncer_testkit::objects::Applier;
use dr_syncer_testkit::tools::sops;
use kube::{Api, Client};
use serde_json::{Value, json};

/// The controller's namespace in every example.
const NS: &str = "dr-syncer";
/// The git server's user and token (what `dr-state-token` holds).
const USER: &str = "dr-syncer-bot";
const TOKEN: &str = "glpat-Vq7dR2xK9mWs4LpZ8tNh";
/// The value of the source Secret, which must never reach git in the clear.
const DB_PASSWORD: &str = "prod-db-password-4f1c9a";
/// The repository of the example's URL.
const REPO: &str = "platform/dr-state.git";

/// An example custom resource from `examples/crs/`, as JSON.
fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/crs")
        .join(file);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The example's URL `https://git.example.com/platform/dr-state.git` with host and port
/// replaced by `server`'s.
fn example_url(nm: &Value, server: &HttpsGit) -> String {
    let url = nm["spec"]["destination"]["git"]["url"].as_str().unwrap();
    let path = url
        .strip_prefix("https://git.example.com/")
        .expect("the example's destination is https://git.example.com/...");
    assert_eq!(path, REPO);
    server.url(path)
}

/// A source cluster with namespace `shop`, a DR cluster with the chart-installed
/// controller, and a git server over HTTPS that the controller trusts.
struct Site {
    // Dropped first: a controller outliving its apiserver holds the apiserver's shutdown
    // up while it drains the controller's watches.
    _controller: ChartController,
    _prod: &'static ControlPlane,
    _dr: ControlPlane,
    dr_admin: Client,
    dr_applier: Applier,
    git: HttpsGit,
    repo: PathBuf,
    identity: age::x25519::Identity,
    recipient: String,
    work: tempfile::TempDir,
    log: PathBuf,
}

/// How the chart is told about the in-house CA.
enum CaValue {
    /// `--set git.caBundle=<PEM>` (what `--set-file git.caBundle=ca.crt` sets).
    Inline,
    /// `git.caBundleConfigMap` naming an existing ConfigMap `corp-git-ca` (key `bundle.pem`).
    ConfigMap,
}

async fn site(name: &str, ca: CaValue) -> Site {
    let prod = envtest::shared_named("prod").await;
    let prod_applier = Applier::new(prod.client().await.unwrap(), "test");
    let dr = ControlPlane::start().await.unwrap();
    let dr_admin = dr.client().await.unwrap();
    let dr_applier = Applier::new(dr_admin.clone(), "test");
    let work = tempfile::tempdir().unwrap();
    let git = HttpsGit::start(&work.path().join("git"), USER, TOKEN);
    let repo = git.bare_repo(REPO);

    let ca_set = format!("git.caBundle={}", git.ca_pem);
    let mut sets = vec![];
    match ca {
        CaValue::Inline => sets.push(ca_set),
        CaValue::ConfigMap => {
            dr_applier
                .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
                .await;
            dr_applier
                .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "corp-git-ca", "namespace": NS},
                    "data": {"bundle.pem": git.ca_pem}}))
                .await;
            sets.push("git.caBundleConfigMap.name=corp-git-ca".into());
            sets.push("git.caBundleConfigMap.key=bundle.pem".into());
        }
    }
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let controller = chart::start(&dr, NS, &sets, &work.path().join("controller"), name, &[]).await;
    let env = rendered_env(&sets);
    assert!(
        env.contains(&"SSL_CERT_FILE=/etc/dr-syncer/git-ca/ca.crt".to_string()),
        "the chart hands the mounted CA bundle to the controller: {env:?}"
    );

    // The source: namespace shop with a ConfigMap and a Secret.
    prod_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .await;
    prod_applier
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-config", "namespace": "shop"},
            "data": {"color": "blue"}}))
        .await;
    prod_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-db", "namespace": "shop"},
            "stringData": {"password": DB_PASSWORD}}))
        .await;

    // examples/crs/02 (prod) without its PVC agent, which these tests do not exercise; its
    // kubeconfig Secret holds an admin kubeconfig of the source.
    let kubeconfig = serde_saphyr::to_string(&prod.kubeconfig()).unwrap();
    dr_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prod-kubeconfig", "namespace": NS},
            "stringData": {"kubeconfig": kubeconfig}}))
        .await;
    let mut rc = example("02-remotecluster-pvc-agent.yaml");
    rc["spec"].as_object_mut().unwrap().remove("pvcSync");
    dr_applier.apply(&rc).await;

    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    // The recipients Secret examples/crs/10 names.
    dr_applier
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dr-age-recipients", "namespace": NS},
            "stringData": {"recipients.txt": format!("# DR site\n{recipient}\n")}}))
        .await;
    Site {
        _controller: controller,
        _prod: prod,
        _dr: dr,
        dr_admin,
        dr_applier,
        git,
        repo,
        identity,
        recipient,
        work,
        log: dr_syncer_testkit::target_dir().join(format!("test-logs/{name}.log")),
    }
}

/// The controller's environment as the chart renders it (`NAME=value`).
fn rendered_env(sets: &[&str]) -> Vec<String> {
    let rendered = chart::render(NS, sets);
    chart::deployment(&rendered)["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap_or("")
            )
        })
        .collect()
}

impl Site {
    /// The token Secret of examples/crs/10: `username` and `password` (the token).
    async fn token_secret(&self, name: &str, token: &str) {
        self.dr_applier
            .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                "type": "Opaque", "stringData": {"username": USER, "password": token}}))
            .await;
    }

    /// examples/crs/10 as `name`, pushing to `url` with the token Secret `secret`.
    async fn mapping(&self, name: &str, url: &str, secret: &str) {
        let mut nm = example("10-namespacemapping-git.yaml");
        nm["metadata"]["name"] = json!(name);
        let spec = nm["spec"].as_object_mut().unwrap();
        spec["destination"]["git"]["url"] = json!(url);
        spec["destination"]["git"]["credentialsSecretRef"]["name"] = json!(secret);
        spec["secrets"]["ageRecipients"] = json!([self.recipient]);
        // The example reads the cluster the controller runs in (no sourceCluster and no
        // ClusterMapping); here that is the DR cluster, so name the source RemoteCluster.
        spec.insert("sourceCluster".into(), json!("prod"));
        self.dr_applier.apply(&nm).await;
    }

    async fn status(&self, name: &str) -> NamespaceMappingStatus {
        Api::<NamespaceMapping>::namespaced(self.dr_admin.clone(), NS)
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// Waits until the mapping's status satisfies `done`.
    async fn wait(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&NamespaceMappingStatus) -> bool,
    ) -> NamespaceMappingStatus {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let s = self.status(name).await;
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what}: not within 90 s: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn show(&self, repo: &Path, path: &str) -> Option<String> {
        let out = Command::new("git")
            .args(["show", &format!("main:{path}")])
            .current_dir(repo)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    }

    /// Decrypts a committed SOPS file with the real `sops` and the DR identity.
    fn sops_decrypt(&self, path: &str) -> String {
        use age::secrecy::ExposeSecret;
        let file = self.work.path().join("decrypt.sops.yaml");
        std::fs::write(&file, self.show(&self.repo, path).expect("committed")).unwrap();
        let out = Command::new(sops())
            .arg("decrypt")
            .arg(&file)
            .env("SOPS_AGE_KEY", self.identity.to_string().expose_secret())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sops: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `secret` appears in no mapping status, no Event of the controller's namespace and
    /// no line of the controller's log.
    async fn never_shown(&self, secret: &str) {
        let nms = Api::<NamespaceMapping>::namespaced(self.dr_admin.clone(), NS)
            .list(&Default::default())
            .await
            .unwrap();
        let statuses = serde_json::to_string(
            &nms.items
                .iter()
                .map(|nm| nm.status.clone())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(!statuses.contains(secret), "in a status: {statuses}");
        let events =
            Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.dr_admin.clone(), NS)
                .list(&Default::default())
                .await
                .unwrap();
        assert!(!events.items.is_empty(), "the controller records Events");
        let events = serde_json::to_string(&events.items).unwrap();
        assert!(!events.contains(secret), "in an Event: {events}");
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(
            !log.is_empty(),
            "the controller logs to {}",
            self.log.display()
        );
        assert!(
            !log.contains(secret),
            "in the controller log {}",
            self.log.display()
        );
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// README "The controller": `helm install` with the in-house CA (`git.caBundle`), then
/// examples/crs/10 as written — https:// URL, `credentialsSecretRef: dr-state-token` with
/// `username` + `password` — commits the source namespace over HTTPS, its Secret in SOPS.
#[tokio::test]
async fn https_token_secret_pushes_through_a_trusted_in_house_ca() {
    let s = site("user-path-https", CaValue::Inline).await;
    s.token_secret("dr-state-token", TOKEN).await;
    let example = example("10-namespacemapping-git.yaml");
    assert_eq!(
        example["spec"]["destination"]["git"]["credentialsSecretRef"]["name"],
        "dr-state-token"
    );
    let url = example_url(&example, &s.git);
    s.mapping("shop", &url, "dr-state-token").await;
    let status = s
        .wait("shop", "a commit", |st| {
            st.last_commit.is_some() || st.last_error.is_some()
        })
        .await;
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    let head = git(&s.repo, &["rev-parse", "main"]);
    assert_eq!(
        status.last_commit.as_ref().unwrap().sha,
        head.trim(),
        "the commit arrived in the repository served over HTTPS"
    );

    let base = "namespaces/shop/shop";
    let files = git(&s.repo, &["ls-tree", "-r", "--name-only", "main"]);
    let config = s
        .show(&s.repo, &format!("{base}/core/configmaps/shop-config.yaml"))
        .unwrap_or_else(|| panic!("ConfigMap committed: {files}"));
    assert!(config.contains("color: blue"), "{config}");
    let secret_path = format!("{base}/core/secrets/shop-db.sops.yaml");
    let committed = s.show(&s.repo, &secret_path).expect("Secret committed");
    assert!(
        committed.contains("sops:") && committed.contains("ENC[AES256_GCM,"),
        "{committed}"
    );
    let plain = s.sops_decrypt(&secret_path);
    assert!(plain.contains(&base64_of(DB_PASSWORD)), "{plain}");
    let author = git(&s.repo, &["log", "-1", "--format=%an <%ae>", "main"]);
    assert_eq!(
        author.trim(),
        "dr-syncer <dr-syncer@example.com>",
        "the example's author"
    );
    // Neither the token nor the Secret's value is in any blob of the repository.
    let blobs = all_blobs(&s.repo);
    assert!(!blobs.is_empty());
    for needle in [TOKEN, DB_PASSWORD, &base64_of(DB_PASSWORD)] {
        assert!(
            !blobs.iter().any(|b| contains(b, needle)),
            "{needle} in a blob"
        );
    }
    // The server saw the push as the Secret's user: the token was sent and accepted.
    let access = std::fs::read_to_string(&s.git.access_log).unwrap();
    assert!(
        access
            .lines()
            .any(|l| l.contains(&format!(" {USER} ")) && l.contains("git-receive-pack")),
        "{access}"
    );
    s.never_shown(TOKEN).await;
}

/// The same setup against a server whose certificate the controller's bundle does not
/// cover is refused during the TLS handshake — before any request, so the token never
/// leaves — and a wrong token is an authentication error. Nothing is pushed either way.
/// The CA comes from an existing ConfigMap (`git.caBundleConfigMap`) here.
#[tokio::test]
async fn https_refuses_an_untrusted_certificate_and_a_wrong_token() {
    let s = site("user-path-https-refused", CaValue::ConfigMap).await;
    // Another server, same user and token, its own CA (a man in the middle, or a server
    // whose CA was never given to the chart).
    let untrusted = HttpsGit::start(&s.work.path().join("untrusted"), USER, TOKEN);
    let untrusted_repo = untrusted.bare_repo(REPO);
    let example = example("10-namespacemapping-git.yaml");
    s.token_secret("dr-state-token", TOKEN).await;
    s.mapping(
        "shop-untrusted",
        &example_url(&example, &untrusted),
        "dr-state-token",
    )
    .await;
    const WRONG: &str = "glpat-WrongWrongWrong0000";
    s.token_secret("dr-state-wrong-token", WRONG).await;
    s.mapping(
        "shop-wrong-token",
        &example_url(&example, &s.git),
        "dr-state-wrong-token",
    )
    .await;

    let refused = s
        .wait("shop-untrusted", "an outcome", |st| {
            st.last_error.is_some() || st.last_commit.is_some()
        })
        .await;
    let err = refused.last_error.clone().unwrap().message;
    assert!(
        err.contains("certificate") && err.contains(&untrusted.url(REPO)),
        "names the certificate and the remote: {err}"
    );
    assert!(err.contains("git.caBundle"), "says what to change: {err}");
    assert!(refused.last_commit.is_none(), "{refused:?}");
    let denied = s
        .wait("shop-wrong-token", "an outcome", |st| {
            st.last_error.is_some() || st.last_commit.is_some()
        })
        .await;
    let err = denied.last_error.clone().unwrap().message;
    assert!(err.contains("authentication"), "{err}");
    assert!(
        err.contains("check the credentials in Secret dr-syncer/"),
        "names the Secret: {err}"
    );
    assert!(denied.last_commit.is_none(), "{denied:?}");

    for repo in [&untrusted_repo, &s.repo] {
        assert_eq!(
            git(repo, &["for-each-ref"]),
            "",
            "nothing pushed to {}",
            repo.display()
        );
    }
    // The handshake failed: not one request reached the untrusted server.
    let access = std::fs::read_to_string(&untrusted.access_log).unwrap_or_default();
    assert_eq!(access, "", "a request reached the untrusted server");
    // The trusted server answered the wrong token with 401s and accepted nothing.
    let access = std::fs::read_to_string(&s.git.access_log).unwrap();
    assert!(access.contains("\" 401 "), "{access}");
    assert!(!access.contains("git-receive-pack"), "{access}");
    s.never_shown(TOKEN).await;
    s.never_shown(WRONG).await;
}
