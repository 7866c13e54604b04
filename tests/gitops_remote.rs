//! The git destination against real servers: OpenSSH `sshd` with a deploy key and pinned
//! host key, and `git daemon`. Each test runs `dr-syncer export` as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dr_syncer_testkit::git::{GitDaemon, Sshd, all_blobs, bare_repo, git};

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    /// A private copy of the shop example that a test may change.
    fn source(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(SHOP).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        dir
    }
    fn export(&self, from: &Path, to: &str, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .args(["export", "--from"])
            .arg(from)
            .args(["--to", to, "--cache-dir"])
            .arg(self.path("cache"))
            .args(["--fingerprint-key"])
            .arg(self.path("fp.key"))
            .args(extra)
            .output()
            .unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn head(repo: &Path) -> String {
    git(repo, &["rev-parse", "refs/heads/main"])
        .trim()
        .to_string()
}

fn show(repo: &Path, file: &str) -> String {
    git(repo, &["show", &format!("main:{file}")])
}

#[test]
fn git_over_ssh_commits_only_real_changes() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let repo = bare_repo(&env.path("srv"), "dr.git");
    let url = sshd.url(&repo);
    let key = sshd.client_key.to_str().unwrap().to_string();
    let kh = sshd.known_hosts.to_str().unwrap().to_string();
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let ssh = [
        "--ssh-key",
        &key,
        "--known-hosts",
        &kh,
        "--path",
        "clusters/prod",
        "--mapping-name",
        "shop",
        "--age-recipient",
        &recipient,
    ];
    let src = env.source("shop");

    let out = ok(&env.export(&src, &url, &ssh));
    assert!(
        out.contains("[dr-syncer] shop: 21 added, 0 changed, 0 deleted"),
        "{out}"
    );
    let first = head(&repo);
    let message = git(&repo, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains("A clusters/prod/shop/apps/deployments/web.yaml")
            || message.contains("A shop/apps/deployments/web.yaml"),
        "{message}"
    );
    assert!(
        message.contains("Source-Cluster: offline")
            && message.contains("Kubernetes-Version: unknown"),
        "{message}"
    );
    assert!(
        show(
            &repo,
            "clusters/prod/shop/core/secrets/db-credentials.sops.yaml"
        )
        .contains("ENC[AES256_GCM,")
    );

    // No change: no commit, and the encrypted Secret is not rewritten.
    let out = ok(&env.export(&src, &url, &ssh));
    assert!(out.contains("no commit"), "{out}");
    assert_eq!(head(&repo), first);

    // One change, one commit naming it.
    let cfg = src.join("40-storage-config.yaml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "FEATURE_RECOMMENDATIONS: \"on\"",
            "FEATURE_RECOMMENDATIONS: \"off\"",
        ),
    )
    .unwrap();
    let out = ok(&env.export(&src, &url, &ssh));
    assert!(out.contains("0 added, 1 changed, 0 deleted"), "{out}");
    let message = git(&repo, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains("M shop/core/configmaps/shop-config.yaml"),
        "{message}"
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main~1"]).trim(),
        first,
        "linear history"
    );

    // A deletion.
    let rbac = src.join("50-rbac-custom.yaml");
    let text = std::fs::read_to_string(&rbac).unwrap();
    let without_coupon = &text[..text.find("apiVersion: shop.example.com/v1").unwrap()];
    std::fs::write(&rbac, without_coupon.trim_end().trim_end_matches("---")).unwrap();
    let out = ok(&env.export(&src, &url, &ssh));
    // The last Coupon goes, and with it the CRD file it brought (on DR, `_cluster/` is
    // never pruned, so the CRD itself stays).
    assert!(out.contains("0 added, 0 changed, 2 deleted"), "{out}");
    assert!(!git(&repo, &["ls-tree", "-r", "--name-only", "main"]).contains("coupons"));

    // No plaintext Secret value anywhere in any history: remote and local cache.
    let mut repos = vec![repo.clone()];
    for e in std::fs::read_dir(env.path("cache")).unwrap() {
        repos.push(e.unwrap().path());
    }
    let secrets = [
        "czNjcjN0LWRiLXBhc3N3b3Jk",
        "s3cr3t-db-password",
        "c2hvcA==",
        "ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklpSjku",
        "SDRzSUFBQUFBQUFDLzZ5U3dXcmJNQkNHMy9YcEwrOA==",
    ];
    for r in &repos {
        for blob in all_blobs(r) {
            let text = String::from_utf8_lossy(&blob);
            for s in secrets {
                assert!(!text.contains(s), "{s} found in a blob of {}", r.display());
            }
        }
    }
}

