//! The write-ahead log: segments of CRC-framed records with gap-free sequence numbers.
//!
//! Architecture invariant: this module knows bytes and sequence numbers, nothing about events.
//! docs/format.md is the contract for the bytes; wal-rules.md numbers are cited where a rule is
//! implemented.

pub mod frame;
pub mod fs;
pub mod hint;
pub mod scan;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::frame::{DEFAULT_MAX_RECORD, SEGMENT_HEADER_LEN, SegmentHeader};
use self::fs::{Fs, FsFile, LockFailure, LockGuard};
use self::hint::{HINT_FILE, HINT_LEN, TailHint};
pub use self::scan::{RecordRef, Tail};

/// The default segment size at which the writer starts a new segment: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
const SEGMENT_EXT: &str = ".zlog";

/// Errors of the log. Every corruption names the segment file and byte offset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log damaged in {} at offset {offset}: {reason}", segment.display())]
    Corrupted {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "the log is locked by {holder}; gave up after {waited:?} (another writer is appending; try again, raise --lock-timeout, or stop that process)"
    )]
    Locked { holder: String, waited: Duration },
    #[error(
        "the log writer is poisoned after an earlier failure ({reason}); reopen the store to recover"
    )]
    Poisoned { reason: String },
    #[error("record {index} of the batch is {len} bytes, over the maximum record size of {max}")]
    RecordTooLarge { index: usize, len: usize, max: u32 },
    #[error("cannot append an empty batch")]
    EmptyBatch,
    #[error("{0}")]
    Refused(String),
}

impl LogError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Tunables of a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub segment_size: u64,
    pub max_record: u32,
    pub lock_timeout: Duration,
    /// Written into the LOCK file while we hold it ("pid 12 on host: zolog append").
    pub holder: String,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_record: DEFAULT_MAX_RECORD,
            lock_timeout: Duration::from_secs(10),
            holder: format!("pid {}", std::process::id()),
        }
    }
}

/// How a writer found the end of the log when it opened (for `-vv` and for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TailFrom {
    /// There was no segment yet: the writer started the log.
    NewLog,
    /// The hint an earlier writer of this process left in memory.
    Memory,
    /// The hint file (`TAIL`) an earlier writer left, possibly in another process.
    HintFile,
    /// A scan of the whole last segment.
    Scan,
}

#[derive(Debug)]
struct Inner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    opts: LogOptions,
    /// Where this process's last writer left the end of the log (see `open_tail`).
    hint: Mutex<Option<TailHint>>,
}

/// A log directory. Cheap to clone. Reading needs no lock; writing goes through [`Log::writer`].
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

/// Range of sequence numbers a batch received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// What recovery cut from a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub kept_in: PathBuf,
    pub reason: String,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_EXT}")
}

