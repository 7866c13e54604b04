//! The receiving side (the DR volume): reads the manifest, plans every entry against what
//! is already there (skip, metadata only, whole file, delta against the old file or an
//! interrupted transfer's partial file), requests what it needs while the answers stream
//! in, verifies each file with BLAKE3 (resent whole once on mismatch), and publishes it
//! with temp file + fsync + rename, then owner, mode and times. Hard links, symlinks and
//! deletions follow; directory metadata goes last.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::delta::{self, read_full};
use super::manifest::STATE_DIR;
use super::wire::{self, Basis, Entry, Kind, Message};
use super::{PvcError, Summary};

/// Files requested ahead of their answers (keeps the link busy across round trips).
const PIPELINE: usize = 256;

/// Files smaller than this are sent whole: a delta would not pay for its round trip.
const DELTA_MIN: u64 = 64 << 10;

/// Progress callback: (files done, files to transfer, bytes done).
pub type ProgressFn = Box<dyn Fn(u64, u64, u64) + Send + Sync>;

/// Receiver settings.
#[derive(Default)]
pub struct Options {
    /// Ask the sender to stay below this many bytes per second.
    pub bwlimit: Option<u64>,
    /// Called after every file with (files done, files to transfer, bytes done).
    pub progress: Option<ProgressFn>,
}

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Content and metadata already match.
    Skip,
    /// Content matches; owner, mode or times differ.
    Metadata,
    /// Send it whole.
    Whole,
    /// Send a delta against this basis file.
    Delta(PathBuf),
}

/// Plans a file entry against the local file (path and metadata, if any) and an
/// interrupted transfer's partial file (path and length, if any). Pure.
pub fn plan_file(
    entry: &Entry,
    local: Option<(&Path, &fs::Metadata)>,
    partial: Option<(&Path, u64)>,
) -> Plan {
    let local = local.filter(|(_, m)| m.file_type().is_file());
    let same_content = |m: &fs::Metadata| {
        m.len() == entry.size
            && m.mtime() == entry.mtime_s
            && m.mtime_nsec() as u32 == entry.mtime_ns
    };
    if let Some((_, m)) = local.filter(|(_, m)| same_content(m)) {
        let same_meta =
            m.mode() & 0o7777 == entry.mode && m.uid() == entry.uid && m.gid() == entry.gid;
        return if same_meta {
            Plan::Skip
        } else {
            Plan::Metadata
        };
    }
    // An interrupted transfer of this file resumes from what arrived.
    if let Some((p, _)) = partial.filter(|(_, len)| *len > 0) {
        return Plan::Delta(p.to_path_buf());
    }
    match local {
        Some((p, m)) if m.len() >= DELTA_MIN && entry.size >= DELTA_MIN => {
            Plan::Delta(p.to_path_buf())
        }
        _ => Plan::Whole,
    }
}

/// Plans a file entry against what is at its destination now (read-only).
fn plan_entry(
    to: &Path,
    e: &Entry,
    partials: &std::collections::HashMap<std::ffi::OsString, u64>,
    parent_is_dir: bool,
) -> Plan {
    let dest = to.join(os(&e.path));
    let local = if parent_is_dir {
        fs::symlink_metadata(&dest).ok()
    } else {
        None
    };
    // Partial files are rare: hash the path to look one up only when there are any.
    let partial = (!partials.is_empty()).then(|| partial_path(to, &e.path));
    let partial_len = partial.as_ref().map(|p| {
        partials
            .get(p.file_name().unwrap_or_default())
            .copied()
            .unwrap_or(0)
    });
    plan_file(
        e,
        local.as_ref().map(|m| (dest.as_path(), m)),
        partial.as_deref().zip(partial_len),
    )
}

