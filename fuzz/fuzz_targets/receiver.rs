//! Fuzzes the PVC receiver against a hostile sender: the input (after a valid hello) is
//! the sender's whole stream — manifest, answers, anything — fed into `receiver::sync`
//! against a temporary destination that holds a symlink to a directory outside it (as an
//! earlier sync or a tenant could leave). The receiver must never panic or hang on the
//! input, and must never change anything outside its root.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use dr_syncer::pvc::{receiver, wire};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Content, mode, owner and times of every file in `dir` (one level: the fixture is flat).
fn snapshot(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>, u32, u32, i64, i64)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .expect("outside dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = fs::symlink_metadata(e.path()).expect("stat");
            let content = if m.is_file() { fs::read(e.path()).expect("read") } else { Vec::new() };
            (e.file_name(), content, m.mode(), m.uid(), m.mtime(), m.mtime_nsec())
        })
        .collect();
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dst, outside) = (tmp.path().join("dst"), tmp.path().join("outside"));
    fs::create_dir_all(&dst).expect("dst");
    fs::create_dir_all(&outside).expect("outside");
    fs::write(outside.join("shadow"), b"secret").expect("shadow");
    std::os::unix::fs::symlink(&outside, dst.join("d")).expect("symlink");
    let before = snapshot(&outside);
    let hello = wire::encode(&wire::Message::Hello {
        min: wire::PROTOCOL_MIN,
        max: wire::PROTOCOL_MAX,
        features: vec![],
    })
    .expect("hello");
    let input = [hello.as_slice(), data].concat();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(a);
        // What the receiver sends is read and dropped, so it never blocks writing.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while rd.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let feed = tokio::spawn(async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        });
        let opts = receiver::Options {
            max_entries: 10_000,
            ..Default::default()
        };
        let _ = receiver::sync(b, &dst, &opts).await;
        feed.abort();
        drain.abort();
    });
    assert_eq!(snapshot(&outside), before, "the receiver changed something outside its root");
});
