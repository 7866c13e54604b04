//! Who may log in to the agent's SSH servers, and where the bastion may forward.
//!
//! Both lists can be files, or directories of files the way Kubernetes mounts a Secret or
//! ConfigMap, and are re-read on every check: the controller rotates keys and opens
//! forwarding for one operation by updating a Secret or ConfigMap, without restarting the
//! agent. A list that cannot be read or parsed denies everything (fail closed) and says why
//! in the log.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use russh::keys::{HashAlg, PublicKey};

/// One `authorized_keys` line: a key, optionally with OpenSSH's `expiry-time` option.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// The key.
    pub key: PublicKey,
    /// The key stops working at this time (a rotated-out key's grace window).
    pub expires: Option<Timestamp>,
}

/// One forwarding permission of the bastion: `HOST:PORT [SHA256:fingerprint] [expires=TIME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// Target host (an address, as the controller writes pod IPs).
    pub host: String,
    /// Target port.
    pub port: u16,
    /// Only a client authenticated with this key (SHA-256 fingerprint) may use the entry.
    pub key: Option<String>,
    /// The entry stops working at this time.
    pub expires: Option<Timestamp>,
}

/// SHA-256 fingerprint of a public key as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses `authorized_keys` text. The only option understood is `expiry-time="…"`
/// (`YYYYMMDD[HHMM[SS]]`, optionally suffixed `Z`; always read as UTC); any other option is
/// refused rather than silently ignored, since ignoring `from=` or `command=` would widen
/// access.
pub fn parse_authorized_keys(text: &str) -> Result<Vec<AuthorizedKey>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("line {}: {m}", i + 1);
        let (options, rest) = if is_key_type(line) {
            ("", line)
        } else {
            line.split_once(char::is_whitespace)
                .ok_or_else(|| at("expected `[options] type key [comment]`".into()))?
        };
        let mut expires = None;
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            let value = opt
                .strip_prefix("expiry-time=")
                .ok_or_else(|| at(format!("option {opt:?} is not supported")))?;
            expires = Some(parse_expiry(value.trim_matches('"')).map_err(at)?);
        }
        let mut parts = rest.split_whitespace();
        let (kind, b64) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !is_key_type(kind) {
            return Err(at(format!("{kind:?} is not a key type")));
        }
        let key = russh::keys::parse_public_key_base64(b64).map_err(|e| at(e.to_string()))?;
        keys.push(AuthorizedKey { key, expires });
    }
    Ok(keys)
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// OpenSSH's `expiry-time` format, read as UTC.
fn parse_expiry(s: &str) -> Result<Timestamp, String> {
    let digits = s.strip_suffix('Z').unwrap_or(s);
    let full = match digits.len() {
        8 => format!("{digits}000000"),
        12 => format!("{digits}00"),
        14 => digits.to_string(),
        _ => return Err(format!("expiry-time {s:?}: expected YYYYMMDD[HHMM[SS]]")),
    };
    jiff::fmt::strtime::parse("%Y%m%d%H%M%S", &full)
        .and_then(|t| t.to_datetime())
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|z| z.timestamp())
        .map_err(|e| format!("expiry-time {s:?}: {e}"))
}

/// Formats a time for `expiry-time="…"` (UTC, seconds).
pub fn format_expiry(t: Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d%H%M%SZ")
        .to_string()
}

/// Parses bastion allow-list text: one `HOST:PORT [SHA256:…] [expires=RFC3339]` per line.
pub fn parse_allow(text: &str) -> Result<Vec<AllowEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("line {}: {m}", i + 1);
        let mut parts = line.split_whitespace();
        let (host, port) = parse_target(parts.next().unwrap_or("")).map_err(at)?;
        let mut entry = AllowEntry {
            host,
            port,
            key: None,
            expires: None,
        };
        for part in parts {
            if part.starts_with("SHA256:") {
                entry.key = Some(part.to_string());
            } else if let Some(t) = part.strip_prefix("expires=") {
                entry.expires = Some(t.parse().map_err(|e| at(format!("expires={t}: {e}")))?);
            } else {
                return Err(at(format!("unexpected {part:?}")));
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// `HOST:PORT` (an IPv6 host in brackets).
pub fn parse_target(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    Ok((host.to_string(), port))
}

/// Reads a file, or every non-hidden file of a directory in name order (Kubernetes volume
/// mounts keep their bookkeeping in dot-entries).
pub fn read_list(path: &Path) -> std::io::Result<String> {
    if !path.is_dir() {
        return std::fs::read_to_string(path);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut text = String::new();
    for name in names {
        text.push_str(&std::fs::read_to_string(&name)?);
        text.push('\n');
    }
    Ok(text)
}

/// A list held in memory or re-read from a path on every check.
#[derive(Debug, Clone)]
pub enum Source<T> {
    /// Fixed at start.
    Fixed(Vec<T>),
    /// A file or directory, re-read each time.
    Path(PathBuf),
}

impl<T: Clone> Source<T> {
    fn load(&self, parse: fn(&str) -> Result<Vec<T>, String>) -> Vec<T> {
        match self {
            Source::Fixed(v) => v.clone(),
            Source::Path(p) => match read_list(p)
                .map_err(|e| e.to_string())
                .and_then(|t| parse(&t))
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "cannot read list; denying");
                    Vec::new()
                }
            },
        }
    }
}

