//! The DR side with the real Flux (source-controller and kustomize-controller built from
//! their Go modules, `tests/flux/build.sh`), set up only as docs/runbook.md says:
//!
//! - source cluster: the controller installed by the Helm chart, the shipped example
//!   `examples/source/shop` loaded, the deploy-key Secret of runbook §2 and the mapping of
//!   `examples/crs/10-namespacemapping-git.yaml` (Continuous), with only the repository URL,
//!   credentials and age recipient substituted; git over `ssh://` to a real OpenSSH;
//! - DR cluster: Flux's CRDs and controllers, then runbook §5's shell block run by `bash` as
//!   written (age Secret, git Secret, clone, `dr-syncer bootstrap flux … | kubectl apply`),
//!   with only the URL, the mapping's path and the fetch interval substituted;
//! - runbook §6/§7: pause, `dr-syncer failover` / `failback` against the repository.
//!
//! What is checked is what a user sees on the DR apiserver: every exported object arrives and
//! equals its source but for the documented transforms; Secrets decrypted to the source
//! values; a change and a deletion follow (timed); failover and failback move the replicas
//! and CronJobs; a wrong age key is a Kustomization `Ready=False` naming decryption.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Text, chart, eventually};
use dr_syncer::api::{MappingPhase, NamespaceMapping};
use dr_syncer::export::source::offline;
use dr_syncer_testkit::envtest::{ControlPlane, kubectl_path};
use dr_syncer_testkit::flux::{self, Flux};
use dr_syncer_testkit::git::{Sshd, bare_repo, git};
use dr_syncer_testkit::objects::Applier;
use dr_syncer_testkit::tools::debian;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The controller's namespace in every example.
const NS: &str = "dr-syncer";
const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");
/// `spec.destination.git.path` of examples/crs/10.
const PATH: &str = "namespaces/shop";
/// How often Flux fetches (runbook §5 says `1m`; lowered so the test is short).
const SOURCE_INTERVAL: &str = "5s";
const WAIT: Duration = Duration::from_secs(120);

fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/crs")
        .join(file);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first `sh` block after `heading` in docs/runbook.md.
