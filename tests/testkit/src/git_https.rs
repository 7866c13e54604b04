//! A real git server over HTTPS on loopback: Debian's nginx terminating TLS with a
//! certificate from a CA generated for the test, HTTP basic auth (an htpasswd file with one
//! user and token), and `git http-backend` (smart HTTP, push enabled) behind fcgiwrap on a
//! unix socket. Everything lives in one directory; nginx runs in the foreground, as root or
//! not. Both processes stop when the server is dropped, with every process they started.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::git::{bare_repo, git};
use crate::process::ProcessGroup;
use crate::tools::debian;

/// `git http-backend`, the CGI program serving smart HTTP (Debian's git package).
const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// A test certificate authority.
pub struct TestCa {
    /// The CA certificate (what a client trusts).
    pub pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    /// A fresh CA (ECDSA P-256) named `name`.
    pub fn generate(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.clone().self_signed(&key).unwrap().pem();
        TestCa { pem, params, key }
    }

    /// A server certificate for `127.0.0.1` and `localhost`: `(certificate, key)` as PEM.
    pub fn server_cert(&self) -> (String, String) {
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "git.test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// nginx + fcgiwrap + `git http-backend` serving the bare repositories below
/// [`HttpsGit::root`] over `https://127.0.0.1:<port>/`, to one user with one token.
pub struct HttpsGit {
    nginx: ProcessGroup,
    fcgiwrap: ProcessGroup,
    /// Port it listens on.
    pub port: u16,
    /// Repositories are served from here: `<root>/a/b.git` is `https://…/a/b.git`.
    pub root: PathBuf,
    /// The CA that signed the server's certificate, as a PEM file (for clients to trust).
    pub ca_file: PathBuf,
    /// The same CA, PEM.
    pub ca_pem: String,
    /// The basic-auth user name.
    pub user: String,
    /// The token (basic-auth password) the server accepts for [`HttpsGit::user`].
    pub token: String,
    /// nginx's access log (one line per request, with the authenticated user).
    pub access_log: PathBuf,
    /// nginx's error log (failed logins are reported here).
    pub error_log: PathBuf,
}

impl HttpsGit {
    /// Starts a server in `dir` with a new CA, accepting `user` with `token`.
    pub fn start(dir: &Path, user: &str, token: &str) -> Self {
        Self::start_with_ca(dir, &TestCa::generate("dr-syncer test git CA"), user, token)
    }

    /// Starts a server in `dir` whose certificate is signed by `ca`.
    pub fn start_with_ca(dir: &Path, ca: &TestCa, user: &str, token: &str) -> Self {
        let nginx_bin = debian("nginx", "nginx");
        let fcgiwrap_bin = debian("fcgiwrap", "fcgiwrap");
        assert!(
            Path::new(HTTP_BACKEND).exists(),
            "{HTTP_BACKEND} not found: install the Debian package git"
        );
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let root = dir.join("repos");
        let tmp = dir.join("nginx-tmp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();

        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (cert, key) = ca.server_cert();
        let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", apr1(token))).unwrap();

        // fcgiwrap on a unix socket; it runs CGI programs with the FastCGI params as their
        // whole environment.
        let socket = dir.join("fcgiwrap.sock");
        let _ = std::fs::remove_file(&socket);
        let fcgiwrap = ProcessGroup::spawn(
            Command::new(fcgiwrap_bin)
                .args(["-c", "4", "-s"])
                .arg(format!("unix:{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("fcgiwrap.log")).unwrap()),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !socket.exists() {
            assert!(!fcgiwrap.leader_exited(), "fcgiwrap exited early");
            assert!(Instant::now() < deadline, "fcgiwrap made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }

        let port = free_port();
        let (access_log, error_log) = (dir.join("access.log"), dir.join("error.log"));
        // As root, nginx would hand requests to workers running as `nobody`, which cannot
        // read this directory: keep them as the user running the test.
        let user_line = if rustix::process::getuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let d = |p: &Path| p.display().to_string();
        let config = format!(
            r#"daemon off;
worker_processes 1;
pid {pid};
error_log {error_log} info;
{user_line}
events {{ worker_connections 64; }}
http {{
  access_log {access_log};
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    client_max_body_size 0;
    location / {{
      auth_basic "git";
      auth_basic_user_file {htpasswd};
      fastcgi_pass unix:{socket};
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {root};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param REQUEST_URI $request_uri;
      fastcgi_param SERVER_PROTOCOL $server_protocol;
      fastcgi_param GATEWAY_INTERFACE CGI/1.1;
      fastcgi_param REMOTE_ADDR $remote_addr;
      fastcgi_param HTTPS on;
      fastcgi_param HOME {dir};
    }}
  }}
}}
"#,
            pid = d(&dir.join("nginx.pid")),
            error_log = d(&error_log),
            access_log = d(&access_log),
            tmp = d(&tmp),
            cert = d(&cert_file),
            key = d(&key_file),
            htpasswd = d(&htpasswd),
            socket = d(&socket),
            backend = HTTP_BACKEND,
            root = d(&root),
            dir = d(&dir),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        // `-e`: the error log before the configuration is read (the packaged default is
        // /var/log/nginx, not writable as non-root).
        let nginx = ProcessGroup::spawn(
            Command::new(nginx_bin)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(&error_log)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap()),
        )
        .unwrap();
        if !wait_for_listen(port, &nginx) {
            panic!(
                "nginx did not serve on {port}: {}{}",
                std::fs::read_to_string(dir.join("nginx.stderr")).unwrap_or_default(),
                std::fs::read_to_string(&error_log).unwrap_or_default()
            );
        }
        HttpsGit {
            nginx,
            fcgiwrap,
            port,
            root,
            ca_file,
            ca_pem: ca.pem.clone(),
            user: user.to_string(),
            token: token.to_string(),
            access_log,
            error_log,
        }
    }

    /// Creates the bare repository `<root>/<rel>` (e.g. `platform/dr-state.git`), push
    /// enabled over HTTP.
    pub fn bare_repo(&self, rel: &str) -> PathBuf {
        let rel = Path::new(rel);
        let parent = self.root.join(rel.parent().unwrap_or(Path::new("")));
        let repo = bare_repo(&parent, rel.file_name().unwrap().to_str().unwrap());
        git(&repo, &["config", "http.receivepack", "true"]);
        repo
    }

    /// `https://127.0.0.1:<port>/<rel>`.
    pub fn url(&self, rel: &str) -> String {
        format!(
            "https://127.0.0.1:{}/{}",
            self.port,
            rel.trim_start_matches('/')
        )
    }

    /// The ids of the process groups of nginx and fcgiwrap.
    pub fn process_groups(&self) -> [u32; 2] {
        [self.nginx.id(), self.fcgiwrap.id()]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `port`; false when nginx exited first or in 15 s.
fn wait_for_listen(port: u16, server: &ProcessGroup) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if server.leader_exited() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The Apache MD5 (`$apr1$`) hash of `password`, as nginx's `auth_basic_user_file` reads
/// it, made by `openssl passwd` (the password goes through stdin, not the command line).
fn apr1(password: &str) -> String {
    let mut child = Command::new(debian("openssl", "openssl"))
        .args(["passwd", "-apr1", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$apr1$"), "{hash}");
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::group_members;

    /// The real `git` CLI, without any credential helper or prompt.
    fn git_cli(dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new("git")
            .args(["-c", "credential.helper="])
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            // An ambient GIT_SSL_CAINFO would win over `-c http.sslCAInfo`.
            .env_remove("GIT_SSL_CAINFO")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap()
    }

    fn with_credentials(url: &str, user: &str, token: &str) -> String {
        url.replacen("https://", &format!("https://{user}:{token}@"), 1)
    }

    /// `git` pushes and lists over HTTPS with the CA and the token; without the CA, with a
    /// wrong token or without any, it is refused. Dropping the server stops both groups.
    #[test]
    fn https_git_serves_push_and_refuses_untrusted_or_unauthenticated_clients() {
        let dir = tempfile::tempdir().unwrap();
        let srv = HttpsGit::start(&dir.path().join("srv"), "dr-bot", "s3cret-token");
        let repo = srv.bare_repo("platform/dr-state.git");
        let url = srv.url("platform/dr-state.git");
        let good = with_credentials(&url, "dr-bot", "s3cret-token");
        let ca = format!("http.sslCAInfo={}", srv.ca_file.display());
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "-m", "first"],
        );

        let out = git_cli(&work, &["-c", &ca, "push", &good, "main"]);
        assert!(
            out.status.success(),
            "push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            git(&repo, &["rev-parse", "main"]),
            git(&work, &["rev-parse", "main"]),
            "the push arrived"
        );
        let out = git_cli(&work, &["-c", &ca, "ls-remote", &good]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("refs/heads/main"),
            "{out:?}"
        );
        let log = std::fs::read_to_string(&srv.access_log).unwrap();
        assert!(
            log.contains("dr-bot") && log.contains("git-receive-pack"),
            "{log}"
        );
        assert!(!log.contains("s3cret-token"), "{log}");

        // The system roots do not know the test CA.
        let out = git_cli(&work, &["ls-remote", &good]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("certificate"),
            "{err}"
        );
        // No token (git asks for one: the server answered 401), a wrong token.
        for bad in [url.clone(), with_credentials(&url, "dr-bot", "wrong-token")] {
            let out = git_cli(&work, &["-c", &ca, "ls-remote", &bad]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success()
                    && (err.contains("Authentication failed")
                        || err.contains("could not read Username")),
                "{bad}: {err}"
            );
        }

        let groups = srv.process_groups();
        for g in groups {
            assert!(!group_members(g).is_empty(), "group {g} runs");
        }
        drop(srv);
        for g in groups {
            assert_eq!(group_members(g), Vec::<u32>::new(), "left running");
        }
    }
}
