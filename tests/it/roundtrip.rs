//! Every event kind round-trips through the codec and through JSON, NaN and infinities included,
//! bit for bit; `zolog log | zolog append` onto another store reproduces identical payloads.

use proptest::prelude::*;
use serde_json::Value;

use crate::common::{assert_same_event, every_kind, init_store, payload_bits, zolog};
use zolog::event::codec;
use zolog::event::json::{parse_input_line, to_line};
use zolog::event::{
    AlertRaised, CheckerConfigured, CheckpointReason, CheckpointSaved, EpochEnded, Event, ExpId,
    ExperimentMinted, ExperimentStatus, ExperimentStatusChanged, IngestAdvanced, Json, Metrics,
    NextIdea, NextIdeasRecorded, NoteAdded, NoteSection, OracleTier, Payload, PrimaryMetric,
    ProjectInitialized, ResultRecorded, RunKilled, Severity, Source, SourceKind, Timestamp,
    TrainingEnded, TrainingStarted,
};
use zolog::store::{Store, StoreOptions};

/// Floats with the interesting ones weighted in. `any_nan`: NaNs with any payload bits and sign
/// (the codec keeps them); otherwise only the canonical NaN (all JSON can say is "NaN").
fn float(any_nan: bool) -> BoxedStrategy<f64> {
    let special = prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(5e-324),
        Just(0.1),
    ];
    let bits = any::<u64>().prop_map(f64::from_bits);
    let normal = any::<f64>();
    prop_oneof![3 => special, 3 => bits, 2 => normal]
        .prop_map(move |v| if v.is_nan() && !any_nan { f64::NAN } else { v })
        .boxed()
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        1 => Just("payload".to_owned()),
        1 => Just("NaN Infinity -Infinity \"NaN\" \\".to_owned()),
        1 => "[a-z_]{0,12}",
    ]
    .boxed()
}

fn exp_id() -> impl Strategy<Value = ExpId> {
    "exp-[0-9]{1,9}".prop_map(|s| ExpId::parse(&s).expect("valid id"))
}

fn metrics(any_nan: bool) -> impl Strategy<Value = Metrics> {
    // Names are unique: a JSON object cannot hold one name twice.
    prop::collection::vec((text(), float(any_nan)), 0..6).prop_map(|v| {
        let mut m = Metrics::new();
        for (k, x) in v {
            if m.get(&k).is_none() {
                m.0.push((k, x));
            }
        }
        m
    })
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![any::<i64>(), 0i64..4_000_000_000_000_000_000].prop_map(Timestamp)
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..4)
}

fn seqs() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(any::<u64>(), 0..4)
}

