//! `zolog audit`: why a run ended, re-derived from the log alone.
//!
//! For a kill: RunKilled ← the alerts it cites ← their evidence samples ← the rule and thresholds
//! in force (the CheckerConfigured at the alert's config seq) ← a replay of the logged events
//! through a fresh [`Checker`] with *that* configuration, saying whether the same alert comes out
//! at the same seq. For any other ending: who ended it (source kind, pid, host), how (exit code,
//! signal, status and reason) and when.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::fmt_g;
use super::{AlertKey, Checker, CheckerConfig, Liveness, rules};
use crate::error::{Error, Result};
use crate::event::{AlertRaised, Event, ExpId, Metrics, Payload, Severity, Source, Timestamp};
use crate::store::Store;

/// One event that ended (or helped end) the run.
#[derive(Debug, Clone, Serialize)]
pub struct Ending {
    pub seq: u64,
    pub time: Timestamp,
    pub kind: &'static str,
    pub source: Source,
    /// How: exit code, signal, status and reason.
    pub how: String,
}

/// An evidence sample.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub seq: u64,
    pub kind: String,
    pub epoch: Option<u64>,
    pub values: Metrics,
}

/// A replay's verdict on one alert.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// An alert with the same rule, subject, trigger seq and severity came out.
    pub reproduced: bool,
    /// ...and it is identical in every field.
    pub identical: bool,
    /// The seq of the event after which the replay raised it.
    pub raised_after_seq: Option<u64>,
    /// Fields that differ, or why there is no replay.
    pub notes: Vec<String>,
    /// The replayed alert (when one with the same rule and trigger came out).
    pub replayed: Option<AlertRaised>,
}

/// One alert in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct AlertAudit {
    pub seq: u64,
    pub time: Timestamp,
    pub alert: AlertRaised,
    pub evidence: Vec<Evidence>,
    /// The configuration section of the alert's rule (plus `monitor` and `dedup`) in force.
    pub config_in_force: Option<serde_json::Value>,
    /// Where the configuration in force differs from today's defaults (`path: then → now`).
    pub config_vs_today: Vec<String>,
    pub replay: Replay,
    /// The same replay with today's default configuration (when that differs).
    pub replay_with_today_defaults: Option<Replay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillAudit {
    pub seq: u64,
    pub time: Timestamp,
    pub source: Source,
    pub pid: Option<u32>,
    pub signal: String,
    pub by: String,
    pub reason: String,
    pub alerts: Vec<AlertAudit>,
}

/// The audit of one experiment.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub experiment_id: ExpId,
    /// Status as the log last set it.
    pub status: String,
    /// The event that ended the last run, if it has ended.
    pub ended_by: Option<Ending>,
    /// Every ending event of the last run, in log order.
    pub endings: Vec<Ending>,
    pub kill: Option<KillAudit>,
    /// Stop alerts of the last run that no kill cites (a vanished trainer, or a watch without
    /// --kill), each replayed like a kill's.
    pub stop_alerts: Vec<AlertAudit>,
    /// Every alert raised for the experiment: (seq, rule, severity, epoch).
    pub alerts: Vec<(u64, String, Severity, Option<u64>)>,
}

impl AuditReport {
    /// Was every stop decision (the alerts behind a kill, and other stop alerts) reproduced by
    /// its replay?
    pub fn decisions_reproduced(&self) -> bool {
        self.kill
            .as_ref()
            .is_none_or(|k| k.alerts.iter().all(|a| a.replay.reproduced))
            && self.stop_alerts.iter().all(|a| a.replay.reproduced)
    }
}

