//! PVC data benchmark: `dr-syncer pvc-sync` against `rsync -aHS --delete -e ssh` (OpenSSH
//! on loopback), both in the same run, printing one table. Every connection goes through a
//! counting TCP proxy, so "wire bytes" are measured the same way for both tools. Scenario
//! (e) runs through a shaping proxy (25 ms each way, 1 Gbit/s) because this kernel has no
//! netem qdisc.
//!
//! Scenarios: (a) initial copy of 1 GiB in 1 000 files; (b) 1 % of bytes changed inside
//! large files; (c) no-change pass over 100 000 small files; (d) one 4 GiB file with
//! scattered changes — peak RSS; (e) (a)+(b) through the shaped link.
//! `BENCH_SCALE=0.1` shrinks every data set for a quick run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dr_syncer_testkit::git::Sshd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
struct Shape {
    delay: Duration,
    bytes_per_sec: u64,
}

/// A TCP proxy counting bytes both ways, optionally delaying and rate-limiting them.
struct Proxy {
    port: u16,
    bytes: Arc<AtomicU64>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    shape: Option<Shape>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(4096);
    let writer = tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = 0u64;
        while let Some((at, buf)) = rx.recv().await {
            if let Some(s) = shape {
                tokio::time::sleep_until((at + s.delay).into()).await;
                sent += buf.len() as u64;
                let due = start + Duration::from_secs_f64(sent as f64 / s.bytes_per_sec as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            if to.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn proxy(target: u16, shape: Option<Shape>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                break;
            };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, counter.clone(), shape));
            tokio::spawn(pump(sr, cw, counter.clone(), shape));
        }
    });
    Proxy { port, bytes }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn keygen(path: &Path) -> String {
    let _ = std::fs::remove_file(path);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn pin(known: &Path, port: u16, public: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(known)
        .unwrap();
    let mut parts = public.split_whitespace();
    use std::io::Write;
    writeln!(
        f,
        "[127.0.0.1]:{port} {} {}",
        parts.next().unwrap(),
        parts.next().unwrap()
    )
    .unwrap();
}

fn host_pub(sshd_dir: &Path) -> String {
    std::fs::read_to_string(sshd_dir.join("host_ed25519.pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// Wall time and peak RSS (KiB, from GNU time) of a command.
fn timed(cmd: &mut Command) -> (f64, u64) {
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = std::fs::read_to_string(rss_file.path())
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (secs, rss)
}

struct Env {
    bin: PathBuf,
    dir: PathBuf,
    client_key: PathBuf,
    known: PathBuf,
    sshd_key: PathBuf,
}

impl Env {
    async fn ours(&self, agent_port: u16, to: &Path, shape: Option<Shape>) -> (f64, u64, u64) {
        let p = proxy(agent_port, shape).await;
        pin(
            &self.known,
            p.port,
            &std::fs::read_to_string(self.dir.join("agent_host.pub")).unwrap(),
        );
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "pvc-sync",
            "--from",
            &format!("ssh://127.0.0.1:{}", p.port),
            "--to",
        ])
        .arg(to)
        .arg("--identity")
        .arg(&self.client_key)
        .arg("--known-hosts")
        .arg(&self.known);
        let (secs, rss) = tokio::task::spawn_blocking(move || timed(&mut cmd))
            .await
            .unwrap();
        (secs, p.bytes.load(Ordering::Relaxed), rss)
    }

    async fn rsync(
        &self,
        sshd_port: u16,
        from: &Path,
        to: &Path,
        shape: Option<Shape>,
    ) -> (f64, u64, u64) {
        let p = proxy(sshd_port, shape).await;
        pin(
            &self.known,
            p.port,
            &host_pub(self.dir.join("sshd").as_path()),
        );
        let ssh = format!(
            "ssh -F /dev/null -p {} -i {} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            p.port,
            self.sshd_key.display(),
            self.known.display()
        );
        let mut cmd = Command::new("rsync");
        cmd.args(["-aHS", "--delete", "-e", &ssh])
            .arg(format!("root@127.0.0.1:{}/", from.display()))
            .arg(to);
        let (secs, rss) = tokio::task::spawn_blocking(move || timed(&mut cmd))
            .await
            .unwrap();
        (secs, p.bytes.load(Ordering::Relaxed), rss)
    }
}

fn agent(bin: &Path, dir: &Path, root: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["agent", "serve-volume", "--root"])
        .arg(root)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--host-key"])
        .arg(dir.join("agent_host"))
        .arg("--authorized-keys")
        .arg(dir.join("authorized_keys"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "agent never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Changes `fraction` of a file's bytes in scattered 4 KiB runs.
fn scatter(path: &Path, fraction: f64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let runs = ((len as f64 * fraction) / 4096.0).max(1.0) as u64;
    let step = len / runs;
    let junk = pseudo_random(4096, seed);
    for i in 0..runs {
        f.write_all_at(&junk, i * step + (seed % 1000)).unwrap();
    }
}

fn row(name: &str, ours: (f64, u64, u64), theirs: (f64, u64, u64), goal: &str, verdict: bool) {
    println!(
        "{name:<40} {:>8.2}s {:>9.1}MB {:>7}MB | {:>8.2}s {:>9.1}MB {:>7}MB | {:<26} {}",
        ours.0,
        ours.1 as f64 / 1e6,
        ours.2 / 1024,
        theirs.0,
        theirs.1 as f64 / 1e6,
        theirs.2 / 1024,
        goal,
        if verdict { "met" } else { "MISSED" }
    );
}

#[tokio::main]
async fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    if Command::new("rsync").arg("--version").output().is_err() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "rsync"])
            .status()
            .unwrap();
        assert!(ok.success(), "rsync is needed: apt-get install rsync");
    }
    // BENCH_ONLY=b,c runs a subset ((e) needs (a) and (b)).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dr-syncer"));
    let base = dr_syncer_testkit::target_dir().join("bench-pvc");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.clone();
    let sshd = Sshd::start(&dir.join("sshd"));
    let client_pub = keygen(&dir.join("client"));
    let agent_pub = keygen(&dir.join("agent_host"));
    std::fs::write(dir.join("agent_host.pub"), &agent_pub).unwrap();
    std::fs::write(dir.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
    let env = Env {
        bin: bin.clone(),
        dir: dir.clone(),
        client_key: dir.join("client"),
        known: dir.join("known_hosts"),
        sshd_key: sshd.client_key.clone(),
    };
    let mib = |n: f64| ((n * scale) as usize).max(1) << 20;
    println!(
        "\nPVC sync: dr-syncer pvc-sync vs rsync -aHS --delete -e ssh (OpenSSH), loopback, scale {scale}"
    );
    println!(
        "{:<40} {:>9} {:>11} {:>9} | {:>9} {:>11} {:>9} | {:<26}",
        "scenario", "ours", "wire", "RSS", "rsync", "wire", "RSS", "goal"
    );

    let mut agents = Vec::new();
    let (mut port_a, mut port_b) = (0, 0);
    let a = dir.join("a-src");
    let b = dir.join("b-src");
    let files = ((1000.0 * scale) as usize).max(10);
    let total = (files << 20) as f64;
    if run("a") {
        // (a) initial copy of 1 GiB in 1 000 files.
        for i in 0..files {
            let p = a.join(format!("d{:02}/f{i:04}.bin", i % 50));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, pseudo_random(1 << 20, i as u64 + 1)).unwrap();
        }
        let (agent_a, pa) = agent(&bin, &dir, &a);
        port_a = pa;
        agents.push(agent_a);
        let ours = env.ours(port_a, &dir.join("a-ours"), None).await;
        let theirs = env.rsync(sshd.port, &a, &dir.join("a-rsync"), None).await;
        row(
            &format!("(a) initial {} MiB, {files} files", files),
            ours,
            theirs,
            "throughput >= rsync",
            total / ours.0 >= total / theirs.0,
        );
        println!(
            "{:<40} {:>8.0} MB/s vs {:.0} MB/s",
            "    throughput",
            total / ours.0 / 1e6,
            total / theirs.0 / 1e6
        );
        let _ = std::fs::remove_dir_all(dir.join("a-ours"));
        let _ = std::fs::remove_dir_all(dir.join("a-rsync"));
    }
    if run("b") {
        // (b) 1 % of bytes changed inside large files.
        std::fs::create_dir_all(&b).unwrap();
        for i in 0..8 {
            std::fs::write(
                b.join(format!("large{i}.bin")),
                pseudo_random(mib(128.0), 100 + i),
            )
            .unwrap();
        }
        let (agent_b, pb) = agent(&bin, &dir, &b);
        port_b = pb;
        agents.push(agent_b);
        env.ours(port_b, &dir.join("b-ours"), None).await;
        env.rsync(sshd.port, &b, &dir.join("b-rsync"), None).await;
        for i in 0..8 {
            scatter(&b.join(format!("large{i}.bin")), 0.01, 7 + i);
        }
        let ours = env.ours(port_b, &dir.join("b-ours"), None).await;
        let theirs = env.rsync(sshd.port, &b, &dir.join("b-rsync"), None).await;
        row(
            "(b) 1% changed in 8 large files",
            ours,
            theirs,
            "<=0.8x time, <= wire bytes",
            ours.0 <= 0.8 * theirs.0 && ours.1 <= theirs.1,
        );
    }
    if run("c") {
        // (c) no-change pass over 100 000 small files.
        let c = dir.join("c-src");
        let small = ((100_000.0 * scale) as usize).max(1000);
        for i in 0..small {
            let p = c.join(format!("d{:03}/f{i}.txt", i % 200));
            if i < 200 {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            }
            std::fs::write(p, format!("small file {i}\n")).unwrap();
        }
        let (agent_c, port_c) = agent(&bin, &dir, &c);
        agents.push(agent_c);
        env.ours(port_c, &dir.join("c-ours"), None).await;
        env.rsync(sshd.port, &c, &dir.join("c-rsync"), None).await;
        let ours = env.ours(port_c, &dir.join("c-ours"), None).await;
        let theirs = env.rsync(sshd.port, &c, &dir.join("c-rsync"), None).await;
        row(
            &format!("(c) no-change pass, {small} files"),
            ours,
            theirs,
            "<=0.5x rsync time",
            ours.0 <= 0.5 * theirs.0,
        );
        let _ = std::fs::remove_dir_all(dir.join("c-rsync"));
        let _ = std::fs::remove_dir_all(dir.join("c-ours"));
    }
    if run("d") {
        // (d) one 4 GiB file with scattered changes: peak RSS.
        let d = dir.join("d-src");
        std::fs::create_dir_all(&d).unwrap();
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("disk.img")).unwrap());
            for i in 0..mib(4096.0) >> 20 {
                f.write_all(&pseudo_random(1 << 20, 5000 + i as u64))
                    .unwrap();
            }
        }
        let (mut agent_d, port_d) = agent(&bin, &dir, &d);
        env.ours(port_d, &dir.join("d-ours"), None).await;
        scatter(&d.join("disk.img"), 0.001, 99);
        let _ = agent_d.kill();
        let _ = agent_d.wait();
        let (mut agent_d, port_d) = agent(&bin, &dir, &d);
        let ours = env.ours(port_d, &dir.join("d-ours"), None).await;
        let agent_rss = hwm_kib(agent_d.id());
        let _ = std::fs::remove_dir_all(dir.join("d-ours"));
        env.rsync(sshd.port, &d, &dir.join("d-rsync"), None).await;
        scatter(&d.join("disk.img"), 0.001, 98);
        let theirs = env.rsync(sshd.port, &d, &dir.join("d-rsync"), None).await;
        let peak = ours.2.max(agent_rss);
        row(
            &format!("(d) {} MiB file, scattered changes", mib(4096.0) >> 20),
            ours,
            theirs,
            "<=256 MB RSS (both sides)",
            peak <= 256 * 1024,
        );
        println!(
            "{:<40} receiver {} MB, sender (agent) {} MB",
            "    peak RSS",
            ours.2 / 1024,
            agent_rss / 1024
        );
        let _ = agent_d.kill();
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(dir.join("d-rsync"));
    }
    if run("a") && run("b") && run("e") {
        // (e) (a)+(b) through the shaped link.
        let shape = Some(Shape {
            delay: Duration::from_millis(25),
            bytes_per_sec: 125_000_000,
        });
        let ours = env.ours(port_a, &dir.join("e-ours"), shape).await;
        let theirs = env.rsync(sshd.port, &a, &dir.join("e-rsync"), shape).await;
        let rate = total / ours.0 / 125e6;
        row(
            "(e) (a) via 50 ms RTT, 1 Gbit/s",
            ours,
            theirs,
            ">=80% of link rate",
            rate >= 0.8,
        );
        println!(
            "{:<40} {:.0}% of link rate (rsync {:.0}%)",
            "    link use",
            rate * 100.0,
            total / theirs.0 / 125e6 * 100.0
        );
        for i in 0..8 {
            scatter(&b.join(format!("large{i}.bin")), 0.01, 70 + i);
        }
        let ours = env.ours(port_b, &dir.join("b-ours"), shape).await;
        let theirs = env.rsync(sshd.port, &b, &dir.join("b-rsync"), shape).await;
        row(
            "(e) (b) via 50 ms RTT, 1 Gbit/s",
            ours,
            theirs,
            "(informational)",
            true,
        );
    }
    for mut a in agents {
        let _ = a.kill();
    }
    let _ = std::fs::remove_dir_all(&base);
}