/// Any payload, of any of the 14 kinds.
fn payload(any_nan: bool) -> BoxedStrategy<Payload> {
    let f = move || float(any_nan);
    let m = move || metrics(any_nan);
    prop_oneof![
        text().prop_map(|project| Payload::ProjectInitialized(ProjectInitialized { project })),
        (exp_id(), opt(exp_id()), text(), text(), text()).prop_map(
            |(experiment_id, parent_id, phase, hypothesis, rationale)| {
                Payload::ExperimentMinted(ExperimentMinted {
                    experiment_id,
                    parent_id,
                    phase,
                    hypothesis,
                    rationale,
                })
            }
        ),
        (
            exp_id(),
            prop_oneof![
                Just(ExperimentStatus::Running),
                Just(ExperimentStatus::Complete),
                Just(ExperimentStatus::Failed),
                Just(ExperimentStatus::Aborted)
            ],
            text()
        )
            .prop_map(|(experiment_id, status, reason)| {
                Payload::ExperimentStatusChanged(ExperimentStatusChanged {
                    experiment_id,
                    status,
                    reason,
                })
            }),
        (
            exp_id(),
            prop_oneof![
                Just(OracleTier::MustPass),
                Just(OracleTier::ShouldPass),
                Just(OracleTier::CouldPass),
                Just(OracleTier::Fail)
            ],
            (text(), f(), opt(f())),
            m(),
            strings(),
            timestamp()
        )
            .prop_map(
                |(experiment_id, oracle_tier, (name, value, delta), secondary, shortfalls, at)| {
                    Payload::ResultRecorded(ResultRecorded {
                        experiment_id,
                        oracle_tier,
                        primary_metric: PrimaryMetric {
                            name,
                            value,
                            delta_vs_parent: delta,
                        },
                        secondary_metrics: secondary,
                        shortfalls,
                        evaluated_at: at,
                    })
                }
            ),
        (
            exp_id(),
            prop::collection::vec((opt(text()), text(), strings()), 0..3)
        )
            .prop_map(|(experiment_id, ideas)| {
                Payload::NextIdeasRecorded(NextIdeasRecorded {
                    experiment_id,
                    ideas: ideas
                        .into_iter()
                        .map(|(label, idea, details)| NextIdea {
                            label,
                            idea,
                            details,
                        })
                        .collect(),
                })
            }),
        (
            exp_id(),
            prop_oneof![
                Just(NoteSection::WhatHappened),
                Just(NoteSection::Mechanism),
                Just(NoteSection::Next)
            ],
            text()
        )
            .prop_map(|(experiment_id, section, text)| {
                Payload::NoteAdded(NoteAdded {
                    experiment_id,
                    section,
                    text,
                })
            }),
        (
            exp_id(),
            opt(text()),
            opt(any::<u32>()),
            opt(text()),
            opt(any::<u64>()),
            json_value()
        )
            .prop_map(|(experiment_id, name, pid, host, total, config)| {
                Payload::TrainingStarted(TrainingStarted {
                    experiment_id,
                    experiment_name: name,
                    pid,
                    host,
                    total_epochs: total,
                    config: Json(config),
                })
            }),
        (
            exp_id(),
            any::<u64>(),
            opt(any::<u64>()),
            m(),
            opt(f()),
            opt(f()),
            opt(f())
        )
            .prop_map(|(experiment_id, epoch, step, metrics, lr, wall, gpu)| {
                Payload::EpochEnded(EpochEnded {
                    experiment_id,
                    epoch,
                    step,
                    metrics,
                    learning_rate: lr,
                    wall_time_seconds: wall,
                    gpu_memory_mb: gpu,
                })
            }),
        (
            (exp_id(), opt(any::<u64>()), text()),
            prop_oneof![
                Just(CheckpointReason::Best),
                Just(CheckpointReason::Last),
                Just(CheckpointReason::Periodic),
                Just(CheckpointReason::Fold),
                Just(CheckpointReason::Manual),
                Just(CheckpointReason::SearchState)
            ],
            m(),
            (opt(any::<u64>()), opt(text()), strings()),
            (opt(any::<u32>()), opt(any::<u64>()))
        )
            .prop_map(
                |(
                    (experiment_id, epoch, path),
                    reason,
                    metrics,
                    (size, hash, keys),
                    (fold, trial),
                )| {
                    Payload::CheckpointSaved(CheckpointSaved {
                        experiment_id,
                        epoch,
                        path,
                        reason,
                        metrics,
                        size_bytes: size,
                        content_hash: hash,
                        state_keys: keys,
                        fold,
                        trial,
                    })
                }
            ),
        (
            exp_id(),
            opt(any::<u64>()),
            m(),
            opt(f()),
            opt(any::<i32>()),
            opt(any::<i32>())
        )
            .prop_map(|(experiment_id, epoch, metrics, wall, exit_code, signal)| {
                Payload::TrainingEnded(TrainingEnded {
                    experiment_id,
                    epoch,
                    metrics,
                    wall_time_seconds: wall,
                    exit_code,
                    signal,
                })
            }),
        (exp_id(), json_value()).prop_map(|(experiment_id, config)| {
            Payload::CheckerConfigured(CheckerConfigured {
                experiment_id,
                config: Json(config),
            })
        }),
        (
            (exp_id(), text()),
            prop_oneof![
                Just(Severity::Info),
                Just(Severity::Warn),
                Just(Severity::Stop)
            ],
            (opt(any::<u64>()), m(), m()),
            (seqs(), opt(any::<u64>())),
            (text(), text(), text())
        )
            .prop_map(
                |(
                    (experiment_id, rule),
                    severity,
                    (epoch, observed, thresholds),
                    (evidence_seqs, config_seq),
                    (message, likely_cause, recommended_action),
                )| {
                    Payload::AlertRaised(AlertRaised {
                        experiment_id,
                        rule,
                        severity,
                        epoch,
                        observed,
                        thresholds,
                        evidence_seqs,
                        config_seq,
                        message,
                        likely_cause,
                        recommended_action,
                    })
                }
            ),
        (exp_id(), opt(any::<u32>()), seqs(), text(), text(), text()).prop_map(
            |(experiment_id, pid, alert_seqs, signal, by, reason)| {
                Payload::RunKilled(RunKilled {
                    experiment_id,
                    pid,
                    alert_seqs,
                    signal,
                    by,
                    reason,
                })
            }
        ),
        (
            exp_id(),
            text(),
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(experiment_id, path, file_id, offset, line, rejected)| {
                Payload::IngestAdvanced(IngestAdvanced {
                    experiment_id,
                    path,
                    file_id,
                    offset,
                    line,
                    rejected,
                })
            }),
    ]
    .boxed()
}