fn ending(ev: &Event) -> Option<Ending> {
    let how = match &ev.payload {
        Payload::TrainingEnded(t) => {
            let mut parts = vec!["TrainingEnded".to_owned()];
            if let Some(c) = t.exit_code {
                parts.push(format!("exit code {c}"));
            }
            if let Some(s) = t.signal {
                parts.push(format!("signal {s}"));
            }
            if let Some(e) = t.epoch {
                parts.push(format!("at epoch {e}"));
            }
            parts.join(", ")
        }
        Payload::RunKilled(k) => format!(
            "killed by {} with {}{}: {}",
            k.by,
            k.signal,
            k.pid.map_or(String::new(), |p| format!(" (pid {p})")),
            k.reason
        ),
        Payload::ExperimentStatusChanged(s)
            if s.status != crate::event::ExperimentStatus::Running =>
        {
            format!("status {}: {}", s.status.as_str(), s.reason)
        }
        Payload::ResultRecorded(r) => format!(
            "result recorded ({}, {} = {})",
            r.oracle_tier.as_str(),
            r.primary_metric.name,
            fmt_g(r.primary_metric.value)
        ),
        _ => return None,
    };
    Some(Ending {
        seq: ev.seq,
        time: ev.time,
        kind: ev.payload.kind(),
        source: ev.source.clone(),
        how,
    })
}

fn evidence_of(ev: &Event) -> Evidence {
    let (epoch, values) = match &ev.payload {
        Payload::EpochEnded(e) => {
            let mut m = e.metrics.clone();
            if let Some(lr) = e.learning_rate {
                m.insert("learning_rate", lr);
            }
            (Some(e.epoch), m)
        }
        Payload::CheckpointSaved(c) => (c.epoch, c.metrics.clone()),
        Payload::TrainingStarted(t) => {
            let mut m = Metrics::new();
            if let Some(p) = t.pid {
                m.insert("pid", f64::from(p));
            }
            if let Some(n) = t.total_epochs {
                m.insert("total_epochs", n as f64);
            }
            (None, m)
        }
        _ => (None, Metrics::new()),
    };
    Evidence {
        seq: ev.seq,
        kind: ev.payload.kind().to_owned(),
        epoch,
        values,
    }
}

/// Leaf paths where two JSON values differ.
fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let n = serde_json::Value::Null;
                json_diff(&p, x.get(k).unwrap_or(&n), y.get(k).unwrap_or(&n), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} (then) → {b} (today)")),
        _ => {}
    }
}

/// Replay `events` (the experiment's, in log order) up to `alert_seq` with `cfg`, and look for
/// `alert`.
pub fn replay(
    events: &[Event],
    exp: &ExpId,
    cfg: &CheckerConfig,
    alert: &AlertRaised,
    alert_seq: u64,
    alert_time: Timestamp,
) -> Replay {
    let mut c = Checker::new(exp.clone(), cfg.clone(), alert.config_seq);
    let mut out = Vec::new();
    let mut got: Vec<(u64, AlertRaised)> = Vec::new();
    let mut last = None;
    for ev in events.iter().take_while(|e| e.seq < alert_seq) {
        c.observe(ev, &mut out);
        got.extend(out.drain(..).map(|a| (ev.seq, a)));
        last = Some(ev.seq);
    }
    if rules::family(&alert.rule) == "stall" {
        let liveness = match alert.observed.get("seconds_gone") {
            Some(s) if alert.rule == "stall.process_gone" => Liveness::GoneFor(s),
            _ if alert.observed.get("pid_alive") == Some(1.0) => Liveness::Alive,
            _ => Liveness::Unknown,
        };
        c.tick(alert_time, liveness, &mut out);
        got.extend(out.drain(..).map(|a| (last.unwrap_or(0), a)));
    }
    let key = AlertKey::of(alert);
    let same_key = got.iter().find(|(_, a)| AlertKey::of(a) == key);
    let mut notes = Vec::new();
    let near = same_key.or_else(|| {
        got.iter().find(|(_, a)| {
            a.rule == alert.rule && a.evidence_seqs.last() == alert.evidence_seqs.last()
        })
    });
    let Some((after, r)) = near else {
        notes.push(format!(
            "no {} alert with trigger seq {} came out of the replay",
            alert.rule,
            alert
                .evidence_seqs
                .last()
                .map_or("?".into(), |s| s.to_string())
        ));
        return Replay {
            reproduced: false,
            identical: false,
            raised_after_seq: None,
            notes,
            replayed: None,
        };
    };
    let reproduced = same_key.is_some();
    if r.severity != alert.severity {
        notes.push(format!(
            "severity {:?} (logged {:?})",
            r.severity, alert.severity
        ));
    }
    if !r.observed.same_bits(&alert.observed) {
        notes.push(format!(
            "observed {} (logged {})",
            metrics_text(&r.observed),
            metrics_text(&alert.observed)
        ));
    }
    if !r.thresholds.same_bits(&alert.thresholds) {
        notes.push(format!(
            "thresholds {} (logged {})",
            metrics_text(&r.thresholds),
            metrics_text(&alert.thresholds)
        ));
    }
    for (name, same) in [
        ("evidence_seqs", r.evidence_seqs == alert.evidence_seqs),
        ("epoch", r.epoch == alert.epoch),
        ("message", r.message == alert.message),
        ("likely_cause", r.likely_cause == alert.likely_cause),
        (
            "recommended_action",
            r.recommended_action == alert.recommended_action,
        ),
        ("config_seq", r.config_seq == alert.config_seq),
    ] {
        if !same {
            notes.push(format!("{name} differs"));
        }
    }
    Replay {
        reproduced,
        identical: reproduced && notes.is_empty(),
        raised_after_seq: Some(*after),
        notes,
        replayed: Some(r.clone()),
    }
}

