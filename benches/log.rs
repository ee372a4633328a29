//! The log's speed, as issue 2 asks for it (a benchmark, never a timed test):
//!
//! - `ingest`: durable ingest of EpochEnded lines (4 metrics each) piped into `zolog append`
//!   (target ≥ 1,000,000 events/s);
//! - `append`: one durable single-event append against a bare `write` + `fdatasync` of a small
//!   record on the same disk (target ≤ 1.5×);
//! - `verify`: `zolog verify` over a large log in the page cache (target ≥ 10 million events/s);
//! - `open`: a new process's `Log::writer` (lock, find the end of the log) with a last segment of
//!   9 MB and of 60 MB, through the tail hint file and by a scan of the whole segment.
//!
//! `cargo bench --bench log` runs them all; `cargo bench --bench log -- ingest` (or `append`,
//! `verify`, `open`) one. Data goes under `target/tmp` (the disk the store would be on) and is removed.
//! Each figure is printed with the wall-clock time, the CPU time zolog used, and the machine's load
//! average: this machine is shared, and wall-clock figures fall when other work runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zolog::event::codec;
use zolog::event::{EpochEnded, ExpId, Metrics, NewEvent, Payload, Source, SourceKind, Timestamp};
use zolog::store::{Store, StoreOptions};

fn zolog_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zolog")
}

fn work_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds used by this process's waited-for children so far (cutime + cstime).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is 3rd overall; cutime and cstime are 16th and 17th.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(16) + ticks(17)) / 100.0
}

fn init(root: &Path) {
    let ok = Command::new(zolog_bin())
        .args(["init", "--project", "bench"])
        .env("ZO_STORE", root)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores, {cpu}; load average {}", loadavg());
}

/// EpochEnded lines as a trainer writes them (Python's json.dumps order: `type` first).
fn epoch_lines(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 180);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut r = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    for i in 0..n {
        writeln!(
            out,
            r#"{{"type":"EpochEnded","experiment_id":"exp-001","epoch":{i},"metrics":{{"train_loss":{},"val_loss":{},"val_acc":{},"lr":0.001}}}}"#,
            r(),
            r(),
            r()
        )
        .unwrap();
    }
    out
}