fn os(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

/// Where an interrupted transfer of `path` is kept.
fn partial_path(root: &Path, path: &[u8]) -> PathBuf {
    root.join(STATE_DIR)
        .join("partial")
        .join(blake3::hash(path).to_hex().as_str())
}

/// Makes sure every parent of `rel` is a real directory (never a symlink), so nothing is
/// written outside the root.
fn ensure_parents(root: &Path, rel: &[u8]) -> Result<(), PvcError> {
    let mut cur = root.to_path_buf();
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    for part in &parts[..parts.len() - 1] {
        cur.push(OsStr::from_bytes(part));
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                fs::remove_file(&cur).map_err(|e| PvcError::io(&cur, e))?;
                fs::create_dir(&cur).map_err(|e| PvcError::io(&cur, e))?;
            }
            Err(_) => fs::create_dir(&cur).map_err(|e| PvcError::io(&cur, e))?,
        }
    }
    Ok(())
}

/// Replaces whatever is at `dest` (a directory tree included) by `tmp`, atomically for
/// files and symlinks.
fn publish(tmp: &Path, dest: &Path) -> Result<(), PvcError> {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_dir()) {
        fs::remove_dir_all(dest).map_err(|e| PvcError::io(dest, e))?;
    }
    fs::rename(tmp, dest).map_err(|e| PvcError::io(dest, e))
}

/// Owner, then mode (chown clears set-id bits), then times. Ownership needs privileges:
/// without them it is left as is (numeric ids are kept when running as root).
fn set_metadata(path: &Path, e: &Entry, symlink: bool) -> Result<(), PvcError> {
    let owner = std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid));
    if let Err(err) = owner.filter_permission_denied() {
        return Err(PvcError::io(path, err));
    }
    let mtime = filetime::FileTime::from_unix_time(e.mtime_s, e.mtime_ns);
    if symlink {
        filetime::set_symlink_file_times(path, mtime, mtime)
            .map_err(|err| PvcError::io(path, err))?;
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(e.mode))
            .map_err(|err| PvcError::io(path, err))?;
        filetime::set_file_times(path, mtime, mtime).map_err(|err| PvcError::io(path, err))?;
    }
    Ok(())
}

/// Ownership changes need privileges; without them they are skipped, not fatal.
trait PermissionDeniedOk {
    fn filter_permission_denied(self) -> Result<(), std::io::Error>;
}

impl PermissionDeniedOk for Result<(), std::io::Error> {
    fn filter_permission_denied(self) -> Result<(), std::io::Error> {
        match self {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
            other => other,
        }
    }
}

/// A file being received.
struct Incoming {
    idx: u32,
    tmp: PathBuf,
    file: File,
    hasher: blake3::Hasher,
    basis: Option<(File, u64)>,
    window: Vec<u8>,
    written: u64,
    redo: bool,
}

