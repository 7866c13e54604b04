//! Volume data that an application starts on: real `agent serve-volume` and `pvc-sync`
//! processes over SSH, each run with exactly the privileges its pod gets (applied with
//! `setpriv` the way runc applies a pod's securityContext: the user, a bounding set of the
//! added capabilities, no new privileges), on real data — a PostgreSQL data directory made
//! by the Debian package's `initdb` and `pgbench` — and through crashes at many points.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Running, free_addr};

/// The privileges of a pod, as the chart's defaults give them (see `datasync::objects`).
#[derive(Debug, Clone, Copy)]
enum Pod {
    /// The volume server: uid 0 with `DAC_READ_SEARCH` only (reads every file, writes
    /// nothing: the volume is mounted read-only anyway).
    Reader,
    /// The DR Job: uid 0 with `CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID` only.
    Writer,
    /// `runAsRoot: false`: uid 65532 without capabilities.
    Unprivileged,
}

impl Pod {
    /// `setpriv` arguments giving a process this pod's user and capabilities: the bounding
    /// set limits what uid 0 gets at `exec`, no inheritable or ambient capabilities, and
    /// no new privileges (allowPrivilegeEscalation: false).
    fn setpriv(self) -> Vec<String> {
        let (user, caps) = match self {
            Pod::Reader => (0, "+dac_read_search"),
            Pod::Writer => (0, "+chown,+dac_override,+fowner,+fsetid"),
            Pod::Unprivileged => (65532, ""),
        };
        let bounding = if caps.is_empty() {
            "--bounding-set=-all".to_string()
        } else {
            format!("--bounding-set=-all,{caps}")
        };
        vec![
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
            bounding,
            "--no-new-privs".into(),
        ]
    }

    /// The effective capability mask the process must end up with.
    fn cap_eff(self) -> &'static str {
        match self {
            Pod::Reader => "0000000000000004",
            Pod::Writer => "000000000000001b",
            Pod::Unprivileged => "0000000000000000",
        }
    }

    fn command(self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args(self.setpriv()).arg("--").arg(program);
        c
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dr-syncer")
}

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

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keys and a served source volume.
struct Link {
    dir: PathBuf,
    host_key: PathBuf,
    client: PathBuf,
    known_hosts: PathBuf,
    addr: String,
    server: Option<Running>,
}

impl Link {
    /// Keys in `dir` (readable by every test user: the unprivileged runs need them).
    fn new(dir: &Path) -> Link {
        let (host_key, host_pub) = keygen(dir, "host");
        let (client, client_pub) = keygen(dir, "client");
        std::fs::write(dir.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
        for k in [&host_key, &client] {
            std::os::unix::fs::chown(k, Some(65532), Some(65532)).unwrap();
        }
        let addr = free_addr();
        let (h, p) = addr.rsplit_once(':').unwrap();
        let mut parts = host_pub.split_whitespace();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!(
                "[{h}]:{p} {} {}\n",
                parts.next().unwrap(),
                parts.next().unwrap()
            ),
        )
        .unwrap();
        Link {
            dir: dir.to_path_buf(),
            host_key,
            client,
            known_hosts,
            addr,
            server: None,
        }
    }

