//! The sending side (the source volume): answers a receiver's hello, streams the manifest,
//! then serves each requested file whole (zero runs as holes, so sparse files stay
//! sparse) or as deltas against the receiver's signature, computed over bounded windows of
//! the file so memory does not grow with its size. Every file ends with its BLAKE3 hash.
//!
//! The receiver is not trusted either: requests are queued only as far as an honest
//! receiver runs ahead ([`wire::MAX_AHEAD`], [`wire::SIG_AHEAD`]), and a file is sent only
//! if what is opened at request time is still the regular file the walk saw (a tenant
//! could have swapped it for a FIFO or a device since), and never more than the size the
//! manifest announced.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};
use fast_rsync::Signature;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PvcError;
use super::delta::{self, read_full};
use super::manifest;
use super::served::{Served, ServedTable, scratch_error};
use super::wire::{self, Basis, CHUNK, Message};

/// Manifest entries handed from the walking thread at once.
const WALK_BATCH: usize = 512;

/// Outgoing frames are buffered so that many small ones (manifest entries, small files)
/// share SSH packets; the buffer is flushed whenever the sender would wait.
const OUT_BUFFER: usize = 128 << 10;

/// Window of the new file diffed at once: the sender's memory bound per file.
pub const WINDOW: usize = 8 << 20;

