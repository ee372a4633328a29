//! Projection benchmark (never a timed test): a store with 10,000 experiments and 10 million
//! EpochEnded events, then `zolog rebuild`, `zolog exp list` and an append that refreshes the
//! projections, each timed as the real binary run by a user.
//!
//! ```sh
//! cargo bench --bench projections                      # full size (about 1 GB of log)
//! ZOLOG_BENCH_EXPERIMENTS=1000 ZOLOG_BENCH_EPOCHS=100 cargo bench --bench projections
//! ZOLOG_BENCH_DIR=/tmp/zolog-bench cargo bench --bench projections   # keep and reuse the store
//! ```
//! Peak memory is the child's VmHWM (/proc/PID/status), sampled until it exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zolog::event::{
    CheckpointReason, CheckpointSaved, EpochEnded, ExpId, ExperimentMinted, Json, Metrics,
    NewEvent, OracleTier, Payload, PrimaryMetric, ResultRecorded, Source, SourceKind, Timestamp,
    TrainingEnded, TrainingStarted, codec,
};
use zolog::store::{Store, StoreOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ev(t: i64, payload: Payload) -> NewEvent {
    NewEvent {
        time: Timestamp(t),
        appended: None,
        source: Source {
            kind: SourceKind::Trainer,
            pid: Some(4242),
            host: Some("bench".into()),
        },
        payload,
    }
}

/// Write the store: per experiment a mint, TrainingStarted, `epochs` EpochEnded (train_loss,
/// val_loss, val_acc, grad_norm and the learning rate), two checkpoints, TrainingEnded and a result.
fn generate(root: &Path, experiments: u32, epochs: u64) -> u64 {
    let store = Store::init(root, "bench", StoreOptions::default()).expect("init");
    let mut w = store.writer().expect("writer");
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(100_000);
    let mut t: i64 = 1_795_000_000_000_000_000;
    let mut n = 0u64;
    let flush = |batch: &mut Vec<Vec<u8>>, w: &mut zolog::log::Writer| {
        if !batch.is_empty() {
            w.append(batch).expect("append");
            batch.clear();
        }
    };
    for x in 1..=experiments {
        let id = ExpId::from_number(x);
        let parent = (x > 1).then(|| ExpId::from_number(x - 1));
        let push = |p: Payload, t: &mut i64, batch: &mut Vec<Vec<u8>>, n: &mut u64| {
            *t += 1_000_000;
            batch.push(codec::encode(&ev(*t, p)));
            *n += 1;
        };
        push(
            Payload::ExperimentMinted(ExperimentMinted {
                experiment_id: id.clone(),
                parent_id: parent,
                phase: "phase_4".into(),
                hypothesis: format!("Hypothesis {x}: a wider model lowers val_loss | by 5%"),
                rationale: "The previous run underfit.".into(),
            }),
            &mut t,
            &mut batch,
            &mut n,
        );
        push(
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: id.clone(),
                experiment_name: Some(format!("model-{x}")),
                pid: Some(4242),
                host: Some("bench".into()),
                total_epochs: Some(epochs),
                config: Json::default(),
            }),
            &mut t,
            &mut batch,
            &mut n,
        );
        for e in 0..epochs {
            let f = e as f64;
            push(
                Payload::EpochEnded(EpochEnded {
                    experiment_id: id.clone(),
                    epoch: e,
                    step: None,
                    metrics: Metrics(vec![
                        ("train_loss".into(), 1.0 / (1.0 + f) + (x as f64) * 1e-6),
                        (
                            "val_loss".into(),
                            1.1 / (1.0 + f) + 0.001 * (f / 100.0).sin(),
                        ),
                        ("val_acc".into(), 1.0 - 0.5 / (1.0 + f)),
                        ("grad_norm".into(), 1.0 + (f / 7.0).cos()),
                    ]),
                    learning_rate: Some(1e-3 * 0.999f64.powi(e as i32)),
                    wall_time_seconds: Some(f * 1.5),
                    gpu_memory_mb: None,
                }),
                &mut t,
                &mut batch,
                &mut n,
            );
            if batch.len() >= 100_000 {
                flush(&mut batch, &mut w);
            }
        }
        for (reason, path) in [
            (CheckpointReason::Best, "best.pt"),
            (CheckpointReason::Last, "last.pt"),
        ] {
            push(
                Payload::CheckpointSaved(CheckpointSaved {
                    experiment_id: id.clone(),
                    epoch: Some(epochs.saturating_sub(1)),
                    path: format!("models/checkpoints/model-{x}/{path}"),
                    reason,
                    metrics: Metrics::new(),
                    size_bytes: None,
                    content_hash: None,
                    state_keys: vec![],
                    fold: None,
                    trial: None,
                }),
                &mut t,
                &mut batch,
                &mut n,
            );
        }
        push(
            Payload::TrainingEnded(TrainingEnded {
                experiment_id: id.clone(),
                epoch: Some(epochs.saturating_sub(1)),
                metrics: Metrics::new(),
                wall_time_seconds: Some(epochs as f64 * 1.5),
                exit_code: Some(0),
                signal: None,
            }),
            &mut t,
            &mut batch,
            &mut n,
        );
        push(
            Payload::ResultRecorded(ResultRecorded {
                experiment_id: id.clone(),
                oracle_tier: OracleTier::ShouldPass,
                primary_metric: PrimaryMetric {
                    name: "val_loss".into(),
                    value: 0.05 + 1e-7 * x as f64,
                    delta_vs_parent: None,
                },
                secondary_metrics: Metrics(vec![("val_acc".into(), 0.9)]),
                shortfalls: vec!["horizon 3 still weak".into()],
                evaluated_at: Timestamp(t),
            }),
            &mut t,
            &mut batch,
            &mut n,
        );
    }
    flush(&mut batch, &mut w);
    n
}

