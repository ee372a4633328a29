//! Per-experiment diagnosis.md and next.md, in the reference's shapes.
//!
//! diagnosis.md: what happened (with numbers from the fold's aggregates), the mechanism (agents'
//! notes, checker alerts, kills) and recommended next experiments (ideas, notes, the checker's
//! recommended actions). next.md: the ideas as `## exp-NNN` sections, then notes and checker
//! advice under headings the reference's next.md parser does not take for ideas.

use std::fmt::Write as _;

use super::fmt::{collapse_ws, g};
use super::state::{AlertAgg, Experiment, MetricAgg, REASONS, reason_name};
use crate::event::{Metrics, Severity};

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warn => "warn",
        Severity::Stop => "stop",
    }
}

fn epoch_range(first: Option<u64>, last: Option<u64>) -> String {
    match (first, last) {
        (Some(a), Some(b)) if a != b => format!("epochs {a}–{b}"),
        (Some(a), _) | (None, Some(a)) => format!("epoch {a}"),
        (None, None) => "no epoch".into(),
    }
}

fn metrics_list(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", g(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A note as Markdown: its text with trailing whitespace trimmed.
fn note_block(out: &mut String, text: &str) {
    let t = text.trim_end();
    if !t.is_empty() {
        out.push('\n');
        out.push_str(t);
        out.push('\n');
    }
}

/// A bullet whose text may span lines: continuation lines indented under it.
fn bullet(out: &mut String, text: &str) {
    let t = text.trim();
    let mut lines = t.lines();
    out.push_str("- ");
    out.push_str(lines.next().unwrap_or("").trim_end());
    out.push('\n');
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(l.trim_end());
            out.push('\n');
        }
    }
}

fn metric_line(m: &MetricAgg) -> String {
    let mut s = format!("- {}: ", m.name);
    if m.is_loss() {
        match m.min {
            Some((e, v)) => write!(s, "best {} at epoch {e} (lowest)", g(v)).unwrap(),
            None => s.push_str("no finite value"),
        }
        write!(s, ", final {} at epoch {}", g(m.last.1), m.last.0).unwrap();
        if m.count > 1 {
            write!(s, ", first {} at epoch {}", g(m.first.1), m.first.0).unwrap();
        }
    } else {
        write!(s, "final {} at epoch {}", g(m.last.1), m.last.0).unwrap();
        if let (Some((a, lo)), Some((b, hi))) = (m.min, m.max)
            && m.count > 1
        {
            write!(
                s,
                ", lowest {} at epoch {a}, highest {} at epoch {b}",
                g(lo),
                g(hi)
            )
            .unwrap();
        }
    }
    write!(s, " ({} sample(s)", m.count).unwrap();
    if let Some((e, v)) = m.first_nonfinite {
        write!(
            s,
            "; {} non-finite, the first {} at epoch {e}",
            m.nonfinite,
            g(v)
        )
        .unwrap();
    }
    s.push_str(").\n");
    s
}

