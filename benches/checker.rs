//! Checker benchmark (not a test): rule throughput, and the latency from an offending sample
//! becoming durable to its alert being in the log under a real `zolog watch` process.
//!
//!     cargo bench --bench checker            # both
//!     cargo bench --bench checker -- rules   # throughput only
//!     cargo bench --bench checker -- latency # latency only
//!
//! Figures and the machine they were taken on: docs/benchmarks.md, section "Checker".

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zolog::checker::synth::{Rng, Synth};
use zolog::checker::{Checker, CheckerConfig};
use zolog::event::{
    EpochEnded, ExpId, ExperimentMinted, Metrics, NewEvent, Payload, Source, SourceKind,
    TrainingStarted,
};
use zolog::store::{Store, StoreOptions};

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| which.is_empty() || which.iter().any(|w| name.contains(w.as_str()));
    if want("rules") {
        rules();
    }
    if want("latency") {
        latency();
    }
}

/// Samples shaped like a real run's: train/val loss, val accuracy, grad norm, learning rate.
fn samples(n: u64, seed: u64) -> Synth {
    let mut s = Synth::new("exp-001");
    let mut rng = Rng::new(seed);
    s.mint();
    s.start(Some(1), Some(n), serde_json::json!({"scheduler": "cosine"}));
    for t in 0..n {
        let base = 2.0 * (-(t as f64) / (n as f64 / 6.0)).exp() + 0.3;
        s.epoch(
            t,
            &[
                ("train_loss", base * (1.0 + 0.02 * rng.normal())),
                ("val_loss", base * 1.1 * (1.0 + 0.02 * rng.normal())),
                ("val_acc", 1.0 - base / 2.3),
                ("grad_norm", 1.0 + 0.05 * rng.normal()),
            ],
            Some(0.1 * (1.0 + (std::f64::consts::PI * t as f64 / n as f64).cos()) / 2.0 + 1e-4),
        );
    }
    s
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat), so a loaded machine does not
/// understate the rules' speed.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn rules() {
    const N: u64 = 250_000;
    const PASSES: usize = 4;
    let s = samples(N, 7);
    let events = s.events();
    let cfg = CheckerConfig::default();
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    let mut alerts = 0;
    for _round in 0..5 {
        let t = Instant::now();
        let cpu0 = thread_cpu_ns();
        for _ in 0..PASSES {
            let mut c = Checker::new(s.exp.clone(), cfg.clone(), Some(1));
            let mut out = Vec::new();
            for e in events {
                c.observe(e, &mut out);
            }
            alerts += out.len();
            std::hint::black_box(&out);
        }
        let dt = t.elapsed().as_secs_f64();
        let n = (N as usize * PASSES) as f64;
        rates.push(n / dt);
        if let (Some(a), Some(b)) = (cpu0, thread_cpu_ns()) {
            cpu_rates.push(n / ((b - a) as f64 / 1e9));
        }
    }
    rates.sort_by(f64::total_cmp);
    cpu_rates.sort_by(f64::total_cmp);
    println!(
        "rules: {} samples x {PASSES} passes x 5 rounds (4 metrics + lr each); alerts raised: {alerts}",
        N
    );
    println!(
        "rules: samples per wall-second  min {:.2}M  median {:.2}M  max {:.2}M",
        rates[0] / 1e6,
        rates[2] / 1e6,
        rates[4] / 1e6
    );
    if cpu_rates.len() == 5 {
        println!(
            "rules: samples per CPU-second  min {:.2}M  median {:.2}M  max {:.2}M",
            cpu_rates[0] / 1e6,
            cpu_rates[2] / 1e6,
            cpu_rates[4] / 1e6
        );
    }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn latency() {
    const ROUNDS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join(".zo");
    std::fs::create_dir_all(&root).unwrap();
    let store = Store::init(&root, "bench", StoreOptions::default()).unwrap();
    let exp = ExpId::parse("exp-001").unwrap();
    let src = Source::this_process(SourceKind::Trainer);
    let ev = |p: Payload| NewEvent::now(src.clone(), p);
    store
        .append(&[
            ev(Payload::ExperimentMinted(ExperimentMinted {
                experiment_id: exp.clone(),
                parent_id: None,
                phase: "phase_4".into(),
                hypothesis: String::new(),
                rationale: String::new(),
            })),
            ev(Payload::TrainingStarted(TrainingStarted {
                experiment_id: exp.clone(),
                experiment_name: None,
                pid: None,
                host: None,
                total_epochs: None,
                config: Default::default(),
            })),
        ])
        .unwrap();
    // Re-arm nan_inf after one finite sample, so every round's NaN is a fresh alert.
    let cfg_path = dir.path().join("checker.json");
    std::fs::write(&cfg_path, r#"{"dedup": {"rearm_after": 1}}"#).unwrap();
    let watch = Guard(
        Command::new(env!("CARGO_BIN_EXE_zolog"))
            .arg("--store")
            .arg(&root)
            .args(["watch", "exp-001", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start zolog watch"),
    );
    let mut reader = store.log().reader(1);
    let mut configured = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !configured {
        zolog::store::read_with(&mut reader, &mut |e| {
            configured |= e.payload.kind() == "CheckerConfigured";
            Ok(())
        })
        .unwrap();
        assert!(Instant::now() < deadline, "zolog watch did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sample = |epoch: u64, loss: f64| {
        ev(Payload::EpochEnded(EpochEnded {
            experiment_id: exp.clone(),
            epoch,
            step: None,
            metrics: Metrics(vec![("train_loss".into(), loss)]),
            learning_rate: Some(0.1),
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }))
    };
    let mut lat = Vec::with_capacity(ROUNDS);
    let mut rng = Rng::new(3);
    let mut epoch = 0;
    for _ in 0..ROUNDS {
        store.append(&[sample(epoch, 1.0)]).unwrap();
        epoch += 1;
        // Land at a random phase of the watcher's poll.
        std::thread::sleep(Duration::from_micros(
            2_000 + (rng.uniform() * 8_000.0) as u64,
        ));
        let nan_seq = store.append(&[sample(epoch, f64::NAN)]).unwrap().first_seq;
        let durable = Instant::now();
        epoch += 1;
        let mut seen = false;
        let deadline = durable + Duration::from_secs(10);
        while !seen {
            zolog::store::read_with(&mut reader, &mut |e| {
                if let Payload::AlertRaised(a) = &e.payload {
                    seen |= a.evidence_seqs.last() == Some(&nan_seq);
                }
                Ok(())
            })
            .unwrap();
            if !seen {
                assert!(Instant::now() < deadline, "no alert for seq {nan_seq}");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        lat.push(durable.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!("latency: {ROUNDS} NaN samples, each appended durably, until its alert is in the log");
    println!(
        "latency: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    // The watcher's own CPU use while the run is quiet.
    let pid = watch.0.id();
    if let Some(a) = cpu_ticks(pid) {
        std::thread::sleep(Duration::from_secs(5));
        if let Some(b) = cpu_ticks(pid) {
            println!(
                "latency: idle zolog watch uses {:.1}% of one core (5 ms poll)",
                (b - a) as f64 / 5.0
            );
        }
    }
    drop(watch);
    let _ = Path::new(&root);
}