/// `name=value` pairs.
pub fn metrics_text(m: &Metrics) -> String {
    if m.is_empty() {
        return "(none)".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={}", fmt_g(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Ctx<'a> {
    events: &'a [Event],
    exp: &'a ExpId,
    by_seq: BTreeMap<u64, &'a Event>,
    configs: BTreeMap<u64, serde_json::Value>,
    today: CheckerConfig,
    today_json: serde_json::Value,
}

fn audit_alert(ctx: &Ctx<'_>, e: &Event, a: &AlertRaised) -> AlertAudit {
    let evidence = a
        .evidence_seqs
        .iter()
        .filter_map(|s| ctx.by_seq.get(s))
        .map(|e| evidence_of(e))
        .collect();
    let stored = a.config_seq.and_then(|s| ctx.configs.get(&s));
    let family = rules::family(&a.rule);
    let parsed = stored.map(CheckerConfig::from_json);
    let config_in_force = stored.map(|v| {
        serde_json::json!({
            family: v.get(family).cloned().unwrap_or_default(),
            "monitor": v.get("monitor").cloned().unwrap_or_default(),
            "dedup": v.get("dedup").cloned().unwrap_or_default(),
        })
    });
    let mut config_vs_today = Vec::new();
    if let Some(v) = stored {
        json_diff("", v, &ctx.today_json, &mut config_vs_today);
    }
    let (replay_then, replay_today) = match parsed {
        Some(Ok(cfg)) => {
            let r = replay(ctx.events, ctx.exp, &cfg, a, e.seq, e.time);
            let t = (cfg != ctx.today)
                .then(|| replay(ctx.events, ctx.exp, &ctx.today, a, e.seq, e.time));
            (r, t)
        }
        Some(Err(why)) => (
            Replay {
                reproduced: false,
                identical: false,
                raised_after_seq: None,
                notes: vec![format!(
                    "the CheckerConfigured at seq {} does not parse: {why}",
                    a.config_seq.unwrap_or(0)
                )],
                replayed: None,
            },
            None,
        ),
        None => (
            Replay {
                reproduced: false,
                identical: false,
                raised_after_seq: None,
                notes: vec![format!(
                    "no CheckerConfigured for {} at seq {:?}",
                    ctx.exp, a.config_seq
                )],
                replayed: None,
            },
            None,
        ),
    };
    AlertAudit {
        seq: e.seq,
        time: e.time,
        alert: a.clone(),
        evidence,
        config_in_force,
        config_vs_today,
        replay: replay_then,
        replay_with_today_defaults: replay_today,
    }
}

/// Audit `exp` in `store`.
pub fn audit(store: &Store, exp: &ExpId) -> Result<AuditReport> {
    let mut events = Vec::new();
    let mut configs: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    store.read(1, |ev| {
        if ev.payload.experiment_id() == Some(exp) {
            if let Payload::CheckerConfigured(c) = &ev.payload {
                configs.insert(ev.seq, c.config.0.clone());
            }
            events.push(ev);
        }
        Ok(())
    })?;
    if events.is_empty() {
        return Err(Error::UnknownExperiment(exp.clone()));
    }
    let mut status = "running".to_owned();
    for ev in &events {
        match &ev.payload {
            Payload::ExperimentStatusChanged(s) => status = s.status.as_str().to_owned(),
            Payload::ResultRecorded(_) => status = "complete".into(),
            _ => {}
        }
    }
    let run_start = events
        .iter()
        .rposition(|e| matches!(e.payload, Payload::TrainingStarted(_)))
        .unwrap_or(0);
    let endings: Vec<Ending> = events[run_start..].iter().filter_map(ending).collect();
    let ctx = Ctx {
        events: &events,
        exp,
        by_seq: events.iter().map(|e| (e.seq, e)).collect(),
        configs,
        today: CheckerConfig::default(),
        today_json: CheckerConfig::default().to_json(),
    };
    let alerts = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::AlertRaised(a) => Some((e.seq, a.rule.clone(), a.severity, a.epoch)),
            _ => None,
        })
        .collect();

    let kill = events[run_start..].iter().find_map(|e| match &e.payload {
        Payload::RunKilled(k) => Some((e, k)),
        _ => None,
    });
    let kill = kill.map(|(ev, k)| {
        let alerts = k
            .alert_seqs
            .iter()
            .filter_map(|s| ctx.by_seq.get(s))
            .filter_map(|e| match &e.payload {
                Payload::AlertRaised(a) => Some((*e, a)),
                _ => None,
            })
            .map(|(e, a)| audit_alert(&ctx, e, a))
            .collect();
        KillAudit {
            seq: ev.seq,
            time: ev.time,
            source: ev.source.clone(),
            pid: k.pid,
            signal: k.signal.clone(),
            by: k.by.clone(),
            reason: k.reason.clone(),
            alerts,
        }
    });
    let cited: Vec<u64> = kill
        .as_ref()
        .map(|k| k.alerts.iter().map(|a| a.seq).collect())
        .unwrap_or_default();
    let stop_alerts = events[run_start..]
        .iter()
        .filter(|e| !cited.contains(&e.seq))
        .filter_map(|e| match &e.payload {
            Payload::AlertRaised(a) if a.severity == Severity::Stop => {
                Some(audit_alert(&ctx, e, a))
            }
            _ => None,
        })
        .collect();
    Ok(AuditReport {
        experiment_id: exp.clone(),
        status,
        ended_by: endings.first().cloned(),
        endings,
        kill,
        stop_alerts,
        alerts,
    })
}