/// Runs one sync into `to` over `stream`.
pub async fn sync<S>(stream: S, to: &Path, opts: &Options) -> Result<Summary, PvcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let (rd, wr) = tokio::io::split(stream);
    // Buffered both ways: small frames (manifest entries, requests) share SSH packets.
    let mut rd = tokio::io::BufReader::with_capacity(256 << 10, rd);
    let mut wr = tokio::io::BufWriter::with_capacity(64 << 10, wr);
    let mut features = vec!["sparse".to_string(), "hardlink".to_string()];
    if let Some(rate) = opts.bwlimit {
        features.push(format!("bwlimit={rate}"));
    }
    wire::write(
        &mut wr,
        &Message::Hello {
            min: wire::PROTOCOL_MIN,
            max: wire::PROTOCOL_MAX,
            features,
        },
    )
    .await?;
    wr.flush().await.map_err(wire::WireError::Io)?;
    match wire::read(&mut rd).await? {
        Some(Message::Hello { min, max, .. })
            if min <= wire::PROTOCOL_MAX && max >= wire::PROTOCOL_MIN => {}
        Some(Message::Hello { min, max, .. }) => {
            return Err(PvcError::Protocol(format!(
                "sender speaks protocol versions {min}..={max}, this receiver {}..={}; run the same dr-syncer version on both sides",
                wire::PROTOCOL_MIN,
                wire::PROTOCOL_MAX
            )));
        }
        Some(Message::Error { message }) => return Err(PvcError::Remote(message)),
        other => return Err(PvcError::Protocol(format!("expected hello, got {other:?}"))),
    }
    let partials: std::collections::HashMap<std::ffi::OsString, u64> =
        fs::read_dir(to.join(STATE_DIR).join("partial"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.file_name(), e.metadata().ok()?.len())))
                    .collect()
            })
            .unwrap_or_default();
    // Files are planned as their entries arrive (a stat each, nothing written), so the
    // receiver's stats overlap the sender's walk; changes start after the whole manifest.
    let mut entries: Vec<Entry> = Vec::new();
    let mut plans: Vec<(u32, Plan)> = Vec::new();
    let mut not_dirs: HashSet<Vec<u8>> = HashSet::new();
    loop {
        match wire::read(&mut rd).await? {
            Some(Message::Entry(e)) => {
                if let Some(link) = e.link {
                    let ok = entries
                        .get(link as usize)
                        .is_some_and(|l| l.kind == Kind::File);
                    if !ok {
                        return Err(PvcError::Protocol(format!(
                            "hard link {:?} to a non-file",
                            String::from_utf8_lossy(&e.path)
                        )));
                    }
                }
                // A directory that is not a real directory here yet (missing, or a file or
                // symlink to be replaced) has nothing beneath it to compare with; looking
                // through a symlink would compare with files outside the volume.
                let parent = e
                    .path
                    .iter()
                    .rposition(|b| *b == b'/')
                    .map(|i| &e.path[..i]);
                let under_new = parent.is_some_and(|p| not_dirs.contains(p));
                match e.kind {
                    Kind::Dir => {
                        let real = !under_new
                            && fs::symlink_metadata(to.join(os(&e.path)))
                                .is_ok_and(|m| m.file_type().is_dir());
                        if !real {
                            not_dirs.insert(e.path.clone());
                        }
                    }
                    Kind::File => {
                        let plan = plan_entry(to, &e, &partials, !under_new);
                        plans.push((entries.len() as u32, plan));
                    }
                    _ => {}
                }
                entries.push(e);
            }
            Some(Message::ManifestEnd { entries: n }) if n == entries.len() as u64 => break,
            Some(Message::Error { message }) => return Err(PvcError::Remote(message)),
            other => return Err(PvcError::Protocol(format!("in manifest: {other:?}"))),
        }
    }
    fs::create_dir_all(to).map_err(|e| PvcError::io(to, e))?;
    for d in ["tmp", "partial"] {
        let p = to.join(STATE_DIR).join(d);
        fs::create_dir_all(&p).map_err(|e| PvcError::io(&p, e))?;
    }
    let mut summary = Summary::default();
    // Directories first, so everything below has a real directory to land in.
    for e in entries.iter().filter(|e| e.kind == Kind::Dir) {
        ensure_parents(to, &e.path)?;
        let p = to.join(os(&e.path));
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                fs::remove_file(&p).map_err(|err| PvcError::io(&p, err))?;
                fs::create_dir(&p).map_err(|err| PvcError::io(&p, err))?;
            }
            Err(_) => fs::create_dir(&p).map_err(|err| PvcError::io(&p, err))?,
        }
        summary.dirs += 1;
    }
    // Other names of each hard-linked file.
    let mut members: std::collections::HashMap<u32, Vec<&[u8]>> = std::collections::HashMap::new();
    for e in &entries {
        if let Some(l) = e.link {
            members.entry(l).or_default().push(&e.path);
        }
    }
    let mut requests: Vec<(u32, Basis, Option<PathBuf>)> = Vec::new();
    for (i, plan) in plans {
        let e = &entries[i as usize];
        let dest = to.join(os(&e.path));
        match plan {
            Plan::Skip => summary.files_unchanged += 1,
            Plan::Metadata => {
                set_metadata(&dest, e, false)?;
                summary.files_metadata += 1;
            }
            Plan::Whole => {
                // A new name of a hard-linked file whose other name is already here (a
                // link was added on the source): link it locally instead of resending.
                let twin = members
                    .get(&i)
                    .into_iter()
                    .flatten()
                    .map(|m| to.join(os(m)))
                    .find(|p| {
                        fs::symlink_metadata(p).is_ok_and(|m| {
                            m.file_type().is_file()
                                && m.len() == e.size
                                && m.mtime() == e.mtime_s
                                && m.mtime_nsec() as u32 == e.mtime_ns
                        })
                    });
                match twin {
                    Some(t) => {
                        let tmp = to.join(STATE_DIR).join("tmp").join(format!("twin-{i}"));
                        let _ = fs::remove_file(&tmp);
                        fs::hard_link(&t, &tmp).map_err(|err| PvcError::io(&tmp, err))?;
                        set_metadata(&tmp, e, false)?;
                        ensure_parents(to, &e.path)?;
                        publish(&tmp, &dest)?;
                        summary.files_metadata += 1;
                    }
                    None => requests.push((i, Basis::Whole, None)),
                }
            }
            Plan::Delta(basis) => {
                let size = fs::metadata(&basis).map(|m| m.len()).unwrap_or(0);
                let block_size = delta::block_size(size);
                requests.push((
                    i,
                    Basis::Signature {
                        block_size,
                        hash_len: delta::hash_len(size, block_size),
                    },
                    Some(basis),
                ));
            }
        }
    }
    let total = requests.len() as u64;
    // The writer task sends requests (and signatures) while this task reads the answers.
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<(u32, Option<PathBuf>, bool)>();
    let (redo_tx, mut redo_rx) = mpsc::unbounded_channel::<u32>();
    // At most this many files requested ahead of the answers: bounds the sender's queue.
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(PIPELINE));
    let permits = window.clone();
    let writer = tokio::spawn(async move {
        for (idx, basis, path) in requests {
            // About to wait for answers: what is buffered must go out first.
            if permits.available_permits() == 0 {
                wr.flush().await.map_err(wire::WireError::Io)?;
            }
            permits
                .acquire()
                .await
                .map_err(|_| PvcError::Protocol("pipeline closed".into()))?
                .forget();
            let _ = order_tx.send((idx, path.clone(), false));
            wire::write(&mut wr, &Message::Request { idx, basis }).await?;
            if let (
                Basis::Signature {
                    block_size,
                    hash_len,
                },
                Some(p),
            ) = (basis, &path)
            {
                send_signature(&mut wr, idx, block_size, hash_len, p).await?;
            }
        }
        wr.flush().await.map_err(wire::WireError::Io)?;
        while let Some(idx) = redo_rx.recv().await {
            let _ = order_tx.send((idx, None, true));
            wire::write(
                &mut wr,
                &Message::Request {
                    idx,
                    basis: Basis::Whole,
                },
            )
            .await?;
            wr.flush().await.map_err(wire::WireError::Io)?;
        }
        wire::write(&mut wr, &Message::Done).await?;
        wr.flush().await.map_err(wire::WireError::Io)?;
        let _ = wr.shutdown().await;
        Ok::<_, PvcError>(())
    });
    let tmp_dir = to.join(STATE_DIR).join("tmp");
    let mut publisher = Publisher::start(to.to_path_buf());
    let mut outstanding = total;
    let mut pending: VecDeque<(u32, Option<PathBuf>, bool)> = VecDeque::new();
    let mut current: Option<Incoming> = None;
    let mut done_files = 0u64;
    let result: Result<(), PvcError> = async {
        while outstanding > 0 {
            let msg = wire::read(&mut rd)
                .await?
                .ok_or_else(|| PvcError::Protocol("connection closed mid-transfer".into()))?;
            let idx = match &msg {
                Message::Data { idx, .. }
                | Message::Hole { idx, .. }
                | Message::Delta { idx, .. }
                | Message::FileEnd { idx, .. } => *idx,
                Message::Error { message } => return Err(PvcError::Remote(message.clone())),
                other => return Err(PvcError::Protocol(format!("unexpected {other:?}"))),
            };
            if current.is_none() {
                while pending.is_empty() {
                    let next = order_rx
                        .recv()
                        .await
                        .ok_or_else(|| PvcError::Protocol("request queue closed".into()))?;
                    pending.push_back(next);
                }
                let (expect, basis, redo) = pending.pop_front().expect("not empty");
                if expect != idx {
                    return Err(PvcError::Protocol(format!(
                        "answer for {idx}, expected {expect}"
                    )));
                }
                let tmp = tmp_dir.join(format!("{idx}"));
                let file = File::create(&tmp).map_err(|e| PvcError::io(&tmp, e))?;
                let basis = match basis {
                    Some(p) => {
                        let f = File::open(&p).map_err(|e| PvcError::io(&p, e))?;
                        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                        Some((f, len))
                    }
                    None => None,
                };
                current = Some(Incoming {
                    idx,
                    tmp,
                    file,
                    hasher: blake3::Hasher::new(),
                    basis,
                    window: Vec::new(),
                    written: 0,
                    redo,
                });
            }
            let cur = current.as_mut().expect("set above");
            if cur.idx != idx {
                return Err(PvcError::Protocol(format!(
                    "answer for {idx} inside {}",
                    cur.idx
                )));
            }
            let entry = &entries[idx as usize];
            match msg {
                Message::Data { offset, bytes, .. } => {
                    if offset != cur.written {
                        return Err(PvcError::Protocol("data out of order".into()));
                    }
                    cur.file
                        .write_all(&bytes)
                        .map_err(|e| PvcError::io(&cur.tmp, e))?;
                    cur.hasher.update(&bytes);
                    cur.written += bytes.len() as u64;
                    summary.bytes_literal += bytes.len() as u64;
                }
                Message::Hole { offset, len, .. } => {
                    if offset != cur.written {
                        return Err(PvcError::Protocol("hole out of order".into()));
                    }
                    cur.file
                        .seek(SeekFrom::Current(len as i64))
                        .map_err(|e| PvcError::io(&cur.tmp, e))?;
                    let zeros = vec![0u8; 64 << 10];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        cur.hasher.update(&zeros[..n]);
                        left -= n as u64;
                    }
                    cur.written += len;
                    summary.bytes_sparse += len;
                }
                Message::Delta {
                    offset,
                    last,
                    bytes,
                    ..
                } => {
                    if offset != cur.written {
                        return Err(PvcError::Protocol("delta out of order".into()));
                    }
                    cur.window.extend_from_slice(&bytes);
                    if cur.window.len() > wire::MAX_FRAME * 16 {
                        return Err(PvcError::Protocol("delta window too large".into()));
                    }
                    if last {
                        let (basis, basis_len) = cur
                            .basis
                            .as_ref()
                            .ok_or_else(|| PvcError::Protocol("delta without a basis".into()))?;
                        let mut out = HashingWriter {
                            file: &mut cur.file,
                            hasher: &mut cur.hasher,
                        };
                        // One window's delta produces at most one window of output.
                        let limit = super::sender::WINDOW as u64;
                        let applied = delta::apply(basis, *basis_len, &cur.window, &mut out, limit)
                            .map_err(|e| {
                                PvcError::Protocol(format!(
                                    "{}: {e}",
                                    String::from_utf8_lossy(&entry.path)
                                ))
                            })?;
                        cur.written += applied.literal + applied.matched;
                        summary.bytes_literal += applied.literal;
                        summary.bytes_matched += applied.matched;
                        cur.window.clear();
                    }
                }
                Message::FileEnd {
                    size,
                    blake3: expected,
                    ..
                } => {
                    let cur = current.take().expect("set above");
                    cur.file
                        .set_len(size)
                        .map_err(|e| PvcError::io(&cur.tmp, e))?;
                    let ok = cur.written == size && *cur.hasher.finalize().as_bytes() == expected;
                    outstanding -= 1;
                    window.add_permits(1);
                    if !ok {
                        drop(cur.file);
                        let _ = fs::remove_file(&cur.tmp);
                        if cur.redo {
                            return Err(PvcError::Verify(
                                String::from_utf8_lossy(&entry.path).into_owned(),
                            ));
                        }
                        summary.files_redone += 1;
                        outstanding += 1;
                        redo_tx
                            .send(idx)
                            .map_err(|_| PvcError::Protocol("writer gone".into()))?;
                        continue;
                    }
                    publisher.submit(Verified {
                        file: cur.file,
                        tmp: cur.tmp,
                        entry: entry.clone(),
                    })?;
                    summary.files_transferred += 1;
                    summary.bytes_total += size;
                    done_files += 1;
                    if let Some(p) = &opts.progress {
                        p(
                            done_files,
                            total,
                            summary.bytes_literal + summary.bytes_matched,
                        );
                    }
                }
                _ => unreachable!("filtered above"),
            }
        }
        Ok(())
    }
    .await;
    drop(redo_tx);
    // Whatever happened, files already verified are published before we go on.
    let published = publisher.finish();
    let result = result.and(published);
    if let Err(e) = result {
        // Keep what arrived of an interrupted file: the next run resumes from it.
        if let Some(cur) = current.take() {
            let _ = cur.file.sync_all();
            drop(cur.file);
            let entry = &entries[cur.idx as usize];
            let _ = fs::rename(&cur.tmp, partial_path(to, &entry.path));
        }
        writer.abort();
        return Err(e);
    }
    writer
        .await
        .map_err(|e| PvcError::Protocol(format!("writer: {e}")))??;
    finish(to, &entries, &mut summary)?;
    summary.duration = start.elapsed();
    Ok(summary)
}

