//! The projection checkpoint: the fold's state at seq N, so a refresh folds only what is new.
//!
//! A cache, never a source of truth: it is trusted only if every check holds, and otherwise
//! discarded and rebuilt from the log.
//!
//! Format (`.zo/state/projections.ckpt`, little-endian):
//! ```text
//!  0        8          12           20          24
//!  | magic  | version  | body_len   | body_crc  | body ...
//!  |ZOPROJCK| u32      | u64        | u32 CRC-32 of body
//! body: covers (seq N, position of record N in the log, header_crc of record N,
//!       header_crc of record 1), the seq each curve shard was last written at (a list of
//!       `shard::SHARDS` varints, 0 for never), then the state (src/project/wire.rs), which
//!       holds no curves: those are in the curve cache (`super::shard`)
//! ```
//! Checks on load, in order: magic, version ([`VERSION`]: the state layout *and* the rendering
//! of the files; bump it when either changes), length, CRC, decoding; then the identity of the
//! log: record 1's frame header CRC must equal the one recorded (else the checkpoint belongs to
//! another store), and record N must still be at the recorded position with the recorded header
//! CRC (else the log was cut or replaced since).

use std::path::{Path, PathBuf};

use super::state::State;
use super::wire::{self, Dec, Wire};
use crate::log::frame::{FrameHeader, SEGMENT_HEADER_LEN};
use crate::log::{Log, RecordPos};

pub const MAGIC: [u8; 8] = *b"ZOPROJCK";
/// Bump when the state layout or any rendered file's bytes change. 3: curves moved out to the
/// curve cache, and the seq of every curve shard recorded.
pub const VERSION: u32 = 3;
pub const FILE_NAME: &str = "projections.ckpt";
const PREFIX: usize = wire::FRAME_PREFIX;
const FILE: wire::CacheFile = wire::CacheFile {
    magic: MAGIC,
    version: VERSION,
    name: "projection checkpoint",
    short: "checkpoint",
};

/// What a checkpoint covers, and how to check it still describes this log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covers {
    pub seq: u64,
    pub pos: Option<RecordPos>,
    pub header_crc: u32,
    pub first_header_crc: u32,
}

impl Wire for Covers {
    fn put(&self, out: &mut Vec<u8>) {
        self.seq.put(out);
        match &self.pos {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                p.segment_first_seq.put(out);
                p.offset.put(out);
            }
        }
        self.header_crc.put(out);
        self.first_header_crc.put(out);
    }
    fn get(d: &mut Dec<'_>) -> Result<Covers, wire::WireError> {
        let seq = u64::get(d)?;
        let pos = match bool::get(d)? {
            false => None,
            true => Some(RecordPos {
                segment_first_seq: u64::get(d)?,
                offset: u64::get(d)?,
                seq,
            }),
        };
        Ok(Covers {
            seq,
            pos,
            header_crc: u32::get(d)?,
            first_header_crc: u32::get(d)?,
        })
    }
}

/// How a load went.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// Trusted: fold on from `covers.seq`.
    Valid {
        state: Box<State>,
        covers: Covers,
        header: FrameHeader,
        /// The seq each curve shard was last written at, as of this checkpoint.
        shards: Vec<u64>,
    },
    /// No checkpoint (or one covering nothing): fold from the start.
    Missing,
    /// Found but not trusted: fold from the start. Says why.
    Discarded(String),
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The bytes of a checkpoint. `shards`: the seq each curve shard was last written at
/// ([`super::shard::SHARDS`] of them).
pub fn encode(state: &State, covers: &Covers, shards: &[u64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1024 + 512 * state.experiments.len());
    covers.put(&mut body);
    shards.to_vec().put(&mut body);
    wire::put_state(state, &mut body);
    FILE.frame(&body)
}

/// What a checkpoint holds: the state, what it covers, and the seq of every curve shard.
pub type Decoded = (State, Covers, Vec<u64>);

/// Decode a checkpoint's bytes (no log checks yet).
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    decode_shared(&std::sync::Arc::new(bytes.to_vec()))
}

/// Decode a checkpoint held in a shared buffer: experiments' details stay ranges of it until
/// something needs them.
pub fn decode_shared(bytes: &std::sync::Arc<Vec<u8>>) -> Result<Decoded, String> {
    FILE.body(bytes)?;
    let mut d = Dec::shared(bytes, PREFIX);
    let covers = Covers::get(&mut d).map_err(|e| format!("corrupt: {}", e.0))?;
    let shards = Vec::<u64>::get(&mut d).map_err(|e| format!("corrupt: {}", e.0))?;
    if shards.len() != super::shard::SHARDS {
        return Err(format!(
            "corrupt: {} curve shards, this zolog has {}",
            shards.len(),
            super::shard::SHARDS
        ));
    }
    let state = wire::get_state(&mut d).map_err(|e| format!("corrupt: {}", e.0))?;
    if !d.done() {
        return Err("corrupt: trailing bytes".into());
    }
    if state.seq != covers.seq {
        return Err("corrupt: state and header disagree on the seq covered".into());
    }
    Ok((state, covers, shards))
}

