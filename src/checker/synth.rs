//! Synthetic training runs: events built in memory with deterministic seqs, times and noise, for
//! the rule tests, the benchmark and demonstrations. No clock, no randomness beyond a seeded
//! generator.

use crate::event::{
    CheckpointReason, CheckpointSaved, EpochEnded, Event, ExpId, ExperimentMinted, Json, Metrics,
    Payload, Source, SourceKind, Timestamp, TrainingEnded, TrainingStarted,
};

/// A small, fast, seeded generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal, bounded to ±6 (Irwin–Hall of 12 uniforms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// Builds one experiment's events.
#[derive(Debug, Clone)]
pub struct Synth {
    pub exp: ExpId,
    seq: u64,
    time: i64,
    /// Nanoseconds between consecutive events.
    pub step_ns: i64,
    events: Vec<Event>,
}

/// 2026-01-01T00:00:00Z.
pub const T0_NS: i64 = 1_767_225_600_000_000_000;

impl Synth {
    /// An empty log for `exp`, first seq 1, one second between events.
    pub fn new(exp: &str) -> Synth {
        Synth {
            exp: ExpId::parse(exp).expect("valid experiment id"),
            seq: 0,
            time: T0_NS,
            step_ns: 1_000_000_000,
            events: Vec::new(),
        }
    }

    pub fn push(&mut self, payload: Payload) -> u64 {
        self.seq += 1;
        self.time += self.step_ns;
        self.events.push(Event {
            seq: self.seq,
            time: Timestamp(self.time),
            appended: None,
            source: Source {
                kind: SourceKind::Trainer,
                pid: Some(4242),
                host: Some("synth".into()),
            },
            payload,
        });
        self.seq
    }

    pub fn mint(&mut self) -> u64 {
        self.push(Payload::ExperimentMinted(ExperimentMinted {
            experiment_id: self.exp.clone(),
            parent_id: None,
            phase: "phase_4".into(),
            hypothesis: String::new(),
            rationale: String::new(),
        }))
    }

    pub fn start(
        &mut self,
        pid: Option<u32>,
        total_epochs: Option<u64>,
        config: serde_json::Value,
    ) -> u64 {
        self.push(Payload::TrainingStarted(TrainingStarted {
            experiment_id: self.exp.clone(),
            experiment_name: None,
            pid,
            host: Some("synth".into()),
            total_epochs,
            config: Json(config),
        }))
    }

    pub fn epoch(&mut self, epoch: u64, metrics: &[(&str, f64)], lr: Option<f64>) -> u64 {
        self.push(Payload::EpochEnded(EpochEnded {
            experiment_id: self.exp.clone(),
            epoch,
            step: None,
            metrics: Metrics(metrics.iter().map(|&(k, v)| (k.to_owned(), v)).collect()),
            learning_rate: lr,
            wall_time_seconds: None,
            gpu_memory_mb: None,
        }))
    }

    pub fn fold(&mut self, fold: u32, metrics: &[(&str, f64)]) -> u64 {
        self.push(Payload::CheckpointSaved(CheckpointSaved {
            experiment_id: self.exp.clone(),
            epoch: None,
            path: format!("models/fold{fold}.pkl"),
            reason: CheckpointReason::Fold,
            metrics: Metrics(metrics.iter().map(|&(k, v)| (k.to_owned(), v)).collect()),
            size_bytes: None,
            content_hash: None,
            state_keys: vec![],
            fold: Some(fold),
            trial: None,
        }))
    }

    pub fn end(&mut self) -> u64 {
        self.push(Payload::TrainingEnded(TrainingEnded {
            experiment_id: self.exp.clone(),
            epoch: None,
            metrics: Metrics::new(),
            wall_time_seconds: None,
            exit_code: Some(0),
            signal: None,
        }))
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    /// Time of the last event.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.time)
    }
}

/// A long, healthy, noisy run: training loss decaying to a floor with 2% multiplicative noise,
/// validation loss tracking it 10% higher with its own noise, a grad norm steady around 1 with
/// 5% noise, and a learning rate decaying exponentially (0.5% per epoch) as the configured
/// scheduler says.
pub fn healthy(epochs: u64, seed: u64) -> Synth {
    let mut s = Synth::new("exp-001");
    let mut rng = Rng::new(seed);
    s.mint();
    s.start(
        Some(4242),
        Some(epochs),
        serde_json::json!({"lr": 0.1, "scheduler": "exponential", "gamma": 0.995}),
    );
    for t in 0..epochs {
        let base = 2.0 * (-(t as f64) / 80.0).exp() + 0.3;
        let train = base * (1.0 + 0.02 * rng.normal());
        let val = base * 1.1 * (1.0 + 0.02 * rng.normal());
        let grad = 1.0 + 0.05 * rng.normal();
        let acc = 1.0 - base / 2.3;
        let lr = 0.1 * 0.995f64.powi(t as i32);
        s.epoch(
            t,
            &[
                ("train_loss", train),
                ("val_loss", val),
                ("val_acc", acc),
                ("grad_norm", grad),
            ],
            Some(lr),
        );
    }
    s.end();
    s
}
