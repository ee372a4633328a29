//! Benchmark of `zolog serve`: durable events/s and acknowledgement latency for 1, 8 and 64
//! concurrent clients, at a fixed rate of 100,000 events/s, and the baselines of appending with
//! one fdatasync per event (in process, and one `zolog append` process per event).
//!
//! Run: `cargo bench --bench serve` (ZOLOG_BENCH_SECS=3 sets the seconds per scenario; the store
//! goes under target/bench-serve/, on the same disk as the project). Results: docs/benchmarks.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use zolog::event::{EpochEnded, ExpId, Metrics, NewEvent, Payload, Source, SourceKind};
use zolog::serve::{self, ServeOptions};
use zolog::store::{Store, StoreOptions};

const EVENT: &str = r#"{"type":"EpochEnded","experiment_id":"exp-001","epoch":12,"step":1200,"metrics":{"train_loss":0.2534,"val_loss":0.3121,"val_acc":0.9134},"learning_rate":0.001}"#;

fn fresh_store(name: &str) -> Store {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-serve")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Store::init(&dir.join(".zo"), "bench", StoreOptions::default()).unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One acknowledgement per event line.
    Each,
    /// `#acks flush`, one `#flush` per write.
    Flush,
}

struct Load {
    clients: usize,
    /// Event lines per write.
    per_write: usize,
    /// Events a client may have unacknowledged.
    window: u64,
    /// Total events/s to offer (None: as fast as acknowledgements allow).
    rate: Option<f64>,
    mode: Mode,
    secs: f64,
}

struct Outcome {
    events: u64,
    elapsed: Duration,
    /// Latency of each write, from just before the write to the acknowledgement of its last event.
    latencies: Vec<Duration>,
}

fn client(path: &Path, load: &Load, stop: &AtomicBool, per_client_rate: Option<f64>) -> Outcome {
    let s = UnixStream::connect(path).unwrap();
    let mut r = BufReader::with_capacity(1 << 16, s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut chunk = String::new();
    if load.mode == Mode::Flush {
        w.write_all(b"#acks flush\n").unwrap();
    }
    for _ in 0..load.per_write {
        chunk.push_str(EVENT);
        chunk.push('\n');
    }
    if load.mode == Mode::Flush {
        chunk.push_str("#flush\n");
    }
    let responses_per_write = if load.mode == Mode::Each {
        load.per_write as u64
    } else {
        1
    };
    let acked = Arc::new((Mutex::new(0u64), Condvar::new()));
    let (tx, rx) = mpsc::channel::<Instant>();
    let reader = {
        let acked = acked.clone();
        let per_write = load.per_write as u64;
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut lines = 0u64;
            loop {
                let n = r.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\n' {
                        lines += 1;
                        if lines.is_multiple_of(responses_per_write) {
                            let t0 = rx.recv().unwrap();
                            lat.push(t0.elapsed());
                            *acked.0.lock().unwrap() += per_write;
                            acked.1.notify_one();
                        }
                    }
                }
            }
            lat
        })
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next_at = start;
    let interval = per_client_rate.map(|r| Duration::from_secs_f64(load.per_write as f64 / r));
    let deadline = start + Duration::from_secs_f64(load.secs);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some(iv) = interval {
            let now = Instant::now();
            if now < next_at {
                std::thread::sleep(next_at - now);
            }
            next_at += iv;
        }
        {
            let mut a = acked.0.lock().unwrap();
            while sent - *a + load.per_write as u64 > load.window {
                a = acked.1.wait(a).unwrap();
            }
        }
        tx.send(Instant::now()).unwrap();
        w.write_all(chunk.as_bytes()).unwrap();
        sent += load.per_write as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let latencies = reader.join().unwrap();
    let events = *acked.0.lock().unwrap();
    Outcome {
        events,
        elapsed: start.elapsed(),
        latencies,
    }
}