fn runbook_sh(heading: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let section = &doc[doc.find(heading).expect("runbook section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = section[start..].find("```").unwrap();
    section[start..start + end].to_string()
}

/// The operator's shell: a directory with the files of runbook §2 (`dr.agekey`,
/// `deploy_key`, `known_hosts`), kubectl contexts `prod` and `dr`, and `dr-syncer`,
/// `kubectl` and `git` on the PATH.
struct Operator {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Operator {
    fn new(dir: PathBuf, sshd: &Sshd, prod: &ControlPlane, dr: &ControlPlane) -> Operator {
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::copy(&sshd.client_key, dir.join("deploy_key")).unwrap();
        std::fs::copy(&sshd.known_hosts, dir.join("known_hosts")).unwrap();
        // Both admin kubeconfigs merged, each named after its cluster.
        let mut merged = json!({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": [],
            "current-context": "dr"});
        for (name, plane) in [("prod", prod), ("dr", dr)] {
            let kc = serde_json::to_value(plane.kubeconfig()).unwrap();
            let mut cluster = kc["clusters"][0].clone();
            cluster["name"] = json!(name);
            let mut user = kc["users"][0].clone();
            user["name"] = json!(name);
            merged["clusters"].as_array_mut().unwrap().push(cluster);
            merged["users"].as_array_mut().unwrap().push(user);
            merged["contexts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": name, "context": {"cluster": name, "user": name}}));
        }
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, serde_saphyr::to_string(&merged).unwrap()).unwrap();
        Operator { dir, kubeconfig }
    }

    /// `age-keygen -o <file>`; returns the public key.
    fn age_keygen(&self, file: &str) -> String {
        let out = Command::new(debian("age-keygen", "age"))
            .arg("-o")
            .arg(self.dir.join(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "age-keygen: {}", stderr(&out));
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("age-keygen writes the public key")
            .to_string()
    }

    /// Runs `script` with `bash -euo pipefail`; panics with its output on failure.
    fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "{script}\nfailed: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `script` with `bash -euo pipefail`.
    fn run(&self, script: &str) -> Output {
        let path = format!(
            "{}:{}:{}",
            Path::new(env!("CARGO_BIN_EXE_dr-syncer"))
                .parent()
                .unwrap()
                .display(),
            kubectl_path().unwrap().parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(&self.dir)
            .env("PATH", path)
            .env("HOME", self.dir.join("home"))
            .env("KUBECONFIG", &self.kubeconfig)
            // What `~/.ssh/config` would say for the git host.
            .env(
                "GIT_SSH_COMMAND",
                "ssh -i deploy_key -o IdentitiesOnly=yes -o UserKnownHostsFile=known_hosts -o StrictHostKeyChecking=yes",
            )
            .output()
            .unwrap()
    }
}

/// Makes a `kubectl get -o yaml` object of the example loadable: server-set fields go,
/// allocated Service addresses go, nodePorts stay only where the original manifest
/// (last-applied) had them, and the Job controller's UID labels go.
fn loadable(mut v: Value) -> Value {
    let m = v["metadata"].as_object_mut().unwrap();
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        m.remove(f);
    }
    v.as_object_mut().unwrap().remove("status");
    match v["kind"].as_str().unwrap() {
        "Service" => {
            let spec = v["spec"].as_object_mut().unwrap();
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            if v["metadata"]["name"] != "web-nodeport" {
                strip_node_ports(&mut v);
            }
        }
        "Job" => {
            v["spec"].as_object_mut().unwrap().remove("selector");
            for path in ["/metadata/labels", "/spec/template/metadata/labels"] {
                if let Some(Value::Object(l)) = v.pointer_mut(path) {
                    l.retain(|k, _| !k.contains("controller-uid") && !k.ends_with("job-name"));
                }
            }
        }
        _ => {}
    }
    v
}

fn strip_node_ports(v: &mut Value) {
    for p in v
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        p.as_object_mut().unwrap().remove("nodePort");
    }
}

/// Loads the shop example into the source: its CRD, the Namespace, then every object,
/// owners first (owner references get the new UIDs).
async fn load_shop(client: &Client) {
    let applier = Applier::new(client.clone(), "shop-team");
    let crd: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(Path::new(SHOP).join("01-crd-coupons.yaml")).unwrap(),
    )
    .unwrap();
    applier.apply(&crd).await;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually("Coupon CRD established on the source", WAIT, || async {
        api.get("coupons.shop.example.com")
            .await
            .ok()
            .and_then(|c| {
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            })
    })
    .await;
    let input = offline::read_dir(Path::new(SHOP)).unwrap();
    for ns in input.namespaces.values() {
        applier.apply(&loadable(ns.clone())).await;
    }
    let mut pending: Vec<Value> = input
        .objects
        .into_iter()
        .map(|o| loadable(o.value))
        .collect();
    let mut uids: BTreeMap<(String, String), String> = BTreeMap::new();
    while !pending.is_empty() {
        let before = pending.len();
        let mut next = Vec::new();
        for mut obj in pending {
            let refs = obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let resolved: Option<Vec<Value>> = refs
                .iter()
                .map(|r| {
                    let key = (r["kind"].as_str()?.to_string(), r["name"].as_str()?.into());
                    let mut r = r.clone();
                    r["uid"] = json!(uids.get(&key)?);
                    Some(r)
                })
                .collect();
            let Some(resolved) = resolved else {
                next.push(obj);
                continue;
            };
            if !refs.is_empty() {
                obj["metadata"]["ownerReferences"] = json!(resolved);
            }
            let applied = applier.apply(&obj).await;
            uids.insert(
                (
                    obj["kind"].as_str().unwrap().to_string(),
                    obj["metadata"]["name"].as_str().unwrap().to_string(),
                ),
                applied["metadata"]["uid"].as_str().unwrap().to_string(),
            );
        }
        assert!(next.len() < before, "unresolvable owners: {next:?}");
        pending = next;
    }
}

/// What examples/crs/10 maps, applied to a source object: registry and Ingress host
/// prefixes, PVC access modes (storage class `gp3` does not occur in the example).
fn example_mappings(v: &mut Value) {
    fn walk(v: &mut Value, f: &dyn Fn(&str, &mut Value)) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    f(k, x);
                    walk(x, f);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    let kind = v["kind"].as_str().unwrap_or("").to_string();
    walk(v, &|k, x| {
        let Some(s) = x.as_str() else { return };
        let mapped = match k {
            "image" => s.replacen("registry.prod.example.com/", "registry.dr.example.com/", 1),
            "host" if kind == "Ingress" => s.replace("shop.example.com", "shop.dr.example.com"),
            _ => return,
        };
        *x = json!(mapped);
    });
    if kind == "Ingress" {
        for hosts in v
            .pointer_mut("/spec/tls")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get_mut("hosts").and_then(Value::as_array_mut))
        {
            for h in hosts {
                *h = json!(
                    h.as_str()
                        .unwrap()
                        .replace("shop.example.com", "shop.dr.example.com")
                );
            }
        }
    }
    walk(v, &|k, x| {
        if k == "accessModes"
            && let Some(a) = x.as_array_mut()
        {
            for m in a {
                if m == "ReadWriteMany" {
                    *m = json!("ReadWriteOnce");
                }
            }
        }
    });
}

/// Removes what the export documents as changed, so source and DR compare: server-set
/// metadata and status, the scale-to-zero and suspension fields (checked separately), the
/// fields cleaning drops (allocated Service addresses, PVC binding, token references, GitOps
/// and rollout annotations), and the labels Flux puts on what it applies.
fn normalize(v: &mut Value, kind: &str) {
    let m = v["metadata"].as_object_mut().unwrap();
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        m.remove(f);
    }
    if let Some(Value::Object(a)) = m.get_mut("annotations") {
        a.retain(|k, _| {
            !k.starts_with("dr-syncer.io/original-")
                && k != "kubectl.kubernetes.io/last-applied-configuration"
                && k != "deployment.kubernetes.io/revision"
                && !k.starts_with("autoscaling.alpha.kubernetes.io/")
                && !(kind == "PersistentVolumeClaim"
                    && (k.starts_with("pv.kubernetes.io/") || k.starts_with("volume.")))
        });
        if a.is_empty() {
            m.remove("annotations");
        }
    }
    if let Some(Value::Object(l)) = m.get_mut("labels") {
        l.retain(|k, _| !k.starts_with("kustomize.toolkit.fluxcd.io/"));
        if l.is_empty() {
            m.remove("labels");
        }
    }
    let o = v.as_object_mut().unwrap();
    o.remove("status");
    match kind {
        "Deployment" | "StatefulSet" => {
            o["spec"].as_object_mut().unwrap().remove("replicas");
            if let Some(Value::Object(a)) = v.pointer_mut("/spec/template/metadata/annotations") {
                a.remove("kubectl.kubernetes.io/restartedAt");
            }
        }
        "CronJob" => {
            o["spec"].as_object_mut().unwrap().remove("suspend");
        }
        "Service" => {
            let spec = o["spec"].as_object_mut().unwrap();
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            if v["metadata"]["name"] != "web-nodeport" {
                strip_node_ports(v);
            }
        }
        "PersistentVolumeClaim" => {
            o["spec"].as_object_mut().unwrap().remove("volumeName");
        }
        "ServiceAccount" => {
            o.remove("secrets");
        }
        _ => {}
    }
}

/// The standby form on DR: replicas 0 (or the source's `scale-override`) with the source's
/// count recorded; CronJobs suspended with the source's value recorded.
fn check_standby(kind: &str, name: &str, src: &Value, dr: &Value) {
    let ann = |v: &Value, k: &str| v["metadata"]["annotations"][k].as_str().map(str::to_string);
    match kind {
        "Deployment" | "StatefulSet" => {
            let original = src["spec"]["replicas"].as_i64().unwrap_or(1);
            assert_eq!(
                ann(dr, "dr-syncer.io/original-replicas"),
                Some(original.to_string()),
                "{kind} {name}"
            );
            let over = ann(src, "dr-syncer.io/scale-override").and_then(|s| s.parse::<i64>().ok());
            assert_eq!(
                dr["spec"]["replicas"].as_i64(),
                Some(over.unwrap_or(0)),
                "{kind} {name} replicas on DR"
            );
        }
        "CronJob" => {
            assert_eq!(dr["spec"]["suspend"], json!(true), "CronJob {name}");
            let original = src["spec"]["suspend"].as_bool().unwrap_or(false);
            assert_eq!(
                ann(dr, "dr-syncer.io/original-suspend"),
                Some(original.to_string()),
                "CronJob {name}"
            );
        }
        _ => {}
    }
}

/// The bare repository as the DR side reads it.
struct Repo(PathBuf);

impl Repo {
    fn head(&self) -> String {
        git(&self.0, &["rev-parse", "main"]).trim().to_string()
    }

    fn show(&self, path: &str) -> Option<String> {
        let out = Command::new("git")
            .args(["show", &format!("main:{path}")])
            .current_dir(&self.0)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    }

    /// Object files of the mapping (no kustomizations, no `.dr-syncer/` markers).
    fn objects(&self) -> Vec<(String, Value)> {
        let exists = Command::new("git")
            .args(["rev-parse", "--verify", "-q", "main"])
            .current_dir(&self.0)
            .output()
            .unwrap();
        if !exists.status.success() {
            return Vec::new();
        }
        git(&self.0, &["ls-tree", "-r", "--name-only", "main", PATH])
            .lines()
            .filter(|p| !p.ends_with("/kustomization.yaml") && !p.contains("/."))
            .map(|p| {
                let v = serde_saphyr::from_str(&self.show(p).unwrap()).unwrap();
                (p.to_string(), v)
            })
            .collect()
    }
}

fn kind_of(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().unwrap().to_string(),
        v["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

/// Flux's objects on the DR cluster.
struct FluxApi {
    kustomizations: Api<DynamicObject>,
    git_repositories: Api<DynamicObject>,
}

impl FluxApi {
    fn new(client: &Client) -> FluxApi {
        let ar = |group: &str, kind: &str| {
            ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind))
        };
        FluxApi {
            kustomizations: Api::namespaced_with(
                client.clone(),
                flux::NAMESPACE,
                &ar("kustomize.toolkit.fluxcd.io", "Kustomization"),
            ),
            git_repositories: Api::namespaced_with(
                client.clone(),
                flux::NAMESPACE,
                &ar("source.toolkit.fluxcd.io", "GitRepository"),
            ),
        }
    }

    /// `(status of Ready, its message, lastAppliedRevision)` of a Kustomization.
    async fn kustomization(&self, name: &str) -> (String, String, String) {
        let Ok(k) = self.kustomizations.get(name).await else {
            return ("absent".into(), String::new(), String::new());
        };
        let ready = k.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or(Value::Null);
        (
            ready["status"].as_str().unwrap_or("none").to_string(),
            ready["message"].as_str().unwrap_or("").to_string(),
            k.data["status"]["lastAppliedRevision"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }

    /// Waits until every Kustomization of the bootstrap has applied `commit`.
    async fn applied(&self, flux: &Flux, names: &[&str], commit: &str) {
        eventually(&format!("Flux applies {commit}"), WAIT, || async {
            assert!(
                flux.running(),
                "a Flux controller exited: see {:?}",
                flux.logs
            );
            let mut state = Vec::new();
            for n in names {
                let (ready, message, revision) = self.kustomization(n).await;
                if ready != "True" || !revision.ends_with(commit) {
                    state.push(format!("{n}: Ready={ready} {revision} {message}"));
                }
            }
            if state.is_empty() {
                return Ok(());
            }
            if let Ok(g) = self.git_repositories.get("dr-syncer").await {
                state.push(format!("GitRepository: {}", g.data["status"]));
            }
            Err(Text(state.join("\n")))
        })
        .await
    }
}

/// The DR object for a git file's object (`None` when absent).
async fn dr_get(dr: &Applier, obj: &Value) -> Option<Value> {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let got = dr.api_for(obj).await.get_opt(name).await.unwrap();
    got.map(|o| serde_json::to_value(o).unwrap())
}

async fn mapping(client: &Client) -> NamespaceMapping {
    Api::<NamespaceMapping>::namespaced(client.clone(), NS)
        .get("shop")
        .await
        .unwrap()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Replica counts and suspend flags of the shop's workloads on DR.
async fn workloads(dr: &Applier) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (api_version, kind, name, field) in [
        ("apps/v1", "Deployment", "web", "replicas"),
        ("apps/v1", "Deployment", "worker", "replicas"),
        ("apps/v1", "StatefulSet", "db", "replicas"),
        ("batch/v1", "CronJob", "nightly-report", "suspend"),
    ] {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "shop"}});
        let v = dr_get(dr, &probe).await.unwrap_or(Value::Null);
        out.insert(format!("{kind}/{name}"), v["spec"][field].clone());
    }
    out
}

#[tokio::test]
async fn flux_applies_the_export_on_the_dr_cluster() {
    let started = Instant::now();
    let lap = |what: &str| eprintln!("[flux_dr] {:>6}  {what}", secs(started.elapsed()));
    let flux_dir = flux::dir();
    lap(&format!("Flux binaries at {}", flux_dir.display()));
    let (prod, dr) = tokio::join!(ControlPlane::start(), ControlPlane::start());
    let (prod, dr) = (prod.unwrap(), dr.unwrap());
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"));
    let repo = Repo(bare_repo(&work.path().join("srv/platform"), "dr.git"));
    let url = sshd.url(&repo.0);
    let op = Operator::new(work.path().join("operator"), &sshd, &prod, &dr);
    let recipient = op.age_keygen("dr.agekey");
    let prod_client = prod.client().await.unwrap();
    let dr_client = dr.client().await.unwrap();
    let (prod_objects, dr_objects) = (
        Applier::new(prod_client.clone(), "reader"),
        Applier::new(dr_client.clone(), "reader"),
    );
    lap("two apiservers and sshd up");

    // Source: runbook §1 (the chart), the shop, §2's deploy-key Secret, examples/crs/10.
    let controller = chart::start(
        &prod,
        NS,
        &[],
        &work.path().join("controller"),
        "flux-dr-controller",
        &[],
    )
    .await;
    load_shop(&prod_client).await;
    op.sh(
        "kubectl --context prod -n dr-syncer create secret generic dr-state-deploy-key \
         --from-file=identity=deploy_key --from-file=known_hosts=known_hosts",
    );
    op.sh(&format!(
        "kubectl --context prod -n dr-syncer create secret generic dr-age-recipients \
         --from-literal=recipients.txt={recipient}"
    ));
    let mut nm = example("10-namespacemapping-git.yaml");
    nm["spec"]["destination"]["git"]["url"] = json!(url);
    // The example authenticates to HTTPS with a token; over SSH it is the deploy key.
    nm["spec"]["destination"]["git"]["credentialsSecretRef"]["name"] = json!("dr-state-deploy-key");
    nm["spec"]["secrets"]["ageRecipients"] = json!([recipient]);
    let nm_file = op.dir.join("shop-mapping.yaml");
    std::fs::write(&nm_file, serde_saphyr::to_string(&nm).unwrap()).unwrap();
    op.sh("kubectl --context prod apply -f shop-mapping.yaml");
    let synced = eventually("first export Synced", WAIT, || async {
        let nm = mapping(&prod_client).await;
        let s = nm.status.clone().unwrap_or_default();
        match s.phase {
            Some(MappingPhase::Synced) => Ok(repo.head()),
            _ => Err(format!("{:?} {:?}", s.phase, s.last_error)),
        }
    })
    .await;
    lap(&format!("source exported, commit {synced}"));

    // DR: Flux installed, then runbook §5 as written.
    let flux = Flux::install(&dr, work.path(), "flux-dr").await;
    let section5 = runbook_sh("## 5. Make the DR cluster pull");
    let script = section5
        .replace("ssh://git@git.example.com/platform/dr.git", &url)
        .replace("--path prod", &format!("--path {PATH}"))
        .replace(
            "--source-interval 1m",
            &format!("--source-interval {SOURCE_INTERVAL}"),
        );
    assert_ne!(
        script, section5,
        "the runbook's URL and path are substituted"
    );
    op.sh(&script);
    lap("runbook §5 applied");
    let fluxes = FluxApi::new(&dr_client);
    let names = ["dr-syncer-cluster", "dr-syncer-shop"];
    fluxes.applied(&flux, &names, &repo.head()).await;
    // The runbook's check: every Flux object READY True.
    let listed = op.sh("kubectl --context dr -n flux-system get gitrepository,kustomization");
    let rows: Vec<&str> = listed
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("NAME"))
        .collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().any(|c| c == "True")),
        "{listed}"
    );
    lap("Flux applied the export");

    // Every exported object is on DR and equals its source but for the transforms.
    let files = repo.objects();
    let exported: BTreeSet<(String, String)> = files.iter().map(|(_, v)| kind_of(v)).collect();
    for expected in [
        ("Namespace", "shop"),
        ("CustomResourceDefinition", "coupons.shop.example.com"),
        ("Deployment", "web"),
        ("Deployment", "worker"),
        ("StatefulSet", "db"),
        ("CronJob", "nightly-report"),
        ("HorizontalPodAutoscaler", "web"),
        ("PodDisruptionBudget", "web"),
        ("Service", "web"),
        ("Service", "db-headless"),
        ("Service", "web-nodeport"),
        ("Service", "metrics-nodeport"),
        ("Ingress", "shop"),
        ("NetworkPolicy", "db-from-web"),
        ("PersistentVolumeClaim", "uploads"),
        ("ConfigMap", "shop-config"),
        ("Secret", "db-credentials"),
        ("ServiceAccount", "shop-api"),
        ("Role", "shop-reader"),
        ("RoleBinding", "shop-reader"),
        ("Coupon", "black-friday"),
    ] {
        assert!(
            exported.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} not exported: {exported:?}"
        );
    }
    let mut differences = Vec::new();
    let mut secrets = 0;
    for (path, file) in &files {
        let (kind, name) = kind_of(file);
        let dr_obj = dr_get(&dr_objects, file)
            .await
            .unwrap_or_else(|| panic!("{path} not on the DR cluster"));
        let mut src_obj = dr_get(&prod_objects, file)
            .await
            .unwrap_or_else(|| panic!("{path} not on the source"));
        check_standby(&kind, &name, &src_obj, &dr_obj);
        if kind == "Secret" {
            assert!(
                file.get("sops").is_some(),
                "{path} is SOPS-encrypted in git"
            );
            assert_eq!(
                dr_obj["data"], src_obj["data"],
                "{path}: Flux decrypted to the source values"
            );
            secrets += 1;
        }
        let before = src_obj.clone();
        example_mappings(&mut src_obj);
        if matches!(
            kind.as_str(),
            "Ingress" | "Deployment" | "PersistentVolumeClaim"
        ) {
            // The comparison below shows the mapped values arrived on DR.
            assert_ne!(
                before, src_obj,
                "{path}: examples/crs/10 maps something here"
            );
        }
        let mut dr_obj = dr_obj;
        normalize(&mut src_obj, &kind);
        normalize(&mut dr_obj, &kind);
        if src_obj != dr_obj {
            differences.push(format!("{path}:\n  source: {src_obj}\n  dr:     {dr_obj}"));
        }
    }
    assert!(secrets >= 1, "a Secret went through SOPS and Flux");
    assert!(
        differences.is_empty(),
        "{} undocumented differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    lap(&format!(
        "{} exported objects equal on DR ({secrets} Secrets decrypted)",
        files.len()
    ));

    // A change and a deletion on the source reach DR.
    let changed_at = Instant::now();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(prod_client.clone(), "shop");
    cms.patch(
        "shop-config",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"FEATURE_RECOMMENDATIONS": "off"}})),
    )
    .await
    .unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(prod_client.clone(), "shop");
    services
        .delete("metrics-nodeport", &Default::default())
        .await
        .unwrap();
    let cm_path = format!("{PATH}/shop/core/configmaps/shop-config.yaml");
    let svc_path = format!("{PATH}/shop/core/services/metrics-nodeport.yaml");
    let commit = eventually("the change committed", WAIT, || async {
        let cm = repo.show(&cm_path).unwrap_or_default();
        (cm.contains("FEATURE_RECOMMENDATIONS: \"off\"")
            || cm.contains("FEATURE_RECOMMENDATIONS: off"))
        .then(|| repo.show(&svc_path).is_none().then(|| repo.head()))
        .flatten()
    })
    .await;
    let committed = changed_at.elapsed();
    let dr_cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(dr_client.clone(), "shop");
    let dr_services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(dr_client.clone(), "shop");
    eventually("the change and the deletion on DR", WAIT, || async {
        assert!(flux.running(), "a Flux controller exited");
        let cm = dr_cms.get("shop-config").await.unwrap();
        let value = cm.data.unwrap_or_default()["FEATURE_RECOMMENDATIONS"].clone();
        let svc = dr_services.get_opt("metrics-nodeport").await.unwrap();
        if value == "off" && svc.is_none() {
            Ok(())
        } else {
            Err(format!(
                "FEATURE_RECOMMENDATIONS={value}, metrics-nodeport present: {}",
                svc.is_some()
            ))
        }
    })
    .await;
    let applied = changed_at.elapsed();
    eprintln!(
        "[flux_dr] source change -> committed {} -> applied on DR {} (commit {commit}; debounce 5s, Flux fetch every {SOURCE_INTERVAL})",
        secs(committed),
        secs(applied)
    );
    lap("change and deletion applied on DR");

    // Runbook §6: pause the exporter, preview, promote; Flux applies the promotion.
    let standby = workloads(&dr_objects).await;
    assert_eq!(
        standby,
        BTreeMap::from([
            ("CronJob/nightly-report".to_string(), json!(true)),
            ("Deployment/web".to_string(), json!(0)),
            ("Deployment/worker".to_string(), json!(1)),
            ("StatefulSet/db".to_string(), json!(0)),
        ]),
        "standby on DR"
    );
    let section6 = runbook_sh("## 6. Fail over");
    let pause = section6_pause();
    op.sh(&pause);
    eventually("mapping paused", WAIT, || async {
        let s = mapping(&prod_client).await.status.unwrap_or_default();
        (s.phase == Some(MappingPhase::Paused)).then_some(())
    })
    .await;
    let failover = section6
        .lines()
        .map(|l| l.split('#').next().unwrap().trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ")
        .lines()
        .find(|l| l.trim_start().starts_with("dr-syncer failover --repo"))
        .expect("the preview command")
        .trim()
        .replace("ssh://git@git.example.com/platform/dr.git", &url)
        .replace("--path prod", &format!("--path {PATH}"));
    let preview = op.sh(&failover);
    assert!(
        preview.contains("replicas") || preview.contains("suspend"),
        "the preview shows the changes: {preview}"
    );
    let promoted_at = Instant::now();
    op.sh(&format!("{failover} --yes"));
    let head = repo.head();
    fluxes.applied(&flux, &names, &head).await;
    let promoted = workloads(&dr_objects).await;
    assert_eq!(
        promoted,
        BTreeMap::from([
            ("CronJob/nightly-report".to_string(), json!(false)),
            ("Deployment/web".to_string(), json!(3)),
            ("Deployment/worker".to_string(), json!(4)),
            ("StatefulSet/db".to_string(), json!(2)),
        ]),
        "promoted on DR"
    );
    let web = dr_get(
        &dr_objects,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}),
    )
    .await
    .unwrap();
    assert!(
        web["metadata"]["annotations"]
            .get("dr-syncer.io/original-replicas")
            .is_none(),
        "the standby annotation is gone on DR: {}",
        web["metadata"]
    );
    lap(&format!(
        "failover applied by Flux in {}",
        secs(promoted_at.elapsed())
    ));

    // Runbook §7: failback returns DR to the standby form.
    let failback = failover.replacen("dr-syncer failover", "dr-syncer failback", 1);
    let demoted_at = Instant::now();
    op.sh(&format!("{failback} --yes"));
    fluxes.applied(&flux, &names, &repo.head()).await;
    assert_eq!(
        workloads(&dr_objects).await,
        standby,
        "failback: standby again"
    );
    lap(&format!(
        "failback applied by Flux in {}",
        secs(demoted_at.elapsed())
    ));

    // A wrong age identity on DR: the namespace Kustomization is not Ready and says why.
    op.age_keygen("wrong.agekey");
    op.sh(
        "kubectl --context dr -n flux-system delete secret dr-syncer-age && \
         kubectl --context dr -n flux-system create secret generic dr-syncer-age \
         --from-file=identity.agekey=wrong.agekey",
    );
    fluxes
        .kustomizations
        .patch(
            "dr-syncer-shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "reconcile.fluxcd.io/requestedAt": format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())}}})),
        )
        .await
        .unwrap();
    let message = eventually("Ready=False on a wrong age key", WAIT, || async {
        let (ready, message, _) = fluxes.kustomization("dr-syncer-shop").await;
        if ready == "False" {
            Ok(message)
        } else {
            Err(format!("Ready={ready} {message}"))
        }
    })
    .await;
    assert!(
        message.to_lowercase().contains("decrypt"),
        "the condition names decryption: {message}"
    );
    lap(&format!(
        "wrong age key: Ready=False \"{}\"",
        message.lines().next().unwrap_or("")
    ));

    // `dr-syncer verify` says the same before Flux does: with the wrong identity it fails.
    let verify = format!(
        "dr-syncer verify --repo {url} --path {PATH} --ssh-key deploy_key --known-hosts known_hosts"
    );
    let wrong = op.run(&format!("{verify} --age-identity wrong.agekey"));
    let report = String::from_utf8_lossy(&wrong.stdout);
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "verify with the wrong key: {report}{}",
        stderr(&wrong)
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("db-credentials.sops.yaml") && l.contains("PROBLEM")),
        "the report names the Secret: {report}"
    );
    // Runbook §5b as written (URL and path substituted): exit 0, dry-run on the DR cluster.
    let section5b = runbook_sh("## 5b. Check that DR would come up");
    let right = op.sh(&section5b
        .replace("ssh://git@git.example.com/platform/dr.git", &url)
        .replace("--path prod", &format!("--path {PATH}")));
    assert!(
        right.contains("DR would come up") && right.contains("accepted by the DR apiserver"),
        "{right}"
    );
    lap(&format!(
        "dr-syncer verify: exit 2 with the wrong key, 0 with the right one: {:?}",
        right.trim()
    ));

    // The right key back, as §5 creates it: Flux recovers on its own (retryInterval).
    let section5_age = section5
        .split("\nkubectl --context dr -n flux-system create secret generic dr-git-read")
        .next()
        .unwrap()
        .to_string();
    op.sh(&format!(
        "kubectl --context dr -n flux-system delete secret dr-syncer-age\n{section5_age}"
    ));
    let fixed_at = Instant::now();
    eventually("Ready=True once the right key is back", WAIT, || async {
        match fluxes.kustomization("dr-syncer-shop").await {
            (ready, _, _) if ready == "True" => Ok(()),
            (ready, message, _) => Err(format!("Ready={ready} {message}")),
        }
    })
    .await;
    lap(&format!(
        "right key back: Ready=True after {} without a manual reconcile",
        secs(fixed_at.elapsed())
    ));

    // Flux before the apiservers (its watches would hold them up), then the controller.
    drop(flux);
    drop(controller);
    lap("done");
}

/// Runbook §6 step 1, the pause command.
fn section6_pause() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let section = &doc[doc.find("## 6. Fail over").unwrap()..];
    let start = section
        .find("`kubectl --context prod -n dr-syncer patch nsm")
        .unwrap()
        + 1;
    let end = start + section[start..].find('`').unwrap();
    section[start..end].to_string()
}