/// Throttles writes to a byte rate (the receiver's `--bwlimit`).
struct Limiter {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Limiter {
    async fn account(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
}

struct Out<W> {
    w: W,
    limiter: Limiter,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    async fn send(&mut self, msg: &Message) -> Result<(), PvcError> {
        let frame = wire::encode(msg)?;
        self.w
            .write_all(&frame)
            .await
            .map_err(wire::WireError::Io)?;
        self.limiter.account(frame.len()).await;
        Ok(())
    }
}

/// Serves one sync session of `root` over `stream`.
pub async fn serve<S>(root: &Path, stream: S) -> Result<(), PvcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
    let hello = wire::read(&mut rd).await?;
    let features = match hello {
        Some(Message::Hello { min, max, features })
            if min <= wire::PROTOCOL_MAX && max >= wire::PROTOCOL_MIN =>
        {
            features
        }
        Some(Message::Hello { min, max, .. }) => {
            return Err(PvcError::Protocol(format!(
                "receiver speaks versions {min}..={max}, this sender {}..={}",
                wire::PROTOCOL_MIN,
                wire::PROTOCOL_MAX
            )));
        }
        other => return Err(PvcError::Protocol(format!("expected hello, got {other:?}"))),
    };
    let rate = features
        .iter()
        .find_map(|f| f.strip_prefix("bwlimit=").and_then(|v| v.parse().ok()));
    let mut out = Out {
        w: tokio::io::BufWriter::with_capacity(OUT_BUFFER, wr),
        limiter: Limiter {
            rate,
            start: Instant::now(),
            sent: 0,
        },
    };
    out.send(&Message::Hello {
        min: wire::PROTOCOL_MIN,
        max: wire::PROTOCOL_MAX,
        features: vec!["sparse".into(), "hardlink".into()],
    })
    .await?;
    let dir = match manifest::open_root(root).and_then(|d| Ok((manifest::root_meta(&d)?, d))) {
        Ok(d) => d,
        Err(e) => return tell(&mut out, PvcError::io(root, e)).await,
    };
    let (root_meta, dir) = dir;
    // The walk runs on a blocking thread and streams entries in batches while this task
    // sends them: the receiver plans the first files while the last are still stat'ed.
    let report_unreadable = features.iter().any(|f| f == wire::FEATURE_UNREADABLE);
    if features.iter().any(|f| f == wire::FEATURE_ROOT) {
        out.send(&root_meta).await?;
    }
    let (etx, mut erx) = tokio::sync::mpsc::channel::<Vec<manifest::Walked>>(16);
    let walk_root = dir.try_clone().map_err(|e| PvcError::io(root, e))?;
    let walker = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(WALK_BATCH);
        let skipped = manifest::walk_each(&walk_root, report_unreadable, &mut |w| {
            batch.push(w);
            batch.len() < WALK_BATCH
                || etx
                    .blocking_send(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(WALK_BATCH),
                    ))
                    .is_ok()
        })?;
        if !batch.is_empty() {
            let _ = etx.blocking_send(batch);
        }
        Ok::<_, std::io::Error>(skipped)
    });
    // Per entry, only what serving a request needs — on disk, not in memory: a volume of
    // millions of entries is held for the whole session.
    let mut served = match ServedTable::new() {
        Ok(t) => t,
        Err(e) => return tell(&mut out, scratch_error(e)).await,
    };
    while let Some(batch) = erx.recv().await {
        for w in batch {
            match w {
                manifest::Walked::Entry(e, id) => {
                    if let Err(err) = served.push(&e, id) {
                        return tell(&mut out, scratch_error(err)).await;
                    }
                    out.send(&Message::Entry(e)).await?;
                }
                manifest::Walked::Unreadable(path) => {
                    out.send(&Message::Unreadable { path }).await?
                }
            }
        }
    }
    let skipped = match walker
        .await
        .map_err(|e| PvcError::Protocol(format!("manifest walk: {e}")))
        .and_then(|r| r.map_err(|e| PvcError::io(root, e)))
    {
        Ok(s) => s,
        Err(e) => return tell(&mut out, e).await,
    };
    if !skipped.paths.is_empty() {
        tracing::warn!(
            count = skipped.paths.len(),
            "special files (sockets, devices, FIFOs) not replicated"
        );
    }
    if !skipped.unreadable.is_empty() {
        tracing::warn!(
            count = skipped.unreadable.len(),
            first = %String::from_utf8_lossy(&skipped.unreadable[0]),
            "entries this reader may not read were reported to the receiver, which keeps its copy"
        );
    }
    if let Err(e) = served.flush() {
        return tell(&mut out, scratch_error(e)).await;
    }
    out.send(&Message::ManifestEnd {
        entries: u64::from(served.len()),
    })
    .await?;
    out.w.flush().await.map_err(wire::WireError::Io)?;
    // Requests are read by their own task: an SSH channel delivers incoming data through
    // a bounded buffer on the same event loop that sends ours, so a sender that stopped
    // reading while writing a large file would stall both. The reader assembles each
    // request with its signature; the queue holds at most what an honest receiver may
    // have outstanding, and a receiver running further ahead ends the session.
    let (tx, mut rx) = tokio::sync::mpsc::channel(wire::MAX_AHEAD + 2);
    let reader = tokio::spawn(read_requests(rd, tx));
    let result = async {
        loop {
            match rx.recv().await {
                Some(Ok(Incoming::Request {
                    idx,
                    basis,
                    sig,
                    permit,
                })) => {
                    // Released before the answer goes out: the receiver may send its next
                    // request as soon as it has this one's `FileEnd`.
                    drop(permit);
                    let file = served
                        .get(idx)
                        .map_err(scratch_error)?
                        .filter(|f| f.is_file)
                        .ok_or_else(|| {
                            PvcError::Protocol(format!("request for entry {idx}, not a file"))
                        })?;
                    let file = &file;
                    match (basis, sig) {
                        (Basis::Signature { .. }, Some(sig)) => {
                            send_delta(&dir, idx, file, &sig, &mut out).await?
                        }
                        _ => send_whole(&dir, idx, file, &mut out).await?,
                    }
                    // More requests queued: keep filling the buffer.
                    if rx.is_empty() {
                        out.w.flush().await.map_err(wire::WireError::Io)?;
                    }
                }
                Some(Ok(Incoming::Done)) | None => return Ok(()),
                Some(Err(e)) => return Err(e),
            }
        }
    }
    .await;
    if let Err(e) = &result {
        // Tell the receiver why — best effort, and briefly: the connection may be what
        // failed, or the receiver may have stopped reading.
        let tell = async {
            let message = e.to_string();
            let _ = out.send(&Message::Error { message }).await;
            let _ = out.w.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), tell).await;
    }
    reader.abort();
    result?;
    out.w.shutdown().await.map_err(wire::WireError::Io)?;
    Ok(())
}

/// Tells the receiver why the session ends (best effort, briefly: the connection may be
/// what failed), then returns the error.
async fn tell<W: AsyncWrite + Unpin>(out: &mut Out<W>, e: PvcError) -> Result<(), PvcError> {
    let say = async {
        let _ = out
            .send(&Message::Error {
                message: e.to_string(),
            })
            .await;
        let _ = out.w.flush().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), say).await;
    Err(e)
}

