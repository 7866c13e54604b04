//! Fetch and push with pinned SSH host keys and explicit credentials.

use std::cell::RefCell;
use std::path::PathBuf;

use git2::{
    CertificateCheckStatus, Cred, CredentialType, ErrorCode, FetchOptions, Oid, PushOptions,
    RemoteCallbacks, Repository,
};

use super::known_hosts::KnownHosts;
use super::{GitError, Target};

/// Credentials and pins for one remote. `Debug` shows which credentials are set, never
/// their values (an `Auth` may end up in a log line or a panic message).
#[derive(Clone, Default)]
pub struct Auth {
    /// SSH private key file (a deploy key).
    pub ssh_key: Option<PathBuf>,
    /// SSH private key in memory (from a Secret; never written to disk).
    pub ssh_key_pem: Option<String>,
    /// The Secret the credentials come from (`Secret ns/name`), so errors name what the
    /// user has to fix; `None` for command-line credentials.
    pub secret: Option<String>,
    /// Pinned SSH host keys; required for SSH remotes.
    pub known_hosts: Option<KnownHosts>,
    /// HTTPS user name (default `git`).
    pub username: Option<String>,
    /// HTTPS token or password.
    pub token: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: bool| if v { "<set>" } else { "<none>" };
        f.debug_struct("Auth")
            .field("ssh_key", &self.ssh_key)
            .field("ssh_key_pem", &set(self.ssh_key_pem.is_some()))
            .field("secret", &self.secret)
            .field(
                "known_hosts",
                &self.known_hosts.as_ref().map(|_| "<pinned>"),
            )
            .field("username", &self.username)
            .field("token", &set(self.token.is_some()))
            .finish()
    }
}

/// How a push ended when it did not succeed.
#[derive(Debug)]
pub enum PushError {
    /// Someone else moved the branch.
    NonFastForward,
    /// Anything else (network, auth, hooks).
    Failed(String),
}

/// `(host, port)` of an SSH URL (`ssh://user@host:port/path` or `user@host:path`).
fn ssh_host(url: &str) -> Option<(String, u16)> {
    if let Some(rest) = url.strip_prefix("ssh://") {
        let authority = rest.split('/').next()?;
        let hostport = authority.rsplit('@').next()?;
        return Some(match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse().ok()?,
            ),
            None => (hostport.to_string(), 22),
        });
    }
    if url.contains("://") {
        return None;
    }
    let (userhost, _) = url.split_once(':')?;
    Some((userhost.rsplit('@').next()?.to_string(), 22))
}

fn callbacks<'a>(
    target: &'a Target,
    attempts: &'a RefCell<u32>,
    host_error: &'a RefCell<Option<String>>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |_url, username, allowed| {
        let mut n = attempts.borrow_mut();
        *n += 1;
        if *n > 3 {
            return Err(git2::Error::from_str(
                "authentication failed (credentials rejected)",
            ));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = username.unwrap_or("git");
            // A Secret's key is handed to libssh2 from memory: it never touches the disk.
            if let Some(pem) = &target.auth.ssh_key_pem {
                return Cred::ssh_key_from_memory(user, None, pem, None).map_err(|e| {
                    git2::Error::from_str(&format!(
                        "{}: not a usable SSH private key ({})",
                        key_name(&target.auth),
                        e.message()
                    ))
                });
            }
            if let Some(key) = &target.auth.ssh_key {
                return Cred::ssh_key(user, None, key, None);
            }
            return Err(git2::Error::from_str(&match &target.auth.secret {
                Some(_) => format!(
                    "SSH remote needs a deploy key: {} is missing",
                    key_name(&target.auth)
                ),
                None => "SSH remote needs a deploy key (--ssh-key)".to_string(),
            }));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let token = target
                .auth
                .token
                .as_deref()
                .ok_or_else(|| git2::Error::from_str("HTTPS remote needs a token"))?;
            return Cred::userpass_plaintext(
                target.auth.username.as_deref().unwrap_or("git"),
                token,
            );
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username.unwrap_or("git"));
        }
        Err(git2::Error::from_str(
            "no usable credentials for this remote",
        ))
    });
    cb.certificate_check(move |cert, host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS: libgit2 has verified the chain against the system roots; keep its verdict.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let (_, port) = ssh_host(&target.url).unwrap_or((host.to_string(), 22));
        let fail = |msg: String| {
            *host_error.borrow_mut() = Some(msg.clone());
            Err(git2::Error::from_str(&msg))
        };
        let Some(pins) = &target.auth.known_hosts else {
            return fail("SSH remote without known_hosts: host keys are always pinned (--known-hosts / known_hosts key)".into());
        };
        let Some(key) = hostkey.hostkey() else { return fail("the server sent no raw host key".into()) };
        match pins.check(host, port, key) {
            Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
            Err(e) => fail(e.to_string()),
        }
    });
    cb
}

/// `Secret ns/name key "identity"` (or `identity` for CLI credentials).
fn key_name(auth: &Auth) -> String {
    match &auth.secret {
        Some(secret) => format!("{secret} key \"identity\""),
        None => "identity".into(),
    }
}

