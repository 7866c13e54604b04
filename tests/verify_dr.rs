//! `dr-syncer verify` against a real DR apiserver, as a user runs it before a disaster: the
//! shipped shop example exported with a fresh age key, then checked with the DR identity
//! and the DR kubeconfig. Each broken tree must be named with the server's (or sops's)
//! reason and exit non-zero; the clean tree must pass with every object dry-run accepted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dr_syncer_testkit::envtest::ControlPlane;
use serde_json::Value;

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");

fn dr_syncer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exports the shop example into `dir` (extra args appended) for `recipient`.
fn export(dir: &Path, recipient: &str, extra: &[&str]) {
    let mut args = vec![
        "export",
        "--from",
        SHOP,
        "--to",
        s(dir),
        "--age-recipient",
        recipient,
    ];
    args.extend(extra);
    let out = dr_syncer(&args);
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `verify -o json` of `dir`: (exit code, report).
fn verify(dir: &Path, identity: &Path, dr: &ControlPlane) -> (i32, Value) {
    let out = dr_syncer(&[
        "verify",
        "--repo",
        s(dir),
        "--age-identity",
        s(identity),
        "--kubeconfig",
        s(&dr.kubeconfig_path()),
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Not a terminal: no progress bar in the output.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("dry-run ") && !err.contains('\r'), "{err}");
    (out.status.code().unwrap(), report)
}

/// `verify` of `dir` on a terminal (`script` gives it a pty): what the terminal showed.
fn verify_on_a_terminal(dir: &Path, identity: &Path, dr: &ControlPlane) -> String {
    let cmd = format!(
        "{} verify --repo {} --age-identity {} --kubeconfig {}",
        env!("CARGO_BIN_EXE_dr-syncer"),
        s(dir),
        s(identity),
        s(&dr.kubeconfig_path())
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The findings of `report` as `(path, outcome, reason)`.
fn findings(report: &Value) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["outcome"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn problem(report: &Value, path_end: &str) -> Vec<(String, String, String)> {
    findings(report)
        .into_iter()
        .filter(|(p, o, _)| p.ends_with(path_end) && o == "problem")
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .args(["-a", s(from), s(to)])
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn edit(file: PathBuf, from: &str, to: &str) {
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", file.display());
    std::fs::write(&file, text.replacen(from, to, 1)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_tells_whether_dr_would_come_up() {
    let dr = ControlPlane::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let identity = work.path().join("dr.agekey");
    {
        use age::secrecy::ExposeSecret as _;
        std::fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let tree = work.path().join("export");
    export(&tree, &recipient, &[]);
    // 1. A fresh DR cluster: nothing is there yet, but the tree brings the Namespace and
    //    the Coupon CRD in _cluster/, so what needs them is deferred, not rejected.
    //    Nothing fails, but not everything was checked: exit 3, not 0.
    let (code, report) = verify(&tree, &identity, &dr);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["verdict"], "notVerified", "{report:#}");
    let objects_in_tree = report["objects"].as_u64().unwrap();
    assert!(objects_in_tree >= 20, "{objects_in_tree}");
    // On a terminal the dry-run shows its progress (and the same report).
    let shown = verify_on_a_terminal(&tree, &identity, &dr);
    assert!(
        shown.contains("dry-run ") && shown.contains(" objects"),
        "no progress on a terminal:\n{shown}"
    );
    assert!(shown.contains("black-friday.yaml"), "{shown}");
    let deferred = findings(&report);
    assert!(
        deferred.iter().all(|(_, o, _)| o == "deferred")
            && deferred
                .iter()
                .any(|(p, _, r)| p.ends_with("coupons/black-friday.yaml")
                    && r.contains("CRD comes with this tree")),
        "{deferred:#?}"
    );

    // 2. The same example without its CRD (exportCRDs: false): the DR cluster serves no
    //    Coupon and nothing in the tree defines it.
    let no_crds = work.path().join("no-crds");
    export(&no_crds, &recipient, &["--no-crds"]);
    let (code, report) = verify(&no_crds, &identity, &dr);
    assert_eq!(code, 2, "{report:#}");
    let rejected = problem(&report, "coupons/black-friday.yaml");
    assert!(
        rejected.len() == 1 && rejected[0].2.contains("serves no Coupon"),
        "{report:#}"
    );

    // 3. The DR cluster as Flux leaves it after `_cluster/` (Namespaces, CRDs): the clean
    //    tree passes, every object accepted by the dry-run.
    let kubectl = |args: &[&str]| {
        let out = dr.kubectl().unwrap().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl(&["apply", "--server-side", "-k", s(&tree.join("_cluster"))]);
    dr_syncer_testkit::objects::wait_established(&dr.client().await.unwrap(), &[]).await;
    let (code, report) = verify(&tree, &identity, &dr);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(findings(&report), vec![], "{report:#}");
    assert_eq!(report["dryRunAccepted"].as_u64(), Some(objects_in_tree));
    assert_eq!(report["secretsVerified"].as_u64(), Some(1));
    // Nothing was stored by the dry-run.
    let out = dr
        .kubectl()
        .unwrap()
        .args(["get", "deploy,coupons,secrets", "-n", "shop", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web"),
        "the dry-run stored objects: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // 4. Objects the DR schema rejects: a Coupon above the CRD's maximum, a Deployment
    //    with a field the API does not know.
    let bad = work.path().join("bad-schema");
    copy_tree(&tree, &bad);
    edit(
        bad.join("shop/shop.example.com/coupons/black-friday.yaml"),
        "percentOff: 30",
        "percentOff: 95",
    );
    edit(
        bad.join("shop/apps/deployments/web.yaml"),
        "replicas: 0",
        "replicas: 0\n  replicaz: 2",
    );
    let (code, report) = verify(&bad, &identity, &dr);
    assert_eq!(code, 2, "{report:#}");
    let coupon = problem(&report, "coupons/black-friday.yaml");
    assert!(
        coupon.len() == 1 && coupon[0].2.contains("percentOff"),
        "{report:#}"
    );
    let web = problem(&report, "deployments/web.yaml");
    assert!(
        web.len() == 1 && web[0].2.contains("replicaz"),
        "{report:#}"
    );
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );

    // 5. A tampered SOPS file (one value dropped: the rest still decrypts, which Flux
    //    would apply) and the wrong DR key.
    let tampered = work.path().join("tampered");
    copy_tree(&tree, &tampered);
    let secret = tampered.join("shop/core/secrets/db-credentials.sops.yaml");
    let text = std::fs::read_to_string(&secret).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    let first_key = doc["data"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let kept: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with(&format!("{first_key}:")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text);
    std::fs::write(&secret, kept).unwrap();
    let (code, report) = verify(&tampered, &identity, &dr);
    assert_eq!(code, 2, "{report:#}");
    let p = problem(&report, "db-credentials.sops.yaml");
    assert!(p.len() == 1 && p[0].2.contains("MAC"), "{report:#}");

    let other = work.path().join("other.agekey");
    {
        use age::secrecy::ExposeSecret as _;
        let other_id = age::x25519::Identity::generate();
        std::fs::write(
            &other,
            format!("{}\n", other_id.to_string().expose_secret()),
        )
        .unwrap();
    }
    let (code, report) = verify(&tree, &other, &dr);
    assert_eq!(code, 2, "{report:#}");
    let p = problem(&report, "db-credentials.sops.yaml");
    assert!(
        p.len() == 1 && p[0].2.contains("not encrypted for the DR identity"),
        "{report:#}"
    );

    // Without the DR cluster nothing says its apiserver would accept the tree: exit 3 and
    // the table says why.
    let out = dr_syncer(&["verify", "--repo", s(&tree), "--age-identity", s(&identity)]);
    assert!(
        out.status.code() == Some(3)
            && String::from_utf8_lossy(&out.stdout).contains("not verified: without a dry-run"),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    // A kustomization that builds something else than the files checked is a problem.
    let patched = work.path().join("patched");
    copy_tree(&tree, &patched);
    edit(
        patched.join("shop/kustomization.yaml"),
        "resources:",
        "namePrefix: x-\nresources:",
    );
    let (code, report) = verify(&patched, &identity, &dr);
    assert_eq!(code, 2, "{report:#}");
    assert!(
        problem(&report, "shop/kustomization.yaml")
            .iter()
            .any(|(_, _, r)| r.contains("namePrefix")),
        "{report:#}"
    );
}
