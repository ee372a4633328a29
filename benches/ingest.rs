//! Ingest benchmark (never a timed test): `cargo bench --bench ingest`.
//!
//! 1. Bulk: ingest an existing metrics.jsonl of `ZOLOG_BENCH_LINES` (default 1,000,000)
//!    reference-shaped lines into a fresh store; lines/s over `ZOLOG_BENCH_RUNS` (default 3) runs.
//! 2. Follow latency: a writer appends one line every 2–10 ms (`ZOLOG_BENCH_FOLLOW` lines,
//!    default 1000) while a [`Follower`] runs; latency is from the `write` returning to the
//!    follower reporting the batch holding that line durable (appended and fdatasynced). Run with
//!    inotify and with the polling fallback.
//!
//! Temporary files go to $TMPDIR (default /tmp); results are printed as a Markdown table row.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zolog::event::{ExpId, ExperimentMinted, NewEvent, Payload, Source, SourceKind};
use zolog::ingest::{FollowOptions, Follower, IngestOptions, Ingester};
use zolog::store::{Store, StoreOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn exp() -> ExpId {
    ExpId::parse("exp-001").unwrap()
}

fn new_store(dir: &Path) -> Store {
    let store = Store::init(&dir.join(".zo"), "bench", StoreOptions::default()).unwrap();
    store
        .append(&[NewEvent::now(
            Source::this_process(SourceKind::Cli),
            Payload::ExperimentMinted(ExperimentMinted {
                experiment_id: exp(),
                parent_id: None,
                phase: "phase_4".into(),
                hypothesis: String::new(),
                rationale: String::new(),
            }),
        )])
        .unwrap();
    fs::create_dir_all(dir.join(".zo/experiments/exp-001")).unwrap();
    store
}

/// A line as ZOTrainingCallback writes it (Python's json.dumps spacing).
fn line(i: u64) -> String {
    let loss = if i.is_multiple_of(997) {
        "NaN".to_owned()
    } else {
        format!("{}", 2.5 / (1.0 + i as f64 * 0.001))
    };
    format!(
        "{{\"timestamp\": \"2026-11-24T{:02}:{:02}:{:02}.{:06}+00:00\", \"event\": \"epoch_end\", \"experiment_id\": \"exp-001\", \"experiment_name\": \"resnet18-cifar10\", \"epoch\": {i}, \"total_epochs\": 1000000, \"metrics\": {{\"train_loss\": {loss}, \"val_loss\": {}, \"val_acc\": {}, \"grad_norm\": {}}}, \"learning_rate\": {}, \"checkpoint_path\": null, \"wall_time_seconds\": {:.1}, \"gpu_memory_mb\": 2048.5, \"config\": {{}}}}\n",
        (i / 3600) % 24,
        (i / 60) % 60,
        i % 60,
        i % 1_000_000,
        2.6 / (1.0 + i as f64 * 0.001),
        0.5 + (i % 100) as f64 / 250.0,
        1.0 + (i % 13) as f64 / 7.0,
        0.1 * 0.999f64.powi((i % 5000) as i32),
        i as f64 * 0.7,
    )
}

/// CPU seconds (user + system, all threads) this process has used: /proc/self/stat fields 14
/// and 15, in USER_HZ (100) ticks.
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: index 0 is field 3 (state); utime is field 14, stime 15.
    (tick(11) + tick(12)) / 100.0
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn bulk(lines: usize, runs: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("metrics.jsonl");
    {
        let mut w = std::io::BufWriter::new(fs::File::create(&src).unwrap());
        for i in 0..lines as u64 {
            w.write_all(line(i).as_bytes()).unwrap();
        }
        w.flush().unwrap();
    }
    let bytes = fs::metadata(&src).unwrap().len();
    println!(
        "bulk ingest: {lines} lines, {:.1} MB ({:.0} bytes/line)",
        bytes as f64 / 1e6,
        bytes as f64 / lines as f64
    );
    breakdown(&src, lines);
    let mut rates = Vec::new();
    for run in 0..runs {
        let dir = tmp.path().join(format!("run{run}"));
        fs::create_dir_all(&dir).unwrap();
        let store = new_store(&dir);
        let m = dir.join(".zo/experiments/exp-001/metrics.jsonl");
        fs::copy(&src, &m).unwrap();
        // Warm the page cache as a trainer's freshly written file would be.
        let _ = fs::read(&m).unwrap();
        let load = loadavg();
        let cpu0 = cpu_seconds();
        let t = Instant::now();
        let mut ing = Ingester::open(store.clone(), IngestOptions::new(&m, Some(exp()))).unwrap();
        let o = ing.poll(true).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        assert_eq!(o.events as usize, lines);
        let rate = lines as f64 / secs;
        let log_bytes: u64 = fs::read_dir(dir.join(".zo/log"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!(
            "  run {run}: {secs:.3} s, {rate:.0} lines/s, {:.0} MB/s of input, {} batches, log {:.1} MB; CPU {cpu:.2} s ({:.2} µs/line); load avg before {load}",
            bytes as f64 / secs / 1e6,
            ing.totals().batches,
            log_bytes as f64 / 1e6,
            cpu * 1e6 / lines as f64
        );
        rates.push(rate);
        fs::remove_dir_all(&dir).unwrap();
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "  => median {:.0} lines/s (min {:.0}, max {:.0})",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}

/// Single-threaded cost of each stage, for the notes: parse, parse + encode.
fn breakdown(src: &Path, lines: usize) {
    use zolog::event::codec;
    use zolog::ingest::line::parse_line;
    let data = fs::read(src).unwrap();
    let e = exp();
    let t = Instant::now();
    let mut n = 0usize;
    for l in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        n += parse_line(l, Some(&e)).is_ok() as usize;
    }
    let parse = t.elapsed().as_secs_f64();
    assert_eq!(n, lines);
    let source = Source::this_process(SourceKind::Trainer);
    let t = Instant::now();
    let mut bytes = 0usize;
    for l in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let (_, ev) = parse_line(l, Some(&e)).unwrap();
        bytes += codec::encode(&NewEvent::at(ev.time, source.clone(), ev.payload)).len();
    }
    let both = t.elapsed().as_secs_f64();
    println!(
        "  stages: parse {:.0} lines/s; parse+encode {:.0} lines/s ({:.0} bytes/event)",
        lines as f64 / parse,
        lines as f64 / both,
        bytes as f64 / lines as f64
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn follow(n: usize, use_notify: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let m = tmp.path().join(".zo/experiments/exp-001/metrics.jsonl");
    fs::write(&m, "").unwrap();
    let ing = Ingester::open(store, IngestOptions::new(&m, Some(exp()))).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let written: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let durable: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    rt.block_on(async {
        let opts = FollowOptions {
            use_notify,
            ..FollowOptions::default()
        };
        let follower = Follower::new(ing, opts);
        let mut status = follower.status();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(follower.run(async move {
            let _ = stop_rx.await;
        }));
        // Watch the follower: the moment it reports lines durable.
        let d = durable.clone();
        let watcher = tokio::spawn(async move {
            let mut seen = 0u64;
            while status.changed().await.is_ok() {
                let lines = status.borrow_and_update().lines;
                let now = Instant::now();
                let mut d = d.lock().unwrap();
                while seen < lines {
                    d.push(now);
                    seen += 1;
                }
                if seen as usize >= n {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let w = written.clone();
        let m2 = m.clone();
        let writer = std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(&m2).unwrap();
            let mut x = 12345u64;
            for i in 0..n as u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                std::thread::sleep(Duration::from_micros(2000 + x % 8000));
                f.write_all(line(i).as_bytes()).unwrap();
                w.lock().unwrap().push(Instant::now());
            }
        });
        writer.join().unwrap();
        tokio::time::timeout(Duration::from_secs(30), watcher)
            .await
            .expect("follower caught up")
            .unwrap();
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
    let w = written.lock().unwrap();
    let d = durable.lock().unwrap();
    let mut lat: Vec<Duration> = w
        .iter()
        .zip(d.iter())
        .map(|(w, d)| d.saturating_duration_since(*w))
        .collect();
    lat.sort();
    println!(
        "follow latency ({}, {n} lines, one every 2-10 ms): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if use_notify {
            "inotify"
        } else {
            "polling fallback"
        },
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.9).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes --bench; anything else (`cargo test --benches`) gets a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let lines = env_usize("ZOLOG_BENCH_LINES", if quick { 10_000 } else { 1_000_000 });
    let runs = env_usize("ZOLOG_BENCH_RUNS", if quick { 1 } else { 3 });
    let follow_n = env_usize("ZOLOG_BENCH_FOLLOW", if quick { 50 } else { 1000 });
    bulk(lines, runs);
    follow(follow_n, true);
    follow(follow_n, false);
}
