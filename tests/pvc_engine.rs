//! The PVC delta engine end to end over an in-memory pipe (the SSH layer is tested
//! separately): generated trees with every kind of entry, synced and changed in turn; after
//! each run the destination equals the source by a tree hash.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use dr_syncer::pvc::{Summary, receiver, sender};

/// Everything the sync must reproduce, per path: type, mode, owner, size, mtime, content
/// hash or link target, and which paths share an inode.
fn tree_hash(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    fn walk(
        root: &Path,
        rel: &[u8],
        out: &mut BTreeMap<Vec<u8>, String>,
        inodes: &mut BTreeMap<u64, Vec<u8>>,
    ) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(rel))
        };
        for e in fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name();
            if rel.is_empty() && name == ".drsync" {
                continue;
            }
            let path = if rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [rel, b"/", name.as_bytes()].concat()
            };
            let full = root.join(OsStr::from_bytes(&path));
            let m = fs::symlink_metadata(&full).unwrap();
            let common = format!(
                "uid={} gid={} mtime={}.{}",
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            );
            let desc = if m.file_type().is_symlink() {
                format!("link -> {:?} {common}", fs::read_link(&full).unwrap())
            } else if m.is_dir() {
                walk(root, &path, out, inodes);
                format!("dir {:o} {common}", m.mode() & 0o7777)
            } else {
                let first = inodes
                    .entry(m.ino())
                    .or_insert_with(|| path.clone())
                    .clone();
                format!(
                    "file {:o} {} {} {common} inode-of={}",
                    m.mode() & 0o7777,
                    m.len(),
                    blake3::hash(&fs::read(&full).unwrap()).to_hex(),
                    String::from_utf8_lossy(&first)
                )
            };
            out.insert(path, desc);
        }
    }
    walk(root, &[], &mut out, &mut inodes);
    out
}

