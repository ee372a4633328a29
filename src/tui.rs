//! The live terminal panel of a training run (ratatui over crossterm).
//!
//! [`Panel`] is a plain model fed by events: [`Panel::observe`] with the experiment's log events
//! (epochs, checkpoints, alerts, kills, status), [`Panel::note`] with what a watcher says, and
//! [`Panel::render`] draws it into a frame. Its memory is bounded (a window of recent values per
//! metric, the latest alerts). [`watch`] runs a [`Watcher`] on a background thread and shows the
//! panel until the user quits (q, Esc or Ctrl-C): quitting only stops watching, never the trainer.
//! `zolog run` can drive the same panel by feeding it the same events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Sparkline};

use crate::checker::config::MonitorConfig;
use crate::checker::watch::{WatchEnd, WatchEvent, WatchReport, Watcher, describe};
use crate::checker::{Role, classify};
use crate::error::{Error, Result};
use crate::event::{Event, ExpId, Payload, Severity, Timestamp};
use crate::project::fmt::g;
use crate::store::{Store, read_with};

/// Values kept per metric for its sparkline.
const WINDOW: usize = 512;
/// Alerts kept for the list.
const ALERTS: usize = 64;
/// The name the epochs' learning rate is shown under.
const LEARNING_RATE: &str = "learning_rate";

/// One metric's recent values, current and best.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    values: VecDeque<f64>,
    current: Option<(u64, f64)>,
    /// Lowest finite value for losses and gradient norms, highest for the learning rate (shown as
    /// its peak); with its epoch.
    best: Option<(u64, f64)>,
    lower_is_better: bool,
}

impl Series {
    fn new(name: &str, lower_is_better: bool) -> Series {
        Series {
            name: name.to_owned(),
            values: VecDeque::new(),
            current: None,
            best: None,
            lower_is_better,
        }
    }

    fn add(&mut self, epoch: u64, v: f64) {
        if self.values.len() == WINDOW {
            self.values.pop_front();
        }
        self.values.push_back(v);
        self.current = Some((epoch, v));
        if v.is_finite() {
            let better = match self.best {
                None => true,
                Some((_, b)) if self.lower_is_better => v < b,
                Some((_, b)) => v > b,
            };
            if better {
                self.best = Some((epoch, v));
            }
        }
    }

    /// Bars for the last `width` values: finite values scaled to 1..=100 over the window's
    /// finite range, non-finite values absent (drawn as a marker).
    fn bars(&self, width: usize) -> Vec<Option<u64>> {
        let skip = self.values.len().saturating_sub(width);
        let window: Vec<f64> = self.values.iter().skip(skip).copied().collect();
        let (lo, hi) = window
            .iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        window
            .iter()
            .map(|&v| {
                if !v.is_finite() {
                    return None;
                }
                let span = hi - lo;
                let t = if span > 0.0 && span.is_finite() {
                    (v - lo) / span
                } else {
                    0.5
                };
                Some(1 + (t * 99.0).round() as u64)
            })
            .collect()
    }
}

/// An alert as the panel lists it.
#[derive(Debug, Clone)]
struct AlertLine {
    seq: u64,
    severity: Severity,
    rule: String,
    epoch: Option<u64>,
    observed: String,
    message: String,
}

/// What the panel shows about one experiment's run.
#[derive(Debug, Clone)]
pub struct Panel {
    exp: ExpId,
    monitor: MonitorConfig,
    name: Option<String>,
    status: String,
    total_epochs: Option<u64>,
    epochs: u64,
    last_epoch: Option<u64>,
    started: Option<Timestamp>,
    /// Time and count of epochs at the first epoch of the current start (for the pace).
    pace_from: Option<(Timestamp, u64)>,
    last_epoch_time: Option<Timestamp>,
    series: Vec<Series>,
    lr: Option<Series>,
    checkpoints: u64,
    last_checkpoint: Option<String>,
    alerts: VecDeque<AlertLine>,
    alerts_total: u64,
    killed: Option<String>,
    ended: Option<String>,
    notes: VecDeque<String>,
    kill_enabled: bool,
    watch_ended: Option<String>,
}

fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Info => Style::new().fg(Color::Cyan),
        Severity::Warn => Style::new().fg(Color::Yellow),
        Severity::Stop => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn severity_tag(s: Severity) -> &'static str {
    match s {
        Severity::Info => "INFO",
        Severity::Warn => "WARN",
        Severity::Stop => "STOP",
    }
}

/// `1h02m`, `3m20s`, `12s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Panel {
    /// A panel for `exp`; `monitor` chooses which metrics get a sparkline (as the checker does).
    pub fn new(exp: ExpId, monitor: MonitorConfig) -> Panel {
        Panel {
            exp,
            monitor,
            name: None,
            status: "running".into(),
            total_epochs: None,
            epochs: 0,
            last_epoch: None,
            started: None,
            pace_from: None,
            last_epoch_time: None,
            series: Vec::new(),
            lr: None,
            checkpoints: 0,
            last_checkpoint: None,
            alerts: VecDeque::new(),
            alerts_total: 0,
            killed: None,
            ended: None,
            notes: VecDeque::new(),
            kill_enabled: false,
            watch_ended: None,
        }
    }

    /// Say in the footer that the watcher stops the trainer on a stop alert.
    pub fn kill_enabled(mut self, on: bool) -> Panel {
        self.kill_enabled = on;
        self
    }

    /// Fold one log event; true if it concerned this experiment (the panel changed).
    pub fn observe(&mut self, ev: &Event) -> bool {
        if ev.payload.experiment_id() != Some(&self.exp) {
            return false;
        }
        match &ev.payload {
            Payload::TrainingStarted(t) => {
                if t.experiment_name.is_some() {
                    self.name = t.experiment_name.clone();
                }
                if t.total_epochs.is_some() {
                    self.total_epochs = t.total_epochs;
                }
                self.started = Some(ev.time);
                self.pace_from = None;
                self.ended = None;
            }
            Payload::EpochEnded(e) => {
                self.epochs += 1;
                self.last_epoch = Some(e.epoch);
                self.last_epoch_time = Some(ev.time);
                if self.pace_from.is_none() {
                    // The pace counts from the start when known, else from this first epoch.
                    self.pace_from = Some(match self.started {
                        Some(t) => (t, self.epochs - 1),
                        None => (ev.time, self.epochs),
                    });
                }
                for (name, v) in e.metrics.iter() {
                    let role = classify(&self.monitor, name);
                    if role == Role::Other {
                        continue;
                    }
                    let i = match self.series.iter().position(|s| s.name == *name) {
                        Some(i) => i,
                        None => {
                            let lower = role != Role::LearningRate;
                            self.series.push(Series::new(name, lower));
                            self.series.len() - 1
                        }
                    };
                    self.series[i].add(e.epoch, v);
                }
                if let Some(lr) = e.learning_rate {
                    self.lr
                        .get_or_insert_with(|| Series::new(LEARNING_RATE, false))
                        .add(e.epoch, lr);
                }
            }
            Payload::CheckpointSaved(c) => {
                self.checkpoints += 1;
                let at = c
                    .epoch
                    .map(|e| format!(" at epoch {e}"))
                    .unwrap_or_default();
                self.last_checkpoint = Some(format!(
                    "{}{at} ({})",
                    c.path,
                    crate::project::state::reason_name(c.reason)
                ));
            }
            Payload::AlertRaised(a) => {
                self.alerts_total += 1;
                if self.alerts.len() == ALERTS {
                    self.alerts.pop_front();
                }
                self.alerts.push_back(AlertLine {
                    seq: ev.seq,
                    severity: a.severity,
                    rule: a.rule.clone(),
                    epoch: a.epoch,
                    observed: a
                        .observed
                        .iter()
                        .map(|(k, v)| format!("{k}={}", g(v)))
                        .collect::<Vec<_>>()
                        .join(" "),
                    message: a.message.clone(),
                });
            }
            Payload::RunKilled(k) => {
                self.killed = Some(format!(
                    "killed by {} with {}: {}",
                    k.by, k.signal, k.reason
                ));
            }
            Payload::TrainingEnded(t) => {
                let how = match (t.exit_code, t.signal) {
                    (_, Some(s)) => format!("ended by signal {s}"),
                    (Some(c), None) => format!("ended with exit code {c}"),
                    (None, None) => "ended".to_owned(),
                };
                self.ended = Some(how);
            }
            Payload::ExperimentStatusChanged(s) => self.status = s.status.as_str().to_owned(),
            Payload::ResultRecorded(_) => self.status = "complete".into(),
            _ => {}
        }
        true
    }

    /// A line of what the watcher did (shown in the footer, latest first).
    pub fn note(&mut self, line: String) {
        if self.notes.len() == 4 {
            self.notes.pop_front();
        }
        self.notes.push_back(line);
    }

    /// The watch is over (the run ended, or --once).
    pub fn watch_ended(&mut self, why: String) {
        self.watch_ended = Some(why);
    }

    /// Seconds per epoch, from event times: the span from the start (or first epoch) to the last
    /// epoch, over the epochs in it.
    pub fn seconds_per_epoch(&self) -> Option<f64> {
        let (t0, n0) = self.pace_from?;
        let t1 = self.last_epoch_time?;
        let n = self.epochs.checked_sub(n0).filter(|n| *n > 0)?;
        let secs = (t1.0 - t0.0) as f64 / 1e9;
        (secs > 0.0).then(|| secs / n as f64)
    }

    /// Epochs still to run, when the planned total is known.
    fn remaining(&self) -> Option<u64> {
        let total = self.total_epochs?;
        let done = self.last_epoch.map_or(0, |e| e + 1);
        Some(total.saturating_sub(done))
    }

    /// The estimated seconds left after the last epoch: the remaining epochs at the pace of the
    /// event times (never the clock, so a replay shows the same estimate).
    pub fn eta(&self) -> Option<f64> {
        Some(self.seconds_per_epoch()? * self.remaining()? as f64)
    }

    fn progress_line(&self, now: Timestamp) -> (String, Option<f64>) {
        let mut s = match (self.last_epoch, self.total_epochs) {
            (Some(e), Some(t)) => format!("epoch {e} of {t}"),
            (Some(e), None) => format!("epoch {e}"),
            (None, Some(t)) => format!("no epoch yet of {t}"),
            (None, None) => "no epoch yet".to_owned(),
        };
        s.push_str(&format!(" · {} epoch(s) run", self.epochs));
        if let Some(per) = self.seconds_per_epoch() {
            s.push_str(&format!(" · {}/epoch", human_duration(per)));
        }
        let finished = self.ended.is_some() || self.killed.is_some();
        if !finished {
            if let Some(eta) = self.eta() {
                s.push_str(&format!(" · ETA {}", human_duration(eta)));
            }
            if let Some(t) = self.last_epoch_time {
                let ago = (now.0 - t.0) as f64 / 1e9;
                s.push_str(&format!(" · last epoch {} ago", human_duration(ago)));
            }
        }
        let ratio = self.total_epochs.filter(|t| *t > 0).map(|t| {
            let done = self.last_epoch.map_or(0, |e| e + 1);
            (done as f64 / t as f64).clamp(0.0, 1.0)
        });
        (s, ratio)
    }

    /// Draw the panel over the whole frame; `now` only counts the ETA down.
    pub fn render(&self, frame: &mut Frame<'_>, now: Timestamp) {
        let area = frame.area();
        let title = format!(
            " zolog · {} ({}) · {} ",
            self.exp,
            self.name.as_deref().unwrap_or("unnamed model"),
            self.status
        );
        let outer = Block::default().borders(Borders::ALL).title(Span::styled(
            title,
            Style::new().add_modifier(Modifier::BOLD),
        ));
        let inner = outer.inner(area);
        frame.render_widget(outer, area);

        let mut all: Vec<&Series> = self.series.iter().collect();
        if let Some(lr) = &self.lr
            && !self.series.iter().any(|s| s.name == LEARNING_RATE)
        {
            all.push(lr);
        }
        let rows = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(2 * all.len().max(1) as u16),
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(2),
        ])
        .split(inner);

        // Progress and ETA.
        let (progress, ratio) = self.progress_line(now);
        match ratio {
            Some(r) => frame.render_widget(
                Gauge::default()
                    .gauge_style(Style::new().fg(Color::Blue).bg(Color::Black))
                    .ratio(r)
                    .label(progress),
                rows[0],
            ),
            None => frame.render_widget(Paragraph::new(progress), rows[0]),
        }

        // One sparkline per monitored metric.
        if all.is_empty() {
            frame.render_widget(
                Paragraph::new("no monitored metric yet (losses, grad_norm, learning rate)"),
                rows[1],
            );
        }
        let metric_rows = Layout::vertical(vec![Constraint::Length(2); all.len()]).split(rows[1]);
        for (s, r) in all.iter().zip(metric_rows.iter()) {
            let cols = Layout::horizontal([Constraint::Length(34), Constraint::Min(4)]).split(*r);
            let cur = match s.current {
                Some((e, v)) => format!("{} @{e}", g(v)),
                None => "—".into(),
            };
            let best = match s.best {
                Some((e, v)) => format!("{} @{e}", g(v)),
                None => "—".into(),
            };
            let best_word = if s.lower_is_better { "best" } else { "peak" };
            let cur_style = match s.current {
                Some((_, v)) if !v.is_finite() => Style::new().fg(Color::Magenta),
                _ => Style::new(),
            };
            let text = vec![
                Line::from(Span::styled(
                    s.name.clone(),
                    Style::new().add_modifier(Modifier::BOLD),
                )),
                Line::from(vec![
                    Span::raw("now "),
                    Span::styled(cur, cur_style),
                    Span::raw(format!("  {best_word} {best}")),
                ]),
            ];
            frame.render_widget(Paragraph::new(text), cols[0]);
            let bars = s.bars(cols[1].width as usize);
            frame.render_widget(
                Sparkline::default()
                    .data(bars)
                    .max(100)
                    .style(Style::new().fg(Color::Green))
                    .absent_value_symbol("×")
                    .absent_value_style(Style::new().fg(Color::Magenta)),
                cols[1],
            );
        }

        // Checkpoints, and how the run ended.
        let mut ck = format!("checkpoints: {} taken", self.checkpoints);
        if let Some(l) = &self.last_checkpoint {
            ck.push_str(&format!(" · latest {l}"));
        }
        let mut outcome = Vec::new();
        if let Some(k) = &self.killed {
            outcome.push(Span::styled(
                k.clone(),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        } else if let Some(e) = &self.ended {
            outcome.push(Span::raw(format!("training {e}")));
        }
        frame.render_widget(
            Paragraph::new(vec![Line::from(ck), Line::from(outcome)]),
            rows[2],
        );

        // Alerts, newest last.
        let block = Block::default()
            .borders(Borders::TOP)
            .title(format!(" alerts ({}) ", self.alerts_total));
        let list_area = block.inner(rows[3]);
        frame.render_widget(block, rows[3]);
        let fit = list_area.height as usize;
        let lines: Vec<Line<'_>> = self
            .alerts
            .iter()
            .skip(self.alerts.len().saturating_sub(fit))
            .map(|a| {
                let st = severity_style(a.severity);
                let at = a.epoch.map(|e| format!("epoch {e}")).unwrap_or_default();
                Line::from(vec![
                    Span::styled(format!("[{}] ", severity_tag(a.severity)), st),
                    Span::styled(a.rule.clone(), st),
                    Span::raw(format!("  {at}  {}  ", a.observed)),
                    Span::styled(
                        format!("{} (seq {})", a.message, a.seq),
                        Style::new().fg(Color::Gray),
                    ),
                ])
            })
            .collect();
        if lines.is_empty() {
            frame.render_widget(Paragraph::new("none"), list_area);
        } else {
            frame.render_widget(Paragraph::new(lines), list_area);
        }

        // What the watcher said, and the keys.
        let last_note = match (&self.watch_ended, self.notes.back()) {
            (Some(w), _) => w.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        };
        let keys = if self.kill_enabled {
            "q quit (stops watching only; while watching, --kill stops the trainer on a stop alert)"
        } else {
            "q quit (stops watching only; the trainer keeps running)"
        };
        frame.render_widget(
            Paragraph::new(vec![
                Line::from(Span::styled(last_note, Style::new().fg(Color::Gray))),
                Line::from(Span::styled(keys, Style::new().add_modifier(Modifier::DIM))),
            ]),
            rows[4],
        );
    }
}

