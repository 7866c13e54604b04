//! PVC sync over SSH with real binaries and a real OpenSSH client: `agent serve-volume`,
//! `agent bastion` and `pvc-sync` as processes; keys made by `ssh-keygen`; everything the
//! servers must refuse tried with `ssh`, or with a russh client where an attack needs more
//! control over one connection than `ssh` gives (channels opened later, many at once).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Running, free_addr};

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

fn agent(args: &[&str]) -> Running {
    Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .arg("agent")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pvc_sync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .arg("pvc-sync")
        .args(args)
        .output()
        .unwrap()
}

/// `ssh [opts] drsync@host [command]` with the test's keys and pinned host keys.
fn ssh(key: &Path, known_hosts: &Path, addr: &str, opts: &[&str], command: Option<&str>) -> Output {
    let (host, port) = addr.rsplit_once(':').unwrap();
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(key)
        .args(["-p", port])
        .args(opts)
        .arg(format!("drsync@{host}"))
        .args(command)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    client: PathBuf,
    stranger: PathBuf,
    known_hosts: PathBuf,
    volume: String,
    bastion: String,
    /// Host keys of the volume server and the bastion (public lines).
    host_pub: String,
    bastion_pub: String,
    /// The client's public key line.
    client_pub: String,
    _servers: Vec<Running>,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (host_key, host_pub) = keygen(&dir, "host");
    let (bastion_key, bastion_pub) = keygen(&dir, "bastion-host");
    let (client, client_pub) = keygen(&dir, "client");
    let (stranger, _) = keygen(&dir, "stranger");
    std::fs::write(dir.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/a.txt"), b"volume data").unwrap();
    std::fs::write(src.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", src.join("escape")).unwrap();
    // Enough files that requests queue up while the server is busy writing: a server that
    // stopped reading its channel then would stall the whole SSH session.
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..300u32 {
        std::fs::write(
            src.join(format!("many/{i}.bin")),
            i.to_le_bytes().repeat(8 << 10),
        )
        .unwrap();
    }
    let (volume, bastion) = (free_addr(), free_addr());
    let ak = dir.join("authorized_keys");
    let servers = vec![
        agent(&[
            "serve-volume",
            "--root",
            src.to_str().unwrap(),
            "--listen",
            &volume,
            "--host-key",
            host_key.to_str().unwrap(),
            "--authorized-keys",
            ak.to_str().unwrap(),
        ]),
        agent(&[
            "bastion",
            "--allow",
            &volume,
            "--listen",
            &bastion,
            "--host-key",
            bastion_key.to_str().unwrap(),
            "--authorized-keys",
            ak.to_str().unwrap(),
        ]),
    ];
    wait_listening(&volume);
    wait_listening(&bastion);
    let entry = |addr: &str, key: &str| {
        let (h, p) = addr.rsplit_once(':').unwrap();
        let mut parts = key.split_whitespace();
        format!(
            "[{h}]:{p} {} {}\n",
            parts.next().unwrap(),
            parts.next().unwrap()
        )
    };
    let known_hosts = dir.join("known_hosts");
    std::fs::write(
        &known_hosts,
        entry(&volume, &host_pub) + &entry(&bastion, &bastion_pub),
    )
    .unwrap();
    World {
        _tmp: tmp,
        dir,
        client,
        stranger,
        known_hosts,
        volume,
        bastion,
        host_pub,
        bastion_pub,
        client_pub,
        _servers: servers,
    }
}

#[test]
fn pvc_sync_over_ssh_direct_and_through_the_bastion() {
    let w = world();
    let to = w.dir.join("dst");
    let out = pvc_sync(&[
        "--from",
        &format!("ssh://{}", w.volume),
        "--to",
        to.to_str().unwrap(),
        "--identity",
        w.client.to_str().unwrap(),
        "--known-hosts",
        w.known_hosts.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["filesTransferred"], 302, "{summary}");
    assert_eq!(
        std::fs::read(to.join("data/a.txt")).unwrap(),
        b"volume data"
    );
    assert_eq!(
        std::fs::read_link(to.join("escape")).unwrap(),
        Path::new("/etc/shadow"),
        "copied as a link"
    );

    // Through the bastion, into a fresh directory; the human summary names the byte counts.
    let to2 = w.dir.join("dst2");
    let out = pvc_sync(&[
        "--from",
        &format!("ssh://{}", w.volume),
        "--jump",
        &format!("ssh://{}", w.bastion),
        "--to",
        to2.to_str().unwrap(),
        "--identity",
        w.client.to_str().unwrap(),
        "--known-hosts",
        w.known_hosts.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sent literally") && text.contains("matched from the destination"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(to2.join("big.bin")).unwrap(),
        vec![7u8; 3 << 20]
    );
}

#[test]
fn pvc_sync_refuses_unknown_keys_and_changed_host_keys() {
    let w = world();
    let to = w.dir.join("dst");
    let from = format!("ssh://{}", w.volume);
    // Our key is not authorized.
    let out = pvc_sync(&[
        "--from",
        &from,
        "--to",
        to.to_str().unwrap(),
        "--identity",
        w.stranger.to_str().unwrap(),
        "--known-hosts",
        w.known_hosts.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication refused"));
    // The server's host key changed (known_hosts holds another key for it).
    let (_, other_pub) = keygen(&w.dir, "impostor");
    let (h, p) = w.volume.rsplit_once(':').unwrap();
    let mut parts = other_pub.split_whitespace();
    let kh = w.dir.join("known_hosts_changed");
    std::fs::write(
        &kh,
        format!(
            "[{h}]:{p} {} {}\n",
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let out = pvc_sync(&[
        "--from",
        &from,
        "--to",
        to.to_str().unwrap(),
        "--identity",
        w.client.to_str().unwrap(),
        "--known-hosts",
        kh.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown host.
    let empty = w.dir.join("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let out = pvc_sync(&[
        "--from",
        &from,
        "--to",
        to.to_str().unwrap(),
        "--identity",
        w.client.to_str().unwrap(),
        "--known-hosts",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in known_hosts"));
    assert!(
        !to.exists() || std::fs::read_dir(&to).unwrap().count() == 0,
        "nothing written"
    );
}

#[test]
fn openssh_client_gets_nothing_but_the_sync_protocol() {
    let w = world();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Unknown key.
    let out = ssh(&w.stranger, &w.known_hosts, &w.volume, &[], Some("true"));
    assert!(
        !out.status.success() && stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // A shell.
    let out = ssh(&w.client, &w.known_hosts, &w.volume, &["-T"], None);
    assert!(
        !out.status.success(),
        "a shell was granted: {}",
        stderr(&out)
    );
    // Other commands.
    for cmd in ["cat /etc/passwd", "drsync serve --root /", "sh"] {
        let out = ssh(&w.client, &w.known_hosts, &w.volume, &[], Some(cmd));
        assert!(!out.status.success(), "{cmd} ran");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("root:"),
            "{cmd} leaked"
        );
    }
    // A pty.
    let out = ssh(&w.client, &w.known_hosts, &w.volume, &["-tt"], Some("true"));
    assert!(
        stderr(&out).contains("PTY allocation request failed"),
        "{}",
        stderr(&out)
    );
    // Forwarding through the volume server.
    let out = ssh(
        &w.client,
        &w.known_hosts,
        &w.volume,
        &["-W", &w.bastion],
        None,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("open failed"),
        "{}",
        stderr(&out)
    );
    // The bastion: no session, no target outside its allow-list, the allowed one works.
    let out = ssh(&w.client, &w.known_hosts, &w.bastion, &[], Some("true"));
    assert!(!out.status.success(), "the bastion gave a session");
    let out = ssh(
        &w.client,
        &w.known_hosts,
        &w.bastion,
        &["-W", "127.0.0.1:22"],
        None,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("administratively prohibited"),
        "{}",
        stderr(&out)
    );
    let (bh, bp) = w.bastion.rsplit_once(':').unwrap();
    let proxy = format!(
        "ProxyCommand=ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -i {} -p {bp} -W %h:%p drsync@{bh}",
        w.known_hosts.display(),
        w.client.display()
    );
    let out = ssh(
        &w.client,
        &w.known_hosts,
        &w.volume,
        &["-o", &proxy],
        Some("true"),
    );
    // "true" is not the sync command: refused by the volume server, but only after the
    // bastion forwarded the connection and the volume server authenticated us.
    assert!(!out.status.success());
    assert!(
        !stderr(&out).contains("administratively prohibited"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

/// Accepts exactly the expected host key (the test's pin).
struct Pin(russh::keys::PublicKey);

impl russh::client::Handler for Pin {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(matches!(key,
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. }
                if key.key_data() == self.0.key_data()))
    }
}

/// A russh connection to `addr` (host key `host_pub`), authenticated with `key`; `None`
/// when the server closes it or refuses the key.
async fn login(addr: &str, host_pub: &str, key: &Path) -> Option<russh::client::Handle<Pin>> {
    let pin = Pin(russh::keys::PublicKey::from_openssh(host_pub).unwrap());
    let config = Arc::new(russh::client::Config::default());
    let mut h = tokio::time::timeout(
        Duration::from_secs(10),
        russh::client::connect(config, addr, pin),
    )
    .await
    .ok()?
    .ok()?;
    let key = russh::keys::load_secret_key(key, None).unwrap();
    let auth = h
        .authenticate_publickey(
            "drsync",
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await
        .ok()?;
    auth.success().then_some(h)
}

/// Opens a session channel and asks for the sync command: whether the server agreed.
async fn exec_serve(h: &russh::client::Handle<Pin>) -> bool {
    let Ok(mut ch) = h.channel_open_session().await else {
        return false;
    };
    if ch.exec(true, "drsync serve").await.is_err() {
        return false;
    }
    loop {
        match ch.wait().await {
            Some(russh::ChannelMsg::Success) => return true,
            Some(russh::ChannelMsg::Failure) | Some(russh::ChannelMsg::Close) | None => {
                return false;
            }
            Some(_) => {}
        }
    }
}

/// Issue 14 §3: keys are checked per channel. A connection authenticated while its key was
/// valid gets no new channel (volume server) or forwarding (bastion) once the key has
/// expired or was removed from the authorized keys.
#[tokio::test]
async fn open_connection_loses_access_when_its_key_expires_or_is_revoked() {
    let w = world();
    let ak = w.dir.join("authorized_keys");
    for scenario in ["expired", "revoked"] {
        // Seconds precision, as `expiry-time` has: the key works for the next 3 s or so.
        let expiry = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
        let line = match scenario {
            "expired" => format!(
                "expiry-time=\"{}\" {}\n",
                dr_syncer::pvc::access::format_expiry(expiry),
                w.client_pub
            ),
            _ => format!("{}\n", w.client_pub),
        };
        std::fs::write(&ak, line).unwrap();
        let volume = login(&w.volume, &w.host_pub, &w.client)
            .await
            .unwrap_or_else(|| panic!("{scenario}: login to the volume server"));
        let bastion = login(&w.bastion, &w.bastion_pub, &w.client)
            .await
            .unwrap_or_else(|| panic!("{scenario}: login to the bastion"));
        let (vh, vp) = w.volume.rsplit_once(':').unwrap();
        let vp: u32 = vp.parse().unwrap();
        // While the key is good, both answer.
        assert!(exec_serve(&volume).await, "{scenario}: sync command before");
        assert!(
            bastion
                .channel_open_direct_tcpip(vh, vp, "127.0.0.1", 0)
                .await
                .is_ok(),
            "{scenario}: forwarding before"
        );
        match scenario {
            "expired" => {
                let wait = jiff::Timestamp::now().duration_until(expiry).as_millis() + 1200;
                tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
            }
            _ => std::fs::write(&ak, "").unwrap(),
        }
        assert!(
            !exec_serve(&volume).await,
            "{scenario}: the volume server ran the sync command for a dead key"
        );
        assert!(
            bastion
                .channel_open_direct_tcpip(vh, vp, "127.0.0.1", 0)
                .await
                .is_err(),
            "{scenario}: the bastion forwarded for a dead key"
        );
    }
}

/// Issue 14 §3: the bastion answers a target outside its allow-list exactly like an
/// allowed target that cannot be reached (same message, about the same time), so its
/// answers do not enumerate the allowed targets.
#[test]
fn bastion_answers_refused_and_unreachable_targets_alike() {
    let w = world();
    // A second bastion whose allow-list also names a closed port (allowed, unreachable).
    let closed = free_addr();
    let bastion = free_addr();
    let _b = agent(&[
        "bastion",
        "--allow",
        &w.volume,
        "--allow",
        &closed,
        "--listen",
        &bastion,
        "--host-key",
        w.dir.join("bastion-host").to_str().unwrap(),
        "--authorized-keys",
        w.dir.join("authorized_keys").to_str().unwrap(),
    ]);
    wait_listening(&bastion);
    let (bh, bp) = bastion.rsplit_once(':').unwrap();
    let kh = w.dir.join("known_hosts_b2");
    let mut parts = w.bastion_pub.split_whitespace();
    std::fs::write(
        &kh,
        format!(
            "[{bh}]:{bp} {} {}\n",
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let not_allowed = free_addr();
    let answer = |target: &str| {
        let started = Instant::now();
        let out = ssh(&w.client, &kh, &bastion, &["-W", target], None);
        let text = String::from_utf8_lossy(&out.stderr).replace(target, "TARGET");
        (out.status.code(), text, started.elapsed())
    };
    let (refused_code, refused, refused_time) = answer(&not_allowed);
    let (unreachable_code, unreachable, unreachable_time) = answer(&closed);
    assert_ne!(refused_code, Some(0), "{refused}");
    assert!(refused.contains("open failed"), "{refused}");
    assert_eq!(
        (refused_code, &refused),
        (unreachable_code, &unreachable),
        "refused and unreachable targets must look the same"
    );
    // Both are answered no sooner than the bastion's fixed answer time; what is left is
    // the noise of starting `ssh` (generous bound: the test host may be loaded).
    let floor = dr_syncer::pvc::ssh::FORWARD_ANSWER_TIME;
    assert!(
        refused_time >= floor && unreachable_time >= floor,
        "{refused_time:?} / {unreachable_time:?}"
    );
    let gap = refused_time.abs_diff(unreachable_time);
    assert!(
        gap < Duration::from_millis(1500),
        "answer times differ by {gap:?} ({refused_time:?} vs {unreachable_time:?})"
    );
}

/// Issue 14 §3: `known_hosts` honours `@revoked`: a pinned host key that is also marked
/// revoked is refused.
#[test]
fn pvc_sync_refuses_a_revoked_host_key() {
    let w = world();
    let mut parts = w.host_pub.split_whitespace();
    let (kind, b64) = (parts.next().unwrap(), parts.next().unwrap());
    let kh = w.dir.join("known_hosts_revoked");
    let pinned = std::fs::read_to_string(&w.known_hosts).unwrap();
    std::fs::write(&kh, format!("{pinned}@revoked * {kind} {b64}\n")).unwrap();
    let to = w.dir.join("dst");
    let out = pvc_sync(&[
        "--from",
        &format!("ssh://{}", w.volume),
        "--to",
        to.to_str().unwrap(),
        "--identity",
        w.client.to_str().unwrap(),
        "--known-hosts",
        kh.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    assert!(
        !to.exists() || std::fs::read_dir(&to).unwrap().count() == 0,
        "nothing written"
    );
}

/// Issue 14 §4: a hostile client opening many connections or channels gets at most
/// `MAX_SESSIONS` connections and `MAX_CHANNELS_PER_SESSION` channels per connection; a
/// closed channel frees its slot.
#[tokio::test]
async fn volume_server_limits_sessions_and_channels() {
    use dr_syncer::pvc::ssh::{MAX_CHANNELS_PER_SESSION, MAX_SESSIONS};
    let w = world();
    let mut held = Vec::new();
    for i in 0..MAX_SESSIONS {
        let h = login(&w.volume, &w.host_pub, &w.client).await;
        held.push(h.unwrap_or_else(|| panic!("session {i} within the limit")));
    }
    for _ in 0..3 {
        assert!(
            login(&w.volume, &w.host_pub, &w.client).await.is_none(),
            "a session beyond the limit was served"
        );
    }
    let h = &held[0];
    let mut channels = Vec::new();
    for i in 0..MAX_CHANNELS_PER_SESSION {
        channels.push(
            h.channel_open_session()
                .await
                .unwrap_or_else(|e| panic!("channel {i} within the limit: {e}")),
        );
    }
    for _ in 0..3 {
        assert!(
            h.channel_open_session().await.is_err(),
            "a channel beyond the limit was opened"
        );
    }
    // Closing a channel frees its slot (the server answers the close first).
    let ch = channels.pop().unwrap();
    ch.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if h.channel_open_session().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed channel's slot stayed taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ending connections frees their slots.
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    while login(&w.volume, &w.host_pub, &w.client).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "closed sessions' slots stayed taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The session limit is no lever for peers without a key: connections that never
/// authenticate (here: never even send the SSH banner) hold their slots for at most
/// `AUTH_DEADLINE`, then the client with the key gets in.
#[tokio::test]
async fn volume_server_closes_idle_unauthenticated_connections() {
    use dr_syncer::pvc::ssh::{AUTH_DEADLINE, MAX_SESSIONS};
    let w = world();
    let started = Instant::now();
    // A connection holding a slot is greeted with the SSH banner; one over the limit is
    // closed at once. The readiness probe of `world()` may still hold a slot for a moment,
    // so connect until MAX_SESSIONS idle connections are greeted.
    let mut idle = Vec::new();
    while idle.len() < MAX_SESSIONS {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&w.volume).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut banner = [0u8; 4];
        match s.read_exact(&mut banner) {
            Ok(()) if &banner == b"SSH-" => idle.push(s),
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "no free slot for the idle connections"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Precondition: the idle connections hold every slot (the server may take a moment
    // to accept them under load).
    let full = Instant::now() + Duration::from_secs(5);
    while login(&w.volume, &w.host_pub, &w.client).await.is_some() {
        assert!(
            Instant::now() < full,
            "idle connections never filled the slots"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = started + AUTH_DEADLINE + Duration::from_secs(5);
    loop {
        if login(&w.volume, &w.host_pub, &w.client).await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle unauthenticated connections kept their slots"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(started.elapsed() >= AUTH_DEADLINE - Duration::from_secs(1));
    drop(idle);
}
