//! Writing projection files: atomically (temp file, fsync, rename, directory fsync), only when
//! their bytes change, and only files zolog owns.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Write one file if its bytes differ; true if it was written. The directory is not synced here.
fn write_one(job: &Job) -> io::Result<bool> {
    if let Ok(old) = std::fs::read(&job.path)
        && old == job.bytes
    {
        return Ok(false);
    }
    let dir = job.path.parent().unwrap_or(Path::new("."));
    let name = job
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&job.bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &job.path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Write every job (in parallel when there are many), then fsync each directory that got a new
/// entry, so every rename is durable before this returns.
pub fn write_all(jobs: &[Job]) -> Result<Written> {
    if let Some(bad) = jobs.iter().find(|j| !owned(&j.path)) {
        return Err(Error::Invalid(format!(
            "refusing to write {}: projections only write {}",
            bad.path.display(),
            OWNED.join(", ")
        )));
    }
    let results: Vec<Mutex<Option<io::Result<bool>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= jobs.len() {
                break;
            }
            *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(write_one(&jobs[i]));
        }
    };
    // fsync-bound: more threads than cores pays off.
    let threads = if jobs.len() >= 64 { 8 } else { 1 };
    if threads == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    let mut w = Written::default();
    let mut dirs = BTreeSet::new();
    for (job, r) in jobs.iter().zip(results) {
        let r = r
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .expect("every job ran");
        match r {
            Ok(true) => {
                w.written += 1;
                dirs.insert(job.path.parent().unwrap_or(Path::new(".")).to_path_buf());
            }
            Ok(false) => w.unchanged += 1,
            Err(e) => return Err(Error::io("write", &job.path, e)),
        }
    }
    sync_dirs(dirs.into_iter().collect())?;
    Ok(w)
}

/// fsync directories (in parallel when there are many).
pub fn sync_dirs(dirs: Vec<PathBuf>) -> Result<()> {
    let sync = |d: &Path| File::open(d).and_then(|f| f.sync_all());
    if dirs.len() < 64 {
        for d in &dirs {
            sync(d).map_err(|e| Error::io("fsync directory", d, e))?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(d) = dirs.get(i) else { break };
                    if let Err(e) = sync(d) {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Error::io("fsync directory", d, e));
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
}
