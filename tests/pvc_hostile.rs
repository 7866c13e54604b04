//! The PVC protocol peers against hostile peers speaking the real protocol: a sender that
//! crafts manifests and answers to make the receiver write, chmod or read outside its
//! root (or fill the volume), and a receiver that floods the sender with requests. A file
//! in a temporary directory next to the destination stands in for `/etc/shadow`: every
//! test checks that it keeps its content, mode and times, and that nothing outside the
//! root is created or read (no signature of it reaches the peer).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dr_syncer::pvc::wire::{self, Basis, Entry, Kind, Message};
use dr_syncer::pvc::{PvcError, Summary, receiver, sender};
use tokio::io::AsyncWriteExt;

const TIMEOUT: Duration = Duration::from_secs(20);

fn base(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o777,
        uid: 0,
        gid: 0,
        size: 0,
        mtime_s: 1_000_000_000,
        mtime_ns: 0,
    }
}

fn dir(path: &str) -> Entry {
    base(path, Kind::Dir)
}

fn file(path: &str, size: u64) -> Entry {
    Entry {
        size,
        ..base(path, Kind::File)
    }
}

fn link(path: &str, target: &Path) -> Entry {
    base(
        path,
        Kind::Symlink {
            target: target.as_os_str().as_encoded_bytes().to_vec(),
        },
    )
}

fn hardlink(path: &str, leader: u32) -> Entry {
    base(path, Kind::HardLink { leader })
}

/// What a file answer looks like: the frames a hostile sender sends for a request.
type Answer = Box<dyn Fn(u32, &Entry) -> Vec<Message> + Send + Sync>;

/// An honest answer: `size` bytes of `x`, then their true size and hash.
fn honest(idx: u32, e: &Entry) -> Vec<Message> {
    let bytes = vec![b'x'; e.size as usize];
    vec![
        Message::Data {
            idx,
            offset: 0,
            bytes: bytes.clone(),
        },
        Message::FileEnd {
            idx,
            size: bytes.len() as u64,
            blake3: *blake3::hash(&bytes).as_bytes(),
        },
    ]
}

/// Runs a sync of `dst` against a scripted sender that sends `entries` as its manifest
/// and answers every request with `answer`. Returns the sync's result and every frame the
/// receiver sent.
async fn hostile_sync(
    dst: &Path,
    entries: Vec<Entry>,
    answer: Answer,
    opts: receiver::Options,
) -> (Result<Summary, PvcError>, Vec<Message>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let sender = tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(a);
        let mut seen = Vec::new();
        if let Ok(Some(m)) = wire::read(&mut rd).await {
            seen.push(m);
        }
        let hello = Message::Hello {
            min: wire::PROTOCOL_MIN,
            max: wire::PROTOCOL_MAX,
            features: vec![],
        };
        let _ = wire::write(&mut wr, &hello).await;
        for e in &entries {
            // Past the decoder's checks: the frame is what a hostile peer writes.
            if wire::write(&mut wr, &Message::Entry(e.clone()))
                .await
                .is_err()
            {
                return seen;
            }
        }
        let n = entries.len() as u64;
        let _ = wire::write(&mut wr, &Message::ManifestEnd { entries: n }).await;
        while let Ok(Some(m)) = wire::read(&mut rd).await {
            seen.push(m.clone());
            match m {
                Message::Request { idx, basis } => {
                    if let Basis::Signature { .. } = basis {
                        while let Ok(Some(m)) = wire::read(&mut rd).await {
                            let end = matches!(m, Message::SigEnd { .. });
                            seen.push(m);
                            if end {
                                break;
                            }
                        }
                    }
                    let Some(e) = entries.get(idx as usize) else {
                        break;
                    };
                    for f in answer(idx, e) {
                        if wire::write(&mut wr, &f).await.is_err() {
                            return seen;
                        }
                    }
                    let _ = wr.flush().await;
                }
                Message::Done => break,
                _ => {}
            }
        }
        seen
    });
    // A hang is reported as an error that names no path, so table tests list it too.
    let Ok(result) = tokio::time::timeout(TIMEOUT, receiver::sync(b, dst, &opts)).await else {
        sender.abort();
        return (
            Err(PvcError::Protocol("TIMEOUT: the receiver hangs".into())),
            Vec::new(),
        );
    };
    let seen = match tokio::time::timeout(TIMEOUT, sender).await {
        Ok(Ok(seen)) => seen,
        _ => Vec::new(),
    };
    (result, seen)
}