/// A received file whose content passed verification, waiting to be published.
struct Verified {
    file: File,
    tmp: PathBuf,
    entry: Entry,
}

/// Publishes verified files on their own thread — fdatasync, owner/mode/times, rename
/// into place — so the disk flush of one file overlaps receiving the next. Files are
/// published in the order they were verified; the first failure stops it and is reported.
struct Publisher {
    tx: Option<std::sync::mpsc::SyncSender<Verified>>,
    thread: Option<std::thread::JoinHandle<Result<(), PvcError>>>,
}

impl Publisher {
    fn start(to: PathBuf) -> Self {
        // Bounded: at most this many verified files (and their descriptors) wait.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Verified>(64);
        let thread = std::thread::spawn(move || {
            for v in rx {
                v.file.sync_data().map_err(|e| PvcError::io(&v.tmp, e))?;
                drop(v.file);
                set_metadata(&v.tmp, &v.entry, false)?;
                ensure_parents(&to, &v.entry.path)?;
                publish(&v.tmp, &to.join(os(&v.entry.path)))?;
                let _ = fs::remove_file(partial_path(&to, &v.entry.path));
            }
            Ok(())
        });
        Publisher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Hands a file over; if the thread already stopped, its error.
    fn submit(&mut self, v: Verified) -> Result<(), PvcError> {
        let sent = self.tx.as_ref().map(|tx| tx.send(v).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        self.finish()
            .and(Err(PvcError::Protocol("publisher stopped".into())))
    }

    /// Waits until every handed-over file is published.
    fn finish(&mut self) -> Result<(), PvcError> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(PvcError::Protocol("publisher thread panicked".into())),
        }
    }
}