/// What the request reader hands to the serving loop.
enum Incoming {
    /// A request, with its signature if it asked for a delta. `permit` holds the
    /// signature's share of [`wire::SIG_AHEAD`] until the request is served.
    Request {
        idx: u32,
        basis: Basis,
        sig: Option<Signature>,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// The receiver has everything.
    Done,
}

/// Reads the receiver's requests (and their signatures) into `tx` until `Done`, the end of
/// the stream or an error — refusing a receiver that runs further ahead than
/// [`wire::MAX_AHEAD`] requests or [`wire::SIG_AHEAD`] signature bytes, instead of
/// queueing without bound.
async fn read_requests<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    tx: tokio::sync::mpsc::Sender<Result<Incoming, PvcError>>,
) {
    let budget = Arc::new(Semaphore::new(wire::SIG_AHEAD));
    loop {
        let item = next_request(&mut rd, &budget)
            .await
            .map(|i| i.unwrap_or(Incoming::Done));
        let end = !matches!(item, Ok(Incoming::Request { .. }));
        // The queue has room for every request an honest receiver may have outstanding
        // (plus `Done`); full means the receiver ignored the bound.
        match tx.try_send(item) {
            Ok(()) if !end => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                let _ = tx
                    .send(Err(PvcError::Protocol(format!(
                        "receiver ran more than {} requests ahead",
                        wire::MAX_AHEAD
                    ))))
                    .await;
                return;
            }
            _ => return,
        }
    }
}

/// The next request and its signature; `None` at `Done` or the end of the stream.
async fn next_request<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    budget: &Arc<Semaphore>,
) -> Result<Option<Incoming>, PvcError> {
    match wire::read(rd).await? {
        Some(Message::Request { idx, basis }) => {
            let (sig, permit) = match basis {
                Basis::Whole => (None, None),
                Basis::Signature {
                    block_size,
                    hash_len,
                } => {
                    let (sig, permit) =
                        read_signature(rd, budget, idx, block_size, hash_len).await?;
                    (Some(sig), Some(permit))
                }
            };
            Ok(Some(Incoming::Request {
                idx,
                basis,
                sig,
                permit,
            }))
        }
        Some(Message::Done) | None => Ok(None),
        Some(Message::Error { message }) => Err(PvcError::Remote(message)),
        Some(other) => Err(PvcError::Protocol(format!("unexpected {other:?}"))),
    }
}

async fn read_signature<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    budget: &Arc<Semaphore>,
    idx: u32,
    block_size: u32,
    hash_len: u32,
) -> Result<(Signature, OwnedSemaphorePermit), PvcError> {
    if !(512..=(1 << 20)).contains(&block_size) || !(1..=16).contains(&hash_len) {
        return Err(PvcError::Protocol(format!(
            "signature parameters out of range (block {block_size}, hash {hash_len})"
        )));
    }
    let ahead = || {
        PvcError::Protocol(format!(
            "receiver ran more than {} signature bytes ahead",
            wire::SIG_AHEAD
        ))
    };
    let mut sig = delta::signature_header(block_size, hash_len);
    let mut permit = budget
        .clone()
        .try_acquire_many_owned(0)
        .map_err(|_| ahead())?;
    loop {
        match wire::read(rd).await? {
            Some(Message::Sig { idx: i, bytes }) if i == idx => {
                let n = u32::try_from(bytes.len()).map_err(|_| ahead())?;
                permit.merge(
                    budget
                        .clone()
                        .try_acquire_many_owned(n)
                        .map_err(|_| ahead())?,
                );
                sig.extend(bytes);
                if sig.len() > wire::MAX_SIGNATURE {
                    return Err(PvcError::Protocol("signature too large".into()));
                }
            }
            Some(Message::SigEnd { idx: i }) if i == idx => break,
            other => {
                return Err(PvcError::Protocol(format!(
                    "expected signature of {idx}, got {other:?}"
                )));
            }
        }
    }
    let sig = Signature::deserialize(sig)
        .map_err(|e| PvcError::Protocol(format!("bad signature: {e:?}")))?;
    Ok((sig, permit))
}

/// The block size recorded in a serialized signature's header (bytes 4..8, big-endian).
fn sig_block_size(sig: &Signature) -> u32 {
    let h = sig.serialized();
    u32::from_be_bytes([h[4], h[5], h[6], h[7]])
}

/// Opens the file of `entry` for sending: never through a symlink, never blocking (a FIFO
/// would wait for a writer), never as a controlling terminal; then checks with `fstat` that
/// it is the regular file the walk saw. Reads stop at the manifest's size, so a file that
/// grew — or anything else that got past the check — cannot send more than announced.
fn open(dir: &Dir, entry: &Served) -> Result<impl Read, PvcError> {
    let (path, id) = (Path::new(OsStr::from_bytes(&entry.path)), &entry.id);
    let mut opts = OpenOptions::new();
    opts.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = dir
        .open_with(path, &opts)
        .map_err(|e| PvcError::io(path, e))?;
    let meta = file.metadata().map_err(|e| PvcError::io(path, e))?;
    if !meta.is_file() || meta.dev() != id.dev || meta.ino() != id.ino {
        return Err(PvcError::io(
            path,
            std::io::Error::other(
                "changed since the walk (no longer the regular file it saw); not sent, retry the sync",
            ),
        ));
    }
    Ok(file.take(entry.size))
}

