//! Segment headers and record frames: the bytes of docs/format.md, and nothing about events.

use std::fmt;

pub const SEGMENT_MAGIC: [u8; 8] = *b"ZOLOGWAL";
pub const FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const FRAME_HEADER_LEN: usize = 24;
/// Bit 0 of a frame's flags: this record closes an atomic batch.
pub const FLAG_BATCH_END: u8 = 1;
/// The default (and largest accepted) record payload: 16 MiB.
pub const DEFAULT_MAX_RECORD: u32 = 16 * 1024 * 1024;

pub(super) fn crc(bytes: &[u8]) -> u32 {
    // A copy of a ready hasher: `crc32fast::hash` detects the CPU's features on every call, which
    // costs as much as checksumming a small record.
    static READY: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = READY.get_or_init(crc32fast::Hasher::new).clone();
    h.update(bytes);
    h.finalize()
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The 32-byte header at the start of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    /// `header_crc` of the previous segment's last frame; 0 for the first segment.
    pub prev_tail_crc: u32,
}

impl SegmentHeader {
    // Format:
    //  0        8       10      12      16          24              28          32
    //  | magic  |version|hdr_len| flags | first_seq | prev_tail_crc | header_crc |
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        // 12..16 flags: 0
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.prev_tail_crc.to_le_bytes());
        let c = crc(&b[0..28]);
        b[28..32].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode and check a segment header; returns the header and its length in bytes.
    pub fn decode(b: &[u8]) -> Result<(SegmentHeader, usize), HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Short(b.len()));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Magic);
        }
        let stored = u32_at(b, 28);
        if crc(&b[0..28]) != stored {
            return Err(HeaderError::Checksum);
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let hdr_len = u16_at(b, 10) as usize;
        if hdr_len != SEGMENT_HEADER_LEN || u32_at(b, 12) != 0 {
            return Err(HeaderError::Layout);
        }
        Ok((
            SegmentHeader {
                first_seq: u64_at(b, 16),
                prev_tail_crc: u32_at(b, 24),
            },
            hdr_len,
        ))
    }
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Short(usize),
    Magic,
    Checksum,
    Version(u16),
    Layout,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short(n) => write!(f, "segment header truncated ({n} of 32 bytes)"),
            HeaderError::Magic => write!(f, "not a zolog segment (bad magic)"),
            HeaderError::Checksum => write!(f, "segment header checksum mismatch"),
            HeaderError::Version(v) => write!(
                f,
                "segment format version {v} is not supported (this zolog reads version {FORMAT_VERSION})"
            ),
            HeaderError::Layout => write!(f, "segment header has an unknown layout or flags"),
        }
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub flags: u8,
    pub seq: u64,
    pub payload_crc: u32,
    pub header_crc: u32,
}

impl FrameHeader {
    pub fn batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }
    /// Bytes the whole frame occupies.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.len as usize
    }
}

/// Append one frame to `out`; returns its `header_crc` (which chains segments together).
///
/// Format:
///  0     4       5          8     16            20           24
///  | len | flags | reserved | seq | payload_crc | header_crc | payload (len bytes) |
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, batch_end: bool, payload: &[u8]) -> u32 {
    let len = u32::try_from(payload.len()).expect("payload length checked by the writer");
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = if batch_end { FLAG_BATCH_END } else { 0 };
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&crc(payload).to_le_bytes());
    let hc = crc(&h[0..20]);
    h[20..24].copy_from_slice(&hc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    hc
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 24 header bytes are left.
    ShortHeader {
        available: usize,
    },
    HeaderChecksum,
    BadFlags(u8),
    TooLarge {
        len: u32,
        max: u32,
    },
    /// The header is valid but the payload runs past the end of the file.
    ShortPayload {
        len: u32,
        available: usize,
    },
    UnexpectedSeq {
        expected: u64,
        found: u64,
    },
    PayloadChecksum {
        seq: u64,
    },
}

impl FrameError {
    /// True when the header itself was valid (its length can be trusted).
    pub fn header_valid(&self) -> bool {
        matches!(
            self,
            FrameError::ShortPayload { .. }
                | FrameError::UnexpectedSeq { .. }
                | FrameError::PayloadChecksum { .. }
        )
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ShortHeader { available } => {
                write!(f, "record header truncated ({available} of 24 bytes)")
            }
            FrameError::HeaderChecksum => write!(f, "record header checksum mismatch"),
            FrameError::BadFlags(b) => write!(f, "record has unknown flags {b:#04x}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "record length {len} exceeds the maximum {max}")
            }
            FrameError::ShortPayload { len, available } => write!(
                f,
                "record payload truncated ({available} of {len} bytes present)"
            ),
            FrameError::UnexpectedSeq { expected, found } => {
                write!(f, "record has seq {found}, expected {expected}")
            }
            FrameError::PayloadChecksum { seq } => {
                write!(f, "record {seq}: payload checksum mismatch")
            }
        }
    }
}

