//! PVC sync over SSH with real binaries and a real OpenSSH client: `agent serve-volume`,
//! `agent bastion` and `pvc-sync` as processes; keys made by `ssh-keygen`; everything the
//! servers must refuse tried with `ssh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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
