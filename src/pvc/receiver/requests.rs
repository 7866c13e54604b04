//! The request side of the transfer: a task that sends requests — with the signature of
//! the basis for a delta — as far ahead of the answers as the protocol allows
//! ([`wire::MAX_AHEAD`] requests, [`wire::SIG_AHEAD`] signature bytes), so the link stays
//! busy across round trips while the sender's queue stays bounded.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use super::State;
use super::beneath::{self, DirCache, Root, split};
use super::plan::{DeltaBasis, partial_name};
use super::spill::Spill;
use crate::pvc::PvcError;
use crate::pvc::delta::{self, read_full};
use crate::pvc::wire::{self, Basis, Message};

/// A file to ask for: whole, or as a delta against one of the receiver's files.
pub struct Want {
    /// Manifest index.
    pub idx: u32,
    /// The basis, for a delta.
    pub basis: Option<DeltaBasis>,
}

/// What the answer reader needs to know about a request it will get answers for.
pub struct Order {
    /// Manifest index.
    pub idx: u32,
    /// The basis the signature was computed from, open (the delta applies to this very
    /// file, whatever happens to its name meanwhile), and its length.
    pub basis: Option<(File, u64)>,
    /// A resend after failed verification.
    pub redo: bool,
    /// Signature bytes sent for it (returned to the budget when it is answered).
    pub sig_bytes: u32,
}

/// The budgets shared with the answer reader, which returns what each answered request
/// took.
#[derive(Clone)]
pub struct Budgets {
    /// Unanswered requests.
    pub ahead: Arc<Semaphore>,
    /// Signature bytes of unanswered requests.
    pub sig: Arc<Semaphore>,
}

impl Budgets {
    /// The protocol's budgets.
    pub fn new() -> Budgets {
        Budgets {
            ahead: Arc::new(Semaphore::new(wire::MAX_AHEAD)),
            sig: Arc::new(Semaphore::new(wire::SIG_AHEAD)),
        }
    }

    /// Takes `n` units of `sem`, flushing what is buffered first if it has to wait (the
    /// answers that free them need our requests to go out).
    async fn take<W: AsyncWrite + Unpin>(
        sem: &Semaphore,
        n: u32,
        wr: &mut W,
    ) -> Result<(), PvcError> {
        if let Ok(p) = sem.try_acquire_many(n) {
            p.forget();
            return Ok(());
        }
        wr.flush().await.map_err(wire::WireError::Io)?;
        sem.acquire_many(n)
            .await
            .map_err(|_| PvcError::Protocol("pipeline closed".into()))?
            .forget();
        Ok(())
    }
}