/// The keys a server accepts.
pub type KeySource = Source<AuthorizedKey>;
/// The bastion's forwarding permissions.
pub type AllowSource = Source<AllowEntry>;

/// Whether `key` is authorized at `now`.
pub fn key_allowed(keys: &KeySource, key: &PublicKey, now: Timestamp) -> bool {
    keys.load(parse_authorized_keys)
        .iter()
        .any(|k| k.key.key_data() == key.key_data() && k.expires.is_none_or(|t| now < t))
}

/// Whether a client authenticated with the key of fingerprint `client` may forward to
/// `host:port` at `now`.
pub fn forward_allowed(
    allow: &AllowSource,
    host: &str,
    port: u16,
    client: Option<&str>,
    now: Timestamp,
) -> bool {
    allow.load(parse_allow).iter().any(|e| {
        e.host == host
            && e.port == port
            && e.key.as_deref().is_none_or(|k| Some(k) == client)
            && e.expires.is_none_or(|t| now < t)
    })
}

/// Checks that a path list is readable and well-formed (for start-up errors that name the
/// flag instead of denying silently later).
pub fn check_path<T>(
    path: &Path,
    parse: fn(&str) -> Result<Vec<T>, String>,
) -> Result<usize, String> {
    let text = read_list(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text)
        .map(|v| v.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl c";

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn authorized_keys_table() {
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            (KEY, Ok(None)),
            (
                &format!("expiry-time=\"20261126153000Z\" {KEY}"),
                Ok(Some("2026-11-26T15:30:00Z")),
            ),
            (
                &format!("expiry-time=\"20261126\" {KEY}"),
                Ok(Some("2026-11-26T00:00:00Z")),
            ),
            (&format!("command=\"ls\" {KEY}"), Err("not supported")),
            (&format!("expiry-time=\"2026\" {KEY}"), Err("YYYYMMDD")),
            ("ssh-ed25519 notbase64", Err("line 1")),
        ];
        for (text, want) in cases {
            match (parse_authorized_keys(text), want) {
                (Ok(keys), Ok(exp)) => {
                    assert_eq!(keys.len(), 1, "{text}");
                    assert_eq!(keys[0].expires, exp.map(t), "{text}");
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, _) => panic!("{text}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn authorized_keys_expiry_round_trips() {
        let at = t("2026-11-26T15:30:07Z");
        let line = format!("expiry-time=\"{}\" {KEY}", format_expiry(at));
        let keys = parse_authorized_keys(&line).unwrap();
        let source = Source::Fixed(keys.clone());
        let key = &keys[0].key;
        assert!(key_allowed(&source, key, t("2026-11-26T15:30:06Z")));
        assert!(!key_allowed(&source, key, t("2026-11-26T15:30:07Z")));
    }

    #[test]
    fn allow_list_table() {
        let list = parse_allow(
            "# operation a\n10.0.0.5:2223 SHA256:abc expires=2026-11-26T16:00:00Z\n[fd00::1]:2223\n",
        )
        .unwrap();
        let allow = Source::Fixed(list);
        let before = t("2026-11-26T15:00:00Z");
        let after = t("2026-11-26T16:00:00Z");
        let cases = [
            ("10.0.0.5", 2223, Some("SHA256:abc"), before, true),
            ("10.0.0.5", 2223, Some("SHA256:other"), before, false),
            ("10.0.0.5", 2223, None, before, false),
            ("10.0.0.5", 2223, Some("SHA256:abc"), after, false),
            ("10.0.0.5", 22, Some("SHA256:abc"), before, false),
            ("fd00::1", 2223, None, after, true),
            ("10.0.0.6", 2223, Some("SHA256:abc"), before, false),
        ];
        for (host, port, key, now, want) in cases {
            assert_eq!(
                forward_allowed(&allow, host, port, key, now),
                want,
                "{host}:{port} {key:?} {now}"
            );
        }
        for bad in [
            "10.0.0.5",
            "10.0.0.5:x",
            ":22",
            "1.2.3.4:22 bogus",
            "1.2.3.4:22 expires=soon",
        ] {
            assert!(parse_allow(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_list_directory_skips_dot_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), "1.1.1.1:2").unwrap();
        std::fs::write(dir.path().join("a"), "1.1.1.1:1").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join(".hidden"), "garbage").unwrap();
        let text = read_list(dir.path()).unwrap();
        assert_eq!(parse_allow(&text).unwrap().len(), 2);
        assert!(text.starts_with("1.1.1.1:1"));
        let missing = Source::<AllowEntry>::Path(dir.path().join("nope"));
        assert!(!forward_allowed(
            &missing,
            "1.1.1.1",
            1,
            None,
            Timestamp::now()
        ));
    }
}