fn ingest() {
    const EVENTS: usize = 1_000_000;
    let input = std::sync::Arc::new(epoch_lines(EVENTS));
    println!(
        "\n== ingest: {EVENTS} EpochEnded lines (4 metrics, {} MB) piped into `zolog append`",
        input.len() / 1_000_000
    );
    let dir = work_dir("ingest");
    let mut rates = Vec::new();
    for run in 1..=5 {
        let root = dir.join(format!("s{run}/.zo"));
        init(&root);
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let mut child = Command::new(zolog_bin())
            .arg("append")
            .env("ZO_STORE", &root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.clone();
        let feeder = std::thread::spawn(move || {
            for piece in data.chunks(64 * 1024) {
                stdin.write_all(piece).unwrap();
            }
        });
        feeder.join().unwrap();
        let out = child.wait_with_output().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let cpu = children_cpu() - cpu0;
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("appended {EVENTS} ")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let rate = EVENTS as f64 / secs;
        println!(
            "run {run}: {secs:.3} s wall, {rate:>9.0} events/s; zolog CPU {cpu:.2} s ({:.0} events per CPU-second); load {}",
            EVENTS as f64 / cpu.max(0.01),
            loadavg()
        );
        rates.push(rate);
        std::fs::remove_dir_all(dir.join(format!("s{run}"))).unwrap();
    }
    let best = rates.iter().copied().fold(0.0, f64::max);
    println!(
        "ingest: median {:.0} events/s, best {best:.0} events/s (target >= 1,000,000)",
        median(rates)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn epoch_event(i: u64) -> NewEvent {
    NewEvent {
        time: Timestamp(1_795_000_000_000_000_000 + i as i64 * 1_000_000),
        appended: None,
        source: Source {
            kind: SourceKind::Trainer,
            pid: Some(4242),
            host: Some("gpu-1".into()),
        },
        payload: Payload::EpochEnded(EpochEnded {
            experiment_id: ExpId::from_number(1),
            epoch: i,
            step: None,
            metrics: Metrics(vec![
                ("train_loss".into(), 0.5 + (i % 100) as f64 / 1000.0),
                ("val_loss".into(), 0.6),
                ("val_acc".into(), 0.7),
                ("lr".into(), 0.001),
            ]),
            learning_rate: None,
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn append() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 200;
    println!(
        "\n== append: one event, one fdatasync ({} appends each, interleaved in rounds of {PER_ROUND})",
        ROUNDS * PER_ROUND
    );
    let dir = work_dir("append");
    let root = dir.join(".zo");
    init(&root);
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let payload = codec::encode(&epoch_event(1));
    let bare_path = root.join("log").join("bare.bin");
    let mut bare = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&bare_path)
        .unwrap();
    let record = vec![0x5au8; payload.len() + 24];
    let (mut t_bare, mut t_held, mut t_store) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            bare.write_all(&record).unwrap();
            bare.sync_data().unwrap();
            t_bare.push(t.elapsed());
        }
        // The writer held across appends (a trainer's or the checker's own writer).
        let mut w = store.writer().unwrap();
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            w.append(&[&payload]).unwrap();
            t_held.push(t.elapsed());
        }
        drop(w);
        // Lock, tail check and append per event, as `zolog append` does per batch.
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            store.append(&[epoch_event(2)]).unwrap();
            t_store.push(t.elapsed());
        }
    }
    let show = |name: &str, v: &mut Vec<Duration>| {
        v.sort();
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "{name:<44} p50 {:>7.1} µs   p99 {:>7.1} µs",
            us(p50),
            us(p99)
        );
        p50
    };
    let b = show("bare write + fdatasync (appending file)", &mut t_bare);
    let h = show("Writer::append, writer held", &mut t_held);
    let s = show("Store::append (lock + tail check + append)", &mut t_store);
    println!(
        "append: held writer {:.2}x bare fdatasync, per-append lock {:.2}x (target <= 1.5x); load {}",
        us(h) / us(b),
        us(s) / us(b),
        loadavg()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn verify() {
    const EVENTS: u64 = 10_000_000;
    const BATCH: u64 = 16_384;
    println!("\n== verify: `zolog verify` over {EVENTS} events in the page cache");
    let dir = work_dir("verify");
    let root = dir.join(".zo");
    init(&root);
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let mut w = store.writer().unwrap();
    let t = Instant::now();
    let mut i = 0;
    let mut batch = Vec::with_capacity(BATCH as usize);
    while i < EVENTS {
        batch.clear();
        batch.extend((i..(i + BATCH).min(EVENTS)).map(|k| codec::encode(&epoch_event(k))));
        w.append(&batch).unwrap();
        i += BATCH;
    }
    drop(w);
    let bytes: u64 = std::fs::read_dir(root.join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "wrote {EVENTS} events, {} MB, in {:.1} s",
        bytes / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let mut rates = Vec::new();
    for run in 0..=5 {
        let cpu0 = children_cpu();
        let t = Instant::now();
        let out = Command::new(zolog_bin())
            .arg("verify")
            .env("ZO_STORE", &root)
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let cpu = children_cpu() - cpu0;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("events:   {}", EVENTS + 1))
        );
        if run == 0 {
            continue; // warms the page cache
        }
        let rate = (EVENTS + 1) as f64 / secs;
        println!(
            "run {run}: {secs:.3} s wall, {rate:>11.0} events/s, {:.0} MB/s; zolog CPU {cpu:.2} s; load {}",
            bytes as f64 / secs / 1e6,
            loadavg()
        );
        rates.push(rate);
    }
    let best = rates.iter().copied().fold(0.0, f64::max);
    println!(
        "verify: median {:.0} events/s, best {best:.0} events/s (target >= 10,000,000)",
        median(rates)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new process's writer open: a fresh `Log` (no hint in memory), as the last writer left the
/// log (with its hint file), against the same open with the hint file removed (a scan of the
/// whole last segment, which is what every open did before there was a hint file). Interleaved
/// rounds. Uses no API newer than the hint file, so that it also measures the build before it.
fn open() {
    const ROUNDS: usize = 41;
    println!(
        "\n== open: a new process's Log::writer, hint file vs whole-segment scan ({ROUNDS} rounds each)"
    );
    let dir = work_dir("open");
    let root = dir.join(".zo");
    init(&root);
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let log_dir = root.join("log");
    let fresh = || {
        zolog::log::Log::open(
            std::sync::Arc::new(zolog::log::fs::RealFs),
            &log_dir,
            zolog::log::LogOptions::default(),
        )
        .unwrap()
    };
    let mut next = 0u64;
    for mb in [9u64, 60] {
        // Fill the last segment to `mb` MB in batches of 1,000 events.
        let mut w = store.writer().unwrap();
        loop {
            let len: u64 = std::fs::read_dir(&log_dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".zlog"))
                .map(|e| e.metadata().unwrap().len())
                .max()
                .unwrap_or(0);
            if len >= mb * 1_000_000 {
                break;
            }
            let batch: Vec<Vec<u8>> = (next..next + 1000)
                .map(|k| codec::encode(&epoch_event(k)))
                .collect();
            w.append(&batch).unwrap();
            next += 1000;
        }
        drop(w);
        let (mut hinted, mut scanned) = (Vec::new(), Vec::new());
        let hint_file = log_dir.join("TAIL").exists();
        for round in 0..=ROUNDS {
            let log = fresh();
            let t = Instant::now();
            let w = log.writer().unwrap();
            let e = t.elapsed();
            drop(w);
            let _ = std::fs::remove_file(log_dir.join("TAIL"));
            let log = fresh();
            let t = Instant::now();
            let w = log.writer().unwrap();
            let s = t.elapsed();
            drop(w); // (the scan left a hint file again)
            if round > 0 {
                hinted.push(e);
                scanned.push(s);
            }
        }
        hinted.sort();
        scanned.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "last segment {mb} MB (hint file: {hint_file}): as the last writer left it median {:.2} ms (min {:.2}), without a hint file median {:.2} ms (min {:.2}); load {}",
            ms(percentile(&hinted, 0.5)),
            ms(hinted[0]),
            ms(percentile(&scanned, 0.5)),
            ms(scanned[0]),
            loadavg()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    machine();
    if run("ingest") {
        ingest();
    }
    if run("append") {
        append();
    }
    if run("verify") {
        verify();
    }
    if run("open") {
        open();
    }
}