async fn sync(src: &Path, dst: &Path) -> Summary {
    let (a, b) = tokio::io::duplex(1 << 20);
    let src = src.to_path_buf();
    let server = tokio::spawn(async move { sender::serve(&src, a).await });
    let summary = receiver::sync(b, dst, &receiver::Options::default())
        .await
        .unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(
        tree_hash(dst.parent().unwrap().join("src").as_path()),
        tree_hash(dst),
        "trees differ after sync"
    );
    summary
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn set_mtime(p: &Path, s: i64, ns: u32) {
    let t = filetime::FileTime::from_unix_time(s, ns);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

/// A source tree with every kind of entry.
fn populate(src: &Path) {
    write(src, "empty", b"");
    write(src, "small.txt", b"hello\n");
    write(src, "data/big.bin", &pseudo_random(3 << 20, 1));
    write(src, "data/medium.bin", &pseudo_random(200_000, 2));
    write(src, "unicode/café ☕/naïve.txt", "ünïcödé".as_bytes());
    let raw = src.join(OsStr::from_bytes(b"raw-\xff\xfe-name"));
    fs::write(&raw, b"not utf-8 name").unwrap();
    let mut deep = String::from("deep");
    for i in 0..24 {
        deep.push_str(&format!("/level{i}"));
    }
    write(src, &format!("{deep}/leaf"), b"deep leaf");
    symlink("/etc/passwd", src.join("abs-link")).unwrap();
    symlink("data/big.bin", src.join("rel-link")).unwrap();
    symlink("../outside/secret", src.join("data/up-link")).unwrap();
    symlink("does/not/exist", src.join("dangling")).unwrap();
    fs::hard_link(src.join("small.txt"), src.join("data/small-hardlink.txt")).unwrap();
    fs::set_permissions(
        src.join("data/medium.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(src.join("small.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    // A sparse file: 64 MiB with data only at both ends.
    let sparse = fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(b"end", (64 << 20) - 3).unwrap();
    std::os::unix::fs::chown(src.join("data/medium.bin"), Some(1234), Some(5678)).unwrap();
    set_mtime(&src.join("small.txt"), 1_600_000_000, 123_456_789);
}

#[tokio::test]
async fn pvc_engine_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    populate(&src);
    // Junk at the destination goes.
    write(&dst, "junk/old.txt", b"stale");

    let first = sync(&src, &dst).await;
    assert!(first.files_transferred >= 6, "{first:?}");
    assert!(first.deleted >= 1, "{first:?}");
    assert!(
        first.bytes_sparse >= 60 << 20,
        "holes are not sent: {first:?}"
    );
    let sparse_blocks = fs::metadata(dst.join("sparse.img")).unwrap().blocks() * 512;
    assert!(
        sparse_blocks < 8 << 20,
        "sparse file stays sparse: {sparse_blocks} bytes allocated"
    );

    type Case = (&'static str, fn(&Path), fn(&Summary) -> bool);
    let cases: Vec<Case> = vec![
        (
            "no change: nothing transferred",
            |_| {},
            |s| s.files_transferred == 0 && s.bytes_literal == 0,
        ),
        (
            "1 % changed inside a large file: a delta",
            |src| {
                let p = src.join("data/big.bin");
                let mut d = fs::read(&p).unwrap();
                for i in (0..d.len()).step_by(400_000) {
                    d[i..i + 300].fill(7);
                }
                fs::write(&p, d).unwrap();
            },
            |s| s.files_transferred == 1 && s.bytes_matched > 2 << 20 && s.bytes_literal < 200_000,
        ),
        (
            "new, deleted and renamed files",
            |src| {
                write(src, "new/file.txt", b"new");
                fs::remove_file(src.join("empty")).unwrap();
                fs::rename(src.join("data/medium.bin"), src.join("data/renamed.bin")).unwrap();
            },
            |s| s.deleted >= 2 && s.files_transferred >= 2,
        ),
        (
            "mode only (metadata), and mtime only (a delta that matches everything)",
            |src| {
                fs::set_permissions(src.join("small.txt"), fs::Permissions::from_mode(0o640))
                    .unwrap();
                set_mtime(&src.join("data/renamed.bin"), 1_700_000_000, 1);
            },
            |s| s.files_metadata >= 1 && s.bytes_literal < 4096 && s.bytes_matched >= 190_000,
        ),
        (
            "a directory becomes a symlink and a symlink a directory",
            |src| {
                fs::remove_dir_all(src.join("unicode")).unwrap();
                symlink("data", src.join("unicode")).unwrap();
                fs::remove_file(src.join("dangling")).unwrap();
                write(src, "dangling/now-a-dir.txt", b"x");
            },
            |_| true,
        ),
        (
            "a hard link gets a new partner",
            |src| {
                fs::hard_link(src.join("data/big.bin"), src.join("big-again.bin")).unwrap();
            },
            |s| s.hardlinks >= 2 && s.bytes_literal == 0,
        ),
    ];
    for (case, change, check) in cases {
        change(&src);
        let s = sync(&src, &dst).await;
        assert!(check(&s), "{case}: {s:?}");
    }
    // Symlinks were copied as links, never followed: nothing outside dst was created.
    assert!(!tmp.path().join("outside").exists());
}

/// A stream that fails after `limit` bytes have been written through it (a dropped
/// connection).
struct Cut<S> {
    inner: S,
    left: usize,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Cut<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Cut<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "cut",
            )));
        }
        let n = buf.len().min(self.left);
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let std::task::Poll::Ready(Ok(k)) = &r {
            self.left -= k;
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn pvc_engine_interrupted_large_file_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let data = pseudo_random(24 << 20, 5);
    write(&src, "db/large.bin", &data);
    // The connection drops after about 10 MiB.
    let (a, b) = tokio::io::duplex(1 << 20);
    let s2 = src.clone();
    let server = tokio::spawn(async move {
        sender::serve(
            &s2,
            Cut {
                inner: a,
                left: 10 << 20,
            },
        )
        .await
    });
    let err = receiver::sync(b, &dst, &receiver::Options::default()).await;
    assert!(err.is_err(), "the cut must fail the sync");
    let _ = server.await;
    assert!(
        !dst.join("db/large.bin").exists(),
        "no partial file is visible at the destination"
    );
    // The rerun resumes: most of the file comes from what already arrived.
    let s = sync(&src, &dst).await;
    assert!(
        s.bytes_matched >= 8 << 20,
        "resumed instead of restarting: {s:?}"
    );
    assert!(s.bytes_literal < (17 << 20), "{s:?}");
    assert_eq!(fs::read(dst.join("db/large.bin")).unwrap(), data);
}

#[tokio::test]
async fn pvc_engine_bandwidth_limit_and_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    for i in 0..4 {
        write(
            &src,
            &format!("f{i}.bin"),
            &pseudo_random(768 << 10, 40 + i),
        );
    }
    let (a, b) = tokio::io::duplex(1 << 20);
    let s2 = src.clone();
    let server = tokio::spawn(async move { sender::serve(&s2, a).await });
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let opts = receiver::Options {
        bwlimit: Some(1 << 20),
        progress: Some(Box::new(move |done, total, bytes| {
            log.lock().unwrap().push((done, total, bytes))
        })),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let s = receiver::sync(b, &dst, &opts).await.unwrap();
    server.await.unwrap().unwrap();
    // 3 MiB at 1 MiB/s: about 3 s (the first second's burst aside).
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.bytes_literal, 3 << 20);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4, "one progress event per file: {seen:?}");
    assert_eq!(seen.last().unwrap(), &(4, 4, 3 << 20));
}