/// Sends every request of `wants`, then resends (whole) the files the reader reports as
/// failed, then `Done`.
// The pipeline's parts, each used once; a struct for them would only be unpacked here.
#[allow(clippy::too_many_arguments)]
pub async fn send_all<W: AsyncWrite + Unpin>(
    mut wr: W,
    root: Arc<Root>,
    state: Arc<State>,
    entries: Arc<Spill>,
    wants: Vec<Want>,
    budgets: Budgets,
    orders: mpsc::UnboundedSender<Order>,
    mut redo: mpsc::UnboundedReceiver<u32>,
) -> Result<(), PvcError> {
    let mut dirs = DirCache::default();
    for want in wants {
        Budgets::take(&budgets.ahead, 1, &mut wr).await?;
        let path = match want.basis {
            Some(_) => {
                entries
                    .get(want.idx)
                    .map_err(|e| PvcError::Protocol(format!("manifest entry {}: {e}", want.idx)))?
                    .path
            }
            None => Vec::new(),
        };
        let basis = match want.basis {
            Some(b) => open_basis(&root, &state, &mut dirs, &path, b),
            None => None,
        };
        let idx = want.idx;
        let Some((file, len)) = basis else {
            wire::write(
                &mut wr,
                &Message::Request {
                    idx,
                    basis: Basis::Whole,
                },
            )
            .await?;
            let order = Order {
                idx,
                basis: None,
                redo: false,
                sig_bytes: 0,
            };
            orders
                .send(order)
                .map_err(|_| PvcError::Protocol("reader gone".into()))?;
            continue;
        };
        let block_size = delta::block_size(len);
        let hash_len = delta::hash_len(len, block_size);
        let basis = Basis::Signature {
            block_size,
            hash_len,
        };
        wire::write(&mut wr, &Message::Request { idx, basis }).await?;
        let sig_bytes = send_signature(&mut wr, &budgets, idx, block_size, hash_len, &file)
            .await
            .map_err(|e| match e {
                PvcError::Io(_, err) => PvcError::io(&root.show(&path), err),
                other => other,
            })?;
        let order = Order {
            idx,
            basis: Some((file, len)),
            redo: false,
            sig_bytes,
        };
        orders
            .send(order)
            .map_err(|_| PvcError::Protocol("reader gone".into()))?;
    }
    wr.flush().await.map_err(wire::WireError::Io)?;
    while let Some(idx) = redo.recv().await {
        Budgets::take(&budgets.ahead, 1, &mut wr).await?;
        let order = Order {
            idx,
            basis: None,
            redo: true,
            sig_bytes: 0,
        };
        orders
            .send(order)
            .map_err(|_| PvcError::Protocol("reader gone".into()))?;
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
    Ok(())
}

/// Opens the basis of a delta — the destination's file or the partial file — if it is (still)
/// a regular file, with its length; `None` sends the file whole instead. A signature too
/// large for the sender to accept also means whole.
fn open_basis(
    root: &Root,
    state: &State,
    dirs: &mut DirCache,
    path: &[u8],
    basis: DeltaBasis,
) -> Option<(File, u64)> {
    let file = match basis {
        DeltaBasis::Current => {
            let (parent, name) = split(path);
            beneath::open_file(dirs.get(root, parent).ok()?, name).ok()?
        }
        DeltaBasis::Partial => {
            beneath::open_file(state.partial.as_fd(), partial_name(path).as_bytes()).ok()?
        }
    };
    let len = file.metadata().ok()?.len();
    let block = delta::block_size(len);
    let sig = len.div_ceil(u64::from(block)) * (4 + u64::from(delta::hash_len(len, block)));
    (sig + delta::SIG_HEADER as u64 <= wire::MAX_SIGNATURE as u64).then_some((file, len))
}

/// Sends the signature of `basis` in `Sig` frames, taking each frame's bytes from the
/// signature budget; returns how many it took.
async fn send_signature<W: AsyncWrite + Unpin>(
    wr: &mut W,
    budgets: &Budgets,
    idx: u32,
    block_size: u32,
    hash_len: u32,
    mut basis: &File,
) -> Result<u32, PvcError> {
    let io = |e| PvcError::Io(Default::default(), e);
    // Block-aligned chunks: their signatures concatenate into the whole file's.
    let per_chunk = (4usize << 20) / block_size as usize * block_size as usize;
    let mut buf = vec![0u8; per_chunk.max(block_size as usize)];
    let mut taken = 0u32;
    loop {
        let n = read_full(&mut basis, &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        let blocks = delta::signature_blocks(&buf[..n], block_size, hash_len);
        for c in blocks.chunks(wire::MAX_FRAME / 2) {
            // At most MAX_FRAME / 2 bytes: fits.
            let cost = c.len() as u32;
            Budgets::take(&budgets.sig, cost, wr).await?;
            taken += cost;
            let frame = Message::Sig {
                idx,
                bytes: c.to_vec(),
            };
            wire::write(wr, &frame).await?;
        }
        if n < buf.len() {
            break;
        }
    }
    wire::write(wr, &Message::SigEnd { idx }).await?;
    Ok(taken)
}