/// Check only the 24-byte header at the start of `b` (no seq expectation, no payload).
pub fn parse_header(b: &[u8], max_record: u32) -> Result<FrameHeader, FrameError> {
    if b.len() < FRAME_HEADER_LEN {
        return Err(FrameError::ShortHeader { available: b.len() });
    }
    let header_crc = u32_at(b, 20);
    if crc(&b[0..20]) != header_crc {
        return Err(FrameError::HeaderChecksum);
    }
    let flags = b[4];
    if flags & !FLAG_BATCH_END != 0 || b[5..8] != [0, 0, 0] {
        return Err(FrameError::BadFlags(flags));
    }
    let len = u32_at(b, 0);
    if len > max_record {
        return Err(FrameError::TooLarge {
            len,
            max: max_record,
        });
    }
    Ok(FrameHeader {
        len,
        flags,
        seq: u64_at(b, 8),
        payload_crc: u32_at(b, 16),
        header_crc,
    })
}

/// Parse and fully check the frame at the start of `b`, expecting sequence number `expected_seq`.
/// Returns the header and a borrow of the payload. Never allocates.
pub fn parse_frame(
    b: &[u8],
    expected_seq: u64,
    max_record: u32,
) -> Result<(FrameHeader, &[u8]), FrameError> {
    let h = parse_header(b, max_record)?;
    let available = b.len() - FRAME_HEADER_LEN;
    if h.len as usize > available {
        return Err(FrameError::ShortPayload {
            len: h.len,
            available,
        });
    }
    if h.seq != expected_seq {
        return Err(FrameError::UnexpectedSeq {
            expected: expected_seq,
            found: h.seq,
        });
    }
    let payload = &b[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len as usize];
    if crc(payload) != h.payload_crc {
        return Err(FrameError::PayloadChecksum { seq: h.seq });
    }
    Ok((h, payload))
}

/// Is there a plausible frame header anywhere in `b` at or after `from`, with a sequence number of
/// at least `min_seq`? Used to tell a torn tail (nothing valid follows the damage) from mid-log
/// damage (valid records follow it). Returns the offset of the first one found.
pub fn find_later_frame(b: &[u8], from: usize, min_seq: u64, max_record: u32) -> Option<usize> {
    if b.len() < FRAME_HEADER_LEN {
        return None;
    }
    let last = b.len() - FRAME_HEADER_LEN;
    let mut at = from;
    while at <= last {
        // Cheap filters before the checksum: flags and reserved bytes.
        if b[at + 4] & !FLAG_BATCH_END == 0
            && b[at + 5..at + 8] == [0, 0, 0]
            && let Ok(h) = parse_header(&b[at..], max_record)
            && h.seq >= min_seq
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_detects_every_bit_flip() {
        let h = SegmentHeader {
            first_seq: 42,
            prev_tail_crc: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), (h, 32));
        for bit in 0..(SEGMENT_HEADER_LEN * 8) {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&c).is_err(), "bit {bit} undetected");
        }
    }

    #[test]
    fn frame_round_trips_and_detects_every_bit_flip() {
        let mut out = Vec::new();
        encode_frame(&mut out, 7, true, b"hello payload");
        let (h, p) = parse_frame(&out, 7, 1024).unwrap();
        assert_eq!(p, b"hello payload");
        assert!(h.batch_end());
        assert_eq!(h.frame_len(), out.len());
        for bit in 0..(out.len() * 8) {
            let mut c = out.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_frame(&c, 7, 1024).is_err(), "bit {bit} undetected");
        }
    }

    #[test]
    fn corrupt_length_is_refused_before_it_is_trusted() {
        let mut out = Vec::new();
        encode_frame(&mut out, 1, true, b"x");
        out[3] = 0xff; // len becomes huge; header crc no longer matches
        assert_eq!(parse_frame(&out, 1, 1024), Err(FrameError::HeaderChecksum));
    }

    #[test]
    fn oversized_record_is_refused_on_read() {
        let mut out = Vec::new();
        encode_frame(&mut out, 1, true, &[0u8; 100]);
        assert_eq!(
            parse_frame(&out, 1, 99),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        );
    }

    #[test]
    fn later_frame_search_finds_the_next_record_and_not_zeros() {
        let mut out = Vec::new();
        encode_frame(&mut out, 1, true, b"aaaa");
        let second = out.len();
        encode_frame(&mut out, 2, true, b"bbbb");
        assert_eq!(find_later_frame(&out, 1, 2, 1024), Some(second));
        assert_eq!(find_later_frame(&[0u8; 4096], 0, 1, 1024), None);
    }
}
