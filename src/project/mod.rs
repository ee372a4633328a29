//! Projections: pure folds of the log into the files people and agents read (registry.json,
//! CHECKLIST.md, per-experiment diagnosis.md and next.md). See docs/projections.md.
//!
//! Architecture invariants: projections never append to the log; the fold ([`apply`]) reads no
//! clock and no file; a projection checkpoint is a cache that is checked before it is trusted and
//! rebuilt from the log when it is not.

pub mod checklist;
pub mod checkpoint;
pub mod curve;
pub mod diagnosis;
pub mod files;
pub mod fmt;
pub mod registry;
pub mod shard;
pub mod state;
mod wire;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;

use self::checkpoint::{Covers, Loaded};
use self::files::Job;
pub use self::state::{Experiment, State, apply};
use crate::error::{Error, Result};
use crate::event::{ExpId, codec};
use crate::log::{ReadError, Reader};
use crate::store::Store;

/// Name of the lock that serialises writers of projections (under `.zo/state/`).
pub const LOCK_FILE: &str = "projections.lock";

/// What a refresh or rebuild did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// `used`, `missing`, `discarded: <why>`, `not used` (rebuild), or `in memory` (a
    /// [`refresh_from`] going on from the state of the previous one).
    pub checkpoint: String,
    /// Events folded, from seq `from_seq` on.
    pub events: u64,
    pub from_seq: u64,
    /// The last seq the projections now cover.
    pub seq: u64,
    pub experiments: usize,
    pub files_written: usize,
    pub files_unchanged: usize,
    /// Events that name an experiment never minted, or mint one twice: not folded.
    pub ignored_events: u64,
}

/// The state at the end of the log and what the checkpoint must record to cover it.
struct Folded {
    state: State,
    covers: Option<Covers>,
    /// The seq each curve shard was last written at (`shard::SHARDS` of them; 0: never).
    shards: Vec<u64>,
    /// Folded from seq 1: every experiment's curves are in the state, and every shard is
    /// written anew.
    full: bool,
    /// Whether the state differs from the saved checkpoint.
    changed: bool,
    /// The seq of the checkpoint on disk this state was folded on from; `None` when there is
    /// none to trust (missing, discarded, a rebuild).
    on_disk: Option<u64>,
    report: Report,
}

/// A refresh saves the projection checkpoint only once it lags this many events behind the
/// state (or when there is no checkpoint to trust, or when folding the lag again would be dear:
/// see [`SAVE_WHEN_RENDERED`]): saving rewrites the whole checkpoint (6.5 MB at 10,000
/// experiments), and folding a few hundred events again from the older one costs far less. The
/// older checkpoint stays exact for the log prefix it covers, so nothing is ever wrong, only
/// folded again.
pub const SAVE_EVERY_EVENTS: u64 = 512;

/// A refresh that renders registry.json and CHECKLIST.md, or the files of more than this many
/// experiments, saves the checkpoint whatever the lag: otherwise every later refresh would fold
/// those events again and render the same files again.
pub const SAVE_WHEN_RENDERED: usize = 8;

/// What a fold does with the curves of experiments whose curves are not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curves {
    /// Keep their samples pending, to add once the curves are loaded (for writing or drawing).
    Keep,
    /// Drop their samples: the state is only read, never drawn nor saved.
    Ignore,
}

