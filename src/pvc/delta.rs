//! The rsync algorithm's two halves around `fast_rsync`: signatures of a basis file built
//! chunk by chunk (they concatenate exactly), and applying a delta by reading the basis
//! with positioned reads instead of holding it in memory. `fast_rsync::apply` needs the
//! whole basis as a slice; this decoder of the same librsync delta format does not.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use fast_rsync::{Signature, SignatureOptions};

/// Signature header length (magic, block size, hash size).
pub const SIG_HEADER: usize = 12;
const DELTA_MAGIC: u32 = 0x7273_0236;

/// Block size for a basis of `size` bytes: about √size / 3, a multiple of 8, between
/// 1 KiB and 128 KiB. A third of rsync's √size: a change dirties fewer literal bytes
/// (about `change + block`), which with short strong hashes costs less than the larger
/// signature; a 4 GiB file still has only ~200 K blocks (~15 MB of index).
pub fn block_size(size: u64) -> u32 {
    let root = (size as f64).sqrt() as u64 / 3;
    (root.div_ceil(8) * 8).clamp(1024, 128 << 10) as u32
}

/// Strong-hash bytes per block for a basis of `size` bytes in blocks of `block_size`:
/// rsync's rule (`sum_sizes_sqroot`) — enough bits that a false match of the 32-bit
/// rolling sum plus the strong hash over the whole file is unlikely — between 2 and 16.
/// A false match that slips through is caught by the whole-file BLAKE3 check and the file
/// is resent whole, as rsync does.
pub fn hash_len(size: u64, block_size: u32) -> u32 {
    let bits = 10 + 2 * size.max(1).ilog2() as i64 - i64::from(block_size.max(1).ilog2());
    ((bits + 1 - 32 + 7) / 8).clamp(2, 16) as u32
}

/// The signature block records (no header) of `data`, whose length must be a multiple of
/// `block_size` unless it is the file's last chunk.
pub fn signature_blocks(data: &[u8], block_size: u32, hash_len: u32) -> Vec<u8> {
    let sig = Signature::calculate(
        data,
        SignatureOptions {
            block_size,
            crypto_hash_size: hash_len,
        },
    );
    sig.into_serialized().split_off(SIG_HEADER)
}

/// The serialized header that turns concatenated block records into a signature.
pub fn signature_header(block_size: u32, hash_len: u32) -> Vec<u8> {
    let mut h = Signature::calculate(
        &[],
        SignatureOptions {
            block_size,
            crypto_hash_size: hash_len,
        },
    )
    .into_serialized();
    h.truncate(SIG_HEADER);
    h
}