fn what_happened(out: &mut String, e: &Experiment) {
    let d = e.details();
    let run = &d.run;
    let mut status = format!("- Status: {}", e.status.as_str());
    if !e.status_reason.trim().is_empty() {
        write!(status, " ({})", collapse_ws(&e.status_reason)).unwrap();
    }
    if let Some(t) = e.status_time {
        write!(status, " since {}", t.to_micros_z()).unwrap();
    }
    out.push_str(&status);
    out.push_str(".\n");

    if run.epochs == 0 && run.starts == 0 {
        out.push_str("- Training: no run recorded.\n");
    } else {
        let mut s = format!("- Training: {} epoch(s) run", run.epochs);
        if run.epochs > 0 {
            write!(s, " ({}", epoch_range(run.first_epoch, run.last_epoch)).unwrap();
            if let Some(t) = run.total_epochs {
                write!(s, " of {t} planned").unwrap();
            }
            s.push(')');
        } else if let Some(t) = run.total_epochs {
            write!(s, " of {t} planned").unwrap();
        }
        if run.starts > 1 {
            write!(s, " over {} starts", run.starts).unwrap();
        }
        if let Some(t) = run.started {
            write!(s, "; started {}", t.to_micros_z()).unwrap();
            if let Some(pid) = run.pid {
                write!(s, " (pid {pid}").unwrap();
                if let Some(h) = &run.host {
                    write!(s, " on {h}").unwrap();
                }
                s.push(')');
            }
        }
        if let Some(t) = run.last_epoch_time {
            write!(s, "; last epoch ended {}", t.to_micros_z()).unwrap();
        }
        if let Some(w) = run.wall_time_seconds {
            write!(s, "; wall time {} s", g(w)).unwrap();
        }
        out.push_str(&s);
        out.push_str(".\n");
    }

    // The run's outcome.
    if let Some(k) = &d.kill {
        let mut s = format!(
            "- Outcome: killed by {} with {} at {}",
            k.by,
            k.signal,
            k.time.to_micros_z()
        );
        if !k.reason.trim().is_empty() {
            write!(s, ": {}", collapse_ws(&k.reason)).unwrap();
        }
        if !k.alert_seqs.is_empty() {
            let seqs: Vec<String> = k.alert_seqs.iter().map(u64::to_string).collect();
            write!(s, " (alert seq {})", seqs.join(", ")).unwrap();
        }
        out.push_str(&s);
        out.push_str(".\n");
    } else if let Some(end) = &run.ended {
        let mut s = "- Outcome: training ended".to_owned();
        if let Some(ep) = end.epoch {
            write!(s, " at epoch {ep}").unwrap();
        }
        match (end.exit_code, end.signal) {
            (_, Some(sig)) => write!(s, ", killed by signal {sig}").unwrap(),
            (Some(0), None) => s.push_str(", exit code 0"),
            (Some(c), None) => write!(s, ", exit code {c} (a failure)").unwrap(),
            (None, None) => {}
        }
        write!(s, " at {}", end.time.to_micros_z()).unwrap();
        if !end.metrics.is_empty() {
            write!(s, "; final metrics {}", metrics_list(&end.metrics)).unwrap();
        }
        out.push_str(&s);
        out.push_str(".\n");
    } else if run.starts > 0 || run.epochs > 0 {
        out.push_str("- Outcome: no end recorded (still running, or ended without a record).\n");
    }

    for m in &run.metrics {
        out.push_str(&metric_line(m));
    }
    if let Some(lr) = &run.lr {
        let mut s = format!(
            "- Learning rate: {} at epoch {}, {} at epoch {}",
            g(lr.first.1),
            lr.first.0,
            g(lr.last.1),
            lr.last.0
        );
        if lr.min != lr.first.1.min(lr.last.1) || lr.max != lr.first.1.max(lr.last.1) {
            write!(s, " (range {} to {})", g(lr.min), g(lr.max)).unwrap();
        }
        out.push_str(&s);
        out.push_str(".\n");
    }
    let c = &run.checkpoints;
    if c.count > 0 {
        let kinds: Vec<String> = REASONS
            .iter()
            .zip(c.by_reason)
            .filter(|&(_, n)| n > 0)
            .map(|(r, n)| format!("{} ×{n}", reason_name(*r)))
            .collect();
        let mut s = format!("- Checkpoints: {} taken ({})", c.count, kinds.join(", "));
        let at = |ep: Option<u64>| ep.map(|e| format!(" at epoch {e}")).unwrap_or_default();
        if let Some(l) = &c.last {
            write!(s, "; latest {}{}", l.path, at(l.epoch)).unwrap();
        }
        if let Some(b) = &c.last_best {
            write!(s, "; best {}{}", b.path, at(b.epoch)).unwrap();
        }
        out.push_str(&s);
        out.push_str(".\n");
    } else if run.starts > 0 || run.epochs > 0 {
        out.push_str("- Checkpoints: none recorded.\n");
    }
    if let Some(r) = &e.result {
        let mut s = format!(
            "- Result: {}={}, tier {}",
            r.metric,
            g(r.value),
            r.tier.as_str()
        );
        if let Some(d) = r.delta {
            write!(s, ", {} vs parent", super::fmt::g_signed(d)).unwrap();
        }
        if !r.secondary.is_empty() {
            write!(s, "; secondary {}", metrics_list(&r.secondary)).unwrap();
        }
        if !r.shortfalls.is_empty() {
            write!(s, "; {} shortfall(s)", r.shortfalls.len()).unwrap();
        }
        out.push_str(&s);
        out.push_str(".\n");
        for sf in &r.shortfalls {
            out.push_str("  - Shortfall: ");
            out.push_str(&collapse_ws(sf));
            out.push('\n');
        }
    }
    for n in &d.notes_what_happened {
        note_block(out, n);
    }
}

