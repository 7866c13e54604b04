//! `dr-syncer bootstrap flux|argocd` as a user runs it: the printed objects are applied to a
//! real apiserver that has the real Flux and Argo CD CRDs (from their controllers' pinned
//! Go modules), and the exporter's Argo CD layout carries KSOPS generators.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use dr_syncer_testkit::envtest::{self, ControlPlane};
use dr_syncer_testkit::tools::helm_dir;
use serde_json::Value;

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");

fn dr_syncer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(envtest::kubectl_path().unwrap())
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Installs the Flux and Argo CD CRDs once per test binary and waits until they serve.
async fn consumers(plane: &ControlPlane) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let dir = helm_dir().join("crds");
        for sub in ["flux", "argocd"] {
            let path = dir.join(sub);
            ok(kubectl(
                plane,
                &["apply", "--server-side", "-f", path.to_str().unwrap()],
                None,
            ));
        }
        let client = plane.client().await.unwrap();
        dr_syncer_testkit::objects::wait_established(
            &client,
            &[
                "gitrepositories.source.toolkit.fluxcd.io",
                "kustomizations.kustomize.toolkit.fluxcd.io",
                "applications.argoproj.io",
                "applicationsets.argoproj.io",
            ],
        )
        .await;
        for ns in ["flux-system", "argocd"] {
            let _ = kubectl(plane, &["create", "namespace", ns], None);
        }
    })
    .await;
}

fn export(to: &Path, extra: &[&str]) {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let mut args = vec![
        "export",
        "--from",
        SHOP,
        "--to",
        to.to_str().unwrap(),
        "--age-recipient",
        &recipient,
    ];
    args.extend_from_slice(extra);
    ok(dr_syncer(&args));
}

fn get(plane: &ControlPlane, what: &str, ns: &str) -> Value {
    serde_json::from_str(&ok(kubectl(
        plane,
        &["get", what, "-n", ns, "-o", "json"],
        None,
    )))
    .unwrap()
}

#[tokio::test]
async fn bootstrap_flux_objects_are_accepted_and_wired() {
    let plane = envtest::shared().await;
    consumers(plane).await;
    let checkout = tempfile::tempdir().unwrap();
    export(&checkout.path().join("prod"), &[]);
    let out = ok(dr_syncer(&[
        "bootstrap",
        "flux",
        "--repo",
        "ssh://git@git.example.com/dr.git",
        "--path",
        "prod",
        "--from",
        checkout.path().to_str().unwrap(),
        "--git-secret",
        "dr-git",
        "--name",
        "shopdr",
    ]));
    assert!(
        out.contains("identity.agekey"),
        "explains the age Secret:\n{out}"
    );
    ok(kubectl(
        plane,
        &["apply", "--server-side", "-f", "-"],
        Some(&out),
    ));
    let repo = get(plane, "gitrepository/shopdr", "flux-system");
    assert_eq!(repo["spec"]["url"], "ssh://git@git.example.com/dr.git");
    assert_eq!(repo["spec"]["secretRef"]["name"], "dr-git");
    let cluster = get(plane, "kustomization/shopdr-cluster", "flux-system");
    assert_eq!(cluster["spec"]["path"], "./prod/_cluster");
    assert_eq!(cluster["spec"]["prune"], false);
    // One pruned Kustomization per exported namespace, after the cluster-scoped one.
    let all = get(plane, "kustomizations", "flux-system");
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("shopdr-") && *n != "shopdr-cluster")
        .collect();
    assert_eq!(
        names,
        ["shopdr-shop"],
        "the shop example exports one namespace"
    );
    let shop = get(plane, "kustomization/shopdr-shop", "flux-system");
    assert_eq!(shop["spec"]["path"], "./prod/shop");
    assert_eq!(shop["spec"]["prune"], true);
    assert_eq!(shop["spec"]["dependsOn"][0]["name"], "shopdr-cluster");
    assert_eq!(shop["spec"]["decryption"]["provider"], "sops");
    assert_eq!(
        shop["spec"]["decryption"]["secretRef"]["name"],
        "dr-syncer-age"
    );
    assert!(
        checkout
            .path()
            .join("prod/shop/kustomization.yaml")
            .exists()
    );
}

