//! The file-system seam under the log.
//!
//! The log never touches `std::fs` directly: it goes through [`Fs`], which has a real
//! implementation ([`RealFs`]) and a fault-injecting in-memory one ([`FaultFs`]). The fault layer
//! keeps "live" bytes (what a running process sees) apart from "durable" bytes (what survives a
//! crash), so crash and I/O-error tests run in-process and deterministically (LevelDB's fault
//! injection Env; redb's crash-consistency test).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A file opened through the seam. Writes are positional: the writer keeps its own offset, so a
/// failed write can be truncated away and retried at the same place (wal-rules rule 11).
pub trait FsFile: Send + fmt::Debug {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn len(&mut self) -> io::Result<u64>;
    fn is_empty(&mut self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: data and size durable.
    fn sync_data(&mut self) -> io::Result<()>;

    /// Fill `buf` from `offset`, returning how many bytes were read: fewer than `buf.len()` only
    /// at the end of the file (or where it ends now, if it shrank).
    fn read_full_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_at(offset + filled as u64, &mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }

    /// Read `len` bytes from `offset` (fewer only at end of file). Never allocates more than the
    /// file holds, whatever `len` says (`usize::MAX` reads to the end).
    fn read_range(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let n = self.read_range_into(offset, len, &mut buf)?.len();
        buf.truncate(n);
        Ok(buf)
    }

    /// [`FsFile::read_range`] into `buf`, returning the bytes read (a prefix of `buf`). `buf` is
    /// only ever grown, never shrunk or cleared, so a reader that passes the same buffer again
    /// neither allocates nor zeroes memory for each read.
    fn read_range_into<'b>(
        &mut self,
        offset: u64,
        len: usize,
        buf: &'b mut Vec<u8>,
    ) -> io::Result<&'b [u8]> {
        let avail = self.len()?.saturating_sub(offset);
        let len = len.min(usize::try_from(avail).unwrap_or(usize::MAX));
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let filled = self.read_full_at(offset, &mut buf[..len])?;
        Ok(&buf[..filled])
    }
}

/// An exclusive lock held on a file; released on drop.
pub trait LockGuard: Send + fmt::Debug {}

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum LockFailure {
    /// Somebody else holds it; `holder` is what they wrote into the lock file.
    Busy {
        holder: String,
    },
    Io(io::Error),
}

/// The operations the log needs from a file system.
pub trait Fs: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Create a new file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsync a directory, making entries created, renamed or removed in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Take an exclusive lock on `path` (created if absent), waiting up to `timeout`. On success,
    /// `holder` is written into the file so that a waiter can say who holds it.
    fn lock(
        &self,
        path: &Path,
        holder: &str,
        timeout: Duration,
    ) -> Result<Box<dyn LockGuard>, LockFailure>;
    /// Whether somebody holds the lock at `path` right now, and who.
    fn lock_holder(&self, path: &Path) -> Option<String>;
}

// ---------------------------------------------------------------------------------------------
// The real file system.

/// `std::fs`, with directory fsync and `std::fs::File::lock` (stable since Rust 1.89).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl FsFile for RealFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn len(&mut self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

