//! Scanning the records of one segment held in memory: pure functions over bytes.

use super::frame::{self, FRAME_HEADER_LEN, FrameError};

/// How the bytes after the last complete batch of a segment look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The segment ends exactly after a complete batch.
    Clean,
    /// Something follows the last complete batch, and nothing valid follows that: what a crashed
    /// (or in-progress) append leaves. `at` is where the first bad or unclosed frame starts.
    Torn { at: usize, reason: String },
    /// A bad frame followed later by a valid one: damage in the middle of the log.
    Damaged { at: usize, reason: String },
}

/// What a scan of a segment's bytes found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Records in complete batches.
    pub records: u64,
    /// Next sequence number expected after the last complete batch.
    pub next_seq: u64,
    /// Offset just after the last complete batch.
    pub clean_end: usize,
    /// `header_crc` of the last record of a complete batch, if any.
    pub last_crc: Option<u32>,
    /// Offset of that record.
    pub last_record_at: Option<usize>,
    /// Offset just after the last whole and valid frame, its batch closed or not: where a scan
    /// that ran out of bytes inside a batch can go on from (expecting `valid_next_seq`) without
    /// checking that batch's first frames again.
    pub valid_end: usize,
    pub valid_next_seq: u64,
    pub tail: Tail,
}

/// A record delivered by a scan: only records of complete batches are delivered.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
    /// Offset of the frame within its segment.
    pub offset: u64,
}

/// Scan `buf`, which holds a segment's bytes from offset `base` on, expecting sequence number
/// `next_seq` first. `on_record` sees each record of every complete batch, in order; if it returns
/// `Err`, the scan stops and returns that error.
pub fn scan<E>(
    buf: &[u8],
    base: u64,
    mut next_seq: u64,
    max_record: u32,
    mut on_record: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<Scan, E> {
    let mut at = 0usize;
    let mut clean_end = 0usize;
    let mut records = 0u64;
    let mut committed_next = next_seq;
    let mut last_crc = None;
    let mut last_record_at = None;
    let mut valid_end = 0usize;
    // Frames of the batch being read: (frame offset, payload start, payload len, seq, crc).
    let mut pending: Vec<(usize, usize, usize, u64, u32)> = Vec::new();
    let tail = loop {
        if at == buf.len() {
            break if pending.is_empty() {
                Tail::Clean
            } else {
                Tail::Torn {
                    at: clean_end,
                    reason: format!(
                        "batch of {} record(s) at offset {} was never closed",
                        pending.len(),
                        base + clean_end as u64
                    ),
                }
            };
        }
        match frame::parse_frame(&buf[at..], next_seq, max_record) {
            Ok((h, _payload)) => {
                pending.push((
                    at,
                    at + FRAME_HEADER_LEN,
                    h.len as usize,
                    h.seq,
                    h.header_crc,
                ));
                at += h.frame_len();
                next_seq += 1;
                valid_end = at;
                if h.batch_end() {
                    for &(off, p, len, seq, crc) in &pending {
                        on_record(RecordRef {
                            seq,
                            payload: &buf[p..p + len],
                            offset: base + off as u64,
                        })?;
                        last_crc = Some(crc);
                        last_record_at = Some(off);
                    }
                    records += pending.len() as u64;
                    pending.clear();
                    clean_end = at;
                    committed_next = next_seq;
                }
            }
            Err(e) => break classify(buf, base, at, clean_end, next_seq, max_record, &e),
        }
    };
    Ok(Scan {
        records,
        next_seq: committed_next,
        clean_end,
        last_crc,
        last_record_at,
        valid_end,
        valid_next_seq: next_seq,
        tail,
    })
}

/// A bad frame at `at`: torn tail or mid-log damage?
fn classify(
    buf: &[u8],
    base: u64,
    at: usize,
    clean_end: usize,
    next_seq: u64,
    max_record: u32,
    err: &FrameError,
) -> Tail {
    let reason = format!("{err} at offset {}", base + at as u64);
    // A frame whose header is valid but whose seq is wrong is not what a crash leaves.
    if let FrameError::UnexpectedSeq { .. } = err {
        return Tail::Damaged {
            at: at.min(buf.len()),
            reason,
        };
    }
    match frame::find_later_frame(buf, at + 1, next_seq, max_record) {
        Some(later) => Tail::Damaged {
            at,
            reason: format!(
                "{reason}, followed by a valid record at offset {}",
                base + later as u64
            ),
        },
        None => Tail::Torn {
            at: clean_end.min(at),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::encode_frame;

    fn batch(out: &mut Vec<u8>, first: u64, n: u64) {
        for i in 0..n {
            encode_frame(
                out,
                first + i,
                i + 1 == n,
                format!("r{}", first + i).as_bytes(),
            );
        }
    }

    fn seqs(buf: &[u8]) -> (Vec<u64>, Scan) {
        let mut seen = Vec::new();
        let s = scan::<()>(buf, 0, 1, 1 << 20, |r| {
            seen.push(r.seq);
            Ok(())
        })
        .unwrap();
        (seen, s)
    }

    #[test]
    fn clean_segment_delivers_every_record() {
        let mut b = Vec::new();
        batch(&mut b, 1, 3);
        batch(&mut b, 4, 2);
        let (seen, s) = seqs(&b);
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.clean_end, b.len());
        assert_eq!(s.next_seq, 6);
    }

    #[test]
    fn unclosed_batch_is_a_torn_tail_and_is_not_delivered() {
        let mut b = Vec::new();
        batch(&mut b, 1, 2);
        let end = b.len();
        encode_frame(&mut b, 3, false, b"open");
        let (seen, s) = seqs(&b);
        assert_eq!(seen, vec![1, 2]);
        assert!(matches!(s.tail, Tail::Torn { at, .. } if at == end));
        assert_eq!(s.next_seq, 3);
    }

    #[test]
    fn every_cut_inside_the_last_record_recovers_the_prefix() {
        let mut b = Vec::new();
        batch(&mut b, 1, 4);
        let prefix = b.len();
        batch(&mut b, 5, 1);
        for cut in prefix + 1..b.len() {
            let (seen, s) = seqs(&b[..cut]);
            assert_eq!(seen, vec![1, 2, 3, 4], "cut at {cut}");
            assert!(matches!(s.tail, Tail::Torn { at, .. } if at == prefix));
        }
    }

    #[test]
    fn damage_followed_by_valid_records_is_mid_log_damage() {
        let mut b = Vec::new();
        batch(&mut b, 1, 1);
        let second = b.len();
        batch(&mut b, 2, 1);
        batch(&mut b, 3, 1);
        b[second + 24] ^= 0x10; // payload of record 2
        let (seen, s) = seqs(&b);
        assert_eq!(seen, vec![1]);
        assert!(
            matches!(s.tail, Tail::Damaged { at, .. } if at == second),
            "{:?}",
            s.tail
        );
    }
}
