//! The answer side of the transfer: a state machine over the sender's `Data`, `Hole`,
//! `Delta` and `FileEnd` frames. Answers come in request order; each file is written to a
//! temporary file in the state directory, never past the size the manifest announced,
//! verified with BLAKE3 (resent whole once on mismatch), and only then given its final
//! length and handed to the publisher.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::State;
use super::beneath;
use super::intake::refuse;
use super::plan::partial_name;
use super::publish::{Publisher, Verified};
use super::requests::{Budgets, Order};
use super::spill::Spill;
use crate::pvc::delta;
use crate::pvc::wire::{self, Entry, Message};
use crate::pvc::{PvcError, Summary};

/// A file being received.
struct Incoming {
    idx: u32,
    entry: Entry,
    file: File,
    hasher: blake3::Hasher,
    basis: Option<(File, u64)>,
    window: Vec<u8>,
    written: u64,
    redo: bool,
    sig_bytes: u32,
}

/// Receives the answers to `total` requests.
pub struct Answers<'a> {
    /// The manifest.
    pub entries: &'a Spill,
    /// State directories.
    pub state: &'a State,
    /// Requests sent, in order.
    pub orders: mpsc::UnboundedReceiver<Order>,
    /// Files to ask for again.
    pub redo: mpsc::UnboundedSender<u32>,
    /// Budgets to return answered requests to.
    pub budgets: Budgets,
    /// Publishes verified files.
    pub publisher: &'a mut Publisher,
    /// Progress callback.
    pub progress: Option<&'a super::ProgressFn>,
    pending: VecDeque<Order>,
    current: Option<Incoming>,
}

/// The entry an answer is for. Answers are matched against our own requests first, so
/// this cannot fail; it is checked anyway rather than trusted.
fn entry(entries: &Spill, idx: u32) -> Result<Entry, PvcError> {
    entries
        .get(idx)
        .map_err(|e| PvcError::Protocol(format!("answer for entry {idx}: {e}")))
}

/// Name in the state directory's `tmp/` of the file at `path`: the same as its partial
/// file's name, so what a killed run left in `tmp/` is adopted as partial files by the
/// next one (see `State::adopt_tmp`).
pub fn tmp_name(path: &[u8]) -> Vec<u8> {
    partial_name(path).into_bytes()
}

impl<'a> Answers<'a> {
    /// A reader of answers.
    pub fn new(
        entries: &'a Spill,
        state: &'a State,
        orders: mpsc::UnboundedReceiver<Order>,
        redo: mpsc::UnboundedSender<u32>,
        budgets: Budgets,
        publisher: &'a mut Publisher,
        progress: Option<&'a super::ProgressFn>,
    ) -> Self {
        Answers {
            entries,
            state,
            orders,
            redo,
            budgets,
            publisher,
            progress,
            pending: VecDeque::new(),
            current: None,
        }
    }