#[test]
fn git_ssh_host_key_is_pinned() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let repo = bare_repo(&env.path("srv"), "dr.git");
    let url = sshd.url(&repo);
    let key = sshd.client_key.to_str().unwrap().to_string();
    let empty = env.path("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let cases: [(&str, Vec<String>, &str); 3] = [
        (
            "changed host key",
            vec![
                "--known-hosts".into(),
                sshd.wrong_known_hosts.display().to_string(),
            ],
            "does not match known_hosts",
        ),
        (
            "unknown host",
            vec!["--known-hosts".into(), empty.display().to_string()],
            "not in known_hosts",
        ),
        (
            "no known_hosts at all",
            vec![],
            "host keys are always pinned",
        ),
    ];
    for (name, extra, expected) in cases {
        let mut args: Vec<&str> = vec!["--ssh-key", &key];
        args.extend(extra.iter().map(String::as_str));
        let out = env.export(Path::new(SHOP), &url, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            git(&repo, &["for-each-ref"]).is_empty(),
            "{name}: nothing pushed"
        );
    }
}

#[test]
fn git_rebuilds_on_a_moved_remote_and_keeps_other_paths() {
    let env = Env::new();
    let srv = env.path("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let url = daemon.url("dr.git");
    let src = env.source("shop");
    ok(&env.export(&src, &url, &["--path", "prod"]));
    // Another writer commits elsewhere in the repository.
    let work = env.path("work");
    git(
        env.tmp.path(),
        &[
            "clone",
            "--quiet",
            repo.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(work.join("README.md"), "hand-written\n").unwrap();
    git(&work, &["add", "README.md"]);
    git(&work, &["commit", "--quiet", "-m", "docs"]);
    git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
    let theirs = head(&repo);
    // Our cache still has the old head: the push is rejected, we rebuild on theirs.
    let cfg = src.join("40-storage-config.yaml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("checkout", "pay"),
    )
    .unwrap();
    let out = ok(&env.export(&src, &url, &["--path", "prod"]));
    assert!(out.contains("1 changed"), "{out}");
    assert_eq!(
        git(&repo, &["rev-parse", "main~1"]).trim(),
        theirs,
        "our commit sits on top of theirs"
    );
    assert_eq!(
        show(&repo, "README.md"),
        "hand-written\n",
        "other paths untouched"
    );
}

#[test]
fn git_two_mappings_push_to_one_repo_concurrently() {
    let env = Env::new();
    let srv = env.path("srv");
    let repo = bare_repo(&srv, "shared.git");
    let daemon = GitDaemon::start(&srv);
    let url = daemon.url("shared.git");
    let sources = [env.source("a"), env.source("b")];
    let original = std::fs::read_to_string(sources[0].join("40-storage-config.yaml")).unwrap();
    for round in 0..4 {
        for src in &sources {
            let updated = original.replacen(
                "CHECKOUT_URL",
                &format!("ROUND: \"{round}\"\n    CHECKOUT_URL"),
                1,
            );
            std::fs::write(src.join("40-storage-config.yaml"), updated).unwrap();
        }
        let children: Vec<_> = ["team-a", "team-b"]
            .iter()
            .zip(&sources)
            .map(|(path, src)| {
                Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
                    .args(["export", "--from"])
                    .arg(src)
                    .args([
                        "--to",
                        &url,
                        "--path",
                        path,
                        "--mapping-name",
                        path,
                        "--cache-dir",
                    ])
                    .arg(env.path(&format!("cache-{path}")))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(
                c.wait().unwrap().success(),
                "round {round}: an export failed"
            );
        }
        for path in ["team-a", "team-b"] {
            let cm = show(
                &repo,
                &format!("{path}/shop/core/configmaps/shop-config.yaml"),
            );
            assert!(
                cm.contains(&format!("ROUND: \"{round}\"")),
                "round {round}: {path} lost its update:\n{cm}"
            );
        }
    }
    let log = git(&repo, &["log", "--format=%s", "main"]);
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("[dr-syncer] team-a"))
            .count(),
        4,
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("[dr-syncer] team-b"))
            .count(),
        4,
        "{log}"
    );
}

#[test]
fn git_remote_down_is_reported_and_nothing_is_lost() {
    let env = Env::new();
    let srv = env.path("srv");
    bare_repo(&srv, "dr.git");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("git://127.0.0.1:{port}/dr.git");
    let out = env.export(Path::new(SHOP), &url, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("remote {url}")),
        "{stderr}"
    );
    let _daemon = GitDaemon::start_on(&srv, port);
    let out = ok(&env.export(Path::new(SHOP), &url, &[]));
    assert!(
        out.contains("20 added"),
        "the export arrives once the remote is back: {out}"
    );
}