/// Fold the log: from the checkpoint when `use_checkpoint` and it checks out, else from seq 1.
fn fold(store: &Store, use_checkpoint: bool, curves: Curves) -> Result<Folded> {
    let started = std::time::Instant::now();
    let log = store.log();
    let loaded = if use_checkpoint {
        checkpoint::load(&store.state_dir(), log)?
    } else {
        Loaded::Missing
    };
    let no_shards = || vec![0; shard::SHARDS];
    let (mut state, reader, covers, shards, how) = match loaded {
        Loaded::Valid {
            state,
            covers,
            header,
            shards,
        } => {
            let pos = covers.pos.expect("a valid checkpoint has a position");
            let reader = log.reader_after(&pos, &header)?;
            (*state, reader, Some(covers), shards, "used".to_owned())
        }
        Loaded::Missing => (
            State::new(),
            log.reader(1),
            None,
            no_shards(),
            if use_checkpoint {
                "missing"
            } else {
                "not used"
            }
            .to_owned(),
        ),
        Loaded::Discarded(why) => {
            tracing::warn!("projection checkpoint discarded, rebuilding from the log: {why}");
            (
                State::new(),
                log.reader(1),
                None,
                no_shards(),
                format!("discarded: {why}"),
            )
        }
    };
    state.ignore_curves = curves == Curves::Ignore;
    tracing::debug!(checkpoint = %how, elapsed = ?started.elapsed(), "projection state loaded");
    let reused = covers.is_some();
    let mut folded = Folded {
        report: Report {
            checkpoint: how,
            from_seq: state.seq + 1,
            ..Report::default()
        },
        state,
        covers,
        shards,
        full: !reused,
        changed: !reused,
        on_disk: covers.map(|c| c.seq),
    };
    fold_on(store, &mut folded, reader)?;
    tracing::debug!(events = folded.report.events, elapsed = ?started.elapsed(), "log folded");
    if !reused {
        folded.state.mark_all_dirty();
    }
    Ok(folded)
}

/// Fold everything `reader` delivers into `f`, and say what the checkpoint must then cover.
fn fold_on(store: &Store, f: &mut Folded, reader: Reader) -> Result<()> {
    let log = store.log();
    let state = &mut f.state;
    let mut events = 0u64;
    let reader = fold_records(reader, |chunk| {
        // One view per chunk: its metrics vector is reused for every EpochEnded in it.
        let mut view = codec::EpochView::default();
        for (seq, payload) in chunk.records() {
            match codec::decode_epoch_into(payload, &mut view) {
                Some(time) => state::apply_epoch(state, seq, time, &view),
                None => {
                    let ev = codec::decode(seq, payload)
                        .map_err(|source| Error::Codec { seq, source })?;
                    apply(state, &ev);
                }
            }
            events += 1;
        }
        Ok(())
    })?;
    if events > 0 || f.covers.is_none() {
        f.covers = match reader.last_delivered() {
            Some(pos) => {
                let header = log.frame_header_at(&pos)?.ok_or_else(|| {
                    Error::Invalid(format!("record {} vanished while folding", pos.seq))
                })?;
                let first = checkpoint::first_header_crc(log)?.unwrap_or(0);
                Some(Covers {
                    seq: pos.seq,
                    pos: Some(pos),
                    header_crc: header.header_crc,
                    first_header_crc: first,
                })
            }
            None => None,
        };
    }
    f.changed |= events > 0;
    f.report.events += events;
    f.report.seq = f.state.seq;
    f.report.experiments = f.state.experiments.len();
    f.report.ignored_events = f.state.ignored;
    Ok(())
}