/// Position of record 1: the first segment's first frame.
fn first_record() -> RecordPos {
    RecordPos {
        segment_first_seq: 1,
        offset: SEGMENT_HEADER_LEN as u64,
        seq: 1,
    }
}

/// Header CRC of record 1, if the log has one.
pub fn first_header_crc(log: &Log) -> crate::Result<Option<u32>> {
    Ok(log.frame_header_at(&first_record())?.map(|h| h.header_crc))
}

/// Load and check the checkpoint in `state_dir` against `log`.
pub fn load(state_dir: &Path, log: &Log) -> crate::Result<Loaded> {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Ok(Loaded::Discarded(format!("unreadable: {e}"))),
    };
    let (state, covers, shards) = match decode_shared(&std::sync::Arc::new(bytes)) {
        Ok(x) => x,
        Err(why) => return Ok(Loaded::Discarded(why)),
    };
    if covers.pos.is_none() {
        return Ok(Loaded::Missing);
    }
    Ok(match verify(log, &covers, first_header_crc(log)?)? {
        Ok(header) => Loaded::Valid {
            state: Box::new(state),
            covers,
            header,
            shards,
        },
        Err(why) => Loaded::Discarded(why),
    })
}

/// Whether `covers` still describes `log`, given record 1's header CRC (`first`, from
/// [`first_header_crc`]): record 1 must have the recorded header CRC (else it was made from
/// another log: *foreign*), and record N must still be at the recorded position with the
/// recorded header CRC (else the log was cut, or cut and regrown: *stale*). Returns record N's
/// header, or why not.
pub fn verify(
    log: &Log,
    covers: &Covers,
    first: Option<u32>,
) -> crate::Result<Result<FrameHeader, String>> {
    let Some(pos) = covers.pos else {
        return Ok(Err("covers no record".into()));
    };
    if first != Some(covers.first_header_crc) {
        return Ok(Err(
            "foreign: it was made from another log (record 1 differs)".into(),
        ));
    }
    Ok(match log.frame_header_at(&pos)? {
        Some(h) if h.header_crc == covers.header_crc => Ok(h),
        Some(_) => Err(format!(
            "stale: record {} is not the one it folded (the log was cut or replaced)",
            covers.seq
        )),
        None => Err(format!(
            "stale: the log no longer has record {} where it was",
            covers.seq
        )),
    })
}

/// Save: a temp file moved into place ([`super::files::replace_cache`]), without fsync. The checkpoint is a cache checked before
/// it is trusted: after a crash it is either an older valid one (the next refresh folds a little
/// more), or torn and discarded by its CRC (the next refresh rebuilds). It never covers more than
/// the durable log, since it is saved after the events it covers were acknowledged.
pub fn save(state_dir: &Path, state: &State, covers: &Covers, shards: &[u64]) -> crate::Result<()> {
    use std::io::{Seek, Write};
    std::fs::create_dir_all(state_dir)
        .map_err(|e| crate::Error::io("create directory", state_dir, e))?;
    let p = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    // Streamed: the body goes out in pieces while its CRC is computed; the prefix is written last.
    let result = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        f.write_all(&[0u8; PREFIX])?;
        let mut crc = crc32fast::Hasher::new();
        let mut len = 0u64;
        let mut piece = Vec::with_capacity(64 * 1024);
        let mut flush = |piece: &mut Vec<u8>, f: &mut std::io::BufWriter<std::fs::File>| {
            crc.update(piece);
            len += piece.len() as u64;
            let r = f.write_all(piece);
            piece.clear();
            r
        };
        covers.put(&mut piece);
        shards.to_vec().put(&mut piece);
        wire::put_state_head(state, &mut piece);
        for e in &state.experiments {
            e.put(&mut piece);
            if piece.len() >= 32 * 1024 {
                flush(&mut piece, &mut f)?;
            }
        }
        flush(&mut piece, &mut f)?;
        let crc = crc.finalize();
        let mut f = f.into_inner().map_err(|e| e.into_error())?;
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(&FILE.prefix(len, crc))?;
        drop(f);
        super::files::replace_cache(&tmp, &p)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::Error::io("write", &p, e)
    })
}