fn run_load(name: &str, load: Load) -> String {
    let store = fresh_store(name);
    let server = serve::start(store, ServeOptions::default()).unwrap();
    let path = server.ready().socket.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let per_client = load.rate.map(|r| r / load.clients as f64);
    let load = Arc::new(load);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..load.clients)
        .map(|_| {
            let (path, load, stop) = (path.clone(), load.clone(), stop.clone());
            std::thread::spawn(move || client(&path, &load, &stop, per_client))
        })
        .collect();
    let outs: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wall = t0.elapsed();
    let report = server.stop().unwrap();
    let events: u64 = outs.iter().map(|o| o.events).sum();
    let mut lat: Vec<Duration> = outs
        .iter()
        .flat_map(|o| o.latencies.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let longest = outs.iter().map(|o| o.elapsed).max().unwrap_or(wall);
    let rate = events as f64 / longest.as_secs_f64();
    let sync = |q: f64| {
        report
            .append_times
            .quantile(q)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    format!(
        "| {name} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2} / {:.2} |",
        load.clients,
        events,
        rate,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        report.events as f64 / report.syncs.max(1) as f64,
        sync(0.5),
        sync(0.99),
    )
}

fn event(i: u64) -> NewEvent {
    NewEvent::now(
        Source::this_process(SourceKind::Trainer),
        Payload::EpochEnded(EpochEnded {
            experiment_id: ExpId::parse("exp-001").unwrap(),
            epoch: i,
            step: Some(i * 100),
            metrics: Metrics(vec![
                ("train_loss".into(), 0.2534),
                ("val_loss".into(), 0.3121),
                ("val_acc".into(), 0.9134),
            ]),
            learning_rate: Some(0.001),
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }),
    )
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99))
}

/// Baseline: `Store::append` of one event at a time, one fdatasync each (what `zolog append`
/// does for a line that arrives alone).
fn sync_per_event(secs: f64) -> String {
    let store = fresh_store("sync-per-event");
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        store.append(&[event(i)]).unwrap();
        lat.push(t.elapsed());
        i += 1;
    }
    let rate = i as f64 / t0.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(lat);
    format!(
        "| in-process `Store::append`, 1 event per call (1 fdatasync each) | 1 | {i} | {rate:.0} | {:.3} | {:.3} | 1.0 | |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    )
}

/// Baseline: one `zolog append` process per event.
fn process_per_event(n: usize) -> String {
    let store = fresh_store("process-per-event");
    let bin = env!("CARGO_BIN_EXE_zolog");
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut child = std::process::Command::new(bin)
            .args(["append", "--store"])
            .arg(store.root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{EVENT}").unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
        lat.push(t.elapsed());
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(lat);
    format!(
        "| one `zolog append` process per event | 1 | {n} | {rate:.0} | {:.2} | {:.2} | 1.0 | |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run quickly then.
    let secs: f64 = std::env::var("ZOLOG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!(
        "zolog serve benchmark: {} CPU(s), {secs} s per scenario, store under target/bench-serve/",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| scenario | clients | events acked | events/s | ack p50 ms | ack p99 ms | events per fdatasync |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (clients, window) in [(1usize, 16384u64), (8, 8192), (64, 1024)] {
        let name = format!("max-{clients}");
        if want(&name) {
            println!(
                "{}",
                run_load(
                    &name,
                    Load {
                        clients,
                        per_write: 64,
                        window,
                        rate: None,
                        mode: Mode::Each,
                        secs,
                    }
                )
            );
        }
    }
    if want("flush-8") {
        println!(
            "{}",
            run_load(
                "flush-8",
                Load {
                    clients: 8,
                    per_write: 256,
                    window: 8192,
                    rate: None,
                    mode: Mode::Flush,
                    secs,
                }
            )
        );
    }
    if want("rate-100k") {
        println!(
            "{}",
            run_load(
                "rate-100k-8",
                Load {
                    clients: 8,
                    per_write: 10,
                    window: 100_000,
                    rate: Some(100_000.0),
                    mode: Mode::Each,
                    secs,
                }
            )
        );
    }
    if want("sync-per-event") {
        println!("{}", sync_per_event(secs));
    }
    if want("process-per-event") {
        println!("{}", process_per_event(200));
    }
}