/// Records copied out of the log by the reading thread, handed to the folding thread.
#[derive(Default)]
struct Chunk {
    seqs: Vec<u64>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl Chunk {
    fn clear(&mut self) {
        self.seqs.clear();
        self.ends.clear();
        self.bytes.clear();
    }

    fn push(&mut self, seq: u64, payload: &[u8]) {
        self.seqs.push(seq);
        self.bytes.extend_from_slice(payload);
        self.ends.push(self.bytes.len());
    }

    /// Its records, in log order: (seq, payload).
    fn records(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.seqs
            .iter()
            .zip(starts.zip(&self.ends))
            .map(|(&seq, (start, &end))| (seq, &self.bytes[start..end]))
    }
}

const CHUNK_BYTES: usize = 1 << 20;

/// Call `f` with every chunk of records from the reader's position to the end of the log, in
/// order, and return the reader (which knows the last record delivered). Two stages on two
/// threads: one reads and CRC-checks the log, the other (this one) decodes and folds.
fn fold_records(mut reader: Reader, mut f: impl FnMut(&Chunk) -> Result<()>) -> Result<Reader> {
    // The tail after a checkpoint is usually a few records: read it on this thread (a second
    // thread would cost more to start and wait for than the reading itself).
    if reader.ahead_at_most(CHUNK_BYTES as u64)? {
        let mut chunk = Chunk::default();
        reader
            .poll(|r| -> std::result::Result<(), ()> {
                chunk.push(r.seq, r.payload);
                Ok(())
            })
            .map_err(|e| match e {
                ReadError::Log(e) => Error::from(e),
                ReadError::Callback(()) => unreachable!("the callback never fails"),
            })?;
        if !chunk.seqs.is_empty() {
            f(&chunk)?;
        }
        return Ok(reader);
    }
    let (tx, rx) = mpsc::sync_channel::<Chunk>(4);
    let (back_tx, back_rx) = mpsc::channel::<Chunk>();
    std::thread::scope(|s| {
        let reading = s.spawn(move || {
            let mut reader = reader;
            let mut chunk = Chunk::default();
            let end = reader.poll(|r| -> std::result::Result<(), ()> {
                chunk.push(r.seq, r.payload);
                if chunk.bytes.len() >= CHUNK_BYTES {
                    let mut next = back_rx.try_recv().unwrap_or_default();
                    next.clear();
                    tx.send(std::mem::replace(&mut chunk, next))
                        .map_err(|_| ())?;
                }
                Ok(())
            });
            if end.is_ok() && !chunk.seqs.is_empty() {
                let _ = tx.send(chunk);
            }
            (reader, end)
        });
        let mut failed = None;
        for chunk in rx.iter() {
            if let Err(e) = f(&chunk) {
                failed = Some(e);
                break;
            }
            let _ = back_tx.send(chunk);
        }
        drop(rx);
        let (reader, end) = reading.join().expect("the log reading thread panicked");
        if let Some(e) = failed {
            return Err(e);
        }
        match end {
            Ok(_) => Ok(reader),
            Err(ReadError::Log(e)) => Err(e.into()),
            Err(ReadError::Callback(())) => Err(Error::Invalid(
                "the folding thread stopped reading the log".into(),
            )),
        }
    })
}

/// The state at the end of the log, for commands that only read: the checkpoint plus what came
/// after it, folded in memory. Writes nothing, and reads no curve (experiments' `curves()` are
/// `None` unless minted after the checkpoint): see [`current_with_curves`].
pub fn current(store: &Store) -> Result<State> {
    Ok(fold(store, true, Curves::Ignore)?.state)
}

/// [`current`], with the curves of the experiments `ids` loaded from the curve cache (for
/// drawing them). Waits for a refresh in progress. Writes nothing; when the curve cache cannot
/// be trusted, folds the whole log in memory instead.
pub fn current_with_curves(store: &Store, ids: &[ExpId]) -> Result<State> {
    let _lock = lock(store)?;
    let mut folded = fold(store, true, Curves::Keep)?;
    let wanted: BTreeSet<usize> = ids.iter().map(shard::of).collect();
    if let Err(why) = shard::load(
        &store.state_dir(),
        store.log(),
        &mut folded.state,
        &folded.shards,
        &wanted,
    )? {
        tracing::warn!("curve cache not used, folding the whole log: {why}");
        folded = fold(store, false, Curves::Keep)?;
    }
    folded.state.pending.clear();
    Ok(folded.state)
}

/// The state at the end of the log (as [`current`]), kept with where reading stopped, so that
/// [`refresh_from`] can go on from there instead of loading the checkpoint again.
pub struct Current(Folded);

impl Current {
    pub fn state(&self) -> &State {
        &self.0.state
    }

    /// The seq the next appended event gets if nothing was appended since this state was folded.
    pub fn next_seq(&self) -> u64 {
        self.0.covers.as_ref().map_or(1, |c| c.seq + 1)
    }

