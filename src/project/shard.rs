//! The curve cache: every experiment's plot curves ([`ExpCurves`]), kept out of the projection
//! checkpoint so that a command pays only for the curves of the experiments it touches.
//!
//! Experiments are spread over [`SHARDS`] files by a stable hash of their id ([`of`]); a refresh
//! reads and rewrites only the shards of the experiments it folded samples for or draws, and
//! commands that draw nothing (`exp list`, `exp show`) read none.
//!
//! Format (`.zo/state/curves/XX.curves`, `XX` the shard number in hex, little-endian prefix):
//! ```text
//!  0        8          12           20          24
//!  | magic  | version  | body_len   | body_crc  | body ...
//!  |ZOCURVES| u32      | u64        | u32 CRC-32 of body
//! body: shard number, covers (seq N, position and header CRC of record N, header CRC of
//!       record 1: what the log was when the shard was written), then the experiments of the
//!       shard that have samples: id, each metric's name and curve, the learning rate's curve
//!       (src/project/wire.rs)
//! ```
//! A shard is written (temp file, rename, no fsync: like the checkpoint, it is a cache checked
//! before use) after the files and before the projection checkpoint, which records the seq every
//! shard was last written at. It is trusted
//! only if, in order: it exists (when the checkpoint says it was written), magic, version,
//! length, CRC, it decodes, it is the shard its name says; its covers still describe this log
//! (the checks of the checkpoint's, [`super::checkpoint::verify`]); it is no older than the
//! checkpoint says and covers no more than the state it is loaded into. Anything else and the
//! refresh folds the whole log again. See docs/projections.md for why this is never wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::checkpoint::{self, Covers};
use super::curve::ExpCurves;
use super::files::{self, Job};
use super::state::State;
use super::wire::{Dec, Wire};
use crate::event::ExpId;
use crate::log::Log;

/// How many shard files the curves are spread over.
pub const SHARDS: usize = 256;
pub const MAGIC: [u8; 8] = *b"ZOCURVES";
/// Bump when the shard layout changes (an older shard is then not trusted: the refresh folds
/// the whole log and writes every shard again).
pub const VERSION: u32 = 1;
/// The directory of the shards, under `.zo/state/`.
pub const DIR: &str = "curves";
const FILE: super::wire::CacheFile = super::wire::CacheFile {
    magic: MAGIC,
    version: VERSION,
    name: "curve shard",
    short: "shard",
};

/// The shard of an experiment: CRC-32 of its id, modulo [`SHARDS`].
pub fn of(id: &ExpId) -> usize {
    crc32fast::hash(id.as_str().as_bytes()) as usize % SHARDS
}

pub fn path(state_dir: &Path, shard: usize) -> PathBuf {
    state_dir.join(DIR).join(format!("{shard:02x}.curves"))
}

/// A shard's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub shard: usize,
    pub covers: Covers,
    pub entries: Vec<(ExpId, ExpCurves)>,
}

/// The bytes of shard `shard`, covering `covers`, holding `entries`.
pub fn encode<'a>(
    shard: usize,
    covers: &Covers,
    entries: impl Iterator<Item = (&'a ExpId, &'a ExpCurves)>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(4096);
    shard.put(&mut body);
    covers.put(&mut body);
    let entries: Vec<_> = entries.collect();
    entries.len().put(&mut body);
    for (id, c) in entries {
        id.put(&mut body);
        c.put(&mut body);
    }
    FILE.frame(&body)
}

/// Decode a shard's bytes (no log checks yet).
pub fn decode(bytes: &[u8]) -> Result<Shard, String> {
    let body = FILE.body(bytes)?;
    let corrupt = |e: super::wire::WireError| format!("corrupt: {}", e.0);
    let mut d = Dec::new(body);
    let shard = usize::get(&mut d).map_err(corrupt)?;
    let covers = Covers::get(&mut d).map_err(corrupt)?;
    let entries = Vec::<(ExpId, ExpCurves)>::get(&mut d).map_err(corrupt)?;
    if !d.done() {
        return Err("corrupt: trailing bytes".into());
    }
    Ok(Shard {
        shard,
        covers,
        entries,
    })
}

/// Read shard `shard`: `Ok(None)` when there is no such file.
fn read(state_dir: &Path, shard: usize) -> Result<Option<Shard>, String> {
    let p = path(state_dir, shard);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let s = decode(&bytes)?;
    if s.shard != shard {
        return Err(format!("it holds shard {:02x}", s.shard));
    }
    Ok(Some(s))
}