    /// (Re)starts `agent serve-volume` of `root` with `pod`'s privileges.
    fn serve(&mut self, root: &Path, pod: Pod) {
        self.server = None;
        let mut cmd = pod.command(bin());
        cmd.args(["agent", "serve-volume", "--root"])
            .arg(root)
            .args(["--listen", &self.addr, "--host-key"])
            .arg(&self.host_key)
            .arg("--authorized-keys")
            .arg(self.dir.join("authorized_keys"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.server = Some(Running::spawn(&mut cmd));
        wait_listening(&self.addr);
    }

    /// `pvc-sync` into `to` with `pod`'s privileges and `extra` arguments.
    fn sync_cmd(&self, to: &Path, pod: Pod, extra: &[&str]) -> Command {
        let mut cmd = pod.command(bin());
        cmd.args([
            "pvc-sync",
            "--from",
            &format!("ssh://{}", self.addr),
            "--to",
        ])
        .arg(to)
        .arg("--identity")
        .arg(&self.client)
        .arg("--known-hosts")
        .arg(&self.known_hosts)
        .args(["-o", "json"])
        .args(extra);
        cmd
    }

    fn sync(&self, to: &Path, pod: Pod, extra: &[&str]) -> Output {
        self.sync_cmd(to, pod, extra).output().unwrap()
    }
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn world() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // Every test user (postgres, 65532) must reach what is below.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    (tmp, dir)
}

#[test]
fn pvc_data_pods_get_exactly_their_capabilities() {
    for pod in [Pod::Reader, Pod::Writer, Pod::Unprivileged] {
        let out = pod
            .command("grep")
            .args(["^CapEff", "/proc/self/status"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().nth(1),
            Some(pod.cap_eff()),
            "{pod:?}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// The Debian package's binaries (`/usr/lib/postgresql/<version>/bin`).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/install-deps.sh installs postgresql)")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with pg_ctl")
}

/// Runs a PostgreSQL tool as the `postgres` user.
fn as_postgres(tool: &str, args: &[&str]) -> Output {
    let out = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(pg_bin().join(tool))
        .args(args)
        .env("PGUSER", "postgres")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A PostgreSQL server on a data directory, on a unix socket only.
struct Postgres {
    data: PathBuf,
    sock: PathBuf,
    port: String,
}

impl Postgres {
    fn start(data: &Path, sock: &Path) -> Postgres {
        std::fs::create_dir_all(sock).unwrap();
        std::os::unix::fs::chown(sock, Some(uid_of("postgres")), None).unwrap();
        let port = free_addr().rsplit_once(':').unwrap().1.to_string();
        let opts = format!("-p {port} -k {} -c listen_addresses=''", sock.display());
        let log = sock.join("log");
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Postgres {
            data: data.to_path_buf(),
            sock: sock.to_path_buf(),
            port,
        }
    }

    fn psql(&self, sql: &str) -> String {
        let out = as_postgres(
            "psql",
            &[
                "-h",
                self.sock.to_str().unwrap(),
                "-p",
                &self.port,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                "postgres",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        let mut all = vec!["-h", self.sock.to_str().unwrap(), "-p", &self.port];
        all.extend_from_slice(args);
        as_postgres(tool, &all)
    }

    fn stop(self) {
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Every pgbench table's row count and balance sums: equal only if every committed
/// transaction is there.
const PGBENCH_STATE: &str = "select (select count(*) from pgbench_accounts) || ' ' || \
     (select sum(abalance) from pgbench_accounts) || ' ' || \
     (select count(*) from pgbench_history) || ' ' || \
     (select coalesce(sum(delta), 0) from pgbench_history) || ' ' || \
     (select sum(bbalance) from pgbench_branches) || ' ' || \
     (select sum(tbalance) from pgbench_tellers)";

#[test]
fn pvc_data_postgres_starts_on_the_dr_copy_made_without_root() {
    let (_tmp, dir) = world();
    let postgres = uid_of("postgres");
    // The source volume: a PGDATA below the mount point (as the official image's
    // /var/lib/postgresql/data/pgdata), and ext4's lost+found.
    let volume = dir.join("source");
    let pgdata = volume.join("pgdata");
    std::fs::create_dir_all(volume.join("lost+found")).unwrap();
    std::fs::set_permissions(
        volume.join("lost+found"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::create_dir_all(&pgdata).unwrap();
    std::os::unix::fs::chown(&pgdata, Some(postgres), Some(postgres)).unwrap();
    // The volume root is the application's too (mounted at its data path): its owner
    // and mode must arrive as well.
    std::os::unix::fs::chown(&volume, Some(postgres), Some(postgres)).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o750)).unwrap();
    as_postgres(
        "initdb",
        &[
            "-D",
            pgdata.to_str().unwrap(),
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
    );
    let source = Postgres::start(&pgdata, &dir.join("sock-src"));
    source.tool("pgbench", &["-i", "-q", "-s", "2", "postgres"]);
    source.tool("pgbench", &["-c", "2", "-T", "4", "-n", "postgres"]);
    let expected = source.psql(PGBENCH_STATE);
    source.stop();
    // Snapshot semantics: the copy is made from a stopped source (a VolumeSnapshot of a
    // crashed-consistent volume reads the same way).
    assert_eq!(std::fs::metadata(&pgdata).unwrap().mode() & 0o7777, 0o700);

    // The DR volume has its own lost+found, which must survive.
    let dr = dir.join("dr");
    std::fs::create_dir_all(dr.join("lost+found")).unwrap();
    // What fsGroup does for a non-root job: the volume root is its user's.
    std::os::unix::fs::chown(&dr, Some(65532), Some(65532)).unwrap();
    std::fs::write(dr.join("lost+found/#1234"), b"fsck found this").unwrap();

    let mut link = Link::new(&dir);
    link.serve(&volume, Pod::Reader);

    // runAsRoot false on the DR side: the job may not chown. It fails before the
    // transfer, naming what it could not keep, and changes nothing.
    let out = link.sync(&dr, Pod::Unprivileged, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("CAP_CHOWN") && stderr.contains(&format!("(the volume root) {postgres}:")),
        "{stderr}"
    );
    assert!(!dr.join("pgdata").exists(), "nothing written");

    // The chart's writer: uid 0 with CHOWN, DAC_OVERRIDE, FOWNER, FSETID only.
    let started = Instant::now();
    let out = link.sync(&dr, Pod::Writer, &[]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&out);
    assert_eq!(summary["ownershipNotKept"], 0, "{summary}");
    assert_eq!(summary["unreadable"], 0, "{summary}");
    eprintln!(
        "postgres copy: {} files, {} bytes in {:.2}s",
        summary["filesTransferred"],
        summary["bytesTotal"],
        took.as_secs_f64()
    );
    // Owners and modes as on the source, for every entry.
    let (src_tree, dr_tree) = (tree_meta(&pgdata), tree_meta(&dr.join("pgdata")));
    assert_eq!(src_tree.len(), dr_tree.len());
    for (path, meta) in &src_tree {
        assert_eq!(dr_tree.get(path), Some(meta), "{path}");
    }
    assert!(
        dr.join("lost+found/#1234").exists(),
        "the DR volume's lost+found is kept"
    );
    assert!(!dr.join(".drsync").exists(), "no state left after a commit");
    let root_meta = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(
        root_meta(&dr),
        (postgres, postgres, 0o750),
        "the volume root's owner and mode"
    );

    // PostgreSQL starts on the copy as postgres, every transaction is there, and
    // pg_amcheck finds every table and index intact.
    let copy = Postgres::start(&dr.join("pgdata"), &dir.join("sock-dr"));
    assert_eq!(copy.psql(PGBENCH_STATE), expected);
    copy.tool(
        "pg_amcheck",
        &["--install-missing", "--heapallindexed", "--all"],
    );
    copy.stop();

    // A reader without DAC_READ_SEARCH (runAsRoot false at the source) may not read the
    // volume root (0750 postgres): the sync fails, saying so, and DR keeps its copy.
    link.serve(&volume, Pod::Unprivileged);
    let before = tree_meta(&dr);
    let out = link.sync(&dr, Pod::Writer, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(tree_meta(&dr), before);
    // With the root readable, it still may not read the 0700 PGDATA: that is reported by
    // path and the DR copy of it is kept, not deleted.
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(volume.join("readme.txt"), b"readable by all").unwrap();
    let before = tree_meta(&dr.join("pgdata"));
    let out = link.sync(&dr, Pod::Writer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&out);
    assert_eq!(summary["unreadable"], 1, "{summary}");
    assert_eq!(summary["unreadablePaths"], serde_json::json!(["pgdata"]));
    assert_eq!(
        tree_meta(&dr.join("pgdata")),
        before,
        "the DR copy of pgdata is untouched"
    );
    assert_eq!(
        std::fs::read(dr.join("readme.txt")).unwrap(),
        b"readable by all"
    );
}

/// Path → (uid, gid, mode, size) of everything beneath `root`.
fn tree_meta(root: &Path) -> BTreeMap<String, (u32, u32, u32, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let size = if m.is_dir() { 0 } else { m.len() };
            out.insert(rel, (m.uid(), m.gid(), m.mode() & 0o7777, size));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Crashes: every file on DR from one point in time

/// What is in generation `g` of the test tree: path → the generation its content says
/// (files) or `link <target>` (the symlink), and each file's content.
fn spec(g: u32) -> Vec<(String, Option<Vec<u8>>, String)> {
    let mut out = Vec::new();
    for d in 0..8u32 {
        // Directory `d7` exists in odd generations, `d8` in even ones.
        let name = match d {
            7 if g.is_multiple_of(2) => "d8".to_string(),
            _ => format!("d{d}"),
        };
        for f in 0..24u32 {
            let mut body = format!("gen {g} {name}/f{f}\n").into_bytes();
            // A few large files make the transfer long enough to be interrupted.
            let len = if f % 8 == 0 { 256 << 10 } else { 2 << 10 };
            body.resize(len + (g as usize % 3) * 100, b'0' + (g % 10) as u8);
            out.push((format!("{name}/f{f}.txt"), Some(body), g.to_string()));
        }
    }
    out.push((
        format!("only-gen{g}.txt"),
        Some(format!("gen {g} only\n").into_bytes()),
        g.to_string(),
    ));
    let target = format!("d{}/f1.txt", g % 3);
    out.push(("link".into(), None, format!("link {target}")));
    out
}

/// Writes generation `g` of the test tree into `root` (emptied first).
fn generation(root: &Path, g: u32) {
    empty(root);
    for (path, body, label) in spec(g) {
        let p = root.join(&path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match body {
            Some(b) => std::fs::write(p, b).unwrap(),
            None => std::os::unix::fs::symlink(label.strip_prefix("link ").unwrap(), p).unwrap(),
        }
    }
}

/// Removes everything in `root` (creating it if needed).
fn empty(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// The generation the tree at `root` is entirely from, or what is mixed.
fn generation_of(root: &Path) -> Result<u32, String> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == ".drsync" {
                continue;
            }
            if p.is_symlink() {
                let target = std::fs::read_link(&p).unwrap().display().to_string();
                seen.insert(rel, format!("link {target}"));
            } else if p.is_dir() {
                stack.push(p);
            } else {
                let body = std::fs::read(&p).unwrap();
                let first = body.split(|b| *b == b'\n').next().unwrap_or_default();
                let g = String::from_utf8_lossy(first)
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("?")
                    .to_string();
                seen.insert(rel, g);
            }
        }
    }
    let marker = seen.keys().find_map(|k| {
        k.strip_prefix("only-gen")?
            .strip_suffix(".txt")?
            .parse::<u32>()
            .ok()
    });
    let Some(g) = marker else {
        return Err(format!("no generation marker among {} entries", seen.len()));
    };
    let expected: BTreeMap<String, String> = spec(g).into_iter().map(|(p, _, l)| (p, l)).collect();
    if seen == expected {
        return Ok(g);
    }
    let mut labels: BTreeMap<&String, usize> = BTreeMap::new();
    for v in seen.values() {
        *labels.entry(v).or_default() += 1;
    }
    Err(format!(
        "not one generation: {} entries, labels {labels:?}",
        seen.len()
    ))
}

/// Kills `child` after `after`, or lets it finish; its exit status.
fn kill_after(mut child: Child, after: Duration) -> Option<i32> {
    let deadline = Instant::now() + after;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn journal(dr: &Path) -> bool {
    dr.join(".drsync/journal").exists()
}

fn finish_only(dr: &Path) -> Output {
    let out = Pod::Writer
        .command(bin())
        .args(["pvc-sync", "--finish-only", "--to"])
        .arg(dr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn pvc_data_interrupted_syncs_leave_one_point_in_time() {
    let (_tmp, dir) = world();
    let (src, dr) = (dir.join("source"), dir.join("dr"));
    generation(&src, 1);
    let mut link = Link::new(&dir);
    link.serve(&src, Pod::Reader);
    let out = link.sync(&dr, Pod::Writer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(generation_of(&dr), Ok(1));

    let mut g = 1;
    let mut outcomes: Vec<String> = Vec::new();
    let mut resumed = Vec::new();
    // The transfer is slowed to about 1.5 s so kills land all over it. The receiver is
    // killed (SIGKILL) at many points, then the sender.
    for (victim, after_ms) in [
        ("receiver", 50u64),
        ("receiver", 250),
        ("receiver", 500),
        ("receiver", 800),
        ("receiver", 1100),
        ("receiver", 1400),
        ("sender", 200),
        ("sender", 700),
        ("sender", 1200),
    ] {
        g += 1;
        generation(&src, g);
        link.serve(&src, Pod::Reader);
        let child = link
            .sync_cmd(&dr, Pod::Writer, &["--bwlimit", "1000000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let code = if victim == "receiver" {
            kill_after(child, Duration::from_millis(after_ms))
        } else {
            std::thread::sleep(Duration::from_millis(after_ms));
            link.server = None;
            kill_after(child, Duration::from_secs(30))
        };
        let now = generation_of(&dr);
        let held = if journal(&dr) {
            // Killed inside the commit: the next start finishes it.
            finish_only(&dr);
            let done = generation_of(&dr);
            assert_eq!(
                done,
                Ok(g),
                "{victim} at {after_ms} ms: after finishing the commit"
            );
            "commit finished by the next start".to_string()
        } else {
            match now {
                Ok(n) if n == g => "completed".to_string(),
                Ok(n) if n == g - 1 || n < g => {
                    assert_ne!(
                        code,
                        Some(0),
                        "{victim} at {after_ms} ms: success but the old generation"
                    );
                    format!("kept generation {n}")
                }
                other => panic!("{victim} at {after_ms} ms: {other:?}"),
            }
        };
        outcomes.push(format!(
            "{victim} killed at {after_ms} ms (exit {code:?}): {held}"
        ));
        // The next run completes, resuming from what the killed one staged.
        link.serve(&src, Pod::Reader);
        let out = link.sync(&dr, Pod::Writer, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(generation_of(&dr), Ok(g));
        let matched = json(&out)["bytesMatched"].as_u64().unwrap();
        resumed.push((victim, after_ms, matched));
        assert!(
            !dr.join(".drsync").exists(),
            "state left after a complete sync"
        );
    }
    eprintln!("{}", outcomes.join("\n"));
    assert!(
        outcomes.iter().any(|o| o.contains("kept generation")),
        "no kill landed in the transfer: {outcomes:#?}"
    );
    // A receiver killed late in the transfer had staged files: the next run rebuilt them
    // from those (matched bytes) instead of sending them again.
    eprintln!("resumed (victim, kill ms, bytes matched): {resumed:?}");
    assert!(
        resumed
            .iter()
            .any(|(v, ms, matched)| *v == "receiver" && *ms >= 800 && *matched > 0),
        "{resumed:?}"
    );

    // Crashes inside the commit itself, at operation n (a test hook aborts the process):
    // DR may be mixed only while the journal is there, and the next start — a plain sync
    // (the source still serving) or `--finish-only` (the source gone) — ends it at the new
    // generation.
    let ops_total = 8 + (8 * 24 + 2) + 1 + 1 + 8; // dirs, files, symlink, deletion, dir meta
    for (n, next) in [
        (0usize, "sync"),
        (3, "finish-only"),
        (9, "sync"),
        (100, "finish-only"),
        (ops_total - 2, "sync"),
    ] {
        g += 1;
        generation(&src, g);
        link.serve(&src, Pod::Reader);
        let out = link
            .sync_cmd(&dr, Pod::Writer, &[])
            .env("DR_SYNCER_TEST_CRASH_AFTER_OPS", n.to_string())
            .output()
            .unwrap();
        assert!(!out.status.success(), "crash at op {n}");
        assert!(journal(&dr), "crash at op {n}: the journal is there");
        match next {
            "sync" => {
                let out = link.sync(&dr, Pod::Writer, &[]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(json(&out)["finishedInterruptedCommit"], true);
            }
            _ => {
                finish_only(&dr);
            }
        }
        assert_eq!(generation_of(&dr), Ok(g), "crash at op {n}, then {next}");
        assert!(!journal(&dr));
    }
}

#[test]
fn pvc_data_an_emptied_source_holds_and_release_passes() {
    let (_tmp, dir) = world();
    let (src, dr) = (dir.join("source"), dir.join("dr"));
    generation(&src, 1);
    let mut link = Link::new(&dir);
    link.serve(&src, Pod::Reader);
    let out = link.sync(&dr, Pod::Writer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The source is wiped (or a fresh empty volume is mounted in its place).
    empty(&src);
    let summary_file = dir.join("summary.json");
    let held = |extra: &[&str]| {
        let mut args = vec!["--summary-file", summary_file.to_str().unwrap()];
        args.extend_from_slice(extra);
        link.sync(&dr, Pod::Writer, &args)
    };
    let out = held(&[]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    let batch = report["held"]["batch"].as_str().unwrap().to_string();
    assert_eq!(report["exitCode"], 7);
    assert_eq!(report["held"]["files"], 8 * 24 + 2, "{report}");
    assert_eq!(report["held"]["filesTotal"], 8 * 24 + 2, "{report}");
    assert!(report["error"].as_str().unwrap().contains(&batch));
    assert_eq!(generation_of(&dr), Ok(1), "DR keeps its data");
    // Held again: the same deletion set gives the same batch; another id does not release.
    let out = held(&["--allow-deletions", "000000000000"]);
    assert_eq!(out.status.code(), Some(7));
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    assert_eq!(again["held"]["batch"], batch.as_str());
    assert_eq!(generation_of(&dr), Ok(1));
    // Released with the batch id: the deletions go through.
    let out = held(&["--allow-deletions", &batch]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&out);
    assert_eq!(summary["deletedFiles"], 8 * 24 + 2, "{summary}");
    assert_eq!(
        std::fs::read_dir(&dr).unwrap().count(),
        0,
        "DR mirrors the empty source"
    );
    // A small change never holds.
    generation(&src, 2);
    let out = link.sync(&dr, Pod::Writer, &[]);
    assert!(out.status.success());
    std::fs::remove_file(src.join("d0/f3.txt")).unwrap();
    let out = link.sync(&dr, Pod::Writer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["deletedFiles"], 1);
}

#[test]
fn pvc_data_live_source_recheck_resends_what_changed_and_names_what_still_changes() {
    let (_tmp, dir) = world();
    let (src, dr) = (dir.join("source"), dir.join("dr"));
    generation(&src, 1);
    std::fs::write(src.join("hot.log"), b"start\n").unwrap();
    let mut link = Link::new(&dir);
    link.serve(&src, Pod::Reader);
    // The application keeps writing while the copy runs (copy method Direct): one file
    // all the time, five others once, early in the first pass.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                std::fs::write(
                    src.join("hot.log"),
                    format!("line {n}\n").repeat(n as usize),
                )
                .unwrap();
                if n == 10 {
                    for d in 0..5 {
                        std::fs::write(
                            src.join(format!("d{d}/f2.txt")),
                            format!("gen 1 warm {d}\n"),
                        )
                        .unwrap();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = link.sync(&dr, Pod::Writer, &["--recheck", "--bwlimit", "2000000"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let recheck = &report["recheck"];
    eprintln!("recheck: {recheck}");
    assert!(recheck["resent"].as_u64().unwrap() >= 6, "{report}");
    assert!(recheck["stillChanging"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        recheck["stillChangingPaths"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("hot.log")),
        "{report}"
    );
    for d in 0..5 {
        assert_eq!(
            std::fs::read_to_string(dr.join(format!("d{d}/f2.txt"))).unwrap(),
            format!("gen 1 warm {d}\n"),
            "a file changed during the first pass arrives as it is now"
        );
    }
}

/// A journal someone else wrote on the DR volume (the application, after a failover) is
/// never carried out with the writer's capabilities.
#[test]
fn pvc_data_a_journal_not_written_by_the_receiver_is_refused() {
    let (_tmp, dir) = world();
    let (src, dr) = (dir.join("source"), dir.join("dr"));
    generation(&src, 1);
    let mut link = Link::new(&dir);
    link.serve(&src, Pod::Reader);
    let out = link.sync(&dr, Pod::Writer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // uid 999 plants a state directory with a journal (its content does not matter: it
    // is refused before it is read).
    let state = dr.join(".drsync");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("journal"), b"DRSJRN1\n").unwrap();
    for p in [&state, &state.join("journal")] {
        std::os::unix::fs::chown(p, Some(999), Some(999)).unwrap();
    }
    let before = tree_meta(&dr);
    let out = link.sync(&dr, Pod::Writer, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("owned by uid 999") && stderr.contains("refusing"),
        "{stderr}"
    );
    assert_eq!(tree_meta(&dr), before, "nothing changed");
    let out = Pod::Writer
        .command(bin())
        .args(["pvc-sync", "--finish-only", "--to"])
        .arg(&dr)
        .output()
        .unwrap();
    assert!(!out.status.success(), "--finish-only refuses it too");
}