    pub fn into_state(self) -> State {
        self.0.state
    }
}

/// [`current`], ready for [`refresh_from`].
pub fn load(store: &Store) -> Result<Current> {
    fold(store, true, Curves::Keep).map(Current)
}

/// Bring every projection up to date with the log. Every command that appends calls this after
/// its append is acknowledged.
pub fn refresh(store: &Store) -> Result<()> {
    refresh_report(store).map(drop)
}

/// [`refresh`], saying what it did.
pub fn refresh_report(store: &Store) -> Result<Report> {
    let _lock = lock(store)?;
    let folded = fold(store, true, Curves::Keep)?;
    write(store, folded).map(|(report, _)| report)
}

/// [`refresh`] from a state loaded earlier (before an append): fold what came since, write, save.
/// Returns the state the files now show, ready for the next `refresh_from`: a long-running
/// appender (an ingest follower) keeps it and never loads the checkpoint again.
pub fn refresh_from(store: &Store, cur: Current) -> Result<(Report, Current)> {
    let _lock = lock(store)?;
    let mut folded = cur.0;
    let log = store.log();
    let reader = match folded.covers {
        Some(c) => {
            let pos = c.pos.expect("covers from a fold have a position");
            match log.frame_header_at(&pos)? {
                Some(h) if h.header_crc == c.header_crc => Some(log.reader_after(&pos, &h)?),
                // The log was cut under us: start over from the checkpoint.
                _ => None,
            }
        }
        None if folded.state.seq == 0 => Some(log.reader(1)),
        None => None,
    };
    match reader {
        Some(r) => fold_on(store, &mut folded, r)?,
        None => folded = fold(store, true, Curves::Keep)?,
    }
    write(store, folded)
}

/// A [`load`] running on another thread while the caller appends: the checkpoint is read and
/// decoded on one core while the log writer opens (it reads the last segment) and syncs on the
/// other, and [`Preloaded::refresh`] then folds only what came since. Nothing is locked while it
/// loads, and it writes nothing.
pub struct Preloaded {
    store: Store,
    loading: std::thread::JoinHandle<Result<Current>>,
}

/// Start loading the projection state for a refresh after an append.
pub fn preload(store: &Store) -> Preloaded {
    let s = store.clone();
    Preloaded {
        store: store.clone(),
        loading: std::thread::spawn(move || load(&s)),
    }
}

impl Preloaded {
    /// [`refresh`], from the state loaded meanwhile (or from scratch if loading failed: a
    /// refresh reports its own error).
    pub fn refresh(self) -> Result<Report> {
        match self.loading.join() {
            Ok(Ok(cur)) => refresh_from(&self.store, cur).map(|(report, _)| report),
            Ok(Err(e)) => {
                tracing::debug!("preloading the projection state failed ({e}); refreshing anew");
                refresh_report(&self.store)
            }
            Err(_) => Err(Error::Invalid(
                "the thread loading the projection state panicked".into(),
            )),
        }
    }
}

/// Regenerate every projection from the log alone (the checkpoint is neither read nor trusted),
/// then save a new checkpoint.
pub fn rebuild(store: &Store) -> Result<Report> {
    let _lock = lock(store)?;
    let mut folded = fold(store, false, Curves::Keep)?;
    folded.state.mark_all_dirty();
    folded.changed = true;
    write(store, folded).map(|(report, _)| report)
}

/// Hold the projection lock (blocking) so that concurrent refreshes do not interleave: each one
/// folds to the end of the log as it is while it holds the lock, so files never go back in time.
fn lock(store: &Store) -> Result<File> {
    let dir = store.state_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let p = dir.join(LOCK_FILE);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io("open", &p, e))?;
    f.lock().map_err(|e| Error::io("lock", &p, e))?;
    Ok(f)
}

/// Experiments rendered per write pass: bounds the memory a rebuild holds in rendered bytes.
const CHUNK: usize = 2048;