impl Log {
    /// Open (creating the directory if needed) the log in `dir`.
    pub fn open(fs: Arc<dyn Fs>, dir: impl Into<PathBuf>, opts: LogOptions) -> Result<Log> {
        let dir = dir.into();
        fs.create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        Ok(Log {
            inner: Arc::new(Inner {
                fs,
                dir,
                opts,
                hint: Mutex::new(None),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &LogOptions {
        &self.inner.opts
    }

    pub fn fs(&self) -> &Arc<dyn Fs> {
        &self.inner.fs
    }

    fn lock_path(&self) -> PathBuf {
        self.inner.dir.join("LOCK")
    }

    fn hint_path(&self) -> PathBuf {
        self.inner.dir.join(HINT_FILE)
    }

    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.inner.dir.join(segment_name(first_seq))
    }

    /// First sequence numbers of the segments, in order.
    pub fn segments(&self) -> Result<Vec<u64>> {
        let names = self
            .inner
            .fs
            .list(&self.inner.dir)
            .map_err(|e| LogError::io("list", &self.inner.dir, e))?;
        Ok(Self::segments_in(&names))
    }

    /// First sequence numbers of the segments among these file names, in order.
    fn segments_in(names: &[String]) -> Vec<u64> {
        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| n.strip_suffix(SEGMENT_EXT))
            .filter(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|stem| stem.parse().ok())
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// Who holds the writer lock right now, if anybody.
    pub fn lock_holder(&self) -> Option<String> {
        self.inner.fs.lock_holder(&self.lock_path())
    }

    fn read_all(&self, path: &Path) -> Result<Vec<u8>> {
        let mut f = self
            .inner
            .fs
            .open(path)
            .map_err(|e| LogError::io("open", path, e))?;
        f.read_range(0, usize::MAX)
            .map_err(|e| LogError::io("read", path, e))
    }

    /// Take the writer lock and recover the tail (wal-rules 4, 12, 13). The returned writer holds
    /// the lock until dropped.
    pub fn writer(&self) -> Result<Writer> {
        let lock = self.lock()?;
        let (writer, cut) = self.open_tail(lock, true)?;
        if let Some(cut) = cut {
            tracing::warn!(
                segment = %cut.segment.display(),
                offset = cut.offset,
                bytes = cut.bytes,
                kept_in = %cut.kept_in.display(),
                "cut a torn tail: {}",
                cut.reason
            );
        }
        Ok(writer)
    }

    /// Take the writer lock, waiting up to the lock timeout; a busy lock names its holder.
    fn lock(&self) -> Result<Box<dyn LockGuard>> {
        let opts = &self.inner.opts;
        self.inner
            .fs
            .lock(&self.lock_path(), &opts.holder, opts.lock_timeout)
            .map_err(|e| match e {
                LockFailure::Busy { holder } => LogError::Locked {
                    holder,
                    waited: opts.lock_timeout,
                },
                LockFailure::Io(e) => LogError::io("lock", &self.lock_path(), e),
            })
    }

    /// Recover the tail (as any writer does on open) and report what was cut. Trusts no hint:
    /// the whole last segment is scanned, so damage anywhere in it is reported.
    pub fn recover(&self) -> Result<Option<Cut>> {
        let lock = self.lock()?;
        let (_w, cut) = self.open_tail(lock, false)?;
        Ok(cut)
    }

    /// Cut the log at `offset` of the segment starting at `segment_first_seq`: for damage in the
    /// middle of the log, only ever on a person's explicit request. The offset must be the end of
    /// a complete batch. The bytes after it, and every later segment, are kept as `.broken` files.
    pub fn cut_at(&self, segment_first_seq: u64, offset: u64) -> Result<Vec<Cut>> {
        let _lock = self.lock()?;
        let segments = self.segments()?;
        let idx = segments
            .iter()
            .position(|&s| s == segment_first_seq)
            .ok_or_else(|| {
                LogError::Refused(format!(
                    "no segment {} in {}",
                    segment_name(segment_first_seq),
                    self.inner.dir.display()
                ))
            })?;
        let path = self.segment_path(segment_first_seq);
        let bytes = self.read_all(&path)?;
        let (header, hlen) = SegmentHeader::decode(&bytes).map_err(|e| LogError::Corrupted {
            segment: path.clone(),
            offset: 0,
            reason: e.to_string(),
        })?;
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        if off < hlen || off > bytes.len() {
            return Err(LogError::Refused(format!(
                "offset {offset} is outside the records of {} (they span {hlen}..{})",
                path.display(),
                bytes.len()
            )));
        }
        let s = scan::scan::<()>(
            &bytes[hlen..off],
            hlen as u64,
            header.first_seq,
            self.inner.opts.max_record,
            |_| Ok(()),
        )
        .unwrap_or_else(|()| unreachable!());
        if s.tail != Tail::Clean {
            return Err(LogError::Refused(format!(
                "offset {offset} is not the end of a complete batch in {}; the nearest earlier one is {}",
                path.display(),
                hlen + s.clean_end
            )));
        }
        // The hints name an end that is about to go. (The file's removal is made durable by the
        // directory fsyncs below; should it come back anyway, it no longer matches the segment.)
        self.forget_hints();
        let mut cuts = Vec::new();
        // Later segments first, newest first, so a crash leaves a log that still ends cleanly.
        for &later in segments[idx + 1..].iter().rev() {
            let lp = self.segment_path(later);
            let kept = self.broken_path(&lp, 0);
            let len = self.read_all(&lp)?.len() as u64;
            self.inner
                .fs
                .rename(&lp, &kept)
                .map_err(|e| LogError::io("rename", &lp, e))?;
            self.sync_dir()?;
            cuts.push(Cut {
                segment: lp,
                offset: 0,
                bytes: len,
                kept_in: kept,
                reason: "segment after an explicit cut".into(),
            });
        }
        let mut file = self
            .inner
            .fs
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        if let Some(cut) = self.cut_file(
            &mut *file,
            &path,
            offset,
            &bytes[off..],
            "explicit cut".to_owned(),
        )? {
            cuts.push(cut);
        }
        Ok(cuts)
    }

    fn forget_hints(&self) {
        self.inner
            .hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let path = self.hint_path();
        if let Err(e) = self.inner.fs.remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!("could not remove {}: {e}", path.display());
        }
    }

    fn sync_dir(&self) -> Result<()> {
        self.inner
            .fs
            .sync_dir(&self.inner.dir)
            .map_err(|e| LogError::io("fsync directory", &self.inner.dir, e))
    }

    fn broken_path(&self, segment: &Path, offset: u64) -> PathBuf {
        let name = segment
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("segment");
        let mut n = 0;
        loop {
            let candidate = if n == 0 {
                self.inner.dir.join(format!("{name}.{offset}.broken"))
            } else {
                self.inner.dir.join(format!("{name}.{offset}.{n}.broken"))
            };
            if !self.inner.fs.exists(&candidate) {
                return candidate;
            }
            n += 1;
        }
    }

    /// Keep `tail` (the file's bytes from `offset` to its end) in a `.broken` file, then
    /// truncate `file` to `offset`, durably (wal-rules 4: truncate, fdatasync, and only then
    /// append again).
    fn cut_file(
        &self,
        file: &mut dyn FsFile,
        path: &Path,
        offset: u64,
        tail: &[u8],
        reason: String,
    ) -> Result<Option<Cut>> {
        if tail.is_empty() {
            return Ok(None);
        }
        let kept = self.broken_path(path, offset);
        let mut bf = self
            .inner
            .fs
            .create_new(&kept)
            .map_err(|e| LogError::io("create", &kept, e))?;
        bf.write_all_at(0, tail)
            .map_err(|e| LogError::io("write", &kept, e))?;
        bf.sync_data()
            .map_err(|e| LogError::io("fdatasync", &kept, e))?;
        self.sync_dir()?;
        file.set_len(offset)
            .map_err(|e| LogError::io("truncate", path, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("fdatasync", path, e))?;
        Ok(Some(Cut {
            segment: path.to_path_buf(),
            offset,
            bytes: tail.len() as u64,
            kept_in: kept,
            reason,
        }))
    }

    /// Under the lock: find the end of the log, cutting a torn tail, and build a writer there.
    ///
    /// With `use_hints`, a hint says where the last complete batch ended, and only the bytes
    /// after it are scanned: this process's own hint if its last record is still there, else the
    /// hint file if its last record is still there and the CRC of every byte before its end still
    /// matches (so damage before the hint is found as a full scan finds it). Without a hint that
    /// holds, the whole last segment is scanned. Either way everything after the starting point
    /// is scanned, and a torn tail there is cut, damage refused.
    fn open_tail(
        &self,
        lock: Box<dyn LockGuard>,
        use_hints: bool,
    ) -> Result<(Writer, Option<Cut>)> {
        let started = std::time::Instant::now();
        let fs = &self.inner.fs;
        let dir = &self.inner.dir;
        // Segments that were never renamed into place hold nothing acknowledged.
        let names = fs.list(dir).map_err(|e| LogError::io("list", dir, e))?;
        let mut removed = false;
        for n in names.iter().filter(|n| n.ends_with(".zlog.tmp")) {
            let p = dir.join(n);
            fs.remove_file(&p)
                .map_err(|e| LogError::io("remove", &p, e))?;
            removed = true;
        }
        let segments = Self::segments_in(&names);
        let Some(&last) = segments.last() else {
            if removed {
                self.sync_dir()?;
            }
            let w = Writer::create_segment(self.clone(), lock, 1, 0)?;
            // A new log: make the log directory's own entry durable too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent)
                    .map_err(|e| LogError::io("fsync directory", parent, e))?;
            }
            return Ok((w, None));
        };
        if removed {
            self.sync_dir()?;
        }
        let path = self.segment_path(last);
        let mut file = fs.open(&path).map_err(|e| LogError::io("open", &path, e))?;
        let len = file.len().map_err(|e| LogError::io("stat", &path, e))?;

        // The hint file, kept open for the writer's own hint when it is whole.
        let mut hint_file = None;
        let hinted = if use_hints {
            self.usable_hint(&mut *file, last, len, &mut hint_file)
        } else {
            None
        };
        let (start, from) = match hinted {
            Some(found) => found,
            None => (self.segment_start(&mut *file, &path, last)?, TailFrom::Scan),
        };
        // Everything after the starting point is scanned: a torn tail there is cut, damage
        // refused, records that other writers appended since the hint was left are taken in.
        let (end, scanned, cut) = self.scan_on(&mut *file, &path, len, start)?;
        let mut w = Writer {
            log: self.clone(),
            _lock: lock,
            file,
            path,
            segment_first_seq: last,
            end: end.end,
            next_seq: end.next_seq,
            last_crc: end.last_crc,
            last_record_at: end.last_record_at,
            prefix: crc32fast::Hasher::new_with_initial(end.prefix_crc),
            hint_file: hint_file.map_or(HintFile::Unopened, HintFile::Open),
            opened_from: from,
            poisoned: None,
            buf: Vec::new(),
        };
        // Leave a hint for the next writer, unless the one used still says where the end is.
        let unchanged = scanned == 0;
        match from {
            TailFrom::Memory if unchanged => {}
            TailFrom::HintFile if unchanged => {
                w.remember_in_memory();
            }
            _ => w.remember(),
        }
        tracing::debug!(
            from = ?from,
            segment = %w.path.display(),
            end = w.end,
            next_seq = w.next_seq,
            scanned,
            elapsed = ?started.elapsed(),
            "log writer opened"
        );
        self.entry_durable(w, cut, removed)
    }

    /// The start of the whole last segment's scan: just after its header, checked.
    fn segment_start(&self, file: &mut dyn FsFile, path: &Path, last: u64) -> Result<TailHint> {
        let hb = file
            .read_range(0, SEGMENT_HEADER_LEN)
            .map_err(|e| LogError::io("read", path, e))?;
        let (header, hlen) = SegmentHeader::decode(&hb).map_err(|e| LogError::Corrupted {
            segment: path.to_path_buf(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if header.first_seq != last {
            return Err(LogError::Corrupted {
                segment: path.to_path_buf(),
                offset: 16,
                reason: format!(
                    "segment header says first seq {}, its name says {last}",
                    header.first_seq
                ),
            });
        }
        Ok(TailHint {
            segment_first_seq: last,
            end: hlen as u64,
            next_seq: header.first_seq,
            last_crc: header.prev_tail_crc,
            last_record_at: None,
            prefix_crc: crc32fast::hash(&hb[..hlen]),
        })
    }

    /// A hint that holds for the last segment (which starts at `last` and is `len` bytes long),
    /// and where it came from; `None` when there is none (the hint file is ignored, never an
    /// error, whatever is wrong with it).
    fn usable_hint(
        &self,
        file: &mut dyn FsFile,
        last: u64,
        len: u64,
        hint_file: &mut Option<Box<dyn FsFile>>,
    ) -> Option<(TailHint, TailFrom)> {
        let mem = *self.inner.hint.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = mem
            && h.segment_first_seq == last
            && self.hint_holds(file, &h, len)
        {
            return Some((h, TailFrom::Memory));
        }
        let h = match self.read_hint_file(hint_file) {
            Ok(h) => h,
            Err(why) => {
                tracing::debug!("tail hint file not used: {why}");
                return None;
            }
        };
        let why = if h.segment_first_seq != last {
            format!(
                "it names segment {}, the last one is {}",
                h.segment_first_seq, last
            )
        } else if !self.hint_holds(file, &h, len) {
            format!(
                "the segment no longer holds its record ending at {} (length {len})",
                h.end
            )
        } else if !prefix_holds(file, &h) {
            format!("the bytes before offset {} changed", h.end)
        } else {
            return Some((h, TailFrom::HintFile));
        };
        tracing::debug!("tail hint file not used: {why}");
        None
    }

    /// The hint file's hint, or why there is none. The file is left in `keep` when it holds
    /// exactly a hint's bytes, for the writer to overwrite.
    fn read_hint_file(
        &self,
        keep: &mut Option<Box<dyn FsFile>>,
    ) -> std::result::Result<TailHint, String> {
        let path = self.hint_path();
        let mut f = match self.inner.fs.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no file".into()),
            Err(e) => return Err(format!("open: {e}")),
        };
        let b = read_at_most(&mut *f, 0, HINT_LEN + 1).map_err(|e| format!("read: {e}"))?;
        if b.len() == HINT_LEN {
            *keep = Some(f);
        }
        TailHint::decode(&b).map_err(str::to_owned)
    }

    /// Whether the record a hint names is still there, unchanged, and closes the batch that ends
    /// where the hint says (or, for a segment without records, whether the header still says
    /// what the hint says); and the segment's header still names its segment. A few small reads.
    fn hint_holds(&self, file: &mut dyn FsFile, h: &TailHint, len: u64) -> bool {
        if h.end > len {
            return false;
        }
        let Some((sh, hlen)) = read_at_most(file, 0, SEGMENT_HEADER_LEN)
            .ok()
            .and_then(|b| SegmentHeader::decode(&b).ok())
        else {
            return false;
        };
        if sh.first_seq != h.segment_first_seq {
            return false;
        }
        let Some(at) = h.last_record_at else {
            return h.end == hlen as u64
                && h.next_seq == sh.first_seq
                && h.last_crc == sh.prev_tail_crc;
        };
        read_at_most(file, at, frame::FRAME_HEADER_LEN)
            .ok()
            .and_then(|b| frame::parse_header(&b, self.inner.opts.max_record).ok())
            .is_some_and(|fh| {
                fh.header_crc == h.last_crc
                    && fh.batch_end()
                    && fh.seq + 1 == h.next_seq
                    && at + fh.frame_len() as u64 == h.end
            })
    }

    /// A segment that holds no record yet may have a directory entry that was never made durable
    /// (its creator died before the directory fsync, or that fsync failed and poisoned it): make
    /// it durable before anything is acknowledged in it (wal-rules 8). A segment with records
    /// needs nothing: every writer appends only after this, or after creating the segment with a
    /// directory fsync that succeeded.
    fn entry_durable(
        &self,
        w: Writer,
        cut: Option<Cut>,
        synced: bool,
    ) -> Result<(Writer, Option<Cut>)> {
        if w.last_record_at.is_none() && !synced {
            self.sync_dir()?;
        }
        Ok((w, cut))
    }

    /// Scan the segment (`len` bytes) from `start` to its end, and act on its tail: cut a torn
    /// one, refuse damage. Returns the end of the last complete batch (as a hint), the bytes
    /// read, and what was cut.
    ///
    /// Read in chunks into one buffer (no buffer the size of the segment). A chunk that ends
    /// inside a batch is followed by one from the end of its last whole frame, so no frame is
    /// checked twice; one that holds not even a whole frame is read again bigger, up to the end
    /// of the file, where a bad frame is told apart as a torn tail or damage with everything
    /// after it in view. Damage found in a chunk is damage in the whole segment too (the valid
    /// frame after it is there).
    fn scan_on(
        &self,
        file: &mut dyn FsFile,
        path: &Path,
        len: u64,
        start: TailHint,
    ) -> Result<(TailHint, u64, Option<Cut>)> {
        // Small under test, so that small logs are read in several chunks.
        const CHUNK: usize = if cfg!(test) { 4096 } else { 1 << 20 };
        let max = self.inner.opts.max_record;
        // The end of the last complete batch, with the CRC of the bytes before it.
        let mut end = start;
        let mut prefix = crc32fast::Hasher::new_with_initial(start.prefix_crc);
        // Where the next chunk starts (after the whole frames of a batch not closed yet), the
        // seq expected there, and the CRC up to there.
        let (mut pos, mut seq, mut ahead) = (start.end, start.next_seq, prefix.clone());
        let mut buf = Vec::new();
        let mut want = CHUNK;
        let mut read = 0;
        loop {
            let avail = len.saturating_sub(pos);
            if avail == 0 {
                break;
            }
            let n = usize::try_from(avail).map_or(want, |a| a.min(want));
            buf.resize(n, 0);
            let got = file
                .read_full_at(pos, &mut buf)
                .map_err(|e| LogError::io("read", path, e))?;
            read += got as u64;
            // (A short read: the file is shorter than it was; what was read is all there is.)
            let at_end = got < n || got as u64 == avail;
            let s = scan::scan::<()>(&buf[..got], pos, seq, max, |_| Ok(()))
                .unwrap_or_else(|()| unreachable!());
            ahead.update(&buf[..s.clean_end]);
            if s.clean_end > 0 {
                prefix = ahead.clone();
                end.end = pos + s.clean_end as u64;
                end.next_seq = s.next_seq;
                end.last_crc = s.last_crc.unwrap_or(end.last_crc);
                end.last_record_at = s.last_record_at.map(|o| pos + o as u64);
            }
            ahead.update(&buf[s.clean_end..s.valid_end]);
            let base = pos;
            pos += s.valid_end as u64;
            seq = s.valid_next_seq;
            match s.tail {
                Tail::Clean if at_end => break,
                Tail::Damaged { at, reason } => {
                    return Err(damaged(path, base + at as u64, &reason));
                }
                Tail::Clean | Tail::Torn { .. } if !at_end => {
                    want = if s.valid_end == 0 {
                        want.saturating_mul(2)
                    } else {
                        CHUNK
                    };
                }
                _ => {
                    // A torn tail, the end of the file in view. Scan from the end of the last
                    // complete batch again (its unclosed batch perhaps began in an earlier
                    // chunk) for the bytes to keep and the reason, as a whole scan gives them.
                    let rest = file
                        .read_range(
                            end.end,
                            usize::try_from(len - end.end).unwrap_or(usize::MAX),
                        )
                        .map_err(|e| LogError::io("read", path, e))?;
                    let s = scan::scan::<()>(&rest, end.end, end.next_seq, max, |_| Ok(()))
                        .unwrap_or_else(|()| unreachable!());
                    return self.settle_tail(file, path, end, prefix, &rest, &s, read);
                }
            }
        }
        end.prefix_crc = prefix.finalize();
        Ok((end, read, None))
    }

    /// Act on the tail that a scan of `rest` (the segment from the end of the last complete
    /// batch, `end`, to its end) found: cut a torn one, refuse damage. (Its chunks found a torn
    /// tail there; this scan of it whole is what says where and why.)
    #[allow(clippy::too_many_arguments)]
    fn settle_tail(
        &self,
        file: &mut dyn FsFile,
        path: &Path,
        mut end: TailHint,
        mut prefix: crc32fast::Hasher,
        rest: &[u8],
        s: &scan::Scan,
        read: u64,
    ) -> Result<(TailHint, u64, Option<Cut>)> {
        let base = end.end;
        if s.clean_end > 0 {
            prefix.update(&rest[..s.clean_end]);
            end.last_crc = s.last_crc.unwrap_or(end.last_crc);
            end.last_record_at = s.last_record_at.map(|o| end.end + o as u64);
            end.next_seq = s.next_seq;
            end.end += s.clean_end as u64;
        }
        end.prefix_crc = prefix.finalize();
        let cut = match &s.tail {
            Tail::Clean => None,
            Tail::Damaged { at, reason } => return Err(damaged(path, base + *at as u64, reason)),
            Tail::Torn { reason, .. } => {
                self.cut_file(file, path, end.end, &rest[s.clean_end..], reason.clone())?
            }
        };
        Ok((end, read, cut))
    }

    /// The checked header of the frame at `pos`, if that record is still there: its header CRC
    /// holds and it names `pos.seq`. One 24-byte read; `Ok(None)` when the segment or the record
    /// is gone or different.
    pub fn frame_header_at(&self, pos: &RecordPos) -> Result<Option<frame::FrameHeader>> {
        let path = self.segment_path(pos.segment_first_seq);
        if !self.inner.fs.exists(&path) || pos.offset < SEGMENT_HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut file = self
            .inner
            .fs
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let len = file.len().map_err(|e| LogError::io("stat", &path, e))?;
        if pos.offset + frame::FRAME_HEADER_LEN as u64 > len {
            return Ok(None);
        }
        let b = file
            .read_range(pos.offset, frame::FRAME_HEADER_LEN)
            .map_err(|e| LogError::io("read", &path, e))?;
        Ok(frame::parse_header(&b, self.inner.opts.max_record)
            .ok()
            .filter(|h| h.seq == pos.seq && pos.offset + h.frame_len() as u64 <= len))
    }

    /// A reader that starts just after the record at `pos`, without scanning the records before
    /// it. `header` must be what [`Log::frame_header_at`] returned for `pos`.
    pub fn reader_after(&self, pos: &RecordPos, header: &frame::FrameHeader) -> Result<Reader> {
        let mut reader = self.reader(pos.seq + 1);
        let mut rp = reader.open_segment(pos.segment_first_seq)?;
        rp.offset = pos.offset + header.frame_len() as u64;
        rp.next_seq = pos.seq + 1;
        rp.last = Some(*pos);
        reader.pos = Some(rp);
        Ok(reader)
    }

    /// A reader positioned at `from_seq` (1 for the beginning).
    pub fn reader(&self, from_seq: u64) -> Reader {
        Reader {
            log: self.clone(),
            from_seq: from_seq.max(1),
            pos: None,
            buf: Vec::new(),
        }
    }

    /// Check every segment read-only. `check_payload` validates each payload (the log does not
    /// know what they mean); `progress` is told bytes done and total.
    ///
    /// Segments are checked in parallel (one thread per core, each reading whole segments into a
    /// buffer it reuses); whether they join up is checked afterwards, in order.
    pub fn verify(
        &self,
        check_payload: &PayloadCheck<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport> {
        let segments = self.segments()?;
        let mut sizes = Vec::new();
        for &s in &segments {
            let p = self.segment_path(s);
            let len = self
                .inner
                .fs
                .open(&p)
                .and_then(|mut f| f.len())
                .map_err(|e| LogError::io("stat", &p, e))?;
            sizes.push(len);
        }
        let total: u64 = sizes.iter().sum();
        let writer_active = self.lock_holder();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(segments.len())
            .max(1);
        let mut outcomes: Vec<Option<SegmentCheck>> = Vec::new();
        outcomes.resize_with(segments.len(), || None);
        if workers == 1 {
            let mut buf = Vec::new();
            let mut done = 0;
            for (i, &first) in segments.iter().enumerate() {
                let c =
                    self.check_segment(first, i + 1 == segments.len(), &mut buf, check_payload)?;
                done += c.report.bytes;
                outcomes[i] = Some(c);
                progress(done, total);
            }
        } else {
            self.check_in_parallel(
                &segments,
                workers,
                check_payload,
                total,
                progress,
                &mut outcomes,
            )?;
        }
        self.assemble(outcomes, total, writer_active)
    }

    fn check_in_parallel(
        &self,
        segments: &[u64],
        workers: usize,
        check_payload: &PayloadCheck<'_>,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
        outcomes: &mut [Option<SegmentCheck>],
    ) -> Result<()> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<SegmentCheck>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let next = &next;
                scope.spawn(move || {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&first) = segments.get(i) else { break };
                        let is_last = i + 1 == segments.len();
                        let r = self.check_segment(first, is_last, &mut buf, check_payload);
                        let failed = r.is_err();
                        if tx.send((i, r)).is_err() || failed {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut done = 0u64;
            for (i, r) in rx {
                match r {
                    Ok(c) => {
                        done += c.report.bytes;
                        outcomes[i] = Some(c);
                        progress(done, total);
                    }
                    Err(e) => {
                        // Stop the other workers at their next segment.
                        next.store(usize::MAX / 2, std::sync::atomic::Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    }

    /// Put the segments' findings together, checking that they join up.
    fn assemble(
        &self,
        outcomes: Vec<Option<SegmentCheck>>,
        total: u64,
        writer_active: Option<String>,
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            segments: Vec::new(),
            records: 0,
            first_seq: None,
            last_seq: None,
            bytes: total,
            problems: Vec::new(),
            writer_active,
        };
        let mut expected: Option<(u64, u32)> = None; // (next seq, tail crc) of the previous segment
        for c in outcomes
            .into_iter()
            .map(|c| c.expect("every segment checked"))
        {
            let SegmentCheck {
                report: seg,
                header,
                head_problems,
                problems,
                next_seq,
                tail_crc,
            } = c;
            report.problems.extend(head_problems);
            let Some(header) = header else {
                report.problems.extend(problems);
                report.segments.push(seg);
                expected = None;
                continue;
            };
            if let Some((next, crc)) = expected {
                if header.first_seq != next {
                    report.problems.push(Problem {
                        segment: seg.path.clone(),
                        offset: 16,
                        kind: ProblemKind::Chain,
                        message: format!(
                            "segment starts at seq {}, but the previous segment ends before seq {next} (records missing or a segment lost)",
                            header.first_seq
                        ),
                    });
                } else if header.prev_tail_crc != crc {
                    report.problems.push(Problem {
                        segment: seg.path.clone(),
                        offset: 24,
                        kind: ProblemKind::Chain,
                        message:
                            "segment does not chain to the previous one (prev_tail_crc mismatch)"
                                .into(),
                    });
                }
            }
            report.problems.extend(problems);
            report.records += seg.records;
            if seg.records > 0 {
                report.first_seq.get_or_insert(header.first_seq);
                report.last_seq = Some(next_seq - 1);
            }
            expected = Some((next_seq, tail_crc));
            report.segments.push(seg);
        }
        Ok(report)
    }

    /// Check one segment on its own, reading it in chunks into `buf` (reused: it only grows).
    fn check_segment(
        &self,
        first: u64,
        is_last: bool,
        buf: &mut Vec<u8>,
        check_payload: &PayloadCheck<'_>,
    ) -> Result<SegmentCheck> {
        // Small under test, so that the chunking is exercised by small logs.
        const CHUNK: usize = if cfg!(test) { 4096 } else { 8 << 20 };
        let path = self.segment_path(first);
        let mut file = self
            .inner
            .fs
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let len = file.len().map_err(|e| LogError::io("stat", &path, e))?;
        let mut read = |from: u64, n: usize, buf: &mut Vec<u8>| -> Result<usize> {
            if buf.len() < n {
                // (vec! of zeros is calloc: no byte-by-byte fill)
                *buf = vec![0u8; n];
            }
            file.read_full_at(from, &mut buf[..n])
                .map_err(|e| LogError::io("read", &path, e))
        };
        let max = self.inner.opts.max_record;
        let mut c = SegmentCheck {
            report: SegmentReport {
                path: path.clone(),
                first_seq: first,
                records: 0,
                bytes: len,
            },
            header: None,
            head_problems: Vec::new(),
            problems: Vec::new(),
            next_seq: first,
            tail_crc: 0,
        };
        let n = read(0, SEGMENT_HEADER_LEN.min(len as usize), buf)?;
        let (header, hlen) = match SegmentHeader::decode(&buf[..n]) {
            Ok(h) => h,
            Err(e) => {
                c.head_problems.push(Problem {
                    segment: path,
                    offset: 0,
                    kind: ProblemKind::Damage,
                    message: e.to_string(),
                });
                return Ok(c);
            }
        };
        c.header = Some(header);
        if header.first_seq != first {
            c.head_problems.push(Problem {
                segment: path.clone(),
                offset: 16,
                kind: ProblemKind::Damage,
                message: format!(
                    "segment header says first seq {}, its name says {first}",
                    header.first_seq
                ),
            });
        }
        // Scan chunk by chunk. A chunk that ends inside a batch is read again from the end of its
        // last complete batch; one that holds no complete batch (a batch larger than the chunk,
        // or damage) is read again bigger, up to the end of the file, where a bad frame is told
        // apart as a torn tail or damage with everything after it in view.
        let mut pos = hlen as u64;
        let mut next_seq = header.first_seq;
        let mut last_crc = None;
        let mut want = CHUNK;
        let problems = &mut c.problems;
        let tail = loop {
            let avail = len.saturating_sub(pos);
            if avail == 0 {
                break None;
            }
            let n = usize::try_from(avail).map_or(want, |a| a.min(want));
            let got = read(pos, n, buf)?;
            // (A short read: the file shrank since its length was taken, a writer cutting a torn
            // tail say; what was read is all there is, rather than asking again forever.)
            let at_end = got < n || got as u64 == avail;
            let s = scan::scan::<()>(&buf[..got], pos, next_seq, max, |r| {
                if let Err(msg) = check_payload(r.seq, r.payload) {
                    problems.push(Problem {
                        segment: path.clone(),
                        offset: r.offset,
                        kind: ProblemKind::Payload,
                        message: format!("record {}: {msg}", r.seq),
                    });
                }
                Ok(())
            })
            .unwrap_or_else(|()| unreachable!());
            c.report.records += s.records;
            next_seq = s.next_seq;
            last_crc = s.last_crc.or(last_crc);
            let base = pos;
            pos += s.clean_end as u64;
            match s.tail {
                Tail::Clean if at_end => break None,
                Tail::Clean => want = CHUNK,
                Tail::Damaged { at, reason } => break Some((false, base + at as u64, reason)),
                Tail::Torn { at, reason } if at_end => {
                    break Some((true, base + at as u64, reason));
                }
                Tail::Torn { .. } if s.clean_end > 0 => want = CHUNK,
                Tail::Torn { .. } => want = want.saturating_mul(2),
            }
        };
        match tail {
            None => {}
            Some((true, _, reason)) if is_last => c.problems.push(Problem {
                segment: path.clone(),
                offset: pos,
                kind: ProblemKind::TornTail,
                message: format!("torn tail of {} byte(s): {reason}", len - pos),
            }),
            Some((_, at, reason)) => c.problems.push(Problem {
                segment: path.clone(),
                offset: at,
                kind: ProblemKind::Damage,
                message: reason,
            }),
        }
        c.next_seq = next_seq;
        c.tail_crc = last_crc.unwrap_or(header.prev_tail_crc);
        Ok(c)
    }
}

/// Up to `n` bytes from `offset` (fewer at the end of the file), for small reads of a known
/// size: no stat of the file first, as `read_range` does.
fn read_at_most(file: &mut dyn FsFile, offset: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let got = file.read_full_at(offset, &mut buf)?;
    buf.truncate(got);
    Ok(buf)
}

/// Damage that a writer's open found: it refuses, naming segment and offset.
fn damaged(path: &Path, offset: u64, reason: &str) -> LogError {
    LogError::Corrupted {
        segment: path.to_path_buf(),
        offset,
        reason: format!(
            "{reason}; valid records follow the damage, so it is not a torn tail and nothing was cut (see `zolog verify`, and `zolog recover --cut-at` to cut explicitly)"
        ),
    }
}

/// Whether the CRC-32 of the segment's bytes before the hint's end is the one the hint recorded:
/// a sequential read in chunks (no frame parsing, no buffer the size of the segment).
fn prefix_holds(file: &mut dyn FsFile, h: &TailHint) -> bool {
    // Small under test, so that small logs are read in several chunks.
    const CHUNK: u64 = if cfg!(test) { 4096 } else { 1 << 20 };
    let mut buf = vec![0u8; CHUNK.min(h.end) as usize];
    let mut crc = crc32fast::Hasher::new();
    let mut at = 0;
    while at < h.end {
        let n = (h.end - at).min(CHUNK) as usize;
        match file.read_at(at, &mut buf[..n]) {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                crc.update(&buf[..got]);
                at += got as u64;
            }
        }
    }
    crc.finalize() == h.prefix_crc
}

/// The CRC-32 state of a new segment's bytes: its header.
fn header_prefix(first_seq: u64, prev_tail_crc: u32) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(
        &SegmentHeader {
            first_seq,
            prev_tail_crc,
        }
        .encode(),
    );
    h
}

/// Validates one payload for [`Log::verify`]: `Err` says what is wrong with it. Called from
/// several threads at once.
pub type PayloadCheck<'a> = dyn Fn(u64, &[u8]) -> std::result::Result<(), String> + Sync + 'a;

/// What checking one segment on its own found; chaining is checked afterwards.
#[derive(Debug)]
struct SegmentCheck {
    report: SegmentReport,
    /// None when the header itself is bad.
    header: Option<SegmentHeader>,
    /// Problems with the header, reported before the chain's.
    head_problems: Vec<Problem>,
    /// Problems with the records, reported after the chain's.
    problems: Vec<Problem>,
    /// Seq after the last complete batch.
    next_seq: u64,
    /// `header_crc` of the last record (or the header's `prev_tail_crc` when there is none).
    tail_crc: u32,
}

/// Result of [`Log::verify`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub segments: Vec<SegmentReport>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// Who held the writer lock during the check, if anybody (a torn tail may then be a write in
    /// progress).
    pub writer_active: Option<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub first_seq: u64,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub segment: PathBuf,
    pub offset: u64,
    pub kind: ProblemKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Incomplete bytes at the end of the last segment: a crashed or in-progress append.
    TornTail,
    /// A bad frame or header anywhere else.
    Damage,
    /// Segments do not join up.
    Chain,
    /// A record is intact but its payload is not a valid event.
    Payload,
}

/// The single writer of a log. Holds the lock until dropped.
#[derive(Debug)]
pub struct Writer {
    log: Log,
    _lock: Box<dyn LockGuard>,
    file: Box<dyn FsFile>,
    path: PathBuf,
    segment_first_seq: u64,
    /// End of the last complete batch: where the next batch goes.
    end: u64,
    next_seq: u64,
    last_crc: u32,
    last_record_at: Option<u64>,
    /// CRC-32 of the segment's bytes `0..end`, for the hint file.
    prefix: crc32fast::Hasher,
    hint_file: HintFile,
    opened_from: TailFrom,
    poisoned: Option<String>,
    buf: Vec<u8>,
}

/// The writer's handle on the hint file, opened at its first write.
#[derive(Debug)]
enum HintFile {
    Unopened,
    Open(Box<dyn FsFile>),
    /// Opening or writing it failed: no more attempts (a hint is only ever an optimisation).
    Failed,
}

impl Writer {
    /// Create a new segment starting at `first_seq` durably (wal-rules 8): tmp file, header,
    /// fdatasync, rename, directory fsync.
    fn create_segment(
        log: Log,
        lock: Box<dyn LockGuard>,
        first_seq: u64,
        prev_tail_crc: u32,
    ) -> Result<Writer> {
        let file = log.new_segment_file(first_seq, prev_tail_crc)?;
        Ok(Writer {
            path: log.segment_path(first_seq),
            log,
            _lock: lock,
            file,
            segment_first_seq: first_seq,
            end: SEGMENT_HEADER_LEN as u64,
            next_seq: first_seq,
            last_crc: prev_tail_crc,
            last_record_at: None,
            prefix: header_prefix(first_seq, prev_tail_crc),
            hint_file: HintFile::Unopened,
            opened_from: TailFrom::NewLog,
            poisoned: None,
            buf: Vec::new(),
        })
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// How this writer found the end of the log when it opened.
    pub fn opened_from(&self) -> TailFrom {
        self.opened_from
    }

    /// Append one batch: every payload gets the next sequence number, the last closes the batch,
    /// and the whole batch is made durable with one fdatasync before this returns (wal-rules 7).
    /// Either all of it is acknowledged or none of it.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Appended> {
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned {
                reason: reason.clone(),
            });
        }
        if payloads.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        let max = self.log.inner.opts.max_record;
        for (index, p) in payloads.iter().enumerate() {
            if p.as_ref().len() > max as usize {
                return Err(LogError::RecordTooLarge {
                    index,
                    len: p.as_ref().len(),
                    max,
                });
            }
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let first_seq = self.next_seq;
        let mut last_crc = self.last_crc;
        let mut last_at = 0usize;
        for (i, p) in payloads.iter().enumerate() {
            last_at = buf.len();
            last_crc = frame::encode_frame(
                &mut buf,
                first_seq + i as u64,
                i + 1 == payloads.len(),
                p.as_ref(),
            );
        }
        let result = self.write_batch(&buf);
        let batch_len = buf.len() as u64;
        if result.is_ok() {
            self.prefix.update(&buf);
        }
        self.buf = buf;
        result?;
        let start = self.end;
        self.end += batch_len;
        self.next_seq = first_seq + payloads.len() as u64;
        self.last_crc = last_crc;
        self.last_record_at = Some(start + last_at as u64);
        self.remember();
        Ok(Appended {
            first_seq,
            last_seq: self.next_seq - 1,
        })
    }

    fn write_batch(&mut self, buf: &[u8]) -> Result<()> {
        let header = SEGMENT_HEADER_LEN as u64;
        if self.end > header && self.end + buf.len() as u64 > self.log.inner.opts.segment_size {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all_at(self.end, buf) {
            // wal-rules 11: never leave a half-record where the next batch will go.
            if let Err(t) = self.file.set_len(self.end) {
                self.poisoned = Some(format!("a failed write could not be truncated away: {t}"));
            }
            return Err(LogError::io("write", &self.path, e));
        }
        if let Err(e) = self.file.sync_data() {
            // wal-rules 10: a failed fsync cannot be retried.
            self.poisoned = Some(format!("fdatasync failed: {e}"));
            // The batch is not acknowledged, and the kernel may have dropped its pages while
            // marking them clean: take it out of the file now, so that no later writer reads it
            // as committed and acknowledges records after what may become a hole of zeros on disk
            // (fsyncgate). The next writer's fdatasync makes the shorter size durable.
            if let Err(t) = self.file.set_len(self.end) {
                tracing::error!(
                    "could not truncate the batch whose fdatasync failed from {}: {t}",
                    self.path.display()
                );
            }
            return Err(LogError::io("fdatasync", &self.path, e));
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let file = match self.log.new_segment_file(self.next_seq, self.last_crc) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("could not start a new segment: {e}");
                // A failed fsync of the new segment or of the directory cannot be retried either
                // (wal-rules 10); a failed write or create can, since nothing was acknowledged.
                if let LogError::Io {
                    op: "fdatasync" | "fsync directory",
                    ..
                } = &e
                {
                    self.poisoned = Some(format!("starting a new segment failed: {e}"));
                }
                return Err(e);
            }
        };
        self.file = file;
        self.segment_first_seq = self.next_seq;
        self.path = self.log.segment_path(self.next_seq);
        self.end = SEGMENT_HEADER_LEN as u64;
        self.last_record_at = None;
        self.prefix = header_prefix(self.next_seq, self.last_crc);
        Ok(())
    }

    fn hint(&self) -> TailHint {
        TailHint {
            segment_first_seq: self.segment_first_seq,
            end: self.end,
            next_seq: self.next_seq,
            last_crc: self.last_crc,
            last_record_at: self.last_record_at,
            prefix_crc: self.prefix.clone().finalize(),
        }
    }

    /// Leave the end of the log for the next writer: in memory for this process, and in the
    /// hint file for the next one.
    fn remember(&mut self) {
        let h = self.remember_in_memory();
        self.write_hint_file(&h);
    }

    fn remember_in_memory(&self) -> TailHint {
        let h = self.hint();
        *self
            .log
            .inner
            .hint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(h);
        h
    }

    /// One positional write of the 64-byte hint over the old one, without fsync: the hint is
    /// checked against the segment before it is used, so one that is lost, torn, or older than
    /// the log after a crash costs a longer scan, never correctness; and only after the batch it
    /// names is durable, so it never names a record that was not. Failures are not errors.
    fn write_hint_file(&mut self, h: &TailHint) {
        if let HintFile::Unopened = self.hint_file {
            self.hint_file = match self.log.open_hint_file() {
                Ok(f) => HintFile::Open(f),
                Err(e) => {
                    tracing::debug!("tail hint file: {e}");
                    HintFile::Failed
                }
            };
        }
        if let HintFile::Open(f) = &mut self.hint_file
            && let Err(e) = f.write_all_at(0, &h.encode())
        {
            tracing::debug!(
                "tail hint file {}: write: {e}",
                self.log.hint_path().display()
            );
            self.hint_file = HintFile::Failed;
        }
    }
}

impl Log {
    /// The hint file, created if absent, and cut to the hint's length if longer (another
    /// version's): then it is only ever overwritten in place, with the same length, so that
    /// writing it costs no block allocation and no flush on close.
    fn open_hint_file(&self) -> Result<Box<dyn FsFile>> {
        let fs = &self.inner.fs;
        let path = self.hint_path();
        let io = |op| move |e| LogError::io(op, &self.hint_path(), e);
        let mut f = match fs.open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs.create_new(&path).map_err(io("create"))?
            }
            other => other.map_err(io("open"))?,
        };
        if f.len().map_err(io("stat"))? > HINT_LEN as u64 {
            f.set_len(HINT_LEN as u64).map_err(io("truncate"))?;
        }
        Ok(f)
    }

    fn new_segment_file(&self, first_seq: u64, prev_tail_crc: u32) -> Result<Box<dyn FsFile>> {
        let fs = &self.inner.fs;
        let path = self.segment_path(first_seq);
        let tmp = self
            .inner
            .dir
            .join(format!("{}.tmp", segment_name(first_seq)));
        if fs.exists(&tmp) {
            fs.remove_file(&tmp)
                .map_err(|e| LogError::io("remove", &tmp, e))?;
        }
        let mut f = fs
            .create_new(&tmp)
            .map_err(|e| LogError::io("create", &tmp, e))?;
        let header = SegmentHeader {
            first_seq,
            prev_tail_crc,
        }
        .encode();
        f.write_all_at(0, &header)
            .map_err(|e| LogError::io("write", &tmp, e))?;
        f.sync_data()
            .map_err(|e| LogError::io("fdatasync", &tmp, e))?;
        fs.rename(&tmp, &path)
            .map_err(|e| LogError::io("rename", &tmp, e))?;
        self.sync_dir()?;
        Ok(f)
    }
}

/// Reads records of complete batches, in order, from a starting sequence number; can be polled
/// again to pick up what writers appended since (for `--follow`).
#[derive(Debug)]
pub struct Reader {
    log: Log,
    from_seq: u64,
    pos: Option<ReadPos>,
    /// The read buffer, kept between reads (no allocation and no page faults per chunk).
    buf: Vec<u8>,
}

/// Where a record's frame sits: enough to find it again without scanning (projection
/// checkpoints use it to resume where they stopped and to check the log is still the one they
/// folded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    /// First seq of the segment holding the record (its file name).
    pub segment_first_seq: u64,
    /// Offset of the frame within that segment.
    pub offset: u64,
    pub seq: u64,
}

#[derive(Debug)]
struct ReadPos {
    segment_first_seq: u64,
    path: PathBuf,
    file: Box<dyn FsFile>,
    offset: u64,
    next_seq: u64,
    /// The last record delivered (whose callback succeeded), possibly in an earlier segment.
    last: Option<RecordPos>,
}

/// What a poll found at the end of what it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// Everything read ended on a batch boundary.
    Clean,
    /// Bytes follow the last complete batch of the last segment: a write in progress, or a torn
    /// tail that the next writer will cut.
    Pending {
        segment: PathBuf,
        offset: u64,
        bytes: u64,
    },
}

/// Error from a read: the log's, or the callback's.
#[derive(Debug)]
pub enum ReadError<E> {
    Log(LogError),
    Callback(E),
}

impl<E: std::fmt::Display> std::fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Log(e) => e.fmt(f),
            ReadError::Callback(e) => e.fmt(f),
        }
    }
}