    /// Reads answers until all `total` requests (and their resends) are answered.
    pub async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        total: u64,
        summary: &mut Summary,
    ) -> Result<(), PvcError> {
        let mut outstanding = total;
        let mut done = 0u64;
        while outstanding > 0 {
            let msg = wire::read(rd)
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
            let cur = self.current_for(idx).await?;
            let Message::FileEnd { size, blake3, .. } = msg else {
                accept(cur, msg, summary)?;
                continue;
            };
            let Some(cur) = self.current.take() else {
                return Err(PvcError::Protocol("no file in progress".into()));
            };
            let entry = &cur.entry;
            self.budgets.ahead.add_permits(1);
            self.budgets.sig.add_permits(cur.sig_bytes as usize);
            if size > entry.size {
                return Err(refuse(
                    &entry.path,
                    &format!(
                        "the sender ended it at {size} bytes, more than the manifest's size of {}",
                        entry.size
                    ),
                ));
            }
            let ok = cur.written == size && *cur.hasher.finalize().as_bytes() == blake3;
            if !ok {
                let _ = rustix::fs::unlinkat(
                    self.state.tmp.as_fd(),
                    beneath::os(&tmp_name(&entry.path)),
                    rustix::fs::AtFlags::empty(),
                );
                if cur.redo {
                    return Err(PvcError::Verify(
                        String::from_utf8_lossy(&entry.path).into_owned(),
                    ));
                }
                summary.files_redone += 1;
                self.redo
                    .send(cur.idx)
                    .map_err(|_| PvcError::Protocol("writer gone".into()))?;
                continue;
            }
            // The length is set only now: a trailing hole is just a length, and only a
            // verified one is applied.
            cur.file
                .set_len(size)
                .map_err(|e| PvcError::io(beneath::os(&entry.path), e))?;
            self.publisher.submit(Verified {
                file: cur.file,
                idx: cur.idx,
                entry: cur.entry,
            })?;
            outstanding -= 1;
            summary.files_transferred += 1;
            summary.bytes_total += size;
            done += 1;
            if let Some(p) = self.progress {
                p(done, total, summary.bytes_literal + summary.bytes_matched);
            }
        }
        Ok(())
    }

    /// The file `idx`'s answers belong to: the one in progress, or the next one requested
    /// (its temporary file created now).
    async fn current_for(&mut self, idx: u32) -> Result<&mut Incoming, PvcError> {
        if self.current.is_none() {
            let order = match self.pending.pop_front() {
                Some(o) => o,
                None => self
                    .orders
                    .recv()
                    .await
                    .ok_or_else(|| PvcError::Protocol("request queue closed".into()))?,
            };
            if order.idx != idx {
                return Err(PvcError::Protocol(format!(
                    "answer for {idx}, expected {}",
                    order.idx
                )));
            }
            let entry = entry(self.entries, idx)?;
            let file = beneath::create(self.state.tmp.as_fd(), &tmp_name(&entry.path))
                .map_err(|e| PvcError::io(beneath::os(&entry.path), e))?;
            self.current = Some(Incoming {
                idx,
                entry,
                file,
                hasher: blake3::Hasher::new(),
                basis: order.basis,
                window: Vec::new(),
                written: 0,
                redo: order.redo,
                sig_bytes: order.sig_bytes,
            });
        }
        match self.current.as_mut() {
            Some(cur) if cur.idx == idx => Ok(cur),
            Some(cur) => Err(PvcError::Protocol(format!(
                "answer for {idx} inside {}",
                cur.idx
            ))),
            None => Err(PvcError::Protocol("no file in progress".into())),
        }
    }

    /// After a failure: keeps what arrived of the file in progress as its partial file,
    /// so the next run resumes from it.
    pub fn keep_partial(&mut self) {
        if let Some(cur) = self.current.take() {
            let _ = cur.file.sync_all();
            drop(cur.file);
            let path = &cur.entry.path;
            let _ = rustix::fs::renameat(
                self.state.tmp.as_fd(),
                beneath::os(&tmp_name(path)),
                self.state.partial.as_fd(),
                partial_name(path).as_str(),
            );
        }
    }
}

/// Applies one `Data`, `Hole` or `Delta` frame to the file in progress — refusing anything
/// out of order or past the manifest's size of the file.
fn accept(cur: &mut Incoming, msg: Message, summary: &mut Summary) -> Result<(), PvcError> {
    let entry = &cur.entry;
    let left = entry.size - cur.written.min(entry.size);
    let beyond = || {
        refuse(
            &entry.path,
            &format!("data beyond the manifest's size of {} bytes", entry.size),
        )
    };
    let io = |e| PvcError::io(beneath::os(&entry.path), e);
    match msg {
        Message::Data { offset, bytes, .. } => {
            if offset != cur.written {
                return Err(refuse(&entry.path, "data out of order"));
            }
            if bytes.len() as u64 > left {
                return Err(beyond());
            }
            cur.file.write_all(&bytes).map_err(io)?;
            cur.hasher.update(&bytes);
            cur.written += bytes.len() as u64;
            summary.bytes_literal += bytes.len() as u64;
        }
        Message::Hole { offset, len, .. } => {
            if offset != cur.written {
                return Err(refuse(&entry.path, "hole out of order"));
            }
            if len > left {
                return Err(beyond());
            }
            // `len` fits: it is at most the manifest size, itself a file size.
            let skip = i64::try_from(len).map_err(|_| beyond())?;
            cur.file.seek(SeekFrom::Current(skip)).map_err(io)?;
            let zeros = [0u8; 16 << 10];
            let mut todo = len;
            while todo > 0 {
                let n = todo.min(zeros.len() as u64) as usize;
                cur.hasher.update(&zeros[..n]);
                todo -= n as u64;
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
                return Err(refuse(&entry.path, "delta out of order"));
            }
            cur.window.extend_from_slice(&bytes);
            if cur.window.len() > wire::MAX_FRAME * 16 {
                return Err(refuse(&entry.path, "delta window too large"));
            }
            if last {
                let (basis, basis_len) = cur
                    .basis
                    .as_ref()
                    .ok_or_else(|| refuse(&entry.path, "delta without a basis"))?;
                let mut out = HashingWriter {
                    file: &mut cur.file,
                    hasher: &mut cur.hasher,
                };
                // One window's delta produces at most one window of output, and never
                // more than the manifest's size.
                let limit = (crate::pvc::sender::WINDOW as u64).min(left);
                let applied = delta::apply(basis, *basis_len, &cur.window, &mut out, limit)
                    .map_err(|e| refuse(&entry.path, &e.to_string()))?;
                cur.written += applied.literal + applied.matched;
                summary.bytes_literal += applied.literal;
                summary.bytes_matched += applied.matched;
                cur.window.clear();
            }
        }
        other => return Err(PvcError::Protocol(format!("unexpected {other:?}"))),
    }
    Ok(())
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