struct HashingWriter<'a> {
    file: &'a mut File,
    hasher: &'a mut blake3::Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

async fn send_signature<W: AsyncWrite + Unpin>(
    wr: &mut W,
    idx: u32,
    block_size: u32,
    hash_len: u32,
    basis: &Path,
) -> Result<(), PvcError> {
    let mut f = File::open(basis).map_err(|e| PvcError::io(basis, e))?;
    // Block-aligned chunks: their signatures concatenate into the whole file's.
    let per_chunk = (4usize << 20) / block_size as usize * block_size as usize;
    let mut buf = vec![0u8; per_chunk.max(block_size as usize)];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(|e| PvcError::io(basis, e))?;
        if n == 0 {
            break;
        }
        let blocks = delta::signature_blocks(&buf[..n], block_size, hash_len);
        for c in blocks.chunks(wire::MAX_FRAME / 2) {
            wire::write(
                wr,
                &Message::Sig {
                    idx,
                    bytes: c.to_vec(),
                },
            )
            .await?;
        }
        if n < buf.len() {
            break;
        }
    }
    wire::write(wr, &Message::SigEnd { idx }).await?;
    Ok(())
}

/// Hard links, symlinks, deletions, then directory metadata (children change directory
/// times, so directories go last, deepest first).
fn finish(to: &Path, entries: &[Entry], summary: &mut Summary) -> Result<(), PvcError> {
    let tmp_dir = to.join(STATE_DIR).join("tmp");
    for (i, e) in entries.iter().enumerate() {
        let dest = to.join(os(&e.path));
        match e.kind {
            Kind::HardLink => {
                let leader = to.join(os(&entries[e.link.expect("checked") as usize].path));
                let same = match (fs::symlink_metadata(&dest), fs::symlink_metadata(&leader)) {
                    (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => false,
                };
                if !same {
                    let tmp = tmp_dir.join(format!("link-{i}"));
                    let _ = fs::remove_file(&tmp);
                    fs::hard_link(&leader, &tmp).map_err(|err| PvcError::io(&tmp, err))?;
                    ensure_parents(to, &e.path)?;
                    publish(&tmp, &dest)?;
                }
                summary.hardlinks += 1;
            }
            Kind::Symlink => {
                let target = e.target.as_deref().expect("checked on decode");
                let current = fs::read_link(&dest).ok();
                if current.as_deref() != Some(os(target)) {
                    let tmp = tmp_dir.join(format!("symlink-{i}"));
                    let _ = fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(os(target), &tmp)
                        .map_err(|err| PvcError::io(&tmp, err))?;
                    ensure_parents(to, &e.path)?;
                    publish(&tmp, &dest)?;
                }
                set_metadata(&dest, e, true)?;
                summary.symlinks += 1;
            }
            _ => {}
        }
    }
    // Deletions: anything not in the manifest (the state directory aside).
    let wanted: HashSet<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
    let mut stale = Vec::new();
    collect_stale(to, &[], &wanted, &mut stale)?;
    for p in stale.iter().rev() {
        let path = to.join(os(p));
        let r = match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(_) => Ok(()),
        };
        r.map_err(|err| PvcError::io(&path, err))?;
        summary.deleted += 1;
    }
    // The state directory only stays while it holds partial files to resume from.
    let state = to.join(STATE_DIR);
    for d in [state.join("tmp"), state.join("partial"), state] {
        let _ = fs::remove_dir(d);
    }
    for e in entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        set_metadata(&to.join(os(&e.path)), e, false)?;
    }
    Ok(())
}

fn collect_stale(
    to: &Path,
    prefix: &[u8],
    wanted: &HashSet<&[u8]>,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), PvcError> {
    let dir = to.join(os(prefix));
    let rd = fs::read_dir(&dir).map_err(|e| PvcError::io(&dir, e))?;
    // The entry's type comes with the directory listing: no stat per file.
    let mut names: Vec<(Vec<u8>, bool)> = rd
        .filter_map(|e| e.ok())
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.file_name().as_bytes().to_vec(), is_dir)
        })
        .collect();
    names.sort();
    for (name, is_dir) in names {
        if prefix.is_empty() && name == STATE_DIR.as_bytes() {
            continue;
        }
        let path = if prefix.is_empty() {
            name
        } else {
            [prefix, b"/", &name].concat()
        };
        if !wanted.contains(path.as_slice()) {
            out.push(path);
            continue;
        }
        if is_dir {
            collect_stale(to, &path, wanted, out)?;
        }
    }
    Ok(())
}