/// Everything observable about the files under `root`: content, mode, owner and times.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()
            } else {
                String::new()
            };
            out.insert(
                p.clone(),
                format!(
                    "{:o} {}:{} {}.{} {} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.len()
                ),
            );
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A temp dir with `dst` (the root) and `outside/shadow` (a big file worth a delta, mode
/// 0600, an old mtime) standing in for what must never be touched.
struct World {
    _tmp: tempfile::TempDir,
    dst: PathBuf,
    outside: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(outside.join("etc")).unwrap();
    for p in [outside.join("shadow"), outside.join("etc/shadow")] {
        fs::write(&p, vec![b's'; 200 << 10]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let t = filetime::FileTime::from_unix_time(1_500_000_000, 7);
        filetime::set_file_times(&p, t, t).unwrap();
    }
    World {
        _tmp: tmp,
        dst,
        outside,
    }
}

fn sigs(seen: &[Message]) -> usize {
    seen.iter()
        .filter(|m| {
            matches!(
                m,
                Message::Sig { .. }
                    | Message::Request {
                        basis: Basis::Signature { .. },
                        ..
                    }
            )
        })
        .count()
}

/// Hostile manifests: each is refused with an error naming the offending path, before
/// anything is changed, and nothing outside the root is touched or read.
#[tokio::test]
async fn receiver_refuses_hostile_manifests_table() {
    type Case = (&'static str, fn(&Path) -> Vec<Entry>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "the issue's attack: Dir d, Dir d/shadow, Symlink d -> outside",
            |o| vec![dir("d"), dir("d/shadow"), link("d", o)],
            "\"d\"",
        ),
        (
            "a duplicate file",
            |_| vec![file("a", 1), file("a", 1)],
            "\"a\"",
        ),
        (
            "a kind clash: a file, then a directory of the same name",
            |_| vec![file("a", 1), dir("a")],
            "\"a\"",
        ),
        (
            "a missing parent (planning would stat through a planted symlink)",
            |_| vec![file("d/shadow", 200 << 10)],
            "\"d/shadow\"",
        ),
        (
            "a missing intermediate parent",
            |_| vec![dir("d"), file("d/etc/shadow", 200 << 10)],
            "\"d/etc/shadow\"",
        ),
        (
            "a parent that is a symlink entry",
            |o| vec![link("d", o), file("d/shadow", 1)],
            "\"d/shadow\"",
        ),
        (
            "a parent that is a file entry",
            |_| vec![file("d", 1), file("d/x", 1)],
            "\"d/x\"",
        ),
        (
            "children of a directory after it was closed",
            |_| vec![dir("a"), dir("b"), file("a/x", 1)],
            "\"a/x\"",
        ),
        (
            "the state directory as a symlink",
            |o| vec![link(".drsync", o)],
            "\".drsync\"",
        ),
        (
            "the state directory as a directory",
            |_| vec![dir(".drsync"), dir(".drsync/partial")],
            "\".drsync\"",
        ),
        (
            "a hard link to a directory",
            |_| vec![dir("a"), hardlink("b", 0)],
            "\"b\"",
        ),
        (
            "a hard link to a later entry",
            |_| vec![hardlink("a", 1), file("b", 1)],
            "\"a\"",
        ),
        (
            "a file name longer than NAME_MAX",
            |_| vec![file(&"n".repeat(300), 1)],
            "nnnn",
        ),
    ];
    // Every case runs; the failures are reported together.
    let mut failures = Vec::new();
    for (case, entries, names) in cases {
        let w = world();
        // A symlink planted by an earlier sync (or a tenant) where the manifest says a
        // directory belongs: planning must not stat through it.
        symlink(&w.outside, w.dst.join("d")).unwrap();
        let before = snapshot(&w.outside);
        let entries = entries(&w.outside);
        let (result, seen) = hostile_sync(
            &w.dst,
            entries,
            Box::new(honest),
            receiver::Options::default(),
        )
        .await;
        match result {
            Ok(s) => failures.push(format!("{case}: accepted: {s:?}")),
            Err(e) if !e.to_string().contains(names) => {
                failures.push(format!("{case}: the error does not name the path: {e}"))
            }
            Err(_) => {}
        }
        if sigs(&seen) > 0 {
            failures.push(format!("{case}: a signature was sent"));
        }
        if snapshot(&w.outside) != before {
            failures.push(format!("{case}: outside changed"));
        }
        let d = fs::symlink_metadata(w.dst.join("d"));
        if !d.is_ok_and(|m| m.file_type().is_symlink()) {
            failures.push(format!(
                "{case}: the destination changed before the manifest was checked"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A symlink that an earlier (accepted) sync left at `d` does not let a later sync reach
/// through it: the later manifest cannot name `d/...` without a `Dir d` entry, and with
/// one, `d` is replaced by a real directory first.
#[tokio::test]
async fn receiver_symlink_planted_between_two_syncs() {
    let w = world();
    let before = snapshot(&w.outside);
    let first = vec![link("d", &w.outside)];
    let (r, _) = hostile_sync(
        &w.dst,
        first,
        Box::new(honest),
        receiver::Options::default(),
    )
    .await;
    r.unwrap();
    // Sync 2a: a child of the symlink, without its directory entry.
    let (r, seen) = hostile_sync(
        &w.dst,
        vec![file("d/shadow", 300 << 10)],
        Box::new(honest),
        receiver::Options::default(),
    )
    .await;
    let err = r
        .expect_err("a file beneath a symlink must be refused")
        .to_string();
    assert!(err.contains("d/shadow"), "{err}");
    assert_eq!(sigs(&seen), 0, "the outside file's signature was sent");
    // Sync 2b: well formed. `d` becomes a directory; the outside file is neither a basis
    // nor changed.
    let second = vec![dir("d"), dir("d/etc"), file("d/etc/shadow", 300 << 10)];
    let (r, seen) = hostile_sync(
        &w.dst,
        second,
        Box::new(honest),
        receiver::Options::default(),
    )
    .await;
    r.unwrap();
    assert_eq!(sigs(&seen), 0, "the outside file's signature was sent");
    assert!(fs::symlink_metadata(w.dst.join("d")).unwrap().is_dir());
    assert_eq!(
        fs::read(w.dst.join("d/etc/shadow")).unwrap(),
        vec![b'x'; 300 << 10]
    );
    assert_eq!(snapshot(&w.outside), before, "outside changed");
}

/// A state directory (or one of its subdirectories) planted as a symlink — by an older
/// receiver's hostile sender, or a tenant — is replaced by a real directory, never written
/// through: not for the file being received, nor for the partial file an interrupted
/// transfer leaves.
#[tokio::test]
async fn receiver_state_dir_symlink_is_not_followed_table() {
    for planted in [".drsync", ".drsync/tmp", ".drsync/partial"] {
        let w = world();
        if planted != ".drsync" {
            fs::create_dir_all(w.dst.join(".drsync")).unwrap();
        }
        symlink(&w.outside, w.dst.join(planted)).unwrap();
        let before = snapshot(&w.outside);
        // Half the file, then the sender gives up: what arrived is kept to resume from.
        let (r, _) = hostile_sync(
            &w.dst,
            vec![file("f", 10)],
            Box::new(|idx, _| {
                vec![
                    Message::Data {
                        idx,
                        offset: 0,
                        bytes: b"xxxxx".to_vec(),
                    },
                    Message::Error {
                        message: "gone".into(),
                    },
                ]
            }),
            receiver::Options::default(),
        )
        .await;
        assert!(r.is_err(), "{planted}");
        assert_eq!(snapshot(&w.outside), before, "{planted}: outside changed");
        // The next sync completes, still without touching the outside.
        let (r, _) = hostile_sync(
            &w.dst,
            vec![file("f", 10)],
            Box::new(honest),
            receiver::Options::default(),
        )
        .await;
        r.unwrap();
        assert_eq!(fs::read(w.dst.join("f")).unwrap(), b"xxxxxxxxxx");
        assert_eq!(snapshot(&w.outside), before, "{planted}: outside changed");
    }
}

/// Answers that do not match the manifest are refused before anything is published: no
/// more data than the manifest's size (a sender cannot fill the volume), no hole past it
/// (nor hours hashing zeros), no `FileEnd` claiming another size.
#[tokio::test]
async fn receiver_bounds_answers_table() {
    type Case = (&'static str, fn(u32, &Entry) -> Vec<Message>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "data beyond the manifest size",
            |idx, _| {
                let bytes = vec![7u8; 1 << 20];
                vec![
                    Message::Data {
                        idx,
                        offset: 0,
                        bytes: bytes.clone(),
                    },
                    Message::FileEnd {
                        idx,
                        size: bytes.len() as u64,
                        blake3: *blake3::hash(&bytes).as_bytes(),
                    },
                ]
            },
            "manifest",
        ),
        (
            "a FileEnd larger than the manifest, hash of what was sent",
            |idx, e| {
                let bytes = vec![b'x'; e.size as usize];
                vec![
                    Message::Data {
                        idx,
                        offset: 0,
                        bytes: bytes.clone(),
                    },
                    Message::FileEnd {
                        idx,
                        size: 1 << 40,
                        blake3: *blake3::hash(&bytes).as_bytes(),
                    },
                ]
            },
            "manifest",
        ),
        (
            "a hole of 2^62 bytes",
            |idx, _| {
                vec![
                    Message::Hole {
                        idx,
                        offset: 0,
                        len: 1 << 62,
                    },
                    Message::FileEnd {
                        idx,
                        size: 1 << 62,
                        blake3: [0; 32],
                    },
                ]
            },
            "manifest",
        ),
    ];
    let mut failures = Vec::new();
    for (case, answer, names) in cases {
        let w = world();
        let (r, _) = hostile_sync(
            &w.dst,
            vec![file("f", 10)],
            Box::new(answer),
            receiver::Options::default(),
        )
        .await;
        match r {
            Ok(s) => failures.push(format!("{case}: accepted: {s:?}")),
            Err(e) if !e.to_string().contains(names) || !e.to_string().contains("\"f\"") => {
                failures.push(format!("{case}: unclear error: {e}"))
            }
            Err(_) => {}
        }
        if w.dst.join("f").exists() {
            failures.push(format!("{case}: published"));
        }
        let used: u64 = walkdir_blocks(&w.dst);
        if used >= 1 << 20 {
            failures.push(format!("{case}: {used} bytes left on the volume"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn walkdir_blocks(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    total
}

/// The entry count is bounded: a sender cannot grow the receiver's memory without limit.
#[tokio::test]
async fn receiver_bounds_the_entry_count() {
    let w = world();
    let entries: Vec<Entry> = (0..20).map(|i| file(&format!("f{i:02}"), 1)).collect();
    let opts = receiver::Options {
        max_entries: 10,
        ..Default::default()
    };
    let (r, _) = hostile_sync(&w.dst, entries, Box::new(honest), opts).await;
    let err = r.expect_err("too many entries").to_string();
    assert!(err.contains("10"), "{err}");
    assert_eq!(fs::read_dir(&w.dst).unwrap().count(), 0);
}

/// A hostile receiver: hello, then `requests` for entry 0 without ever saying `Done`,
/// reading (and dropping) whatever the sender answers.
async fn flood(src: &Path, requests: usize) -> Result<(), PvcError> {
    let (a, b) = tokio::io::duplex(1 << 20);
    let src = src.to_path_buf();
    let server = tokio::spawn(async move { sender::serve(&src, a).await });
    let (mut rd, mut wr) = tokio::io::split(b);
    let hello = Message::Hello {
        min: wire::PROTOCOL_MIN,
        max: wire::PROTOCOL_MAX,
        features: vec![],
    };
    wire::write(&mut wr, &hello).await.unwrap();
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = wire::read(&mut rd).await {} });
    for _ in 0..requests {
        let req = Message::Request {
            idx: 0,
            basis: Basis::Whole,
        };
        if wire::write(&mut wr, &req).await.is_err() {
            break;
        }
    }
    let _ = wr.flush().await;
    let r = tokio::time::timeout(TIMEOUT, server)
        .await
        .expect("the sender must not wait forever")
        .unwrap();
    drain.abort();
    drop(wr);
    r
}

/// A receiver may not run arbitrarily far ahead: the sender's request queue is bounded
/// and a flood ends the session with a clear error.
#[tokio::test]
async fn sender_bounds_the_request_queue() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), vec![1u8; 300 << 10]).unwrap();
    let err = flood(tmp.path(), 5000)
        .await
        .expect_err("a flood must be refused")
        .to_string();
    assert!(err.contains("ahead"), "{err}");
}

/// In Direct mode a tenant can swap a walked file for a FIFO (the sender would hang on
/// open) or a device (`/dev/urandom` would fill the DR volume) between the walk and the
/// read. The sender reads only the regular file it walked, and never more than the
/// manifest's size of it.
#[tokio::test]
async fn sender_refuses_a_file_swapped_after_the_walk_table() {
    // The FIFO goes last: a sender that blocks opening it blocks this test's runtime too.
    let cases: [(&str, &[&str]); 3] = [
        ("a larger regular file", &[]),
        (
            "a character device (/dev/urandom)",
            &["mknod", "-m", "644", "c", "1", "9"],
        ),
        ("a FIFO", &["mkfifo"]),
    ];
    let mut failures = Vec::new();
    for (case, make) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), b"small").unwrap();
        let (a, b) = tokio::io::duplex(1 << 20);
        let s2 = src.clone();
        let server = tokio::spawn(async move { sender::serve(&s2, a).await });
        // A receiver that swaps the file once the manifest is in, then requests it.
        let (mut rd, mut wr) = tokio::io::split(b);
        let hello = Message::Hello {
            min: wire::PROTOCOL_MIN,
            max: wire::PROTOCOL_MAX,
            features: vec![],
        };
        wire::write(&mut wr, &hello).await.unwrap();
        loop {
            match wire::read(&mut rd).await.unwrap() {
                Some(Message::ManifestEnd { .. }) => break,
                Some(_) => {}
                None => panic!("{case}: closed"),
            }
        }
        let f = src.join("f");
        // Moved aside, not deleted: its inode number cannot be reused by the new file.
        fs::rename(&f, src.join("f.old")).unwrap();
        if make.is_empty() {
            fs::write(&f, vec![9u8; 4 << 20]).unwrap();
        } else {
            let (cmd, args) = (make[0], &make[1..]);
            let (head, tail) = args.split_at(args.len().saturating_sub(3).min(2));
            let ok = std::process::Command::new(cmd)
                .args(head)
                .arg(&f)
                .args(tail)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("{case}: cannot create it here, skipped");
                continue;
            }
        }
        let req = Message::Request {
            idx: 0,
            basis: Basis::Whole,
        };
        wire::write(&mut wr, &req).await.unwrap();
        wire::write(&mut wr, &Message::Done).await.unwrap();
        wr.flush().await.unwrap();
        let mut data = 0u64;
        let read = async {
            while let Ok(Some(m)) = wire::read(&mut rd).await {
                if let Message::Data { bytes, .. } = m {
                    data += bytes.len() as u64;
                }
            }
        };
        if tokio::time::timeout(TIMEOUT, read).await.is_err() {
            failures.push(format!(
                "{case}: the sender is still sending after {TIMEOUT:?}"
            ));
            server.abort();
            continue;
        }
        match tokio::time::timeout(TIMEOUT, server).await {
            Err(_) => failures.push(format!("{case}: the sender hangs")),
            Ok(Ok(Err(e))) if e.to_string().contains("changed since the walk") => {}
            Ok(r) => failures.push(format!("{case}: not refused: {r:?}")),
        }
        if data > 5 {
            failures.push(format!("{case}: {data} bytes sent for a 5-byte file"));
        }
        drop(dst);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// What the `receiver` fuzz target checks, as a quick deterministic run: an honest
/// session's byte stream, mutated (bytes flipped, cut short) a few hundred ways, fed into
/// the receiver. It may fail, but must not panic or hang, and must not touch anything
/// outside its root.
#[tokio::test]
async fn receiver_survives_mutated_sessions() {
    let w = world();
    let before = snapshot(&w.outside);
    let entries = vec![
        dir("a"),
        file("a/f", 3000),
        link("a/l", &w.outside),
        hardlink("a/m", 1),
        file("g", 10),
    ];
    let mut honest_stream = Vec::new();
    let mut frame = |m: &Message| honest_stream.extend(wire::encode(m).unwrap());
    frame(&Message::Hello {
        min: wire::PROTOCOL_MIN,
        max: wire::PROTOCOL_MAX,
        features: vec![],
    });
    for e in &entries {
        frame(&Message::Entry(e.clone()));
    }
    frame(&Message::ManifestEnd { entries: 5 });
    for idx in [1u32, 4] {
        for m in honest(idx, &entries[idx as usize]) {
            frame(&m);
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let mut stream = honest_stream.clone();
        if round > 0 {
            for _ in 0..(1 + rand() % 4) {
                let at = (rand() % stream.len() as u64) as usize;
                stream[at] = rand() as u8;
            }
            if round % 3 == 0 {
                stream.truncate((rand() % stream.len() as u64) as usize);
            }
        }
        let dst = w.dst.join(format!("r{round}"));
        fs::create_dir_all(&dst).unwrap();
        symlink(&w.outside, dst.join("d")).unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(a);
        let drain =
            tokio::spawn(async move { while let Ok(Some(_)) = wire::read(&mut rd).await {} });
        let feed = tokio::spawn(async move {
            let _ = wr.write_all(&stream).await;
            let _ = wr.shutdown().await;
        });
        let r = tokio::time::timeout(TIMEOUT, receiver::sync(b, &dst, &Default::default())).await;
        assert!(r.is_ok(), "round {round}: the receiver hangs");
        if round == 0 {
            r.unwrap().unwrap();
            assert_eq!(fs::read(dst.join("g")).unwrap(), b"xxxxxxxxxx");
        }
        feed.abort();
        drain.abort();
        assert_eq!(
            snapshot(&w.outside),
            before,
            "round {round}: outside changed"
        );
    }
}