/// Load the curves that writing needs: those of every experiment in a shard about to be
/// written (a shard is written whole) and of every experiment whose curves.svg is drawn again.
/// Returns the shards to write, or why the curve cache cannot be trusted.
fn prepare_curves(
    store: &Store,
    f: &mut Folded,
) -> Result<std::result::Result<BTreeSet<usize>, String>> {
    if f.full {
        return Ok(Ok((0..shard::SHARDS).collect()));
    }
    let state = &f.state;
    let write: BTreeSet<usize> = state
        .dirty
        .curves
        .iter()
        .map(|&i| shard::of(&state.experiments[i].id))
        .collect();
    let mut wanted = write.clone();
    for &i in &state.dirty.experiments {
        let e = &state.experiments[i];
        if e.curves.is_none() && e.has_diagnosis && crate::plot::has_samples(e) {
            wanted.insert(shard::of(&e.id));
        }
    }
    let loaded = shard::load(
        &store.state_dir(),
        store.log(),
        &mut f.state,
        &f.shards,
        &wanted,
    )?;
    debug_assert!(loaded.is_err() || f.state.pending.is_empty());
    Ok(loaded.map(|()| write))
}

/// The files of one experiment: diagnosis.md and curves.svg once anything happened to it,
/// next.md once it had next ideas or advice.
fn render_experiment(exp_root: &std::path::Path, e: &Experiment) -> Result<Vec<Job>> {
    let dir = exp_root.join(e.id.as_str());
    let mut jobs = Vec::with_capacity(3);
    if e.has_diagnosis {
        jobs.push(Job {
            path: dir.join("diagnosis.md"),
            bytes: diagnosis::render_diagnosis(e).into_bytes(),
        });
        if crate::plot::has_samples(e) {
            if e.curves.is_none() {
                return Err(Error::Invalid(format!(
                    "{}: curves not loaded before drawing curves.svg",
                    e.id
                )));
            }
            let metrics = crate::plot::default_metrics(e);
            match crate::plot::render(e, &metrics) {
                Ok(svg) => jobs.push(Job {
                    path: dir.join(diagnosis::CURVES_FILE),
                    bytes: svg.into_bytes(),
                }),
                // A plot that cannot be drawn must not hold back the other files.
                Err(err) => tracing::warn!("{}: curves.svg not drawn: {err}", e.id),
            }
        }
    }
    if e.has_next {
        jobs.push(Job {
            path: dir.join("next.md"),
            bytes: diagnosis::render_next(e).into_bytes(),
        });
    }
    Ok(jobs)
}

/// Experiments rendered on one thread before the work is spread over the cores.
const RENDER_ALONE: usize = 64;