#[test]
fn git_breaker_holds_a_mass_deletion_until_released() {
    let env = Env::new();
    let srv = env.path("srv");
    let repo = bare_repo(&srv, "dr.git");
    let daemon = GitDaemon::start(&srv);
    let url = daemon.url("dr.git");
    ok(&env.export(Path::new(SHOP), &url, &[]));
    let before = head(&repo);
    // The source now looks empty (a wiped namespace, or an API returning nothing).
    let empty = env.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(
        Path::new(SHOP).join("00-namespace.yaml"),
        empty.join("00-namespace.yaml"),
    )
    .unwrap();
    let out = env.export(&empty, &url, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "held: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would delete 19 of 20 objects"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(head(&repo), before, "nothing committed while held");
    let out = ok(&env.export(&empty, &url, &["--allow-mass-deletion"]));
    assert!(out.contains("20 deleted"), "{out}");
}

/// A patch (Continuous mode's commit) through git daemon: only the named files change, a
/// directory whose last file goes disappears (git has no empty directories), a patch
/// that changes nothing makes no commit, and other paths of the repository are untouched.
#[test]
fn git_patch_commits_touch_only_the_named_files() {
    use dr_syncer::export::Tree;
    use dr_syncer::gitops::{Breaker, CommitInfo, Patch, Published, Repo, Target};
    let env = Env::new();
    let repo = bare_repo(&env.path("srv"), "dr.git");
    let daemon = GitDaemon::start(&env.path("srv"));
    let target = Target {
        url: daemon.url("dr.git"),
        branch: "main".into(),
        path: "mapping".into(),
        auth: Default::default(),
        author: ("t".into(), "t@example.com".into()),
        cache_dir: env.path("cache"),
        fence: Default::default(),
    };
    let info = CommitInfo::default();
    let breaker = Breaker {
        max_percent: 100,
        max_count: None,
        allow: false,
        release: None,
    };
    let r = Repo::open(target).unwrap();
    let mut tree = Tree::default();
    for p in [
        "shop/core/configmaps/a.yaml",
        "shop/core/configmaps/b.yaml",
        "shop/apps/deployments/web.yaml",
    ] {
        tree.insert(p.into(), format!("{p}\n").into_bytes());
    }
    r.publish(r.fetch().unwrap(), &tree, &info, &breaker)
        .unwrap();
    // 1: one changed file; the other files keep their blob ids.
    let before = git(&repo, &["ls-tree", "-r", "main"]);
    let patch = Patch::from([(
        "shop/core/configmaps/a.yaml".into(),
        Some(b"new\n".to_vec()),
    )]);
    let p = r
        .publish_patch::<_, dr_syncer::gitops::GitError>(
            r.fetch().unwrap().unwrap(),
            &info,
            &breaker,
            |_| Ok(patch.clone()),
        )
        .unwrap();
    assert!(
        matches!(p, Published::Committed { ref subject, .. } if subject.contains("0 added, 1 changed, 0 deleted")),
        "{p:?}"
    );
    assert_eq!(show(&repo, "mapping/shop/core/configmaps/a.yaml"), "new\n");
    let after = git(&repo, &["ls-tree", "-r", "main"]);
    let changed: Vec<&str> = after.lines().filter(|l| !before.contains(*l)).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    // 2: the same patch again changes nothing: no commit.
    let h = head(&repo);
    let p = r
        .publish_patch::<_, dr_syncer::gitops::GitError>(
            r.fetch().unwrap().unwrap(),
            &info,
            &breaker,
            |_| Ok(patch.clone()),
        )
        .unwrap();
    assert!(matches!(p, Published::Unchanged { .. }), "{p:?}");
    assert_eq!(head(&repo), h);
    // 3: deleting a directory's only file removes the directory.
    let p = r
        .publish_patch::<_, dr_syncer::gitops::GitError>(
            r.fetch().unwrap().unwrap(),
            &info,
            &breaker,
            |snapshot| {
                assert!(
                    snapshot
                        .paths
                        .contains_key("shop/apps/deployments/web.yaml")
                );
                Ok(Patch::from([(
                    "shop/apps/deployments/web.yaml".into(),
                    None,
                )]))
            },
        )
        .unwrap();
    assert!(
        matches!(p, Published::Committed { ref subject, .. } if subject.contains("0 added, 0 changed, 1 deleted")),
        "{p:?}"
    );
    let dirs = git(&repo, &["ls-tree", "-r", "-t", "--name-only", "main"]);
    assert!(
        !dirs.contains("shop/apps"),
        "empty directory left behind:\n{dirs}"
    );
    assert!(
        dirs.contains("mapping/shop/core/configmaps/b.yaml"),
        "{dirs}"
    );
}

/// The fence is asked before every push: a refused fence (a deposed leader) pushes nothing,
/// full export and patch alike, and the error says why; the next allowed publish goes out.
#[test]
fn git_fenced_publish_pushes_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use dr_syncer::export::Tree;
    use dr_syncer::gitops::{Breaker, CommitInfo, Fence, GitError, Patch, Repo, Target};
    let env = Env::new();
    let repo = bare_repo(&env.path("srv"), "dr.git");
    let daemon = GitDaemon::start(&env.path("srv"));
    let leader = Arc::new(AtomicBool::new(true));
    let flag = leader.clone();
    let target = Target {
        url: daemon.url("dr.git"),
        branch: "main".into(),
        path: "mapping".into(),
        auth: Default::default(),
        author: ("t".into(), "t@example.com".into()),
        cache_dir: env.path("cache"),
        fence: Fence::new(move || {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("lost the leader lease to b".into())
            }
        }),
    };
    let breaker = Breaker {
        max_percent: 100,
        max_count: None,
        allow: false,
        release: None,
    };
    let info = CommitInfo::default();
    let r = Repo::open(target).unwrap();
    let mut tree = Tree::default();
    tree.insert("shop/core/configmaps/a.yaml".into(), b"v: 1\n".to_vec());
    r.publish(r.fetch().unwrap(), &tree, &info, &breaker)
        .unwrap();
    let pushed = head(&repo);
    leader.store(false, Ordering::SeqCst);
    tree.insert(
        "shop/core/configmaps/a.yaml".into(),
        b"v: 0 (stale)\n".to_vec(),
    );
    let err = r
        .publish(r.fetch().unwrap(), &tree, &info, &breaker)
        .expect_err("fenced");
    assert!(matches!(err, GitError::Fenced(_)), "{err}");
    assert!(err.to_string().contains("lost the leader lease"), "{err}");
    let patch = Patch::from([(
        "shop/core/configmaps/a.yaml".to_string(),
        Some(b"v: 0 (stale)\n".to_vec()),
    )]);
    let head_now = r.fetch().unwrap().unwrap();
    let err = r
        .publish_patch(head_now, &info, &breaker, |_| {
            Ok::<_, GitError>(patch.clone())
        })
        .expect_err("fenced patch");
    assert!(err.to_string().contains("lost the leader lease"), "{err}");
    assert_eq!(head(&repo), pushed, "nothing reached the remote");
    assert_eq!(show(&repo, "mapping/shop/core/configmaps/a.yaml"), "v: 1\n");
    leader.store(true, Ordering::SeqCst);
    r.publish(r.fetch().unwrap(), &tree, &info, &breaker)
        .unwrap();
    assert_ne!(head(&repo), pushed, "allowed again: pushed");
}