impl<E> From<LogError> for ReadError<E> {
    fn from(e: LogError) -> Self {
        ReadError::Log(e)
    }
}

impl Reader {
    /// The sequence number the next delivered record will have.
    pub fn next_seq(&self) -> u64 {
        self.pos
            .as_ref()
            .map_or(self.from_seq, |p| p.next_seq.max(self.from_seq))
    }

    /// Whether at most `limit` bytes of log follow the reader's position now (the rest of its
    /// segment, and no later segment): a reader with little to read can be polled without a
    /// thread of its own.
    pub fn ahead_at_most(&mut self, limit: u64) -> Result<bool> {
        if self.pos.is_none() {
            match self.start()? {
                Some(p) => self.pos = Some(p),
                None => return Ok(true),
            }
        }
        let pos = self.pos.as_mut().expect("set above");
        let len = pos
            .file
            .len()
            .map_err(|e| LogError::io("stat", &pos.path, e))?;
        if len.saturating_sub(pos.offset) > limit {
            return Ok(false);
        }
        let cur = pos.segment_first_seq;
        Ok(!self.log.segments()?.iter().any(|&s| s > cur))
    }

    fn start(&mut self) -> Result<Option<ReadPos>> {
        let segments = self.log.segments()?;
        // The last segment starting at or before from_seq (or the first one).
        let Some(&first) = segments
            .iter()
            .rev()
            .find(|&&s| s <= self.from_seq)
            .or(segments.first())
        else {
            return Ok(None);
        };
        self.open_segment(first).map(Some)
    }