#[derive(Debug)]
struct RealLock(#[allow(dead_code)] File);
impl LockGuard for RealLock {}

impl Fs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            // A store we may only read (a read-only mount, another user's files): readers and
            // `verify` still work; a writer fails on its first write.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                OpenOptions::new().read(true).open(path)?
            }
            Err(e) => return Err(e),
        };
        Ok(Box::new(RealFile(f)))
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn lock(
        &self,
        path: &Path,
        holder: &str,
        timeout: Duration,
    ) -> Result<Box<dyn LockGuard>, LockFailure> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(LockFailure::Io)?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(LockFailure::Busy {
                            holder: read_holder(&mut file),
                        });
                    }
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(TryLockError::Error(e)) => return Err(LockFailure::Io(e)),
            }
        }
        // We hold it: say who we are (best effort; the lock is what matters). Only when it says
        // somebody else: rewriting the file on every batch costs the next fdatasync a journal
        // commit, and truncating it to zero makes ext4 flush it on close.
        let mut current = String::new();
        if file.read_to_string(&mut current).is_err() || current != holder {
            let _ = file.write_all_at(holder.as_bytes(), 0);
            let _ = file.set_len(holder.len() as u64);
        }
        Ok(Box::new(RealLock(file)))
    }
    fn lock_holder(&self, path: &Path) -> Option<String> {
        let mut file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        match file.try_lock() {
            Ok(()) => None, // released when `file` drops
            Err(TryLockError::WouldBlock) => Some(read_holder(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "an unknown process".to_owned()
    } else {
        s.to_owned()
    }
}

/// Write a whole file durably and atomically: temp file in the same directory, fsync, rename,
/// fsync the directory (wal-rules rule 8). Used for projections and checkpoints.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting file system.

/// What the next operations should do wrong. Set through [`FaultFs::set_faults`].
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next `sync_data` fails with EIO, and the unsynced bytes are dropped from the durable
    /// image (as Linux may do after a failed writeback).
    pub fail_next_sync: bool,
    /// The next write stores only this many bytes, then fails with EIO.
    pub fail_next_write_after: Option<usize>,
    /// Total bytes the disk holds, over all files; a write past it stores what fits and fails with
    /// ENOSPC.
    pub capacity: Option<u64>,
    /// `set_len` fails with EIO.
    pub fail_set_len: bool,
    /// `sync_dir` fails with EIO.
    pub fail_sync_dir: bool,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges whose writeback failed: the kernel marked their pages clean, so a later sync
    /// that "succeeds" does not write them and the durable image keeps zeros there. Writing those
    /// bytes again (or truncating them away) makes them ordinary dirty bytes again.
    lost: Vec<(usize, usize)>,
}

impl MemFile {
    /// Bytes `from..to` were written again (or no longer exist): they are ordinary dirty bytes.
    fn forget_lost(&mut self, from: usize, to: usize) {
        let mut kept = Vec::with_capacity(self.lost.len() + 1);
        for &(a, b) in &self.lost {
            if b <= from || a >= to {
                kept.push((a, b));
                continue;
            }
            if a < from {
                kept.push((a, from));
            }
            if b > to {
                kept.push((to, b));
            }
        }
        self.lost = kept;
    }
}

#[derive(Debug, Default)]
struct MemState {
    /// Live directory entries: path → inode.
    live_names: BTreeMap<PathBuf, u64>,
    /// Directory entries as of the last directory sync of their parent.
    durable_names: BTreeMap<PathBuf, u64>,
    files: BTreeMap<u64, MemFile>,
    next_inode: u64,
    dirs: std::collections::BTreeSet<PathBuf>,
    faults: Faults,
    locks: BTreeMap<PathBuf, String>,
    /// Counts of operations, for tests that want to see what happened.
    syncs: u64,
}

/// An in-memory file system that remembers what is durable and can drop the rest, fail a sync,
/// fail a write half-way or run out of space.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<MemState>>,
}

/// How a simulated crash treats bytes that were written but never synced.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Unsynced bytes vanish.
    DropUnsynced,
    /// A prefix of the unsynced bytes survives, followed by `garbage_len` bytes of junk (zeros
    /// when `zeros` is set), as after a crash with ext4 data=writeback.
    Torn {
        keep: usize,
        garbage_len: usize,
        zeros: bool,
        seed: u64,
    },
}

impl FaultFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.st().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.st().faults.clone()
    }

    /// Number of successful `sync_data` calls so far.
    pub fn sync_count(&self) -> u64 {
        self.st().syncs
    }

    /// Simulate power loss: every file reverts to its durable bytes (see [`CrashMode`]), directory
    /// entries revert to their last synced state, and all locks are released.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.st();
        st.live_names = st.durable_names.clone();
        let live_inodes: std::collections::BTreeSet<u64> =
            st.live_names.values().copied().collect();
        st.files.retain(|ino, _| live_inodes.contains(ino));
        for f in st.files.values_mut() {
            let durable_len = f.durable.len();
            let mut image = f.durable.clone();
            if let CrashMode::Torn {
                keep,
                garbage_len,
                zeros,
                seed,
            } = mode
                && f.live.len() > durable_len
            {
                let unsynced = &f.live[durable_len..];
                let keep = keep.min(unsynced.len());
                image.extend_from_slice(&unsynced[..keep]);
                let mut x = seed | 1;
                for _ in 0..garbage_len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    image.push(if zeros { 0 } else { x as u8 });
                }
            }
            f.live = image.clone();
            f.durable = image;
            f.lost.clear();
        }
        st.locks.clear();
        st.faults = Faults::default();
    }

    /// The kernel writes a file's dirty pages back on its own, without anybody asking for a
    /// sync: its live bytes become durable (a later crash keeps them). Not counted as a sync.
    pub fn write_back(&self, path: &Path) {
        let mut st = self.st();
        if let Some(&ino) = st.live_names.get(path)
            && let Some(f) = st.files.get_mut(&ino)
        {
            f.durable = f.live.clone();
            for &(from, to) in &f.lost {
                let to = to.min(f.durable.len());
                if from < to {
                    f.durable[from..to].fill(0);
                }
            }
        }
    }

    /// The live bytes of a file, for inspection.
    pub fn read_live(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.st();
        let ino = st.live_names.get(path)?;
        st.files.get(ino).map(|f| f.live.clone())
    }

    /// Overwrite the live and durable bytes of a file (for corruption tests).
    pub fn write_raw(&self, path: &Path, data: Vec<u8>) {
        let mut st = self.st();
        if let Some(&ino) = st.live_names.get(path)
            && let Some(f) = st.files.get_mut(&ino)
        {
            f.live = data.clone();
            f.durable = data;
        }
    }

    /// Bit rot: XOR one byte of a file's live and durable bytes with `mask`, in place. Returns
    /// false when there is no such file or byte.
    pub fn xor_byte(&self, path: &Path, offset: u64, mask: u8) -> bool {
        let mut st = self.st();
        let Some(&ino) = st.live_names.get(path) else {
            return false;
        };
        let Some(f) = st.files.get_mut(&ino) else {
            return false;
        };
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut hit = false;
        for bytes in [&mut f.live, &mut f.durable] {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= mask;
                hit = true;
            }
        }
        hit
    }

    /// Bytes the files hold now (what [`Faults::capacity`] is compared with).
    pub fn used_bytes(&self) -> u64 {
        Self::used_in(&self.st())
    }

    fn used_in(st: &MemState) -> u64 {
        st.files.values().map(|f| f.live.len() as u64).sum()
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    inode: u64,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected I/O error: {what}"))
}