fn source() -> impl Strategy<Value = Source> {
    (
        prop_oneof![
            Just(SourceKind::Cli),
            Just(SourceKind::Trainer),
            Just(SourceKind::Checker),
            Just(SourceKind::Agent)
        ],
        opt(any::<u32>()),
        opt(text()),
    )
        .prop_map(|(kind, pid, host)| Source { kind, pid, host })
}

fn event(any_nan: bool) -> impl Strategy<Value = Event> {
    (
        1u64..u64::MAX,
        timestamp(),
        opt(timestamp()),
        source(),
        payload(any_nan),
    )
        .prop_map(|(seq, time, appended, source, payload)| Event {
            seq,
            time,
            appended,
            source,
            payload,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    /// Codec: decode(encode(e)) is e bit for bit, and re-encodes to the same bytes.
    #[test]
    fn codec_round_trips_every_kind_bitwise(ev in event(true)) {
        let bytes = codec::encode_event(&ev);
        let back = codec::decode(ev.seq, &bytes).expect("decodes");
        assert_same_event(&ev, &back, false);
        prop_assert_eq!(codec::encode_event(&back), bytes.clone());
        // `zolog verify`'s allocation-free check knows every kind.
        prop_assert!(codec::check_fast(&bytes));
    }

    /// The fast check never accepts what decode refuses: random byte changes and truncations.
    #[test]
    fn fast_check_never_accepts_what_decode_refuses(
        ev in event(true),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = codec::encode_event(&ev);
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let ok = codec::decode(1, &bytes).is_ok();
        prop_assert!(!codec::check_fast(&bytes) || ok, "fast check accepted what decode refuses");
        prop_assert_eq!(codec::check(&bytes).is_ok(), ok);
    }

    /// JSON: the line `zolog log` prints parses back to the same event (as an envelope, and as
    /// `zolog append` reads it), NaN and infinities included.
    #[test]
    fn json_round_trips_every_kind_bitwise(ev in event(false)) {
        let line = to_line(&ev);
        let back: Event = serde_json::from_str(&line).expect("parses as an event");
        assert_same_event(&ev, &back, false);
        let input = parse_input_line(&format!("{line}\n")).expect("append accepts it");
        prop_assert_eq!(input.time, Some(ev.time));
        prop_assert_eq!(input.source.as_ref(), Some(&ev.source));
        prop_assert_eq!(payload_bits(&input.payload), payload_bits(&ev.payload));
        // A bare payload line, as a trainer writes it, parses too.
        let bare = serde_json::to_string(&ev.payload).expect("serializes");
        let input = parse_input_line(&bare).expect("bare payload accepted");
        prop_assert_eq!(payload_bits(&input.payload), payload_bits(&ev.payload));
    }

    /// `type` need not come first: the order-independent parse yields the same bits as the fast
    /// type-first one.
    #[test]
    fn key_order_does_not_matter(ev in event(false)) {
        // Move `type` from first to last, keeping the text of everything else.
        let text = serde_json::to_string(&ev.payload).expect("serializes");
        let tag = format!("{{\"type\":\"{}\"", ev.payload.kind());
        let rest = text.strip_prefix(&tag).expect("type first");
        let line = match rest.strip_prefix(',') {
            Some(fields) => format!("{{{},{}}}", &fields[..fields.len() - 1], &tag[1..]),
            None => format!("{}}}", tag),
        };
        let input = parse_input_line(&line).expect("type last is accepted");
        prop_assert_eq!(payload_bits(&input.payload), payload_bits(&ev.payload));
        let envelope = format!(
            "{{\"payload\":{line},\"source\":{},\"time\":\"{}\"}}",
            serde_json::to_string(&ev.source).unwrap(),
            ev.time
        );
        let input = parse_input_line(&envelope).expect("envelope, keys in any order");
        prop_assert_eq!(payload_bits(&input.payload), payload_bits(&ev.payload));
        prop_assert_eq!(input.time, Some(ev.time));
    }

    /// Python writes bare NaN/Infinity/-Infinity tokens: they parse to the same bits.
    #[test]
    fn python_style_nonfinite_tokens_parse_bitwise(ev in event(false)) {
        let line = serde_json::to_string(&ev.payload).expect("serializes");
        let python = line
            .replace("\"NaN\"", "NaN")
            .replace("\"-Infinity\"", "-Infinity")
            .replace("\"Infinity\"", "Infinity");
        let input = parse_input_line(&python).expect("Python-style line accepted");
        prop_assert_eq!(payload_bits(&input.payload), payload_bits(&ev.payload));
    }
}

#[test]
fn every_kind_round_trips_through_codec_and_json() {
    for (i, payload) in every_kind().into_iter().enumerate() {
        let ev = Event {
            seq: i as u64 + 1,
            time: Timestamp(1_795_000_000_000_000_000 + i as i64),
            appended: Some(Timestamp(1_795_000_000_500_000_000)),
            source: crate::common::source(SourceKind::Trainer),
            payload,
        };
        let back = codec::decode(ev.seq, &codec::encode_event(&ev)).expect("decodes");
        assert_same_event(&ev, &back, false);
        let back: Event = serde_json::from_str(&to_line(&ev)).expect("parses");
        assert_same_event(&ev, &back, false);
    }
}

/// A bare payload whose text contains `"payload"` is still a bare payload (regression: it was
/// taken for an envelope and refused).
#[test]
fn bare_payload_mentioning_payload_is_accepted() {
    let line =
        r#"{"type":"NoteAdded","experiment_id":"exp-001","section":"mechanism","text":"payload"}"#;
    let ev = parse_input_line(line).expect("accepted");
    assert_eq!(ev.payload.kind(), "NoteAdded");
}

/// `zolog log` piped into `zolog append` on another store reproduces every payload bit for bit,
/// with its time and source.
#[test]
fn cli_log_piped_into_append_reproduces_identical_payloads() {
    let (_a_dir, a) = init_store();
    let (_b_dir, b) = init_store();
    // Every kind, written as a trainer would (bare payloads, Python's NaN tokens) ...
    let mut input = String::new();
    for p in every_kind() {
        let line = serde_json::to_string(&p).unwrap();
        input.push_str(&line.replace("\"NaN\"", "NaN"));
        input.push('\n');
    }
    // ... and as envelopes with their own time and source.
    for (i, p) in every_kind().into_iter().enumerate() {
        let ev = Event {
            seq: 0,
            time: Timestamp(1_700_000_000_000_000_007 + i as i64),
            appended: None,
            source: crate::common::source(SourceKind::Agent),
            payload: p,
        };
        input.push_str(&to_line(&ev));
        input.push('\n');
    }
    zolog(&a)
        .arg("append")
        .write_stdin(input)
        .assert()
        .success();
    let out = zolog(&a).arg("log").output().unwrap();
    assert!(out.status.success());
    zolog(&b)
        .arg("append")
        .write_stdin(out.stdout.clone())
        .assert()
        .success();

    let opts = StoreOptions::default;
    let ea = Store::open(&a, opts()).unwrap().events(1).unwrap();
    let eb = Store::open(&b, opts()).unwrap().events(2).unwrap();
    assert_eq!(ea.len(), 1 + 2 * 14);
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(&eb) {
        let mut y = y.clone();
        y.seq -= 1;
        assert_same_event(x, &y, true);
    }
    // The NaN metric came through as NaN (not a string, not null).
    let epoch = ea
        .iter()
        .find_map(|e| match &e.payload {
            Payload::EpochEnded(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        epoch.metrics.get("val_loss").unwrap().to_bits(),
        f64::NAN.to_bits()
    );
    assert_eq!(epoch.metrics.get("grad_norm"), Some(f64::INFINITY));
    assert_eq!(epoch.metrics.get("val_acc"), Some(f64::NEG_INFINITY));
    assert_eq!(
        epoch.metrics.get("zero").unwrap().to_bits(),
        (-0.0f64).to_bits()
    );
    // And the output of B's log equals A's, line for line, apart from seq and appended.
    let out_b = zolog(&b)
        .arg("log")
        .arg("--since")
        .arg("2")
        .output()
        .unwrap();
    let strip = |s: &[u8]| -> Vec<Value> {
        String::from_utf8_lossy(s)
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("seq");
                o.remove("appended");
                v
            })
            .collect()
    };
    assert_eq!(strip(&out.stdout), strip(&out_b.stdout));
}
