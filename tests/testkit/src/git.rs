//! Real git servers on loopback: `git daemon` (git://, push enabled) and OpenSSH `sshd`
//! serving bare repositories to a deploy key. Both stop when dropped, with every process
//! they started (each runs in its own process group, see [`crate::process`]).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ProcessGroup;
use crate::tools::debian;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, server: &ProcessGroup, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        // Checked without reaping: the group is stopped (and the leader reaped) on drop.
        if server.leader_exited() {
            panic!("{what} exited early");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `git` with `args` in `dir` and returns stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "other")
        .env("GIT_AUTHOR_EMAIL", "other@example.com")
        .env("GIT_COMMITTER_NAME", "other")
        .env("GIT_COMMITTER_EMAIL", "other@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates a bare repository `name` below `root`.
pub fn bare_repo(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(&path).unwrap();
    git(
        &path,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    path
}

/// `git daemon` exporting every repository below `base`, with push enabled.
pub struct GitDaemon {
    // `git daemon` does not exec `git-daemon`: it runs it as a child and waits, and that
    // one forks per connection. Only stopping the whole group stops the server.
    child: ProcessGroup,
    /// Port it listens on.
    pub port: u16,
}

impl GitDaemon {
    /// Starts the daemon on a free port.
    pub fn start(base: &Path) -> Self {
        Self::start_on(base, free_port())
    }

    /// Starts the daemon on `port`.
    pub fn start_on(base: &Path, port: u16) -> Self {
        let child = ProcessGroup::spawn(
            Command::new("git")
                .args([
                    "daemon",
                    "--reuseaddr",
                    "--export-all",
                    "--enable=receive-pack",
                    "--listen=127.0.0.1",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        wait_for_port(port, &child, "git daemon");
        GitDaemon { child, port }
    }

    /// `git://127.0.0.1:<port>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The id of the daemon's process group (every process serving it belongs to it).
    pub fn process_group(&self) -> u32 {
        self.child.id()
    }
}

/// OpenSSH `sshd` on loopback accepting one deploy key for the current user.
pub struct Sshd {
    // Stopped as a group, like the git daemon; per-connection processes call `setsid` and
    // leave the group, and end with their client's connection.
    child: ProcessGroup,
    /// Port it listens on.
    pub port: u16,
    /// Private deploy key.
    pub client_key: PathBuf,
    /// `known_hosts` pinning this server's host key.
    pub known_hosts: PathBuf,
    /// A `known_hosts` with a different key for the same host (a man-in-the-middle).
    pub wrong_known_hosts: PathBuf,
    user: String,
}

fn keygen(path: &Path) {
    let out = Command::new(debian("ssh-keygen", "openssh-client"))
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "dr-syncer-test",
            "-f",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts sshd in `dir` (keys and config live there).
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let (host_key, client_key, other_key) = (
            dir.join("host_ed25519"),
            dir.join("deploy_ed25519"),
            dir.join("other_ed25519"),
        );
        for k in [&host_key, &client_key, &other_key] {
            if !k.exists() {
                keygen(k);
            }
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nAllowTcpForwarding no\nX11Forwarding no\nPermitTTY no\nLogLevel ERROR\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        // sshd insists on its privilege-separation directory (Debian creates it at boot).
        if !Path::new("/run/sshd").exists() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let child = ProcessGroup::spawn(
            Command::new(debian("sshd", "openssh-server"))
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        wait_for_port(port, &child, "sshd");
        let pin = |key: &Path, file: &Path| {
            let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
            let mut fields = public.split_whitespace();
            let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
            std::fs::write(file, format!("[127.0.0.1]:{port} {kind} {blob}\n")).unwrap();
        };
        let (known_hosts, wrong_known_hosts) =
            (dir.join("known_hosts"), dir.join("known_hosts.wrong"));
        pin(&host_key, &known_hosts);
        pin(&other_key, &wrong_known_hosts);
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        Sshd {
            child,
            port,
            client_key,
            known_hosts,
            wrong_known_hosts,
            user,
        }
    }

    /// The id of the listener's process group.
    pub fn process_group(&self) -> u32 {
        self.child.id()
    }

    /// `ssh://<user>@127.0.0.1:<port>/<absolute path>`.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }
}

/// Every blob reachable from any ref of the repository at `path` (whole history).
pub fn all_blobs(path: &Path) -> Vec<Vec<u8>> {
    let objects = git(path, &["rev-list", "--objects", "--all"]);
    objects
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| git(path, &["cat-file", "-t", id]).trim() == "blob")
        .map(|id| {
            Command::new("git")
                .args(["cat-file", "blob", id])
                .current_dir(path)
                .output()
                .unwrap()
                .stdout
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::group_members;

    /// Serves one `ls-remote` (so `git-daemon` runs and forks for the connection), then
    /// checks that dropping the daemon leaves no process of its group. Killing only the
    /// `git` it started used to leave `git-daemon` listening.
    #[test]
    fn git_daemon_drop_leaves_no_process_of_its_group() {
        let srv = tempfile::tempdir().unwrap();
        let repo = bare_repo(srv.path(), "r.git");
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "--quiet", "--initial-branch=main"]);
        git(
            work.path(),
            &["commit", "--quiet", "--allow-empty", "-m", "first"],
        );
        git(
            work.path(),
            &["push", "--quiet", repo.to_str().unwrap(), "main"],
        );
        let daemon = GitDaemon::start(srv.path());
        let pgid = daemon.process_group();
        let heads = git(work.path(), &["ls-remote", &daemon.url("r.git")]);
        assert!(heads.contains("refs/heads/main"), "{heads}");
        // `git` and the `git-daemon` it waits for: proof the group is what serves.
        assert!(group_members(pgid).len() >= 2, "{:?}", group_members(pgid));
        drop(daemon);
        assert_eq!(group_members(pgid), Vec::<u32>::new(), "left running");
    }

    /// A test that panics while its daemon runs still stops the daemon's whole group.
    #[test]
    fn git_daemon_is_stopped_when_a_test_panics() {
        let srv = tempfile::tempdir().unwrap();
        bare_repo(srv.path(), "r.git");
        let mut pgid = 0;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let daemon = GitDaemon::start(srv.path());
            pgid = daemon.process_group();
            git(srv.path(), &["ls-remote", &daemon.url("r.git")]);
            panic!("the test fails while the daemon runs");
        }));
        assert!(panicked.is_err());
        assert_ne!(pgid, 0);
        assert_eq!(group_members(pgid), Vec::<u32>::new(), "left running");
    }
}