async fn send_whole<W: AsyncWrite + Unpin>(
    dir: &Dir,
    idx: u32,
    entry: &Served,
    out: &mut Out<W>,
) -> Result<(), PvcError> {
    let mut file = open(dir, entry)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let (mut offset, mut hole) = (0u64, 0u64);
    loop {
        let n = read_full(&mut file, &mut buf)
            .map_err(|e| PvcError::io(Path::new(OsStr::from_bytes(&entry.path)), e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|b| *b == 0) {
            hole += n as u64;
        } else {
            if hole > 0 {
                out.send(&Message::Hole {
                    idx,
                    offset: offset - hole,
                    len: hole,
                })
                .await?;
                hole = 0;
            }
            out.send(&Message::Data {
                idx,
                offset,
                bytes: chunk.to_vec(),
            })
            .await?;
        }
        offset += n as u64;
    }
    if hole > 0 {
        out.send(&Message::Hole {
            idx,
            offset: offset - hole,
            len: hole,
        })
        .await?;
    }
    out.send(&Message::FileEnd {
        idx,
        size: offset,
        blake3: *hasher.finalize().as_bytes(),
    })
    .await
}

async fn send_delta<W: AsyncWrite + Unpin>(
    dir: &Dir,
    idx: u32,
    entry: &Served,
    sig: &Signature,
    out: &mut Out<W>,
) -> Result<(), PvcError> {
    let index = sig.index();
    let mut file = open(dir, entry)?;
    let mut hasher = blake3::Hasher::new();
    // Windows end on block boundaries, so blocks that did not move still match right up to
    // the end of each window instead of leaving its tail as literal bytes. Two windows are
    // diffed at once on two threads: the rolling search is the sender's CPU cost.
    let block = sig_block_size(sig) as usize;
    let size = (WINDOW / block).max(1) * block;
    let mut windows = [vec![0u8; size], vec![0u8; size]];
    let mut deltas = [Vec::new(), Vec::new()];
    let mut offset = 0u64;
    let path = || Path::new(OsStr::from_bytes(&entry.path));
    loop {
        let n0 = read_full(&mut file, &mut windows[0]).map_err(|e| PvcError::io(path(), e))?;
        if n0 == 0 {
            break;
        }
        let n1 = if n0 == size {
            read_full(&mut file, &mut windows[1]).map_err(|e| PvcError::io(path(), e))?
        } else {
            0
        };
        let [w0, w1] = &windows;
        let [d0, d1] = &mut deltas;
        d0.clear();
        d1.clear();
        let (o0, o1) = (offset, offset + n0 as u64);
        let (r0, r1) = std::thread::scope(|s| {
            let second = (n1 > 0)
                .then(|| s.spawn(|| delta::aligned_diff(sig, &index, &w1[..n1], o1, &mut *d1)));
            let first = delta::aligned_diff(sig, &index, &w0[..n0], o0, &mut *d0);
            hasher.update(&w0[..n0]);
            hasher.update(&w1[..n1]);
            (first, second.map(|h| h.join()))
        });
        r0.map_err(|e| PvcError::Protocol(format!("diff: {e:?}")))?;
        if let Some(r) = r1 {
            r.map_err(|_| PvcError::Protocol("diff thread panicked".into()))?
                .map_err(|e| PvcError::Protocol(format!("diff: {e:?}")))?;
        }
        for (delta, n) in [(&deltas[0], n0), (&deltas[1], n1)] {
            if n == 0 {
                continue;
            }
            let mut chunks = delta.chunks(wire::MAX_FRAME / 2).peekable();
            while let Some(c) = chunks.next() {
                out.send(&Message::Delta {
                    idx,
                    offset,
                    last: chunks.peek().is_none(),
                    bytes: c.to_vec(),
                })
                .await?;
            }
            offset += n as u64;
        }
        if n0 < size || n1 < size {
            break;
        }
    }
    out.send(&Message::FileEnd {
        idx,
        size: offset,
        blake3: *hasher.finalize().as_bytes(),
    })
    .await
}