/// Run the zolog binary; returns wall time and peak resident memory (KiB).
fn run(args: &[&str], store: &Path, stdin: Option<&str>) -> (Duration, u64) {
    run_with(args, store, stdin, true)
}

/// [`run`]; with `sample_memory` false, the child is only waited for (no polling of
/// /proc/PID/status competing with it for the CPU: for the short commands' timings), and the
/// peak memory returned is 0.
fn run_with(
    args: &[&str],
    store: &Path,
    stdin: Option<&str>,
    sample_memory: bool,
) -> (Duration, u64) {
    let exe = env!("CARGO_BIN_EXE_zolog");
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .env("ZO_STORE", store)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn zolog");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    if !sample_memory {
        let st = child.wait().expect("wait");
        assert!(st.success(), "zolog {args:?} failed: {st}");
        return (start.elapsed(), 0);
    }
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "zolog {args:?} failed: {st}");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (start.elapsed(), peak)
}

/// Flush dirty pages to disk (`sync`) and give the machine a moment.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn min_of(v: &[Duration]) -> Duration {
    v.iter().copied().min().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special: run small.
    let experiments = env_u64("ZOLOG_BENCH_EXPERIMENTS", 10_000) as u32;
    let epochs = env_u64("ZOLOG_BENCH_EPOCHS", 1_000);
    let (dir, _keep): (PathBuf, Option<tempfile::TempDir>) = match std::env::var("ZOLOG_BENCH_DIR")
    {
        Ok(d) => (PathBuf::from(d), None),
        Err(_) => {
            let t = tempfile::tempdir().expect("tempdir");
            (t.path().to_path_buf(), Some(t))
        }
    };
    let root = dir.join(".zo");
    if !root.join("log").is_dir() {
        std::fs::create_dir_all(&root).expect("mkdir");
        let t = Instant::now();
        let n = generate(&root, experiments, epochs);
        eprintln!(
            "generated {n} events ({experiments} experiments × {epochs} epochs) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("reusing the store in {}", root.display());
    }
    let log_bytes: u64 = std::fs::read_dir(root.join("log"))
        .expect("log dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "store: {experiments} experiments, {epochs} epochs each, log {:.0} MiB",
        log_bytes as f64 / 1048576.0
    );
    let store = root.to_str().expect("utf-8 path");
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", l.trim());
    }

    // Disaster recovery: no projection files at all, right after they were deleted. On ext4
    // without a journal (this VM's root file system) creating the 30,000 inodes then costs the
    // kernel more than zolog's whole rebuild: each allocation walks past the inodes just freed
    // (`recently_deleted` in fs/ext4/ialloc.c; docs/benchmarks.md).
    let _ = std::fs::remove_dir_all(root.join("experiments"));
    let _ = std::fs::remove_dir_all(root.join("state"));
    settle();
    let (t, mem) = run(&["rebuild"], &root, None);
    println!(
        "zolog rebuild (no files, deleted just before: writes every file): {:.2} s, peak RSS {} MiB",
        t.as_secs_f64(),
        mem / 1024
    );
    let (t, mem) = run(&["rebuild"], &root, None);
    println!(
        "zolog rebuild (files present, unchanged):    {:.2} s, peak RSS {} MiB",
        t.as_secs_f64(),
        mem / 1024
    );

    // The rebuilds left hundreds of MB of dirty pages: let the kernel write them back now rather
    // than during the short commands' timings.
    settle();
    let (_, list_mem) = run(&["exp", "list"], &root, None);
    let mut list = Vec::new();
    for _ in 0..21 {
        list.push(run_with(&["exp", "list"], &root, None, false).0);
    }
    println!(
        "zolog exp list ({experiments} rows, from the checkpoint): median {}, min {} (peak RSS {} MiB)",
        ms(median(list.clone())),
        ms(min_of(&list)),
        list_mem / 1024
    );
    let mut app = Vec::new();
    for i in 0..21u64 {
        let line = format!(
            "{{\"type\":\"EpochEnded\",\"experiment_id\":\"{}\",\"epoch\":{},\"metrics\":{{\"train_loss\":0.5,\"val_loss\":0.6}}}}\n",
            ExpId::from_number(experiments),
            epochs + i
        );
        app.push(run_with(&["append"], &root, Some(&line), false).0);
    }
    println!(
        "zolog append (1 EpochEnded, fdatasync, projection refresh): median {}, min {}",
        ms(median(app.clone())),
        ms(min_of(&app))
    );
    let mut mint = Vec::new();
    for _ in 0..5 {
        mint.push(
            run_with(
                &["exp", "mint", "--hypothesis", "bench"],
                &root,
                None,
                false,
            )
            .0,
        );
    }
    println!(
        "zolog exp mint (registry.json and CHECKLIST.md of {experiments}+ rows rewritten): median {}, min {}",
        ms(median(mint.clone())),
        ms(min_of(&mint))
    );
    let _ = store;
}