#[tokio::test]
async fn bootstrap_argocd_objects_are_accepted_and_export_carries_ksops_generators() {
    let plane = envtest::shared().await;
    consumers(plane).await;
    let out = ok(dr_syncer(&[
        "bootstrap",
        "argocd",
        "--repo",
        "https://git.example.com/dr.git",
        "--path",
        "prod",
        "--name",
        "shopdr",
    ]));
    assert!(
        out.contains("--enable-alpha-plugins --enable-exec"),
        "explains KSOPS:\n{out}"
    );
    ok(kubectl(
        plane,
        &["apply", "--server-side", "-f", "-"],
        Some(&out),
    ));
    let app = get(plane, "application/shopdr-cluster", "argocd");
    assert_eq!(app["spec"]["source"]["path"], "prod/_cluster");
    assert_eq!(app["spec"]["syncPolicy"]["automated"]["prune"], false);
    let set = get(plane, "applicationset/shopdr", "argocd");
    let dirs = &set["spec"]["generators"][0]["git"]["directories"];
    assert_eq!(dirs[0]["path"], "prod/*");
    assert_eq!(dirs[1]["path"], "prod/_cluster");
    assert_eq!(dirs[1]["exclude"], true);
    assert_eq!(
        set["spec"]["template"]["spec"]["syncPolicy"]["automated"]["prune"],
        true
    );
    assert_eq!(
        set["spec"]["template"]["spec"]["source"]["path"],
        "{{ .path.path }}"
    );

    // The export for Argo CD: encrypted files are generated by KSOPS, not listed as resources.
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), &["--consumer", "argocd"]);
    let kustomization =
        std::fs::read_to_string(dir.path().join("shop/kustomization.yaml")).unwrap();
    assert!(!kustomization.contains(".sops.yaml"), "{kustomization}");
    assert!(
        kustomization.contains("generators:\n- secret-generator.yaml"),
        "{kustomization}"
    );
    let generator = std::fs::read_to_string(dir.path().join("shop/secret-generator.yaml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&generator).unwrap();
    assert_eq!(doc["kind"], "ksops");
    assert_eq!(doc["apiVersion"], "viaduct.ai/v1");
    let files: Vec<&str> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        !files.is_empty()
            && files
                .iter()
                .all(|f| f.starts_with("./core/secrets/") && f.ends_with(".sops.yaml")),
        "{files:?}"
    );
    for f in &files {
        assert!(
            dir.path().join("shop").join(f).exists(),
            "{f} listed but missing"
        );
    }
    // And the Flux layout (the default) lists them as resources, with no generator.
    let flux = tempfile::tempdir().unwrap();
    export(flux.path(), &[]);
    let kustomization =
        std::fs::read_to_string(flux.path().join("shop/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("core/secrets/"), "{kustomization}");
    assert!(!flux.path().join("shop/secret-generator.yaml").exists());
}

#[test]
fn bootstrap_bad_input_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "bootstrap",
                "flux",
                "--repo",
                "x",
                "--namespaces",
                "shop",
                "--name",
                "Bad_Name",
            ],
            "--name",
        ),
        (
            &[
                "bootstrap",
                "flux",
                "--repo",
                "x",
                "--path",
                "../up",
                "--namespaces",
                "shop",
            ],
            "--path",
        ),
        (&["bootstrap", "flux", "--repo", "x"], "--namespaces"),
        (
            &[
                "bootstrap",
                "flux",
                "--repo",
                "x",
                "--namespaces",
                "ok,Not-OK",
            ],
            "--namespaces",
        ),
        (
            &["bootstrap", "argocd", "--repo", "x", "--project", "a b"],
            "--project",
        ),
    ];
    for (args, field) in cases {
        let out = dr_syncer(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(field), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed objects");
    }
}