/// The files of the experiments `which`, in that order: rendered on every core when there are
/// many (a rebuild draws 10,000 SVGs).
fn render_experiments(
    exp_root: &std::path::Path,
    state: &State,
    which: &[usize],
) -> Result<Vec<Job>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if which.len() < RENDER_ALONE || threads < 2 {
        let mut jobs = Vec::new();
        for &i in which {
            jobs.extend(render_experiment(exp_root, &state.experiments[i])?);
        }
        return Ok(jobs);
    }
    let parts: Vec<Result<Vec<Job>>> = std::thread::scope(|s| {
        let handles: Vec<_> = which
            .chunks(which.len().div_ceil(threads))
            .map(|part| {
                s.spawn(move || -> Result<Vec<Job>> {
                    let mut jobs = Vec::new();
                    for &i in part {
                        jobs.extend(render_experiment(exp_root, &state.experiments[i])?);
                    }
                    Ok(jobs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rendering thread panicked"))
            .collect()
    });
    let mut jobs = Vec::new();
    for p in parts {
        jobs.extend(p?);
    }
    Ok(jobs)
}

/// Write what changed, then the curve shards, then save the checkpoint. Returns the state, now
/// clean.
fn write(store: &Store, mut folded: Folded) -> Result<(Report, Current)> {
    let started = std::time::Instant::now();
    let write_shards = match prepare_curves(store, &mut folded)? {
        Ok(w) => w,
        Err(why) => {
            tracing::warn!("curve cache discarded, rebuilding from the log: {why}");
            let mut full = fold(store, false, Curves::Keep)?;
            full.state.mark_all_dirty();
            full.report.checkpoint = format!("discarded: {why}");
            folded = full;
            (0..shard::SHARDS).collect()
        }
    };
    tracing::debug!(shards = write_shards.len(), elapsed = ?started.elapsed(), "curves loaded");
    let Folded {
        mut state,
        covers,
        mut shards,
        full: _,
        changed,
        mut on_disk,
        mut report,
    } = folded;
    let exp_root = store.experiments_dir();
    let mut new_dirs = BTreeSet::new();
    let dirty = std::mem::take(&mut state.dirty);
    let mut jobs = Vec::new();
    if dirty.registry {
        files::ensure_dir(&exp_root, &mut new_dirs)?;
        jobs.push(Job {
            path: exp_root.join("registry.json"),
            bytes: registry::render(&state),
        });
        jobs.push(Job {
            path: exp_root.join("CHECKLIST.md"),
            bytes: checklist::render(&state).into_bytes(),
        });
    }
    let dirty_exps: Vec<usize> = dirty.experiments.into_iter().collect();
    let dear = dirty.registry || dirty_exps.len() > SAVE_WHEN_RENDERED;
    // Two stages: this thread renders a chunk of experiments (on every core) while a writer
    // thread makes the directories and writes the previous chunk (mostly waiting on the disk).
    let written = std::thread::scope(|s| -> Result<files::Written> {
        // (Each chunk's experiment directories, made even for an experiment with no file yet,
        // and its files.)
        let (tx, rx) = mpsc::sync_channel::<(Vec<PathBuf>, Vec<Job>)>(1);
        let new_dirs = &mut new_dirs;
        let writer = s.spawn(move || -> Result<files::Written> {
            let mut total = files::Written::default();
            for (dirs, jobs) in rx {
                for dir in &dirs {
                    files::ensure_dir(dir, new_dirs)?;
                }
                let w = files::write_all(&jobs)?;
                tracing::trace!(files = jobs.len(), elapsed = ?started.elapsed(), "written");
                total.written += w.written;
                total.unchanged += w.unchanged;
            }
            Ok(total)
        });
        let mut rendered = Ok(());
        if !jobs.is_empty() {
            let _ = tx.send((Vec::new(), std::mem::take(&mut jobs)));
        }
        for chunk in dirty_exps.chunks(CHUNK) {
            let dirs = chunk
                .iter()
                .map(|&i| exp_root.join(state.experiments[i].id.as_str()))
                .collect();
            match render_experiments(&exp_root, &state, chunk) {
                Ok(jobs) => {
                    tracing::trace!(experiments = chunk.len(), elapsed = ?started.elapsed(), "rendered");
                    if tx.send((dirs, jobs)).is_err() {
                        break; // the writer failed: its error is the one to report
                    }
                }
                Err(e) => {
                    rendered = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let total = writer.join().expect("the projection writer panicked")?;
        rendered.map(|()| total)
    })?;
    report.files_written += written.written;
    report.files_unchanged += written.unchanged;
    tracing::trace!(dirs = new_dirs.len(), elapsed = ?started.elapsed(), "syncing new directories");
    files::sync_dirs(new_dirs.into_iter().collect::<Vec<PathBuf>>())?;
    tracing::debug!(
        written = report.files_written,
        unchanged = report.files_unchanged,
        elapsed = ?started.elapsed(),
        "projection files written"
    );
    if let Some(c) = &covers {
        let n = shard::save(&store.state_dir(), &state, c, &write_shards, &mut shards)?;
        tracing::debug!(written = n, elapsed = ?started.elapsed(), "curve shards saved");
    }
    state.clear_dirty();
    if changed
        && let Some(c) = covers
        && (dear || on_disk.is_none_or(|s| c.seq.saturating_sub(s) >= SAVE_EVERY_EVENTS))
    {
        checkpoint::save(&store.state_dir(), &state, &c, &shards)?;
        on_disk = Some(c.seq);
        tracing::debug!(elapsed = ?started.elapsed(), "projection checkpoint saved");
    }
    let next = Report {
        checkpoint: "in memory".into(),
        from_seq: state.seq + 1,
        seq: state.seq,
        experiments: state.experiments.len(),
        ignored_events: state.ignored,
        ..Report::default()
    };
    Ok((
        report,
        Current(Folded {
            state,
            covers,
            shards,
            full: false,
            changed: false,
            on_disk,
            report: next,
        }),
    ))
}