impl FsFile for FaultFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let st = self.fs.st();
        let f = st.files.get(&self.inode).ok_or_else(|| eio("file gone"))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.live.len());
        let n = buf.len().min(f.live.len() - start);
        buf[..n].copy_from_slice(&f.live[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.fs.st();
        let used = FaultFs::used_in(&st);
        let mut allowed = data.len();
        let mut error = None;
        if let Some(n) = st.faults.fail_next_write_after.take() {
            allowed = allowed.min(n);
            error = Some(eio("write failed half-way"));
        }
        if let Some(cap) = st.faults.capacity {
            let f = st.files.get(&self.inode).ok_or_else(|| eio("file gone"))?;
            let end = offset + data.len() as u64;
            let growth = end.saturating_sub(f.live.len() as u64);
            let free = cap.saturating_sub(used);
            if growth > free {
                let fits = (data.len() as u64).saturating_sub(growth - free) as usize;
                allowed = allowed.min(fits);
                error = Some(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "No space left on device (injected)",
                ));
            }
        }
        let f = st
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| eio("file gone"))?;
        let off = offset as usize;
        if f.live.len() < off {
            f.live.resize(off, 0);
        }
        let end = off + allowed;
        if f.live.len() < end {
            f.live.resize(end, 0);
        }
        f.live[off..end].copy_from_slice(&data[..allowed]);
        if allowed > 0 {
            f.forget_lost(off, end);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn len(&mut self) -> io::Result<u64> {
        let st = self.fs.st();
        Ok(st.files.get(&self.inode).map_or(0, |f| f.live.len() as u64))
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.fs.st();
        if st.faults.fail_set_len {
            return Err(eio("set_len"));
        }
        let f = st
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| eio("file gone"))?;
        f.live.resize(len as usize, 0);
        f.forget_lost(len as usize, usize::MAX);
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let mut st = self.fs.st();
        if st.faults.fail_next_sync {
            st.faults.fail_next_sync = false;
            // As after fsyncgate: the dirty pages are marked clean though they never reached the
            // disk. Reads still see them; a later sync will not write them.
            if let Some(f) = st.files.get_mut(&self.inode) {
                let (from, to) = (f.durable.len(), f.live.len());
                if from < to {
                    f.lost.push((from, to));
                }
            }
            return Err(eio("fdatasync failed"));
        }
        st.syncs += 1;
        let f = st
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| eio("file gone"))?;
        f.durable = f.live.clone();
        for &(from, to) in &f.lost {
            let to = to.min(f.durable.len());
            if from < to {
                f.durable[from..to].fill(0);
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FaultLock {
    fs: FaultFs,
    path: PathBuf,
}
impl LockGuard for FaultLock {}
impl Drop for FaultLock {
    fn drop(&mut self) {
        self.fs.st().locks.remove(&self.path);
    }
}

impl Fs for FaultFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        for anc in path.ancestors() {
            st.dirs.insert(anc.to_path_buf());
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.st();
        if !st.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(st
            .live_names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let st = self.st();
        let inode = *st
            .live_names
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        drop(st);
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            inode,
        }))
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.st();
        if st.live_names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        st.next_inode += 1;
        let inode = st.next_inode;
        st.files.insert(inode, MemFile::default());
        st.live_names.insert(path.to_path_buf(), inode);
        drop(st);
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            inode,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.st();
        let inode = st
            .live_names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        st.live_names.insert(to.to_path_buf(), inode);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        st.live_names
            .remove(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.st();
        if st.faults.fail_sync_dir {
            return Err(eio("directory fsync"));
        }
        // Entries of this directory become durable as they are now.
        let st = &mut *st;
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in &st.live_names {
            if p.parent() == Some(dir) {
                st.durable_names.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        let st = self.st();
        st.live_names.contains_key(path) || st.dirs.contains(path)
    }
    fn lock(
        &self,
        path: &Path,
        holder: &str,
        _timeout: Duration,
    ) -> Result<Box<dyn LockGuard>, LockFailure> {
        let mut st = self.st();
        if let Some(h) = st.locks.get(path) {
            return Err(LockFailure::Busy { holder: h.clone() });
        }
        st.locks.insert(path.to_path_buf(), holder.to_owned());
        Ok(Box::new(FaultLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
    fn lock_holder(&self, path: &Path) -> Option<String> {
        self.st().locks.get(path).cloned()
    }
}
