//! The tail hint: where the last writer left the end of the log, so that the next writer need not
//! scan the whole last segment to find it. Kept in memory by the process that wrote it, and in a
//! small file (`TAIL`, docs/format.md) for the next process. A hint is a cache: it is checked
//! against the segment before it is used (`Log::open_tail`), and any doubt about it means a full
//! scan, never an error.

use super::frame::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, crc, u16_at, u32_at, u64_at};

/// Name of the hint file in the log directory.
pub const HINT_FILE: &str = "TAIL";
pub const HINT_MAGIC: [u8; 8] = *b"ZOLOTAIL";
pub const HINT_VERSION: u16 = 1;
pub const HINT_LEN: usize = 64;

/// The end of the log as a writer left it: the last complete batch of the segment starting at
/// `segment_first_seq` ends at byte `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailHint {
    pub segment_first_seq: u64,
    /// Offset just after the last complete batch.
    pub end: u64,
    pub next_seq: u64,
    /// `header_crc` of the last record (the segment header's `prev_tail_crc` when there is none).
    pub last_crc: u32,
    /// Offset of the last record's frame; `None` while the segment holds no record.
    pub last_record_at: Option<u64>,
    /// CRC-32 of the segment's bytes `0..end`: what the writer wrote there, header included.
    pub prefix_crc: u32,
}

impl TailHint {
    // Format:
    //  0          8         10        12      16                  24    32         40               48         52           56         60    64
    //  | magic    | version | len     | flags | segment_first_seq | end | next_seq | last_record_at | last_crc | prefix_crc | reserved | crc |
    //  |"ZOLOTAIL"| u16 = 1 | u16 = 64| u32=0 | u64               | u64 | u64      | u64 (0 = none) | u32      | u32        | u32 = 0  | u32 |
    pub fn encode(&self) -> [u8; HINT_LEN] {
        let mut b = [0u8; HINT_LEN];
        b[0..8].copy_from_slice(&HINT_MAGIC);
        b[8..10].copy_from_slice(&HINT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HINT_LEN as u16).to_le_bytes());
        // 12..16 flags: 0
        b[16..24].copy_from_slice(&self.segment_first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.end.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_record_at.unwrap_or(0).to_le_bytes());
        b[48..52].copy_from_slice(&self.last_crc.to_le_bytes());
        b[52..56].copy_from_slice(&self.prefix_crc.to_le_bytes());
        // 56..60 reserved: 0
        let c = crc(&b[0..60]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode a hint file's bytes; `Err` says why they are not a hint this version can use (the
    /// file is then ignored, never trusted in part).
    pub fn decode(b: &[u8]) -> Result<TailHint, &'static str> {
        if b.len() < HINT_LEN {
            return Err("too short");
        }
        if b[0..8] != HINT_MAGIC {
            return Err("bad magic");
        }
        if u32_at(b, 60) != crc(&b[0..60]) {
            return Err("bad checksum");
        }
        if u16_at(b, 8) != HINT_VERSION {
            return Err("another version");
        }
        if usize::from(u16_at(b, 10)) != HINT_LEN || u32_at(b, 12) != 0 || u32_at(b, 56) != 0 {
            return Err("bad length or flags");
        }
        let h = TailHint {
            segment_first_seq: u64_at(b, 16),
            end: u64_at(b, 24),
            next_seq: u64_at(b, 32),
            last_record_at: Some(u64_at(b, 40)).filter(|&at| at != 0),
            last_crc: u32_at(b, 48),
            prefix_crc: u32_at(b, 52),
        };
        if !h.consistent() {
            return Err("inconsistent fields");
        }
        Ok(h)
    }

    /// The fields agree with each other (whatever the segment holds).
    fn consistent(&self) -> bool {
        let header = SEGMENT_HEADER_LEN as u64;
        if self.segment_first_seq == 0 || self.end < header {
            return false;
        }
        match self.last_record_at {
            None => self.end == header && self.next_seq == self.segment_first_seq,
            Some(at) => {
                at >= header
                    && at
                        .checked_add(FRAME_HEADER_LEN as u64)
                        .is_some_and(|e| e <= self.end)
                    && self.next_seq > self.segment_first_seq
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint() -> TailHint {
        TailHint {
            segment_first_seq: 52_711,
            end: 4096,
            next_seq: 52_790,
            last_crc: 0xdead_beef,
            last_record_at: Some(4000),
            prefix_crc: 0x1234_5678,
        }
    }

    #[test]
    fn round_trips_and_pins_its_bytes() {
        for h in [
            hint(),
            TailHint {
                segment_first_seq: 1,
                end: 32,
                next_seq: 1,
                last_crc: 0,
                last_record_at: None,
                prefix_crc: 7,
            },
        ] {
            assert_eq!(TailHint::decode(&h.encode()), Ok(h));
        }
        let b = hint().encode();
        assert_eq!(&b[0..8], b"ZOLOTAIL");
        assert_eq!(&b[8..12], &[1, 0, 64, 0]);
        assert_eq!(u64_at(&b, 16), 52_711);
        assert_eq!(u64_at(&b, 24), 4096);
        assert_eq!(u64_at(&b, 32), 52_790);
        assert_eq!(u64_at(&b, 40), 4000);
        assert_eq!(u32_at(&b, 48), 0xdead_beef);
        assert_eq!(u32_at(&b, 52), 0x1234_5678);
        // Bytes after the 64 (left by a longer file of another version) are ignored.
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0xff; 10]);
        assert_eq!(TailHint::decode(&longer), Ok(hint()));
    }

    #[test]
    fn any_damage_or_another_version_is_refused() {
        let b = hint().encode();
        for len in 0..HINT_LEN {
            assert!(TailHint::decode(&b[..len]).is_err(), "{len} bytes");
        }
        for bit in 0..HINT_LEN * 8 {
            let mut d = b;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(TailHint::decode(&d).is_err(), "bit {bit}");
        }
        assert!(TailHint::decode(&[0u8; HINT_LEN]).is_err());
        // A well-formed file of version 2 (its CRC right) is not read as version 1.
        let mut v2 = b;
        v2[8] = 2;
        let c = crc32fast::hash(&v2[0..60]);
        v2[60..64].copy_from_slice(&c.to_le_bytes());
        assert_eq!(TailHint::decode(&v2), Err("another version"));
    }

    #[test]
    fn inconsistent_fields_are_refused() {
        let bad = [
            TailHint {
                segment_first_seq: 0,
                ..hint()
            },
            TailHint { end: 31, ..hint() },
            TailHint {
                last_record_at: Some(16),
                ..hint()
            },
            TailHint {
                last_record_at: Some(4090),
                ..hint()
            },
            TailHint {
                next_seq: 52_711,
                ..hint()
            },
            TailHint {
                last_record_at: None,
                ..hint()
            },
        ];
        for h in bad {
            assert_eq!(
                TailHint::decode(&h.encode()),
                Err("inconsistent fields"),
                "{h:?}"
            );
        }
    }
}
