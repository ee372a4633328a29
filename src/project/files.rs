//! Writing projection files: atomically (temp file, fsync, rename, directory fsync), only when
//! their bytes change, and only files zolog owns.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// The only file names projections ever write. Trainers' and agents' files (metrics.jsonl,
/// training_status.json, hypothesis.md, result.md, ...) are never written or deleted.
pub const OWNED: [&str; 5] = [
    "registry.json",
    "CHECKLIST.md",
    "diagnosis.md",
    "curves.svg",
    "next.md",
];

/// Threads comparing and writing files in a large pass (the work waits on the disk).
const WRITERS: usize = 8;

/// From this many files to write in one pass, write them all and flush the file system twice
/// (before and after the renames) instead of fsyncing each file and directory.
const BULK: usize = 256;

/// A file to bring to `bytes`.
#[derive(Debug)]
pub struct Job {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Counts of what a write pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub written: usize,
    pub unchanged: usize,
}

fn owned(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| OWNED.contains(&n))
}

fn tmp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether the file already holds exactly these bytes.
fn unchanged(job: &Job) -> bool {
    std::fs::read(&job.path).is_ok_and(|old| old == job.bytes)
}

/// Write the temp file (fsynced when `sync`), then, when `rename`, move it into place.
fn write_tmp(job: &Job, sync: bool, rename: bool) -> io::Result<()> {
    let tmp = tmp_path(&job.path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&job.bytes)?;
        if sync {
            f.sync_all()?;
        }
        if rename {
            std::fs::rename(&tmp, &job.path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Run `f` on every index below `n`, on up to [`WRITERS`] threads; the first error wins.
fn parallel(n: usize, f: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            if let Err(e) = f(i) {
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                break;
            }
        }
    };
    if n < 64 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..WRITERS {
                s.spawn(work);
            }
        });
    }
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Flush the file system holding `dir` (syncfs): every file and directory entry written so far
/// on it becomes durable.
#[cfg(target_os = "linux")]
fn flush_fs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    nix::unistd::syncfs(&f).map_err(|e| Error::io("syncfs", dir, io::Error::from(e)))
}

/// Where there is no syncfs: flush every file system.
#[cfg(not(target_os = "linux"))]
fn flush_fs(_dir: &Path) -> Result<()> {
    nix::unistd::sync();
    Ok(())
}

/// Bring every job's file to its bytes, atomically and durably, skipping files that already
/// hold them. Few files: temp file, fsync, rename each, then fsync each directory that changed.
/// Many files (a rebuild): every temp file, one syncfs, every rename, one more syncfs: the same
/// guarantees (a file holds its old or its new bytes, and all are durable on return) with two
/// flushes instead of two per file.
pub fn write_all(jobs: &[Job]) -> Result<Written> {
    if let Some(bad) = jobs.iter().find(|j| !owned(&j.path)) {
        return Err(Error::Invalid(format!(
            "refusing to write {}: projections only write {}",
            bad.path.display(),
            OWNED.join(", ")
        )));
    }
    let same: Vec<AtomicBool> = jobs.iter().map(|_| AtomicBool::new(false)).collect();
    parallel(jobs.len(), |i| {
        same[i].store(unchanged(&jobs[i]), Ordering::Relaxed);
        Ok(())
    })?;
    let todo: Vec<&Job> = jobs
        .iter()
        .zip(&same)
        .filter(|(_, s)| !s.load(Ordering::Relaxed))
        .map(|(j, _)| j)
        .collect();
    let w = Written {
        written: todo.len(),
        unchanged: jobs.len() - todo.len(),
    };
    if todo.is_empty() {
        return Ok(w);
    }
    write_durably(&todo).map(|()| w)
}

/// Write every job's file atomically (temp file, rename), whatever it holds now, without fsync:
/// for the projections' own caches under `.zo/state/` (the curve shards), which are checked
/// before they are trusted, so that one that did not reach the disk is noticed, not used.
/// The `n` jobs come from `job`, called on the writing threads, so that their bytes are made in
/// parallel and never all held at once.
pub(crate) fn write_cache(n: usize, job: impl Fn(usize) -> Job + Sync) -> Result<()> {
    parallel(n, |i| {
        let j = job(i);
        write_tmp(&j, false, false)
            .and_then(|()| replace_cache(&tmp_path(&j.path), &j.path))
            .map_err(|e| Error::io("write", &j.path, e))
    })
}

