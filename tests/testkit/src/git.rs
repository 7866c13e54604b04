//! Real git servers on loopback: `git daemon` (git://, push enabled) and OpenSSH `sshd`
//! serving bare repositories to a deploy key. Both stop when dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::debian;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
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
    child: Child,
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
        let mut child = Command::new("git")
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
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "git daemon");
        GitDaemon { child, port }
    }

    /// `git://127.0.0.1:<port>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OpenSSH `sshd` on loopback accepting one deploy key for the current user.
pub struct Sshd {
    child: Child,
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
        let mut child = Command::new(debian("sshd", "openssh-server"))
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "sshd");
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

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