    fn open_segment(&self, first: u64) -> Result<ReadPos> {
        let path = self.log.segment_path(first);
        let mut file = self
            .log
            .inner
            .fs
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let hb = file
            .read_range(0, SEGMENT_HEADER_LEN)
            .map_err(|e| LogError::io("read", &path, e))?;
        let (h, hlen) = SegmentHeader::decode(&hb).map_err(|e| LogError::Corrupted {
            segment: path.clone(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if h.first_seq != first {
            return Err(LogError::Corrupted {
                segment: path,
                offset: 16,
                reason: format!(
                    "segment header says first seq {}, its name says {first}",
                    h.first_seq
                ),
            });
        }
        Ok(ReadPos {
            segment_first_seq: first,
            path,
            file,
            offset: hlen as u64,
            next_seq: first,
            last: None,
        })
    }

    /// The last record this reader delivered (and whose callback succeeded).
    pub fn last_delivered(&self) -> Option<RecordPos> {
        self.pos.as_ref().and_then(|p| p.last)
    }

    /// Deliver every record of every complete batch available now (from the reader's position
    /// on), then say how the log ended. Damage is an error naming segment and offset.
    pub fn poll<E>(
        &mut self,
        mut on_record: impl FnMut(RecordRef<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<ReadEnd, ReadError<E>> {
        const CHUNK: usize = 8 * 1024 * 1024;
        if self.pos.is_none() {
            match self.start()? {
                Some(p) => self.pos = Some(p),
                None => return Ok(ReadEnd::Clean),
            }
        }
        let max = self.log.inner.opts.max_record;
        let from = self.from_seq;
        loop {
            let pos = self.pos.as_mut().expect("set above");
            let len = pos
                .file
                .len()
                .map_err(|e| LogError::io("stat", &pos.path, e))?;
            let mut want = CHUNK;
            let mut ended = false;
            loop {
                let avail = len.saturating_sub(pos.offset);
                if avail == 0 {
                    ended = true;
                    break;
                }
                let n = (avail as usize).min(want);
                let buf = pos
                    .file
                    .read_range_into(pos.offset, n, &mut self.buf)
                    .map_err(|e| LogError::io("read", &pos.path, e))?;
                let base = pos.offset;
                let mut cb_err = None;
                let seg = pos.segment_first_seq;
                let last = &mut pos.last;
                let s = scan::scan(buf, base, pos.next_seq, max, |r| {
                    if r.seq >= from {
                        if let Err(e) = on_record(r) {
                            cb_err = Some(e);
                            return Err(());
                        }
                        *last = Some(RecordPos {
                            segment_first_seq: seg,
                            offset: r.offset,
                            seq: r.seq,
                        });
                    }
                    Ok(())
                });
                if s.is_err() {
                    return Err(ReadError::Callback(cb_err.expect("callback failed")));
                }
                let s = s.unwrap_or_else(|()| unreachable!());
                pos.offset += s.clean_end as u64;
                pos.next_seq = s.next_seq;
                match s.tail {
                    Tail::Clean if buf.len() == n && (n as u64) < avail => continue,
                    Tail::Clean => {
                        if pos.offset >= len {
                            ended = true;
                        }
                        break;
                    }
                    Tail::Damaged { at, reason } => {
                        return Err(ReadError::Log(LogError::Corrupted {
                            segment: pos.path.clone(),
                            offset: base + at as u64,
                            reason,
                        }));
                    }
                    Tail::Torn { .. } => {
                        if (n as u64) < avail {
                            // The chunk ended mid-batch: read a bigger one.
                            want = want.saturating_mul(2).max(n + CHUNK);
                            continue;
                        }
                        break;
                    }
                }
            }
            // At the end of what this segment holds now: is there a next segment?
            let segments = self.log.segments()?;
            let cur = pos.segment_first_seq;
            let next = segments.iter().copied().find(|&s| s > cur);
            match next {
                Some(n) => {
                    if !ended || pos.offset < len {
                        return Err(ReadError::Log(LogError::Corrupted {
                            segment: pos.path.clone(),
                            offset: pos.offset,
                            reason: "incomplete or damaged records before the end of a segment that is not the last".into(),
                        }));
                    }
                    if n != pos.next_seq {
                        return Err(ReadError::Log(LogError::Corrupted {
                            segment: self.log.segment_path(n),
                            offset: 16,
                            reason: format!(
                                "segment starts at seq {n}, but the previous one ends before seq {}",
                                pos.next_seq
                            ),
                        }));
                    }
                    let last = pos.last;
                    let mut np = self.open_segment(n)?;
                    np.last = last;
                    self.pos = Some(np);
                }
                None => {
                    return Ok(if pos.offset < len {
                        ReadEnd::Pending {
                            segment: pos.path.clone(),
                            offset: pos.offset,
                            bytes: len - pos.offset,
                        }
                    } else {
                        ReadEnd::Clean
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::fs::FaultFs;
    use crate::testing::xorshift;

    /// What a scan of the whole segment at once says: (problem offset, torn?) or None.
    fn whole_scan(bytes: &[u8]) -> Option<(u64, bool)> {
        let s = scan::scan::<()>(&bytes[32..], 32, 1, DEFAULT_MAX_RECORD, |_| Ok(()))
            .unwrap_or_else(|()| unreachable!());
        match s.tail {
            Tail::Clean => None,
            Tail::Torn { .. } => Some((32 + s.clean_end as u64, true)),
            Tail::Damaged { at, .. } => Some((32 + at as u64, false)),
        }
    }

    /// `bytes` with bit number `bit` (counted from the first byte's lowest) flipped.
    fn flipped(bytes: &[u8], bit: u64) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[(bit / 8) as usize] ^= 1 << (bit % 8);
        b
    }

    /// A one-segment log of 300 random batches, some far larger than a chunk; its records, and
    /// the hint file as it was after the first 100 batches.
    fn big_log(x: &mut u64) -> (FaultFs, Log, u64, Vec<u8>) {
        let fs = FaultFs::new();
        let opts = LogOptions {
            segment_size: 1 << 30,
            ..LogOptions::default()
        };
        let log = Log::open(Arc::new(fs.clone()), "/l", opts).unwrap();
        let mut w = log.writer().unwrap();
        let mut n = 0;
        let mut early_hint = Vec::new();
        for b in 0..300 {
            let count = if b % 50 == 7 { 60 } else { 1 + xorshift(x) % 6 };
            let batch: Vec<Vec<u8>> = (0..count)
                .map(|_| vec![b as u8; (xorshift(x) % 300) as usize])
                .collect();
            n += batch.len() as u64;
            w.append(&batch).unwrap();
            if b == 99 {
                early_hint = fs.read_live(&log.hint_path()).unwrap();
            }
        }
        drop(w);
        (fs, log, n, early_hint)
    }

    /// Verify reads segments in chunks (4 KiB under test): whatever the damage, it finds what a
    /// scan of the whole segment finds, and counts every record of a clean one.
    #[test]
    fn chunked_verify_agrees_with_a_whole_segment_scan() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let (fs, log, n, _) = big_log(&mut x);
        let seg = log.segment_path(1);
        let bytes = fs.read_live(&seg).unwrap();
        assert!(bytes.len() > 20 * 4096);
        let ok = |_: u64, _: &[u8]| Ok(());
        let r = log.verify(&ok, &mut |_, _| {}).unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.records, n);
        for _ in 0..300 {
            let bit = xorshift(&mut x) % (bytes.len() as u64 * 8);
            if bit < 32 * 8 {
                continue;
            }
            let b = flipped(&bytes, bit);
            let want = whole_scan(&b).expect("a flip is always found");
            fs.write_raw(&seg, b.clone());
            let r = log.verify(&ok, &mut |_, _| {}).unwrap();
            let p = &r.problems[0];
            assert_eq!(
                (p.offset, p.kind == ProblemKind::TornTail),
                want,
                "bit {bit}: {}",
                p.message
            );
            // And a cut anywhere: the torn tail is where the whole scan says.
            let cut = 32 + (xorshift(&mut x) as usize) % (b.len() - 32);
            fs.write_raw(&seg, bytes[..cut].to_vec());
            let r = log.verify(&ok, &mut |_, _| {}).unwrap();
            match whole_scan(&bytes[..cut]) {
                None => assert!(r.is_clean()),
                Some(want) => {
                    let p = &r.problems[0];
                    assert_eq!((p.offset, p.kind == ProblemKind::TornTail), want);
                }
            }
        }
    }

    /// A writer's open scans in chunks too (4 KiB under test), from the segment's header or from
    /// a hint: whatever the damage, it cuts or refuses where a scan of the whole segment says.
    #[test]
    fn chunked_open_agrees_with_a_whole_segment_scan() {
        let mut x = 0x0bad_cafe_f00d_0001u64;
        let (fs, log, _, early_hint) = big_log(&mut x);
        let seg = log.segment_path(1);
        let bytes = fs.read_live(&seg).unwrap();
        let hint_end = TailHint::decode(&early_hint).unwrap().end;
        let (mut from_hint, mut scans) = (0, 0);
        for i in 0..400 {
            let b = if i % 2 == 0 {
                let bit = 32 * 8 + xorshift(&mut x) % ((bytes.len() as u64 - 32) * 8);
                flipped(&bytes, bit)
            } else {
                bytes[..32 + (xorshift(&mut x) as usize) % (bytes.len() - 32)].to_vec()
            };
            let want = whole_scan(&b);
            let changed_at = b.iter().zip(&bytes).position(|(p, q)| p != q);
            let changed_at = changed_at.unwrap_or(b.len()) as u64;
            // recover (no hint), then a new process's writer with the early hint file.
            for with_hint in [false, true] {
                fs.write_raw(&seg, b.clone());
                let fresh = Log::open(Arc::new(fs.clone()), "/l", log.options().clone()).unwrap();
                let r = if with_hint {
                    fs.write_raw(&log.hint_path(), early_hint.clone());
                    fresh.writer().map(|w| {
                        let hinted = w.opened_from() == TailFrom::HintFile;
                        assert_eq!(hinted, changed_at >= hint_end, "case {i}");
                        if hinted {
                            from_hint += 1;
                        } else {
                            scans += 1;
                        }
                    })
                } else {
                    fresh.recover().map(drop)
                };
                let len = fs.read_live(&seg).unwrap().len() as u64;
                if r.is_ok() {
                    // The hint it left is right: the next writer uses it and agrees.
                    let next = Log::open(Arc::new(fs.clone()), "/l", log.options().clone())
                        .unwrap()
                        .writer()
                        .unwrap();
                    assert_eq!(next.opened_from(), TailFrom::HintFile, "case {i}");
                    let live = fs.read_live(&seg).unwrap();
                    let s = scan::scan::<()>(&live[32..], 32, 1, DEFAULT_MAX_RECORD, |_| Ok(()))
                        .unwrap_or_else(|()| unreachable!());
                    assert_eq!(next.next_seq(), s.next_seq, "case {i}");
                }
                match (want, r) {
                    (None, Ok(())) => assert_eq!(len, b.len() as u64, "case {i}"),
                    (Some((at, true)), Ok(())) => assert_eq!(len, at, "case {i}: cut there"),
                    (Some((at, false)), Err(LogError::Corrupted { offset, .. })) => {
                        assert_eq!(offset, at, "case {i}");
                        assert_eq!(len, b.len() as u64, "case {i}: nothing cut");
                    }
                    (want, r) => panic!("case {i} (hint {with_hint}): {want:?} vs {r:?}"),
                }
            }
        }
        assert!(from_hint > 100 && scans > 50, "{from_hint} {scans}");
    }

    /// A file system whose files say they are 100 bytes longer than what can be read from them:
    /// a file that shrank between a stat and the reads.
    #[derive(Debug)]
    struct ShrinkingFs(FaultFs);

    #[derive(Debug)]
    struct Shrunk(Box<dyn FsFile>);

    impl FsFile for Shrunk {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read_at(offset, buf)
        }
        fn write_all_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.write_all_at(offset, data)
        }
        fn len(&mut self) -> std::io::Result<u64> {
            Ok(self.0.len()? + 100)
        }
        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            self.0.sync_data()
        }
    }

    impl Fs for ShrinkingFs {
        fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
            self.0.create_dir_all(path)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            self.0.list(dir)
        }
        fn open(&self, path: &Path) -> std::io::Result<Box<dyn FsFile>> {
            Ok(Box::new(Shrunk(self.0.open(path)?)))
        }
        fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn FsFile>> {
            self.0.create_new(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.0.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            self.0.remove_file(path)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.0.sync_dir(dir)
        }
        fn exists(&self, path: &Path) -> bool {
            self.0.exists(path)
        }
        fn lock(
            &self,
            path: &Path,
            holder: &str,
            timeout: Duration,
        ) -> std::result::Result<Box<dyn LockGuard>, LockFailure> {
            self.0.lock(path, holder, timeout)
        }
        fn lock_holder(&self, path: &Path) -> Option<String> {
            self.0.lock_holder(path)
        }
    }

    /// A segment that is shorter than its length said when the reads come (a writer cut it in
    /// between): verify and a writer's scan stop at what there is, rather than asking for the
    /// missing bytes forever.
    #[test]
    fn a_segment_shorter_than_its_length_does_not_hang_a_scan() {
        let mut x = 0x5eed_0000_0000_0001u64;
        let (fs, _, n, _) = big_log(&mut x);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let log = Log::open(
                Arc::new(ShrinkingFs(fs)),
                "/l",
                LogOptions {
                    segment_size: 1 << 30,
                    ..LogOptions::default()
                },
            )
            .unwrap();
            let r = log.verify(&|_, _| Ok(()), &mut |_, _| {}).unwrap();
            let w = log.recover();
            let _ = tx.send((r.records, w.is_ok()));
        });
        let (records, recovered) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("verify and recover must finish");
        assert_eq!(records, n);
        assert!(recovered);
    }
}
