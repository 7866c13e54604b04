//! PVC data benchmark: `dr-syncer pvc-sync` against rsync over OpenSSH on loopback, in the
//! same run, on the same data. Like is compared with like: dr-syncer's SSH prefers
//! AES-256-GCM and it fsyncs every file it writes, so rsync runs three ways — OpenSSH's
//! default cipher (chacha20-poly1305), `-c aes256-gcm@openssh.com`, and AES-GCM with
//! `--fsync` — and the goals are judged against the last, the like-for-like row. Every run
//! starts after `sync`, so no tool pays for another's write-back; contenders run in
//! rotating order, `BENCH_REPS` (≥ 3) times each, and tables give the median and the
//! range. Both sides' peak RSS is measured: the receiver with GNU time, dr-syncer's sender
//! (the agent, restarted for every run) from `/proc`, rsync's sender through
//! `--rsync-path` under GNU time. Wire bytes are counted by a TCP proxy in front of both
//! servers; scenario (e) shapes that proxy (25 ms each way, 1 Gbit/s, a token bucket with
//! at most one 64 KiB bucket of credit and a queue bounded to the bandwidth-delay product,
//! so neither an idle burst nor unbounded buffering inflates the link rate).
//!
//! Scenarios: (a) initial copy of 1 GiB in 1 000 files; (b) 1 % of bytes changed inside
//! 8 large files; (c) no-change pass over 100 000 small files; (d) one 4 GiB file with
//! scattered changes — peak RSS; (e) (a) and (b) through the shaped link.
//! `BENCH_SCALE=0.1` shrinks every data set; `BENCH_ONLY=a,c` runs a subset.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dr_syncer_testkit::bench::{
    MIN_SAMPLES, Samples, Table, Verdict, gnu_time, proc_status_kib, read_time_rss, reps, rotated,
    settle, tempfile_path,
};
use dr_syncer_testkit::git::Sshd;
use dr_syncer_testkit::volume::{VolumeServer, keygen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A link: one-way delay and rate.
#[derive(Clone, Copy)]
struct Shape {
    delay: Duration,
    bytes_per_sec: u64,
}

/// Most credit the shaped link may bank while idle: one read's worth.
const BUCKET: usize = 64 << 10;

impl Shape {
    /// The proxy's queue: what the link holds in flight (rate × delay) plus one bucket.
    /// A sender that outruns the link blocks on TCP instead of filling this proxy.
    fn queue_bytes(&self) -> usize {
        (self.bytes_per_sec as f64 * self.delay.as_secs_f64()) as usize + BUCKET
    }
}

/// A TCP proxy counting bytes both ways, optionally shaping them.
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
    let capacity = shape.map_or(4 << 20, |s| s.queue_bytes());
    let room = Arc::new(Semaphore::new(capacity));
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>, OwnedSemaphorePermit)>();
    let writer = tokio::spawn(async move {
        // When the link will have sent everything handed to it so far.
        let mut link_free = Instant::now();
        while let Some((at, buf, permit)) = rx.recv().await {
            if let Some(s) = shape {
                let rate = s.bytes_per_sec as f64;
                // Idle time banks at most one bucket of credit.
                let bucket = Duration::from_secs_f64(BUCKET as f64 / rate);
                let earliest = at.checked_sub(bucket).unwrap_or(at);
                link_free =
                    link_free.max(earliest) + Duration::from_secs_f64(buf.len() as f64 / rate);
                tokio::time::sleep_until((link_free.max(at) + s.delay).into()).await;
            }
            let ok = to.write_all(&buf).await.is_ok();
            drop(permit);
            if !ok {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; BUCKET];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                let Ok(permit) = room.clone().acquire_many_owned(n as u32).await else {
                    break;
                };
                if tx
                    .send((Instant::now(), buf[..n].to_vec(), permit))
                    .is_err()
                {
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

/// The contenders.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// `dr-syncer pvc-sync` from `dr-syncer agent serve-volume` (AES-256-GCM, fsync).
    Ours,
    /// `rsync -aHS --delete -e ssh`, OpenSSH's default cipher, no fsync.
    Rsync,
    /// The same with `ssh -c aes256-gcm@openssh.com`.
    RsyncAes,
    /// The same with AES-GCM and `--fsync`: like for like with dr-syncer.
    RsyncAesFsync,
}

const ALL: [Tool; 4] = [Tool::Ours, Tool::Rsync, Tool::RsyncAes, Tool::RsyncAesFsync];

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Ours => "dr-syncer",
            Tool::Rsync => "rsync (ssh default: chacha20-poly1305)",
            Tool::RsyncAes => "rsync, ssh -c aes256-gcm",
            Tool::RsyncAesFsync => "rsync --fsync, ssh -c aes256-gcm",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Tool::Ours => "ours",
            Tool::Rsync => "rsync",
            Tool::RsyncAes => "rsync-aes",
            Tool::RsyncAesFsync => "rsync-aes-fsync",
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    secs: f64,
    wire: u64,
    receiver_kib: u64,
    sender_kib: u64,
}

/// Every run of one tool in one scenario.
#[derive(Default)]
struct Runs {
    secs: Samples,
    wire: Samples,
    receiver_mb: Samples,
    sender_mb: Samples,
}

impl Runs {
    fn add(&mut self, r: Run) {
        self.secs.push(r.secs);
        self.wire.push(r.wire as f64 / 1e6);
        self.receiver_mb.push(r.receiver_kib as f64 / 1024.0);
        self.sender_mb.push(r.sender_kib as f64 / 1024.0);
    }
}

struct Env {
    bin: PathBuf,
    dir: PathBuf,
    client_key: PathBuf,
    known: PathBuf,
    sshd_key: PathBuf,
    sshd_port: u16,
    sshd_pub: String,
}

impl Env {
    /// Syncs `from` into `to` with `tool` once, after `sync`.
    async fn run(&self, tool: Tool, from: &Path, to: &Path, shape: Option<Shape>) -> Run {
        settle();
        match tool {
            Tool::Ours => self.ours(from, to, shape).await,
            _ => self.rsync(tool, from, to, shape).await,
        }
    }

    async fn ours(&self, from: &Path, to: &Path, shape: Option<Shape>) -> Run {
        let agent = VolumeServer::start(&self.bin, &self.dir, from);
        let agent_port = agent.port;
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
        let timed = tokio::task::spawn_blocking(move || gnu_time(&cmd))
            .await
            .unwrap();
        let sender_kib = proc_status_kib(agent.child.id(), "VmHWM:");
        drop(agent);
        Run {
            secs: timed.secs,
            wire: p.bytes.load(Ordering::Relaxed),
            receiver_kib: timed.peak_rss_kib,
            sender_kib,
        }
    }

    async fn rsync(&self, tool: Tool, from: &Path, to: &Path, shape: Option<Shape>) -> Run {
        let p = proxy(self.sshd_port, shape).await;
        pin(&self.known, p.port, &self.sshd_pub);
        let cipher = match tool {
            Tool::Rsync => "",
            _ => " -c aes256-gcm@openssh.com",
        };
        let ssh = format!(
            "ssh -F /dev/null -p {}{cipher} -i {} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            p.port,
            self.sshd_key.display(),
            self.known.display()
        );
        // The remote rsync (the sender) runs under GNU time too.
        let sender_rss = tempfile_path("rsync-sender");
        let mut cmd = Command::new("rsync");
        cmd.args(["-aHS", "--delete", "-e", &ssh]).arg(format!(
            "--rsync-path=/usr/bin/time -f %M -o {} rsync",
            sender_rss.display()
        ));
        if tool == Tool::RsyncAesFsync {
            cmd.arg("--fsync");
        }
        cmd.arg(format!("root@127.0.0.1:{}/", from.display()))
            .arg(to);
        let timed = tokio::task::spawn_blocking(move || gnu_time(&cmd))
            .await
            .unwrap();
        let sender_kib = read_time_rss(&sender_rss);
        let _ = std::fs::remove_file(&sender_rss);
        Run {
            secs: timed.secs,
            wire: p.bytes.load(Ordering::Relaxed),
            receiver_kib: timed.peak_rss_kib,
            sender_kib,
        }
    }

    /// `reps` rounds over `tools` in rotating order: `before(rep)` prepares each round
    /// (changes the source), `fresh` empties each destination before its run.
    async fn rounds(
        &self,
        tools: &[Tool],
        from: &Path,
        scenario: &str,
        shape: Option<Shape>,
        fresh: bool,
        mut before: impl FnMut(usize),
    ) -> Vec<(Tool, Runs)> {
        let mut all: Vec<(Tool, Runs)> = tools.iter().map(|t| (*t, Runs::default())).collect();
        for rep in 0..reps() {
            before(rep);
            for tool in rotated(tools, rep) {
                let to = self.dest(scenario, tool);
                if fresh {
                    let _ = std::fs::remove_dir_all(&to);
                }
                let run = self.run(tool, from, &to, shape).await;
                all.iter_mut().find(|(t, _)| *t == tool).unwrap().1.add(run);
            }
        }
        all
    }

    /// Brings every tool's destination of `scenario` to the source once (not measured).
    async fn prime(&self, tools: &[Tool], from: &Path, scenario: &str) {
        for tool in tools {
            let to = self.dest(scenario, *tool);
            self.run(*tool, from, &to, None).await;
        }
    }

    fn dest(&self, scenario: &str, tool: Tool) -> PathBuf {
        self.dir.join(format!("{scenario}-{}", tool.dir()))
    }
}

/// Scenario (b)'s change: 1 % of each of the 8 large files, in scattered runs (`seed`
/// varies it per round).
fn change_large_files(dir: &Path, seed: u64) {
    for i in 0..8 {
        scatter(&dir.join(format!("large{i}.bin")), 0.01, seed + i);
    }
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

/// The table of one scenario: every tool's median and range, and its time against
/// dr-syncer's.
fn print_runs(title: &str, runs: &[(Tool, Runs)]) {
    let ours = &runs.iter().find(|(t, _)| *t == Tool::Ours).unwrap().1;
    let mut t = Table::new(&[
        "tool",
        "time median (s)",
        "time range (s)",
        "x dr-syncer time",
        "wire median (MB)",
        "receiver peak RSS (MB)",
        "sender peak RSS (MB)",
        "runs",
    ]);
    for (tool, r) in runs {
        t.row(vec![
            tool.label().to_string(),
            format!("{:.2}", r.secs.median()),
            r.secs.spread(2),
            format!("{:.2}", r.secs.median() / ours.secs.median()),
            format!("{:.1}", r.wire.median()),
            format!("{:.0}", r.receiver_mb.max()),
            format!("{:.0}", r.sender_mb.max()),
            r.secs.len().to_string(),
        ]);
    }
    t.print(title);
}

fn runs_of(runs: &[(Tool, Runs)], tool: Tool) -> &Runs {
    &runs.iter().find(|(t, _)| *t == tool).unwrap().1
}

/// A goal that dr-syncer's median time is at most `factor` × the like-for-like rsync's.
fn time_goal(goals: &mut Table, name: &str, runs: &[(Tool, Runs)], factor: f64) {
    let (ours, peer) = (
        &runs_of(runs, Tool::Ours).secs,
        &runs_of(runs, Tool::RsyncAesFsync).secs,
    );
    let ratio = ours.median() / peer.median();
    goals.row(vec![
        name.to_string(),
        format!("≤ {factor:.2}× rsync --fsync, aes256-gcm"),
        format!(
            "{ratio:.2}× ({:.2} s vs {:.2} s)",
            ours.median(),
            peer.median()
        ),
        Verdict::judge(
            ours.len().min(peer.len()),
            ratio <= factor,
            ours.overlaps(peer),
        )
        .to_string(),
    ]);
}

#[tokio::main]
async fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    for (tool, package) in [("rsync", "rsync"), ("/usr/bin/time", "time")] {
        if Command::new(tool).arg("--version").output().is_err() {
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-qq", package])
                .status()
                .unwrap();
            assert!(ok.success(), "{tool} is needed: apt-get install {package}");
        }
    }
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
        sshd_port: sshd.port,
        sshd_pub: std::fs::read_to_string(dir.join("sshd/host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_string(),
    };
    let mib = |n: f64| ((n * scale) as usize).max(1) << 20;
    let n = reps();
    println!(
        "\n## PVC data: dr-syncer pvc-sync vs rsync -aHS --delete over OpenSSH (loopback, scale {scale}, {n} runs per tool in rotating order, `sync` before each)"
    );
    let mut goals = Table::new(&["goal", "target", "measured (medians)", "verdict"]);

    let a = dir.join("a-src");
    let b = dir.join("b-src");
    let files = ((1000.0 * scale) as usize).max(10);
    let total = (files << 20) as f64;
    if run("a") || run("e") {
        for i in 0..files {
            let p = a.join(format!("d{:02}/f{i:04}.bin", i % 50));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, pseudo_random(1 << 20, i as u64 + 1)).unwrap();
        }
    }
    if run("a") {
        let runs = env.rounds(&ALL, &a, "a", None, true, |_| {}).await;
        print_runs(&format!("(a) initial copy, {files} files of 1 MiB"), &runs);
        let ours = runs_of(&runs, Tool::Ours);
        for tool in [Tool::Rsync, Tool::RsyncAes, Tool::RsyncAesFsync] {
            let peer = runs_of(&runs, tool);
            println!(
                "(a) throughput: dr-syncer {:.0} MB/s, {} {:.0} MB/s",
                total / ours.secs.median() / 1e6,
                tool.label(),
                total / peer.secs.median() / 1e6
            );
        }
        time_goal(&mut goals, "(a) initial copy time", &runs, 1.0);
        for tool in ALL {
            let _ = std::fs::remove_dir_all(env.dest("a", tool));
        }
    }
    if run("b") || run("e") {
        std::fs::create_dir_all(&b).unwrap();
        for i in 0..8 {
            std::fs::write(
                b.join(format!("large{i}.bin")),
                pseudo_random(mib(128.0), 100 + i),
            )
            .unwrap();
        }
    }
    if run("b") {
        env.prime(&ALL, &b, "b").await;
        let runs = env
            .rounds(&ALL, &b, "b", None, false, |rep| {
                change_large_files(&b, 7 + 10 * rep as u64);
            })
            .await;
        print_runs("(b) 1 % of bytes changed in 8 files of 128 MiB", &runs);
        time_goal(&mut goals, "(b) 1 % change time", &runs, 0.8);
        let (ours, peer) = (
            &runs_of(&runs, Tool::Ours).wire,
            &runs_of(&runs, Tool::RsyncAesFsync).wire,
        );
        goals.row(vec![
            "(b) 1 % change wire bytes".into(),
            "≤ rsync".into(),
            format!("{:.1} MB vs {:.1} MB", ours.median(), peer.median()),
            Verdict::judge(
                ours.len().min(peer.len()),
                ours.median() <= peer.median(),
                ours.overlaps(peer),
            )
            .to_string(),
        ]);
    }
    if run("c") {
        let c = dir.join("c-src");
        let small = ((100_000.0 * scale) as usize).max(1000);
        for i in 0..small {
            let p = c.join(format!("d{:03}/f{i}.txt", i % 200));
            if i < 200 {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            }
            std::fs::write(p, format!("small file {i}\n")).unwrap();
        }
        env.prime(&ALL, &c, "c").await;
        let runs = env.rounds(&ALL, &c, "c", None, false, |_| {}).await;
        print_runs(&format!("(c) no-change pass over {small} files"), &runs);
        time_goal(&mut goals, "(c) no-change pass time", &runs, 0.5);
        for tool in ALL {
            let _ = std::fs::remove_dir_all(env.dest("c", tool));
        }
        let _ = std::fs::remove_dir_all(&c);
    }
    if run("d") {
        // One large file: memory must not grow with the file. rsync with its default
        // cipher is the reference here; the AES and fsync variants change no memory.
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
        let tools = [Tool::Ours, Tool::Rsync];
        env.prime(&tools, &d, "d").await;
        let runs = env
            .rounds(&tools, &d, "d", None, false, |rep| {
                scatter(&d.join("disk.img"), 0.001, 99 + rep as u64)
            })
            .await;
        print_runs(
            &format!(
                "(d) one {} MiB file, 0.1 % changed in scattered 4 KiB runs",
                mib(4096.0) >> 20
            ),
            &runs,
        );
        let ours = runs_of(&runs, Tool::Ours);
        let peak = ours.receiver_mb.max().max(ours.sender_mb.max());
        goals.row(vec![
            "(d) peak RSS, either side, every run".into(),
            "≤ 256 MB".into(),
            format!(
                "{peak:.0} MB (receiver ≤ {:.0}, sender ≤ {:.0})",
                ours.receiver_mb.max(),
                ours.sender_mb.max()
            ),
            Verdict::judge(ours.secs.len(), peak <= 256.0, false).to_string(),
        ]);
        for tool in tools {
            let _ = std::fs::remove_dir_all(env.dest("d", tool));
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    if run("e") {
        let shape = Some(Shape {
            delay: Duration::from_millis(25),
            bytes_per_sec: 125_000_000,
        });
        let tools = [Tool::Ours, Tool::Rsync, Tool::RsyncAes];
        let runs = env.rounds(&tools, &a, "e", shape, true, |_| {}).await;
        print_runs("(e) (a) through a shaped link: 50 ms RTT, 1 Gbit/s", &runs);
        let mut rates = Samples::default();
        for s in runs_of(&runs, Tool::Ours).secs.values() {
            rates.push(total / s / 125e6 * 100.0);
        }
        for tool in tools {
            println!(
                "(e) link use: {} {:.0} % (median)",
                tool.label(),
                total / runs_of(&runs, tool).secs.median() / 125e6 * 100.0
            );
        }
        goals.row(vec![
            "(e) initial copy over 50 ms RTT, 1 Gbit/s".into(),
            "≥ 80 % of the link rate".into(),
            format!("{:.0} % (range {} %)", rates.median(), rates.spread(0)),
            Verdict::judge(rates.len(), rates.median() >= 80.0, false).to_string(),
        ]);
        for tool in tools {
            let _ = std::fs::remove_dir_all(env.dest("e", tool));
        }
        env.prime(&tools, &b, "eb").await;
        let runs = env
            .rounds(&tools, &b, "eb", shape, false, |rep| {
                change_large_files(&b, 70 + 10 * rep as u64);
            })
            .await;
        print_runs(
            "(e) (b) through a shaped link: 50 ms RTT, 1 Gbit/s (no goal)",
            &runs,
        );
    }
    goals.print(&format!(
        "PVC goals (judged by the code on medians of ≥ {MIN_SAMPLES} runs; the peer is the like-for-like rsync --fsync with aes256-gcm)"
    ));
    drop(sshd);
    let _ = std::fs::remove_dir_all(&base);
}