/// What the watcher thread tells the panel.
enum Msg {
    Note(String),
    Done(Result<WatchReport>),
}

/// Restores the terminal when dropped, on every way out (errors and unwinding; ratatui's panic
/// hook restores it before a panic message is printed).
struct TerminalGuard {
    terminal: ratatui::DefaultTerminal,
}

impl TerminalGuard {
    fn new() -> Result<TerminalGuard> {
        let terminal = ratatui::try_init().map_err(|e| Error::io("set up", "the terminal", e))?;
        Ok(TerminalGuard { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Run `watcher` on a background thread and show its experiment's panel on this terminal until
/// the user quits (q, Esc, Ctrl-C) or a signal stops the watch. Quitting stops the watcher
/// (never the trainer); the watcher's report is returned. When the run ends, the panel stays up,
/// saying so, until the user quits.
pub fn watch(store: &Store, panel: Panel, watcher: Watcher) -> Result<WatchReport> {
    let mut panel = panel;
    let (tx, rx) = mpsc::channel::<Msg>();
    let notes = tx.clone();
    let watcher = watcher.on_event(move |ev: WatchEvent<'_>| {
        if let Some(line) = describe(&ev) {
            let _ = notes.send(Msg::Note(line));
        }
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop_w = stop.clone();
    let thread = std::thread::Builder::new()
        .name("zolog-watch".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("start", "tokio runtime", e))
                .and_then(|rt| {
                    rt.block_on(watcher.run(async move {
                        tokio::select! {
                            _ = stop_w.notified() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                    }))
                });
            let _ = tx.send(Msg::Done(r));
        })
        .map_err(|e| Error::io("start", "the watch thread", e))?;

    let shown = show(store, &mut panel, &rx);
    stop.notify_one();
    let joined = thread.join();
    let shown = shown?;
    if joined.is_err() {
        return Err(Error::Invalid("the watch thread panicked".into()));
    }
    // The report: received while the panel was up, or sent as the thread ended.
    let report = shown.or_else(|| {
        rx.try_iter().find_map(|m| match m {
            Msg::Done(r) => Some(r),
            Msg::Note(_) => None,
        })
    });
    report.unwrap_or_else(|| {
        Err(Error::Invalid(
            "the watcher stopped without a report".into(),
        ))
    })
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// The panel loop: read what is new in the log, take the watcher's notes, redraw when something
/// changed (or every second, for the ETA), and wait for keys in between.
fn show(
    store: &Store,
    panel: &mut Panel,
    rx: &mpsc::Receiver<Msg>,
) -> Result<Option<Result<WatchReport>>> {
    let mut term = TerminalGuard::new()?;
    let mut reader = store.log().reader(1);
    let mut report: Option<Result<WatchReport>> = None;
    let mut dirty = true;
    let mut last_draw = Instant::now();
    loop {
        read_with(&mut reader, &mut |ev: Event| {
            if panel.observe(&ev) {
                dirty = true;
            }
            Ok(())
        })?;
        while let Ok(m) = rx.try_recv() {
            dirty = true;
            match m {
                Msg::Note(line) => panel.note(line),
                Msg::Done(r) => {
                    let why = match &r {
                        // Stopped by a signal, or failed (unknown experiment, bad log): leave
                        // the panel; the error is reported once the terminal is restored.
                        Ok(rep) if rep.end == WatchEnd::Shutdown => return Ok(Some(r)),
                        Err(_) => return Ok(Some(r)),
                        Ok(rep) if rep.end == WatchEnd::RunEnded => {
                            "the run ended: watch over; press q to quit".to_owned()
                        }
                        Ok(_) => "watch over; press q to quit".to_owned(),
                    };
                    panel.watch_ended(why);
                    report = Some(r);
                }
            }
        }
        if dirty || last_draw.elapsed() >= Duration::from_secs(1) {
            let t = now();
            term.terminal
                .draw(|f| panel.render(f, t))
                .map_err(|e| Error::io("draw", "the terminal", e))?;
            dirty = false;
            last_draw = Instant::now();
        }
        if event::poll(Duration::from_millis(100))
            .map_err(|e| Error::io("read", "the terminal", e))?
        {
            match event::read().map_err(|e| Error::io("read", "the terminal", e))? {
                TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(report);
                    }
                }
                TermEvent::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlertRaised, EpochEnded, Metrics, Source, SourceKind, TrainingStarted};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn ev(seq: u64, secs: i64, payload: Payload) -> Event {
        Event {
            seq,
            time: Timestamp(secs * 1_000_000_000),
            appended: None,
            source: Source {
                kind: SourceKind::Trainer,
                pid: None,
                host: None,
            },
            payload,
        }
    }

    fn panel() -> Panel {
        let exp = ExpId::parse("exp-001").unwrap();
        let mut p = Panel::new(exp.clone(), MonitorConfig::default());
        p.observe(&ev(
            1,
            0,
            Payload::TrainingStarted(TrainingStarted {
                experiment_id: exp.clone(),
                experiment_name: Some("m".into()),
                pid: None,
                host: None,
                total_epochs: Some(10),
                config: Default::default(),
            }),
        ));
        for e in 0..4u64 {
            let loss = if e == 2 {
                f64::NAN
            } else {
                1.0 / (e as f64 + 1.0)
            };
            p.observe(&ev(
                2 + e,
                10 * (e as i64 + 1),
                Payload::EpochEnded(EpochEnded {
                    experiment_id: exp.clone(),
                    epoch: e,
                    step: None,
                    metrics: Metrics(vec![("train_loss".into(), loss), ("acc".into(), 0.5)]),
                    learning_rate: Some(0.1),
                    wall_time_seconds: None,
                    gpu_memory_mb: None,
                }),
            ));
        }
        p.observe(&ev(
            9,
            45,
            Payload::AlertRaised(AlertRaised {
                experiment_id: exp,
                rule: "nan_inf".into(),
                severity: Severity::Stop,
                epoch: Some(2),
                observed: Metrics(vec![("train_loss".into(), f64::NAN)]),
                thresholds: Metrics::new(),
                evidence_seqs: vec![],
                config_seq: None,
                message: "NaN".into(),
                likely_cause: String::new(),
                recommended_action: String::new(),
            }),
        ));
        p
    }

    #[test]
    fn eta_comes_from_event_times_and_only_monitored_metrics_get_a_sparkline() {
        let p = panel();
        // 4 epochs in 40 s from the start; 6 epochs left.
        assert_eq!(p.seconds_per_epoch(), Some(10.0));
        assert_eq!(p.eta(), Some(60.0));
        let names: Vec<&str> = p.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train_loss"]);
        assert_eq!(p.series[0].best, Some((3, 0.25)));
        assert_eq!(p.series[0].bars(10)[2], None, "NaN is an absent bar");
        assert_eq!(human_duration(3725.0), "1h02m");
        assert_eq!(human_duration(200.0), "3m20s");
    }

    #[test]
    fn the_panel_draws_at_any_size_without_panicking() {
        let p = panel();
        for (w, h) in [(1, 1), (10, 3), (40, 12), (80, 24), (200, 60)] {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| p.render(f, Timestamp(50_000_000_000))).unwrap();
        }
        let mut t = Terminal::new(TestBackend::new(100, 24)).unwrap();
        t.draw(|f| p.render(f, Timestamp(50_000_000_000))).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(screen.contains("epoch 3 of 10"), "{screen}");
        assert!(screen.contains("ETA 1m00s"), "{screen}");
        assert!(
            screen.contains("[STOP]") && screen.contains("nan_inf"),
            "{screen}"
        );
        assert!(screen.contains("×"), "{screen}");
    }
}