fn who(s: &Source) -> String {
    let mut w = s.kind.to_string();
    if let Some(p) = s.pid {
        w.push_str(&format!(" pid {p}"));
    }
    if let Some(h) = &s.host {
        w.push_str(&format!(" on {h}"));
    }
    w
}

fn sev(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warn => "warn",
        Severity::Stop => "stop",
    }
}

fn replay_text(r: &Replay, alert: &AlertRaised) -> String {
    let trigger = alert
        .evidence_seqs
        .last()
        .map_or("?".into(), |s| s.to_string());
    let mut t = if r.identical {
        format!(
            "reproduced: the same {} alert at the same seq (trigger seq {trigger}), identical in every field",
            alert.rule
        )
    } else if r.reproduced {
        format!(
            "reproduced: the same {} alert at the same seq (trigger seq {trigger}), with differences",
            alert.rule
        )
    } else if let Some(x) = &r.replayed {
        format!(
            "NOT reproduced: a {} alert at trigger seq {trigger} came out with severity {}",
            x.rule,
            sev(x.severity)
        )
    } else {
        "NOT reproduced".to_owned()
    };
    for n in &r.notes {
        t.push_str(&format!("\n      - {n}"));
    }
    t
}

fn render_alert(o: &mut String, a: &AlertAudit) {
    let al = &a.alert;
    o.push_str(&format!(
        "\n  ← alert seq {} at {}: {} ({}){}\n      {}\n      observed: {}\n      thresholds: {}\n      likely cause: {}\n      recommended action: {}\n",
        a.seq,
        a.time,
        al.rule,
        sev(al.severity),
        al.epoch.map_or(String::new(), |e| format!(", epoch {e}")),
        al.message,
        metrics_text(&al.observed),
        metrics_text(&al.thresholds),
        al.likely_cause,
        al.recommended_action
    ));
    o.push_str("    ← evidence\n");
    for e in &a.evidence {
        o.push_str(&format!(
            "      seq {} {}{}: {}\n",
            e.seq,
            e.kind,
            e.epoch.map_or(String::new(), |x| format!(" epoch {x}")),
            metrics_text(&e.values)
        ));
    }
    o.push_str(&format!(
        "    ← rule and thresholds in force: CheckerConfigured seq {}\n",
        al.config_seq.map_or("?".into(), |s| s.to_string())
    ));
    if let Some(c) = &a.config_in_force {
        o.push_str(&format!("      {c}\n"));
    }
    if a.config_vs_today.is_empty() {
        o.push_str("      (the same as today's defaults)\n");
    } else {
        o.push_str("      differs from today's defaults:\n");
        for d in &a.config_vs_today {
            o.push_str(&format!("        {d}\n"));
        }
    }
    o.push_str(&format!(
        "    ← replay of the logged events with that configuration: {}\n",
        replay_text(&a.replay, al)
    ));
    if let Some(t) = &a.replay_with_today_defaults {
        let verdict = if t.reproduced {
            "would raise the same alert".to_owned()
        } else if let Some(x) = &t.replayed {
            format!("would raise it with severity {}", sev(x.severity))
        } else {
            "would not raise it".to_owned()
        };
        o.push_str(&format!("    (today's defaults {verdict})\n"));
    }
}