#[tokio::test]
async fn pvc_engine_refuses_a_sender_naming_paths_outside_the_root() {
    use dr_syncer::pvc::wire::{self, Entry, Kind, Message};
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let (a, b) = tokio::io::duplex(1 << 16);
    // A hostile sender: valid hello, then an entry climbing out of the root. Its frame is
    // built by hand, past the checks an honest encoder would apply.
    let evil = tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(a);
        let _ = wire::read(&mut rd).await;
        wire::write(
            &mut wr,
            &Message::Hello {
                min: wire::PROTOCOL_MIN,
                max: wire::PROTOCOL_MAX,
                features: vec![],
            },
        )
        .await
        .unwrap();
        let entry = Message::Entry(Entry {
            path: b"../escaped".to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 4,
            mtime_s: 0,
            mtime_ns: 0,
        });
        let _ = wire::write(&mut wr, &entry).await;
        let _ = wire::write(&mut wr, &Message::ManifestEnd { entries: 1 }).await;
    });
    let err = receiver::sync(b, &dst, &receiver::Options::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused path"), "{err}");
    assert!(!tmp.path().join("escaped").exists());
    let _ = evil.await;
}

/// A sender whose first copy of a file fails verification: the receiver asks for it whole
/// once more and publishes only the verified copy; a second failure is an error and
/// nothing is published.
#[tokio::test]
async fn pvc_engine_resends_a_file_that_fails_verification_once() {
    use dr_syncer::pvc::wire::{self, Basis, Entry, Kind, Message};
    for bad_copies in [1usize, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("dst");
        let (a, b) = tokio::io::duplex(1 << 16);
        let content = b"the real content".to_vec();
        let good = *blake3::hash(&content).as_bytes();
        let fake = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(a);
            let _ = wire::read(&mut rd).await;
            wire::write(
                &mut wr,
                &Message::Hello {
                    min: wire::PROTOCOL_MIN,
                    max: wire::PROTOCOL_MAX,
                    features: vec![],
                },
            )
            .await
            .unwrap();
            let entry = Entry {
                path: b"f.txt".to_vec(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: content.len() as u64,
                mtime_s: 1_600_000_000,
                mtime_ns: 0,
            };
            wire::write(&mut wr, &Message::Entry(entry)).await.unwrap();
            wire::write(&mut wr, &Message::ManifestEnd { entries: 1 })
                .await
                .unwrap();
            let mut served = 0;
            while let Ok(Some(Message::Request {
                idx: 0,
                basis: Basis::Whole,
            })) = wire::read(&mut rd).await
            {
                let bad = served < bad_copies;
                served += 1;
                let bytes = if bad {
                    b"the real CONTENT".to_vec()
                } else {
                    content.clone()
                };
                wire::write(
                    &mut wr,
                    &Message::Data {
                        idx: 0,
                        offset: 0,
                        bytes: bytes.clone(),
                    },
                )
                .await
                .unwrap();
                let hash = if bad {
                    good
                } else {
                    *blake3::hash(&bytes).as_bytes()
                };
                wire::write(
                    &mut wr,
                    &Message::FileEnd {
                        idx: 0,
                        size: bytes.len() as u64,
                        blake3: hash,
                    },
                )
                .await
                .unwrap();
            }
            served
        });
        let result = receiver::sync(b, &dst, &receiver::Options::default()).await;
        match bad_copies {
            1 => {
                let s = result.unwrap();
                assert_eq!(s.files_redone, 1);
                assert_eq!(fs::read(dst.join("f.txt")).unwrap(), b"the real content");
            }
            _ => {
                let err = result.unwrap_err();
                assert!(
                    err.to_string().contains("failed verification twice"),
                    "{err}"
                );
                assert!(
                    !dst.join("f.txt").exists(),
                    "an unverified file was published"
                );
            }
        }
        drop(fake);
    }
}

/// A destination directory that is a symlink (say, to another volume's copy of the same
/// files) is replaced by a real directory and filled; nothing is compared with, skipped
/// because of, or written through what the symlink points at.
#[tokio::test]
async fn pvc_engine_never_plans_through_a_symlinked_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("outside"),
    );
    write(&src, "sub/f.txt", b"same content");
    set_mtime(&src.join("sub/f.txt"), 1_700_000_000, 5);
    write(&outside, "f.txt", b"same content");
    set_mtime(&outside.join("f.txt"), 1_700_000_000, 5);
    fs::create_dir_all(&dst).unwrap();
    symlink(&outside, dst.join("sub")).unwrap();
    let s = sync(&src, &dst).await;
    assert!(
        fs::symlink_metadata(dst.join("sub"))
            .unwrap()
            .file_type()
            .is_dir()
    );
    assert_eq!(fs::read(dst.join("sub/f.txt")).unwrap(), b"same content");
    assert_eq!(
        s.files_transferred, 1,
        "sent, not skipped because of the outside copy"
    );
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "outside untouched"
    );
}