fn remote_error(target: &Target, e: &git2::Error, host_error: &RefCell<Option<String>>) -> String {
    if let Some(h) = host_error.borrow().as_ref() {
        return h.clone();
    }
    let message = e.message();
    // libgit2's words alone do not say what to change.
    let hint = if e.class() == git2::ErrorClass::Ssl || message.contains("certificate") {
        " — the server's TLS certificate is not trusted: for an in-house CA set the chart's git.caBundle (SSL_CERT_FILE)".to_string()
    } else if message.contains("authentication") || e.code() == ErrorCode::Auth {
        match &target.auth.secret {
            Some(secret) => format!(" — check the credentials in {secret}"),
            None => String::new(),
        }
    } else {
        String::new()
    };
    format!("{message} ({}){hint}", target.url)
}

/// Fetches `target.branch` into `refs/remotes/origin/<branch>`, with retries on transient
/// failures; returns the remote head.
pub fn fetch(repo: &Repository, target: &Target) -> Result<Option<Oid>, GitError> {
    let tracking = format!("refs/remotes/origin/{}", target.branch);
    let refspec = format!("+refs/heads/{}:{tracking}", target.branch);
    let mut delay = std::time::Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(delay);
            delay *= 3;
        }
        let (attempts, host_error) = (RefCell::new(0), RefCell::new(None));
        let mut remote = repo
            .remote_anonymous(&target.url)
            .map_err(|e| GitError::Remote {
                url: target.url.clone(),
                message: e.message().to_string(),
            })?;
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks(target, &attempts, &host_error));
        // An empty remote or a missing branch is not an error: the first push creates it.
        let has_branch = {
            let listed = remote.connect_auth(
                git2::Direction::Fetch,
                Some(callbacks(target, &attempts, &host_error)),
                None,
            );
            match listed {
                Ok(conn) => Some(
                    conn.list()
                        .map(|heads| {
                            heads
                                .iter()
                                .any(|h| h.name() == format!("refs/heads/{}", target.branch))
                        })
                        .unwrap_or(false),
                ),
                Err(e) => {
                    last = remote_error(target, &e, &host_error);
                    None
                }
            }
        };
        let Some(has_branch) = has_branch else {
            if host_error.borrow().is_some() || last.contains("authentication") {
                break; // host key or auth problems do not heal by retrying
            }
            continue;
        };
        if !has_branch {
            return Ok(None);
        }
        match remote.fetch(&[refspec.as_str()], Some(&mut opts), None) {
            Ok(()) => {
                return Ok(Some(repo.refname_to_id(&tracking).map_err(|e| {
                    GitError::Git {
                        what: "reading the fetched head".into(),
                        source: e,
                    }
                })?));
            }
            Err(e) => last = remote_error(target, &e, &host_error),
        }
    }
    Err(GitError::Remote {
        url: target.url.clone(),
        message: last,
    })
}

/// Pushes the local `refs/heads/<branch>` (the new commit) to the remote; never forces.
pub fn push(repo: &Repository, target: &Target) -> Result<(), PushError> {
    let (attempts, host_error) = (RefCell::new(0), RefCell::new(None));
    let rejected = RefCell::new(None::<String>);
    let mut remote = repo
        .remote_anonymous(&target.url)
        .map_err(|e| PushError::Failed(e.message().to_string()))?;
    let mut cb = callbacks(target, &attempts, &host_error);
    cb.push_update_reference(|_, status| {
        if let Some(msg) = status {
            *rejected.borrow_mut() = Some(msg.to_string());
        }
        Ok(())
    });
    let mut opts = PushOptions::new();
    opts.remote_callbacks(cb);
    let spec = format!("refs/heads/{0}:refs/heads/{0}", target.branch);
    let result = remote.push(&[spec.as_str()], Some(&mut opts));
    drop(opts);
    // Another writer won the race: the branch moved, or its ref was locked by a concurrent
    // push ("failed to update ref" / "cannot lock ref"). Both heal by fetch and rebuild.
    let non_ff = |m: &str| {
        [
            "non-fast-forward",
            "fetch first",
            "not present locally",
            "contains commits that are not present",
            "failed to update ref",
            "cannot lock ref",
            "failed to lock",
        ]
        .iter()
        .any(|s| m.contains(s))
    };
    match result {
        Err(e) if e.code() == ErrorCode::NotFastForward || non_ff(e.message()) => {
            Err(PushError::NonFastForward)
        }
        Err(e) => Err(PushError::Failed(remote_error(target, &e, &host_error))),
        Ok(()) => match rejected.into_inner() {
            Some(m) if non_ff(&m) => Err(PushError::NonFastForward),
            Some(m) => Err(PushError::Failed(format!("push rejected: {m}"))),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_debug_hides_credentials() {
        let auth = Auth {
            ssh_key_pem: Some("-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t-key".into()),
            token: Some("s3cr3t-token".into()),
            username: Some("bot".into()),
            ..Auth::default()
        };
        let shown = format!("{auth:?} {auth:#?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("bot") && shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn ssh_host_table() {
        let cases = [
            (
                "ssh://git@127.0.0.1:2222/srv/repo.git",
                Some(("127.0.0.1", 2222)),
            ),
            (
                "ssh://git@github.com/org/repo.git",
                Some(("github.com", 22)),
            ),
            ("git@github.com:org/repo.git", Some(("github.com", 22))),
            ("https://github.com/org/repo.git", None),
            ("git://127.0.0.1:9418/repo.git", None),
        ];
        for (url, expected) in cases {
            assert_eq!(
                ssh_host(url),
                expected.map(|(h, p)| (h.to_string(), p)),
                "{url}"
            );
        }
    }
}