/// The report as text.
pub fn render(r: &AuditReport) -> String {
    let mut o = String::new();
    let head = match (&r.kill, &r.ended_by) {
        (Some(k), _) => format!("killed by {}", k.by),
        (None, Some(e)) => format!("ended: {}", e.how),
        (None, None) => "has not ended".into(),
    };
    o.push_str(&format!(
        "{}: {head} (status {})\n",
        r.experiment_id, r.status
    ));
    if let Some(k) = &r.kill {
        o.push_str(&format!(
            "\nRunKilled seq {} at {} by {} ({}): {} to trainer pid {}\n  reason: {}\n",
            k.seq,
            k.time,
            k.by,
            who(&k.source),
            k.signal,
            k.pid.map_or("?".into(), |p| p.to_string()),
            k.reason
        ));
        for a in &k.alerts {
            render_alert(&mut o, a);
        }
    }
    if !r.stop_alerts.is_empty() {
        o.push_str("\nstop alerts of the last run that no kill cites:\n");
        for a in &r.stop_alerts {
            render_alert(&mut o, a);
        }
    }
    if !r.endings.is_empty() {
        o.push_str("\nending events of the last run:\n");
        for e in &r.endings {
            o.push_str(&format!(
                "  seq {} at {}: {} by {}: {}\n",
                e.seq,
                e.time,
                e.kind,
                who(&e.source),
                e.how
            ));
        }
    }
    if !r.alerts.is_empty() {
        o.push_str("\nalerts:\n");
        for (seq, rule, s, epoch) in &r.alerts {
            o.push_str(&format!(
                "  seq {seq} {rule} ({}){}\n",
                sev(*s),
                epoch.map_or(String::new(), |e| format!(" epoch {e}"))
            ));
        }
    }
    o
}