/// Give every experiment of the shards in `wanted` its curves, where it has none yet: from the
/// shard file, then the samples pending for it that came after the file's seq, in seq order
/// (exactly what folding them in would have given). `seqs`: the seq each shard was last written
/// at, as of the checkpoint the state was folded from (0: never; its experiments had no curve
/// samples then, and whatever file is there is not needed).
///
/// `Ok(Err(why))`: a shard cannot be trusted; the caller folds the whole log instead.
pub(crate) fn load(
    state_dir: &Path,
    log: &Log,
    state: &mut State,
    seqs: &[u64],
    wanted: &BTreeSet<usize>,
) -> crate::Result<Result<(), String>> {
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, e) in state.experiments.iter().enumerate() {
        if e.curves.is_none() {
            let k = of(&e.id);
            if wanted.contains(&k) {
                members.entry(k).or_default().push(i);
            }
        }
    }
    if members.is_empty() {
        return Ok(Ok(()));
    }
    let mut first = None;
    // Samples pending for an experiment loaded here are added when their seq is above this.
    let mut after: HashMap<u32, u64> = HashMap::new();
    for (&k, list) in &members {
        let why = |w: String| format!("curve shard {:02x}: {w}", k);
        let shard;
        let mut from_file: HashMap<&str, ExpCurves> = HashMap::new();
        let mut from = 0;
        if seqs[k] > 0 {
            shard = match read(state_dir, k) {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(Err(why("missing".into()))),
                Err(w) => return Ok(Err(why(w))),
            };
            let f = match first {
                Some(f) => f,
                None => *first.insert(checkpoint::first_header_crc(log)?),
            };
            if let Err(w) = checkpoint::verify(log, &shard.covers, f)? {
                return Ok(Err(why(w)));
            }
            if shard.covers.seq < seqs[k] {
                return Ok(Err(why(format!(
                    "stale: it covers seq {}, the checkpoint says it was written at {}",
                    shard.covers.seq, seqs[k]
                ))));
            }
            if shard.covers.seq > state.seq {
                return Ok(Err(why(format!(
                    "it covers seq {}, beyond the {} folded",
                    shard.covers.seq, state.seq
                ))));
            }
            from = shard.covers.seq;
            for (id, c) in &shard.entries {
                if state.position(id).is_none() || of(id) != k {
                    return Ok(Err(why(format!("it has {id}, which the log does not"))));
                }
                from_file.insert(id.as_str(), c.clone());
            }
        }
        for &i in list {
            let e = &mut state.experiments[i];
            let c = from_file.remove(e.id.as_str()).unwrap_or_default();
            let run = &e.detail.get().run;
            let names_agree = c.metrics.len() <= run.metrics.len()
                && c.metrics
                    .iter()
                    .zip(&run.metrics)
                    .all(|(a, b)| a.0 == b.name);
            if !names_agree {
                return Ok(Err(why(format!(
                    "the metrics of {} are not the log's",
                    e.id
                ))));
            }
            e.curves = Some(c);
            after.insert(i as u32, from);
        }
    }
    let mut bad = None;
    let pending = std::mem::take(&mut state.pending);
    let mut kept = Vec::new();
    for p in pending {
        let Some(&from) = after.get(&p.exp) else {
            kept.push(p);
            continue;
        };
        if p.seq <= from {
            continue;
        }
        let e = &mut state.experiments[p.exp as usize];
        let run = &e.detail.get().run;
        let name = run
            .metrics
            .get(p.slot as usize)
            .map_or("", |m| m.name.as_str());
        let c = e.curves.as_mut().expect("loaded above");
        if !c.add(p.slot, name, p.epoch, p.value) {
            bad.get_or_insert_with(|| format!("samples of {} out of step", e.id));
        }
    }
    state.pending = kept;
    Ok(match bad {
        Some(w) => Err(w),
        None => Ok(()),
    })
}

/// Write the shards in `which` from the state's curves (every experiment of them must have its
/// curves loaded), as covering `covers`, and record in `seqs` the seq each was written at. A
/// shard none of whose experiments has samples is removed instead (and its seq set to 0).
/// Written before the checkpoint that records the seqs, without fsync: a shard that did not
/// reach the disk when that checkpoint did is older than the seq it records, or torn, and is then
/// refused by [`load`].
pub(crate) fn save(
    state_dir: &Path,
    state: &State,
    covers: &Covers,
    which: &BTreeSet<usize>,
    seqs: &mut [u64],
) -> crate::Result<usize> {
    if which.is_empty() {
        return Ok(0);
    }
    let mut members: BTreeMap<usize, Vec<usize>> = which.iter().map(|&k| (k, vec![])).collect();
    for (i, e) in state.experiments.iter().enumerate() {
        if let Some(list) = members.get_mut(&of(&e.id)) {
            list.push(i);
        }
    }
    let dir = state_dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io("create directory", &dir, e))?;
    let mut work = Vec::new();
    for (&k, list) in &members {
        let mut entries = Vec::with_capacity(list.len());
        for &i in list {
            let e = &state.experiments[i];
            let c = e.curves.as_ref().ok_or_else(|| {
                crate::Error::Invalid(format!("curves of {} not loaded before saving", e.id))
            })?;
            if !c.is_empty() {
                entries.push((&e.id, c));
            }
        }
        let p = path(state_dir, k);
        if entries.is_empty() {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::Error::io("remove", &p, e)),
            }
            seqs[k] = 0;
        } else {
            work.push((p, k, entries));
            seqs[k] = covers.seq;
        }
    }
    files::write_cache(work.len(), |j| {
        let (p, k, entries) = &work[j];
        Job {
            path: p.clone(),
            bytes: encode(*k, covers, entries.iter().copied()),
        }
    })?;
    Ok(work.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_and_damage_is_refused() {
        let mut c = ExpCurves::default();
        for e in 0..100u64 {
            assert!(c.add(0, "val_loss", e, 1.0 / (e as f64 + 1.0)));
            assert!(c.add(crate::project::curve::LR_SLOT, "", e, f64::NAN));
        }
        let id = ExpId::parse("exp-001").unwrap();
        let covers = Covers {
            seq: 7,
            pos: Some(crate::log::RecordPos {
                segment_first_seq: 1,
                offset: 99,
                seq: 7,
            }),
            header_crc: 5,
            first_header_crc: 6,
        };
        let bytes = encode(of(&id), &covers, [(&id, &c)].into_iter());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.shard, of(&id));
        assert_eq!(back.covers, covers);
        assert_eq!(format!("{:?}", back.entries), format!("{:?}", [(id, c)]));
        for at in [0, 9, 13, 21, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(decode(&b).is_err(), "bit flip at {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn ids_spread_over_the_shards() {
        let mut count = vec![0u32; SHARDS];
        for n in 1..=10_000u32 {
            count[of(&ExpId::from_number(n))] += 1;
        }
        let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
        assert!(*lo > 10 && *hi < 80, "{lo}..{hi} experiments per shard");
    }
}
