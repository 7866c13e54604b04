//! `dr-syncer failover` / `failback` as a user runs them, on a real DR apiserver: export →
//! apply to DR at zero → failover commit (previewed first) applied → source replicas and
//! running CronJobs → exports refused while promoted → failback commit → zero again. And
//! the same in direct mode against the DR cluster's objects.

use std::path::Path;
use std::process::{Command, Output};

use dr_syncer_testkit::envtest::{self, ControlPlane};
use dr_syncer_testkit::git::{GitDaemon, bare_repo, git};
use serde_json::Value;

fn dr_syncer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl(plane: &ControlPlane, args: &[&str]) -> String {
    ok(Command::new(envtest::kubectl_path().unwrap())
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(args)
        .output()
        .unwrap())
}

/// A small production namespace: two scaled workloads, a running CronJob, a ConfigMap.
fn source(dir: &Path, ns: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let pod = r#"{"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}"#;
    std::fs::write(
        dir.join("objects.yaml"),
        format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec: {{replicas: 3, selector: {{matchLabels: {{app: a}}}}, template: {pod}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {ns}}}
spec: {{replicas: 2, serviceName: db, selector: {{matchLabels: {{app: a}}}}, template: {pod}}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: report, namespace: {ns}}}
spec: {{schedule: "0 3 * * *", suspend: false, jobTemplate: {{spec: {{template: {{spec: {{restartPolicy: Never, containers: [{{name: c, image: busybox}}]}}}}}}}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{mode: prod}}
"#
        ),
    )
    .unwrap();
}

/// Checks out `path` of the branch and applies it to DR as Flux would (server-side, -k).
fn apply_commit(plane: &ControlPlane, repo: &Path, path: &str, work: &Path) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let archive = Command::new("git")
        .args(["archive", "--format=tar", &format!("main:{path}")])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(archive.status.success());
    let tar = work.join("x.tar");
    std::fs::write(&tar, archive.stdout).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(work)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(&tar).unwrap();
    kubectl(
        plane,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            work.to_str().unwrap(),
        ],
    );
}

fn state(plane: &ControlPlane, ns: &str) -> (i64, i64, bool, bool) {
    let get = |what: &str| -> Value {
        serde_json::from_str(&kubectl(plane, &["get", what, "-n", ns, "-o", "json"])).unwrap()
    };
    let (web, db, cron) = (
        get("deployment/web"),
        get("statefulset/db"),
        get("cronjob/report"),
    );
    let annotated = web["metadata"]["annotations"]["dr-syncer.io/original-replicas"].is_string();
    (
        web["spec"]["replicas"].as_i64().unwrap(),
        db["spec"]["replicas"].as_i64().unwrap(),
        cron["spec"]["suspend"].as_bool().unwrap(),
        annotated,
    )
}

#[tokio::test]
async fn failover_and_failback_through_git_and_direct() {
    let plane = ControlPlane::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ns = "payments";
    source(&tmp.path().join("src"), ns);
    let srv = tmp.path().join("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let url = daemon.url("dr.git");
    let cache = tmp.path().join("cache");
    let git_args = ["--path", "prod", "--cache-dir", cache.to_str().unwrap()];
    let export = || {
        let mut args: Vec<String> = vec![
            "export".into(),
            "--from".into(),
            tmp.path().join("src").to_str().unwrap().to_string(),
        ];
        args.extend(["--to", &url].map(String::from));
        args.extend(git_args.map(String::from));
        Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .args(&args)
            .output()
            .unwrap()
    };
    ok(export());
    let work = tmp.path().join("work");
    apply_commit(&plane, &repo, "prod", &work);
    assert_eq!(
        state(&plane, ns),
        (0, 0, true, true),
        "standby after export"
    );

    // The preview changes nothing.
    let head = git(&repo, &["rev-parse", "main"]);
    let mut args = vec!["failover", "--repo", &url];
    args.extend(git_args);
    let preview = ok(dr_syncer(&args));
    assert!(
        preview.contains(&format!("{ns}/apps/deployments/web.yaml: replicas 0 -> 3")),
        "{preview}"
    );
    assert!(
        preview.contains("-  replicas: 0") && preview.contains("+  replicas: 3"),
        "a diff is shown:\n{preview}"
    );
    assert!(
        preview.contains(&format!(
            "{ns}/batch/cronjobs/report.yaml: suspend true -> false"
        )),
        "{preview}"
    );
    assert!(preview.contains("pass --yes"), "{preview}");
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        head,
        "preview committed"
    );

    // Failover: one commit; applied, the source's replicas run and the CronJob is live.
    args.push("--yes");
    ok(dr_syncer(&args));
    assert_eq!(
        git(
            &repo,
            &["rev-list", "--count", &format!("{}..main", head.trim())]
        )
        .trim(),
        "1"
    );
    let subject = git(&repo, &["log", "-1", "--format=%s", "main"]);
    assert!(
        subject.contains("failover: 0 added, 3 changed, 0 deleted"),
        "{subject}"
    );
    assert!(git(&repo, &["show", "main:prod/.dr-syncer/promoted.yaml"]).contains("promotedAt"));
    apply_commit(&plane, &repo, "prod", &work);
    assert_eq!(state(&plane, ns), (3, 2, false, false), "promoted");
    // A second failover has nothing to do.
    assert!(ok(dr_syncer(&args)).contains("already promoted"));

    // While promoted, an export would scale the live side down: refused, nothing written.
    let promoted_head = git(&repo, &["rev-parse", "main"]);
    let refused = export();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("dr-syncer failback"));
    assert_eq!(git(&repo, &["rev-parse", "main"]), promoted_head);

    // Failback: standby again, and exports flow.
    args[0] = "failback";
    ok(dr_syncer(&args));
    assert!(
        git(&repo, &["ls-tree", "-r", "--name-only", "main"])
            .lines()
            .all(|l| !l.ends_with("promoted.yaml"))
    );
    apply_commit(&plane, &repo, "prod", &work);
    assert_eq!(state(&plane, ns), (0, 0, true, true), "back to standby");
    ok(export());

    // Direct mode: the same on the DR cluster's objects, the Namespace marked while promoted.
    let kubeconfig = plane.kubeconfig_path();
    let direct = |verb: &str, yes: bool| {
        let mut a = vec![verb, "--kubeconfig", kubeconfig.to_str().unwrap(), "-n", ns];
        if yes {
            a.push("--yes");
        }
        ok(dr_syncer(&a))
    };
    let preview = direct("failover", false);
    assert!(
        preview.contains("replicas 0 -> 3") && preview.contains("3 workloads would change"),
        "{preview}"
    );
    assert_eq!(state(&plane, ns), (0, 0, true, true), "preview applied");
    direct("failover", true);
    assert_eq!(state(&plane, ns), (3, 2, false, false), "promoted directly");
    let marked: Value =
        serde_json::from_str(&kubectl(&plane, &["get", "namespace", ns, "-o", "json"])).unwrap();
    assert!(marked["metadata"]["annotations"]["dr-syncer.io/promoted"].is_string());
    direct("failback", true);
    assert_eq!(state(&plane, ns), (0, 0, true, true), "standby directly");
    let unmarked: Value =
        serde_json::from_str(&kubectl(&plane, &["get", "namespace", ns, "-o", "json"])).unwrap();
    assert!(unmarked["metadata"]["annotations"]["dr-syncer.io/promoted"].is_null());
}