/// Move the cache file `tmp` to `path`, atomically, without making its bytes durable first.
///
/// A plain rename over an existing file makes ext4 write the new file's data out before the
/// rename (its `auto_da_alloc` heuristic, for programs that forget to fsync): about 6 ms for the
/// 6 MB projection checkpoint, on every refresh. A cache is checked by its CRC before it is used,
/// so it does not need that: where the kernel can, the new file is exchanged with the old one
/// (`renameat2(RENAME_EXCHANGE)`, just as atomic for readers) and the old one removed. Anything
/// else (no old file, a file system without exchange) falls back to a rename.
pub(crate) fn replace_cache(tmp: &Path, path: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        if renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE).is_ok() {
            // `tmp` now names the old file: removing it is tidying, not part of the replacement.
            let _ = std::fs::remove_file(tmp);
            return Ok(());
        }
    }
    std::fs::rename(tmp, path)
}

/// The writing half of [`write_all`].
fn write_durably(todo: &[&Job]) -> Result<()> {
    if todo.is_empty() {
        return Ok(());
    }
    let io_err = |j: &Job, e: io::Error| Error::io("write", &j.path, e);
    if todo.len() >= BULK {
        let started = std::time::Instant::now();
        let dir = todo[0].path.parent().unwrap_or(Path::new("."));
        parallel(todo.len(), |i| {
            write_tmp(todo[i], false, false).map_err(|e| io_err(todo[i], e))
        })?;
        tracing::trace!(files = todo.len(), elapsed = ?started.elapsed(), "temp files written");
        flush_fs(dir)?;
        tracing::trace!(elapsed = ?started.elapsed(), "file system flushed");
        for j in todo {
            std::fs::rename(tmp_path(&j.path), &j.path).map_err(|e| io_err(j, e))?;
        }
        tracing::trace!(elapsed = ?started.elapsed(), "renamed");
        flush_fs(dir)?;
        tracing::trace!(elapsed = ?started.elapsed(), "file system flushed again");
        return Ok(());
    }
    parallel(todo.len(), |i| {
        write_tmp(todo[i], true, true).map_err(|e| io_err(todo[i], e))
    })?;
    let dirs: BTreeSet<PathBuf> = todo
        .iter()
        .map(|j| j.path.parent().unwrap_or(Path::new(".")).to_path_buf())
        .collect();
    sync_dirs(dirs.into_iter().collect())
}

/// fsync directories (in parallel when there are many).
pub fn sync_dirs(dirs: Vec<PathBuf>) -> Result<()> {
    parallel(dirs.len(), |i| {
        File::open(&dirs[i])
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("fsync directory", &dirs[i], e))
    })
}

/// Create `dir` (and its parents) if missing; returns the directories whose entries changed and
/// need an fsync.
pub fn ensure_dir(dir: &Path, changed: &mut BTreeSet<PathBuf>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent, changed)?;
        changed.insert(parent.to_path_buf());
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owned_files_are_written_and_unchanged_bytes_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "metrics.jsonl",
            "training_status.json",
            "hypothesis.md",
            "result.md",
        ] {
            let job = Job {
                path: dir.path().join(name),
                bytes: b"x".to_vec(),
            };
            assert!(write_all(&[job]).is_err(), "{name}");
            assert!(!dir.path().join(name).exists());
        }
        let p = dir.path().join("next.md");
        let job = || Job {
            path: p.clone(),
            bytes: b"# Next experiments\n".to_vec(),
        };
        assert_eq!(write_all(&[job()]).unwrap().written, 1);
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        let w = write_all(&[job()]).unwrap();
        assert_eq!((w.written, w.unchanged), (0, 1));
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
    }

    #[test]
    fn cache_files_are_replaced_whole_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("projections.ckpt");
        for (i, bytes) in [&b"first"[..], b"second, longer", b"3"]
            .into_iter()
            .enumerate()
        {
            write_cache(1, |_| Job {
                path: p.clone(),
                bytes: bytes.to_vec(),
            })
            .unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "write {i}");
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("projections.ckpt")]);
        }
    }

    #[test]
    fn bulk_writes_land_whole_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let jobs: Vec<Job> = (0..BULK + 10)
            .map(|i| {
                let d = dir.path().join(format!("exp-{i:03}"));
                std::fs::create_dir(&d).unwrap();
                Job {
                    path: d.join("diagnosis.md"),
                    bytes: format!("# Diagnosis {i}\n").into_bytes(),
                }
            })
            .collect();
        std::fs::write(&jobs[3].path, &jobs[3].bytes).unwrap();
        let w = write_all(&jobs).unwrap();
        assert_eq!((w.written, w.unchanged), (BULK + 9, 1));
        for j in &jobs {
            assert_eq!(std::fs::read(&j.path).unwrap(), j.bytes);
            let names: Vec<_> = std::fs::read_dir(j.path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("diagnosis.md")]);
        }
        let w = write_all(&jobs).unwrap();
        assert_eq!((w.written, w.unchanged), (0, BULK + 10));
    }
}