/// Why a delta could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Not a delta, truncated, or an unknown command.
    #[error("corrupt delta: {0}")]
    Corrupt(&'static str),
    /// A copy outside the basis, or output beyond the expected size.
    #[error("delta out of bounds: {0}")]
    Bounds(&'static str),
    /// Reading the basis or writing the output failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Bytes a delta produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Sent literally.
    pub literal: u64,
    /// Copied from the basis.
    pub matched: u64,
}

fn read_uint(r: &mut &[u8], width: usize) -> Result<u64, ApplyError> {
    if r.len() < width {
        return Err(ApplyError::Corrupt("truncated"));
    }
    let (head, tail) = r.split_at(width);
    *r = tail;
    Ok(head.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

/// Applies one delta: literals from it, copies from `basis` (positioned reads), written to
/// `out`; at most `limit` bytes of output.
pub fn apply(
    basis: &std::fs::File,
    basis_len: u64,
    delta: &[u8],
    out: &mut impl Write,
    limit: u64,
) -> Result<Applied, ApplyError> {
    let mut r = delta;
    if read_uint(&mut r, 4)? != u64::from(DELTA_MAGIC) {
        return Err(ApplyError::Corrupt("wrong magic"));
    }
    let mut done = Applied::default();
    let mut buf = vec![0u8; 64 << 10];
    let widths = [1usize, 2, 4, 8];
    loop {
        let op = read_uint(&mut r, 1)? as u8;
        match op {
            0 => break,
            1..=0x44 => {
                let len = if op <= 0x40 {
                    u64::from(op)
                } else {
                    read_uint(&mut r, widths[(op - 0x41) as usize])?
                };
                if (r.len() as u64) < len {
                    return Err(ApplyError::Corrupt("truncated literal"));
                }
                if done.literal + done.matched + len > limit {
                    return Err(ApplyError::Bounds("output larger than the file"));
                }
                let (lit, rest) = r.split_at(len as usize);
                out.write_all(lit)?;
                r = rest;
                done.literal += len;
            }
            0x45..=0x54 => {
                let i = (op - 0x45) as usize;
                let offset = read_uint(&mut r, widths[i / 4])?;
                let len = read_uint(&mut r, widths[i % 4])?;
                if len == 0 {
                    return Err(ApplyError::Corrupt("empty copy"));
                }
                if offset.checked_add(len).is_none_or(|end| end > basis_len) {
                    return Err(ApplyError::Bounds("copy beyond the basis"));
                }
                if done.literal + done.matched + len > limit {
                    return Err(ApplyError::Bounds("output larger than the file"));
                }
                let mut pos = offset;
                let mut left = len;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    basis.read_exact_at(&mut buf[..n], pos)?;
                    out.write_all(&buf[..n])?;
                    pos += n as u64;
                    left -= n as u64;
                }
                done.matched += len;
            }
            _ => return Err(ApplyError::Corrupt("unknown command")),
        }
    }
    if !r.is_empty() {
        return Err(ApplyError::Corrupt("trailing data"));
    }
    Ok(done)
}

/// Appends a COPY command (`len` bytes from basis `offset`) in librsync's delta format.
fn push_copy(out: &mut Vec<u8>, offset: u64, len: u64) {
    let width = |v: u64| match v {
        0..=0xff => 0usize,
        0x100..=0xffff => 1,
        0x1_0000..=0xffff_ffff => 2,
        _ => 3,
    };
    let (wo, wl) = (width(offset), width(len));
    out.push(0x45 + (wo * 4 + wl) as u8);
    out.extend_from_slice(&offset.to_be_bytes()[8 - (1 << wo)..]);
    out.extend_from_slice(&len.to_be_bytes()[8 - (1 << wl)..]);
}

/// The delta of `window` (the new file's bytes at `window_offset`, a multiple of the
/// block size) against the basis of `sig`. Blocks still at their place in the basis — the
/// common case of a file changed in place — are found by hashing the window with the
/// same (SIMD) signature function and comparing block by block; only the regions between
/// them get the rolling search (`fast_rsync::diff` over `index`), which may still find
/// moved data anywhere in the basis. That spares the sender a scalar MD4 per matched
/// block, the bulk of its CPU on large, slightly changed files.
pub fn aligned_diff(
    sig: &Signature,
    index: &fast_rsync::IndexedSignature<'_>,
    window: &[u8],
    window_offset: u64,
    out: &mut Vec<u8>,
) -> Result<(), fast_rsync::DiffError> {
    let raw = sig.serialized();
    let block = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
    let hash = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let record = 4 + hash as usize;
    let theirs = &raw[SIG_HEADER..];
    // The basis' last record may stand for a short block of unknown length: only full
    // blocks on both sides are compared.
    let full_basis_blocks = (theirs.len() / record).saturating_sub(1);
    let ours = signature_blocks(window, block as u32, hash);
    let first = (window_offset / block as u64) as usize;
    let full_window_blocks = window.len() / block;
    let matched = |i: usize| {
        i < full_window_blocks
            && first + i < full_basis_blocks
            && ours[i * record..(i + 1) * record]
                == theirs[(first + i) * record..(first + i + 1) * record]
    };
    out.clear();
    out.extend_from_slice(&DELTA_MAGIC.to_be_bytes());
    let blocks = window.len().div_ceil(block);
    let mut region = Vec::new();
    let mut i = 0;
    while i < blocks {
        let start = i;
        if matched(i) {
            while i < blocks && matched(i) {
                i += 1;
            }
            push_copy(
                out,
                ((first + start) * block) as u64,
                ((i - start) * block) as u64,
            );
        } else {
            while i < blocks && !matched(i) {
                i += 1;
            }
            let end = (i * block).min(window.len());
            region.clear();
            fast_rsync::diff(index, &window[start * block..end], &mut region)?;
            // Splice the region's commands: drop its magic and its END.
            out.extend_from_slice(&region[4..region.len() - 1]);
        }
    }
    out.push(0);
    Ok(())
}

/// Reads as much as fits into `buf` (short only at end of file).
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    const HASH_SIZE: u32 = 8;

    #[test]
    fn signature_parameters_table() {
        // (basis size, block size, strong-hash bytes): rsync's hash rule on our blocks.
        let cases = [
            (0u64, 1024u32, 2u32),
            (64 << 10, 1024, 2),
            (1 << 20, 1024, 2),
            (128 << 20, 3864, 3),
            (4 << 30, 21848, 4),
            (1 << 40, 128 << 10, 6),
        ];
        for (size, bs, hl) in cases {
            assert_eq!(
                (block_size(size), hash_len(size, block_size(size))),
                (bs, hl),
                "{size}"
            );
        }
    }

    #[test]
    fn chunked_signatures_equal_the_whole_file_signature() {
        let data = pseudo_random(100_000, 7);
        let bs = 2048;
        let whole = Signature::calculate(
            &data,
            SignatureOptions {
                block_size: bs,
                crypto_hash_size: HASH_SIZE,
            },
        );
        let mut chunked = signature_header(bs, HASH_SIZE);
        for chunk in data.chunks(bs as usize * 8) {
            chunked.extend(signature_blocks(chunk, bs, HASH_SIZE));
        }
        assert_eq!(chunked, whole.serialized());
    }

    #[test]
    fn aligned_diff_rebuilds_every_window_table() {
        let base = pseudo_random(200_003, 3);
        let bs = 1024u32;
        let hl = hash_len(base.len() as u64, bs);
        let mut sig = signature_header(bs, hl);
        sig.extend(signature_blocks(&base, bs, hl));
        let sig = Signature::deserialize(sig).unwrap();
        let index = sig.index();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("basis");
        std::fs::write(&path, &base).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut in_place = base.clone();
        for at in [0, 5000, 77_777, 150_000, 199_999] {
            in_place[at] ^= 0xff;
        }
        let mut shifted = base[..30_000].to_vec();
        shifted.extend(b"inserted");
        shifted.extend(&base[30_000..]);
        let mut longer = base.clone();
        longer.extend(pseudo_random(5000, 4));
        let cases: [(&str, Vec<u8>); 6] = [
            ("same", base.clone()),
            ("in place", in_place),
            ("shifted", shifted),
            ("longer", longer),
            ("shorter", base[..100_000].to_vec()),
            ("unrelated", pseudo_random(120_000, 8)),
        ];
        for (case, new) in cases {
            // Windows of 16 blocks, as the sender cuts them.
            let mut rebuilt = Vec::new();
            let mut total = Applied::default();
            for (w, window) in new.chunks(16 * bs as usize).enumerate() {
                let mut delta = Vec::new();
                aligned_diff(
                    &sig,
                    &index,
                    window,
                    (w * 16 * bs as usize) as u64,
                    &mut delta,
                )
                .unwrap();
                let done = apply(&file, base.len() as u64, &delta, &mut rebuilt, u64::MAX).unwrap();
                total.literal += done.literal;
                total.matched += done.matched;
            }
            assert_eq!(rebuilt, new, "{case}");
            if case == "same" || case == "in place" {
                assert!(total.literal <= 5 * u64::from(bs) + 3, "{case}: {total:?}");
            }
        }
    }

    #[test]
    fn apply_matches_fast_rsync_table() {
        let base = pseudo_random(300_000, 1);
        let mut changed = base.clone();
        changed[1000..1100].fill(0);
        let mut inserted = base[..5000].to_vec();
        inserted.extend(b"new bytes in the middle");
        inserted.extend(&base[5000..]);
        let cases: [(&str, Vec<u8>); 5] = [
            ("same", base.clone()),
            ("changed", changed),
            ("inserted", inserted),
            ("unrelated", pseudo_random(50_000, 9)),
            ("empty", Vec::new()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("basis");
        std::fs::write(&path, &base).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let bs = block_size(base.len() as u64);
        let hl = hash_len(base.len() as u64, bs);
        let mut sig = signature_header(bs, hl);
        sig.extend(signature_blocks(&base, bs, hl));
        let sig = Signature::deserialize(sig).unwrap();
        for (case, new) in cases {
            let mut delta = Vec::new();
            fast_rsync::diff(&sig.index(), &new, &mut delta).unwrap();
            let mut expected = Vec::new();
            fast_rsync::apply(&base, &delta, &mut expected).unwrap();
            let mut out = Vec::new();
            let done = apply(&file, base.len() as u64, &delta, &mut out, new.len() as u64).unwrap();
            assert_eq!(out, expected, "{case}");
            assert_eq!(out, new, "{case}");
            assert_eq!(done.literal + done.matched, new.len() as u64, "{case}");
        }
    }

    #[test]
    fn apply_refuses_hostile_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("basis");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let magic = DELTA_MAGIC.to_be_bytes();
        let with = |cmds: &[u8]| [&magic[..], cmds].concat();
        let cases: [(&str, Vec<u8>); 5] = [
            ("wrong magic", vec![0, 0, 0, 0, 0]),
            ("copy beyond basis", with(&[0x45, 90, 20, 0])),
            ("output beyond limit", with(&[0x45, 0, 60, 0x45, 0, 60, 0])),
            ("truncated literal", with(&[5, 1, 2])),
            ("unknown command", with(&[0x60, 0])),
        ];
        for (case, delta) in cases {
            assert!(
                apply(&file, 100, &delta, &mut Vec::new(), 100).is_err(),
                "{case}"
            );
        }
    }
}