fn alert_line(a: &AlertAgg) -> String {
    let mut s = format!(
        "- Checker rule `{}` ({}; {} alert(s), {}): {}",
        a.rule,
        severity(a.severity),
        a.count,
        epoch_range(a.first_epoch, a.last_epoch),
        collapse_ws(&a.message)
    );
    if !a.observed.is_empty() {
        write!(s, " Observed").unwrap();
        if let Some(ep) = a.epoch {
            write!(s, " at epoch {ep}").unwrap();
        }
        write!(s, ": {}.", metrics_list(&a.observed)).unwrap();
    }
    if !a.likely_cause.trim().is_empty() {
        write!(s, " Likely cause: {}", collapse_ws(&a.likely_cause)).unwrap();
    }
    s.push('\n');
    s
}

fn mechanism(out: &mut String, e: &Experiment) {
    let d = e.details();
    let start = out.len();
    for a in &d.alerts {
        out.push_str(&alert_line(a));
    }
    for n in &d.notes_mechanism {
        note_block(out, n);
    }
    if out.len() == start {
        writeln!(
            out,
            "_Nothing recorded yet: agents add it with `zolog note {} --section mechanism TEXT`; checker alerts appear here._",
            e.id
        )
        .unwrap();
    }
}

/// Checker advice, once per distinct action: (action, rule, epoch).
fn checker_advice(e: &Experiment) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for a in &e.details().alerts {
        let act = collapse_ws(&a.recommended_action);
        if act.is_empty() || seen.contains(&act) {
            continue;
        }
        let at = a
            .epoch
            .map(|e| format!(" at epoch {e}"))
            .unwrap_or_default();
        out.push(format!(
            "{act} (checker rule `{}`, {}{at})",
            a.rule,
            severity(a.severity)
        ));
        seen.push(act);
    }
    out
}

fn recommended(out: &mut String, e: &Experiment) {
    let start = out.len();
    for i in &e.next_ideas {
        bullet(out, &super::state::idea_string(i));
    }
    for n in &e.details().notes_next {
        bullet(out, n);
    }
    for a in checker_advice(e) {
        bullet(out, &a);
    }
    if out.len() == start {
        out.push_str("_None recorded yet._\n");
    }
}

/// The bytes of diagnosis.md.
pub fn render_diagnosis(e: &Experiment) -> String {
    let name = e.details().run.name.as_deref().unwrap_or("unnamed model");
    let mut out = format!("# Diagnosis: {} ({})\n\n## What happened\n", name, e.id);
    what_happened(&mut out, e);
    out.push_str("\n## Mechanism\n");
    mechanism(&mut out, e);
    out.push_str("\n## Recommended next experiment(s)\n");
    recommended(&mut out, e);
    if crate::plot::has_samples(e) {
        write!(
            out,
            "\n## Curves\n![Metrics over epochs: alerts, checkpoints, the kill point and non-finite values marked]({CURVES_FILE})\n"
        )
        .unwrap();
    }
    out
}

/// The plot diagnosis.md embeds, written beside it (see `zolog plot`).
pub const CURVES_FILE: &str = "curves.svg";

/// The bytes of next.md: `## label` sections for labelled ideas (idea first, its details after),
/// unlabelled ideas as bullets under the title, then notes and the checker's advice.
pub fn render_next(e: &Experiment) -> String {
    let mut out = String::from("# Next experiments\n");
    let unlabelled: Vec<_> = e.next_ideas.iter().filter(|i| i.label.is_none()).collect();
    if !unlabelled.is_empty() {
        out.push('\n');
        for i in unlabelled {
            bullet(&mut out, &i.idea);
            for d in &i.details {
                out.push_str("  ");
                bullet(&mut out, d);
            }
        }
    }
    for i in e.next_ideas.iter().filter(|i| i.label.is_some()) {
        let label = i.label.as_deref().unwrap_or_default();
        write!(out, "\n## {}\n", collapse_ws(label)).unwrap();
        bullet(&mut out, &i.idea);
        for d in &i.details {
            bullet(&mut out, d);
        }
    }
    let d = e.details();
    if !d.notes_next.is_empty() {
        out.push_str("\n## Notes\n");
        for n in &d.notes_next {
            bullet(&mut out, n);
        }
    }
    let advice = checker_advice(e);
    if !advice.is_empty() || d.kill.is_some() {
        out.push_str("\n## From the checker\n");
        for a in advice {
            bullet(&mut out, &a);
        }
        if let Some(k) = &d.kill {
            bullet(
                &mut out,
                &format!(
                    "The run was killed by {} ({}): {}",
                    k.by,
                    k.signal,
                    collapse_ws(&k.reason)
                ),
            );
        }
    }
    if out == "# Next experiments\n" {
        out.push_str("\n_No ideas recorded yet._\n");
    }
    out
}
