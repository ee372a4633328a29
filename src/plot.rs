//! `zolog plot`: an SVG of an experiment's metrics over epochs, drawn from the projection state
//! (each metric's bounded [`Curve`]), with alert markers, checkpoint ticks, the kill point and
//! non-finite values shown as gaps with a marker.
//!
//! Drawn with plotters' SVG backend only: text is emitted as SVG `<text>` elements, laid out
//! with plotters' built-in size estimate, so no system font (nor fontconfig) is read. The output
//! is a pure function of the state: no timestamps, floats formatted as `%g`, so the same log
//! gives the same bytes (diagnosis.md embeds this plot as `curves.svg`).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::checker::config::MonitorConfig;
use crate::checker::{Role, classify};
use crate::error::{Error, Result};
use crate::event::{CheckpointReason, Severity};
use crate::project::Experiment;
use crate::project::curve::{Curve, ExpCurves};
use crate::project::fmt::g;

/// The name the learning rate of `EpochEnded.learning_rate` is plotted under.
pub const LEARNING_RATE: &str = "learning_rate";

const WIDTH: u32 = 900;
const PANEL: u32 = 230;
const TITLE: u32 = 36;
const FOOTER_LINE: u32 = 16;
const FONT: &str = "sans-serif";

const SERIES: RGBColor = RGBColor(0x1f, 0x4e, 0x9c);
const GAP: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const CHECKPOINT: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const KILL: RGBColor = RGBColor(0, 0, 0);
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);

/// The colour of an alert marker of this severity.
pub fn severity_color(s: Severity) -> RGBColor {
    match s {
        Severity::Info => RGBColor(0x17, 0xbe, 0xcf),
        Severity::Warn => RGBColor(0xff, 0x7f, 0x0e),
        Severity::Stop => RGBColor(0xd6, 0x27, 0x28),
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warn => "warn",
        Severity::Stop => "stop",
    }
}

/// The series plotted by default: the metrics the checker monitors (losses, gradient norms,
/// learning rates, by the default monitor configuration) in the order they first appeared, then
/// the learning rate; every metric when none of them is monitored.
pub fn default_metrics(e: &Experiment) -> Vec<String> {
    let run = &e.details().run;
    let monitor = MonitorConfig::default();
    let mut names: Vec<String> = run
        .metrics
        .iter()
        .filter(|m| classify(&monitor, &m.name) != Role::Other)
        .map(|m| m.name.clone())
        .collect();
    if run.lr.is_some() && !names.iter().any(|n| n == LEARNING_RATE) {
        names.push(LEARNING_RATE.to_owned());
    }
    if names.is_empty() {
        names = run.metrics.iter().map(|m| m.name.clone()).collect();
    }
    names
}

/// Every name `--metric` accepts for this experiment.
pub fn available(e: &Experiment) -> Vec<String> {
    let run = &e.details().run;
    let mut names: Vec<String> = run.metrics.iter().map(|m| m.name.clone()).collect();
    if run.lr.is_some() && !names.iter().any(|n| n == LEARNING_RATE) {
        names.push(LEARNING_RATE.to_owned());
    }
    names
}

fn curve<'a>(curves: &'a ExpCurves, name: &str) -> Option<&'a Curve> {
    if let Some(c) = curves.metric(name) {
        return Some(c);
    }
    (name == LEARNING_RATE)
        .then_some(curves.lr.as_ref())
        .flatten()
}

/// Whether the experiment has epoch samples to plot.
pub fn has_samples(e: &Experiment) -> bool {
    e.details().run.epochs > 0
}

fn nonfinite_label(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("drawing the plot: {e}"))
}

/// The SVG of `metrics` (every one must exist: see [`available`]).
pub fn render(e: &Experiment, metrics: &[String]) -> Result<String> {
    let d = e.details();
    let run = &d.run;
    let curves = e.curves().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: its curves are not loaded (project::current_with_curves loads them)",
            e.id
        ))
    })?;
    let mut series = Vec::new();
    for name in metrics {
        match curve(curves, name) {
            Some(c) => series.push((name.as_str(), c)),
            None => {
                return Err(Error::Invalid(format!(
                    "{} has no metric {name:?}; it has: {}",
                    e.id,
                    available(e).join(", ")
                )));
            }
        }
    }
    if series.is_empty() {
        return Err(Error::Invalid(format!(
            "{} has no epoch samples to plot",
            e.id
        )));
    }

    // Markers shown on every panel.
    let mut alerts: Vec<(u64, Severity, &str)> = d
        .alert_marks
        .items
        .iter()
        .map(|m| {
            let rule = d
                .alerts
                .get(m.rule as usize)
                .map_or("?", |a| a.rule.as_str());
            (m.epoch, m.severity, rule)
        })
        .collect();
    // The per-rule aggregates always contribute their first, most severe and last alert, even
    // when thinning dropped them.
    for a in &d.alerts {
        for (ep, sev) in [
            (a.first_epoch, None),
            (a.epoch, Some(a.severity)),
            (a.last_epoch, None),
        ] {
            if let Some(ep) = ep
                && !alerts.iter().any(|(e, _, r)| *e == ep && *r == a.rule)
            {
                alerts.push((ep, sev.unwrap_or(a.severity), a.rule.as_str()));
            }
        }
    }
    alerts.sort_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
    alerts.dedup_by(|a, b| a.0 == b.0 && a.2 == b.2);
    let ticks: Vec<(u64, CheckpointReason)> = run.checkpoints.ticks.items.clone();
    let kill = d.kill.as_ref().and_then(|k| k.epoch);

    // The x axis: every epoch shown anywhere.
    let epochs = series
        .iter()
        .flat_map(|(_, c)| {
            c.buckets.iter().flat_map(|b| {
                [
                    Some(b.first),
                    Some(b.last),
                    b.min.map(|m| m.0),
                    b.max.map(|m| m.0),
                ]
                .into_iter()
                .chain([b.nonfinite.map(|m| m.0)])
                .flatten()
            })
        })
        .chain(alerts.iter().map(|a| a.0))
        .chain(ticks.iter().map(|t| t.0))
        .chain(kill);
    let (mut x0, mut x1) = epochs.fold((u64::MAX, 0u64), |(lo, hi), e| (lo.min(e), hi.max(e)));
    if x0 > x1 {
        (x0, x1) = (0, 1);
    }
    // Room on the right for the markers of the last epoch.
    let (mut x0, mut x1) = (x0 as f64, x1 as f64 + ((x1 - x0) as f64 * 0.03).max(0.5));
    if x1 <= x0 {
        // Epochs so large that f64 cannot tell them apart.
        let pad = (x0.abs() * 1e-6).max(1.0);
        (x0, x1) = (x0 - pad, x1 + pad);
    }

    // The footer: what the markers mean, and the alerts.
    let mut footer = vec![
        "markers: ▲ green = checkpoint, | coloured = alert (info cyan, warn orange, stop red), | black = kill, × purple = non-finite value (gap)".to_owned(),
    ];
    let mut rules: Vec<(&str, Severity, Vec<u64>)> = Vec::new();
    for (ep, sev, rule) in &alerts {
        match rules.iter_mut().find(|r| r.0 == *rule) {
            Some(r) => {
                r.1 = r.1.max(*sev);
                r.2.push(*ep);
            }
            None => rules.push((rule, *sev, vec![*ep])),
        }
    }
    for (rule, sev, eps) in rules.iter().take(6) {
        let shown: Vec<String> = eps.iter().take(8).map(u64::to_string).collect();
        let more = if eps.len() > 8 { ", …" } else { "" };
        footer.push(format!(
            "alert {rule} ({}) at epoch {}{more}",
            severity_name(*sev),
            shown.join(", ")
        ));
    }
    for (name, c) in &series {
        let gaps: Vec<String> = c
            .nonfinite()
            .take(8)
            .map(|(ep, v)| format!("{} at epoch {ep}", nonfinite_label(v)))
            .collect();
        if !gaps.is_empty() {
            let more = if c.nonfinite().nth(8).is_some() {
                ", …"
            } else {
                ""
            };
            footer.push(format!("non-finite {name}: {}{more}", gaps.join(", ")));
        }
    }
    if let Some(k) = kill {
        footer.push(format!("killed after epoch {k}"));
    }

    let n = series.len() as u32;
    let footer_h = FOOTER_LINE * footer.len() as u32 + 8;
    let height = TITLE + PANEL * n + footer_h;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (title, rest) = root.split_vertically(TITLE);
        let (body, foot) = rest.split_vertically(PANEL * n);
        let name = run.name.as_deref().unwrap_or("unnamed model");
        title
            .draw(&Text::new(
                format!("{} ({}): metrics over epochs", e.id, name),
                (12, 10),
                (FONT, 18).into_font().color(&BLACK),
            ))
            .map_err(plot_err)?;
        for (i, line) in footer.iter().enumerate() {
            foot.draw(&Text::new(
                line.clone(),
                (12, 4 + FOOTER_LINE as i32 * i as i32),
                (FONT, 12).into_font().color(&BLACK),
            ))
            .map_err(plot_err)?;
        }
        let panels = body.split_evenly((n as usize, 1));
        for (k, (area, (name, c))) in panels.iter().zip(&series).enumerate() {
            panel(
                area,
                name,
                c,
                (x0, x1),
                &Marks {
                    alerts: &alerts,
                    ticks: &ticks,
                    kill,
                    label_alerts: k == 0,
                },
            )?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

struct Marks<'a> {
    alerts: &'a [(u64, Severity, &'a str)],
    ticks: &'a [(u64, CheckpointReason)],
    kill: Option<u64>,
    label_alerts: bool,
}

/// The y range: finite values only, padded; a flat or empty series gets a unit-ish range.
fn y_range(c: &Curve) -> (f64, f64) {
    let (lo, hi) = c
        .points()
        .iter()
        .filter_map(|p| p.1)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    // Keep the span finite (values beyond are clipped at the edge).
    const LIMIT: f64 = f64::MAX / 4.0;
    let (lo, hi) = (lo.max(-LIMIT), hi.min(LIMIT));
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    let (a, b) = (lo - pad, hi + pad);
    if b > a { (a, b) } else { (lo - 1.0, hi + 1.0) }
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    name: &str,
    c: &Curve,
    (x0, x1): (f64, f64),
    marks: &Marks<'_>,
) -> Result<()> {
    let (y0, y1) = y_range(c);
    let mut chart = ChartBuilder::on(area)
        .caption(name, (FONT, 15))
        .margin(10)
        .x_label_area_size(26)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    let x_fmt = |x: &f64| format!("{}", x.round() as i64);
    let y_fmt = |y: &f64| g(*y);
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(5)
        .x_desc("epoch")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        // None are drawn (transparent): do not compute them either.
        .max_light_lines(0)
        .label_style((FONT, 11))
        .draw()
        .map_err(plot_err)?;

    // The line, broken at every non-finite sample.
    let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for (e, v) in c.points() {
        match v {
            Some(v) => segments
                .last_mut()
                .expect("never empty")
                .push((e as f64, v)),
            None => {
                if !segments.last().expect("never empty").is_empty() {
                    segments.push(Vec::new());
                }
            }
        }
    }
    for seg in segments.into_iter().filter(|s| !s.is_empty()) {
        if seg.len() == 1 {
            chart
                .draw_series(std::iter::once(Circle::new(seg[0], 2, SERIES.filled())))
                .map_err(plot_err)?;
        } else {
            chart
                .draw_series(LineSeries::new(seg, SERIES.stroke_width(2)))
                .map_err(plot_err)?;
        }
    }

    // Alerts: a vertical line in the severity's colour (labelled on the first panel).
    for (ep, sev, rule) in marks.alerts {
        let col = severity_color(*sev);
        let x = *ep as f64;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, y0), (x, y1)],
                col.stroke_width(2),
            )))
            .map_err(plot_err)?;
        if marks.label_alerts {
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{rule} ({})", severity_name(*sev)),
                    (x, y1),
                    (FONT, 11).into_font().color(&col),
                )))
                .map_err(plot_err)?;
        }
    }
    // The kill point.
    if let Some(k) = marks.kill {
        let x = k as f64;
        chart
            .draw_series([PathElement::new(
                vec![(x, y0), (x, y1)],
                KILL.stroke_width(3),
            )])
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                "killed".to_owned(),
                (x, y0 + (y1 - y0) * 0.5),
                (FONT, 11)
                    .into_font()
                    .color(&KILL)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            )))
            .map_err(plot_err)?;
    }
    // Checkpoints: ticks on the x axis.
    chart
        .draw_series(
            marks
                .ticks
                .iter()
                .map(|(ep, _)| TriangleMarker::new((*ep as f64, y0), 5, CHECKPOINT.filled())),
        )
        .map_err(plot_err)?;
    // Non-finite values: a cross at the top (NaN, +Inf) or bottom (-Inf) edge, labelled.
    for (ep, v) in c.nonfinite() {
        let label = nonfinite_label(v);
        let y = if v.is_nan() || v > 0.0 { y1 } else { y0 };
        let x = ep as f64;
        chart
            .draw_series(std::iter::once(Cross::new((x, y), 6, GAP.stroke_width(2))))
            .map_err(plot_err)?;
        let ty = if y == y1 {
            y1 - (y1 - y0) * 0.12
        } else {
            y0 + (y1 - y0) * 0.12
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label.to_owned(),
                (x, ty),
                (FONT, 11).into_font().color(&GAP),
            )))
            .map_err(plot_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        EpochEnded, Event, ExpId, ExperimentMinted, Metrics, Payload, Source, SourceKind, Timestamp,
    };
    use crate::project::{State, apply};

    fn state(samples: &[(u64, f64)]) -> State {
        let id = ExpId::parse("exp-001").unwrap();
        let mut s = State::new();
        let ev = |seq: u64, payload| Event {
            seq,
            time: Timestamp(seq as i64),
            appended: None,
            source: Source {
                kind: SourceKind::Trainer,
                pid: None,
                host: None,
            },
            payload,
        };
        apply(
            &mut s,
            &ev(
                1,
                Payload::ExperimentMinted(ExperimentMinted {
                    experiment_id: id.clone(),
                    parent_id: None,
                    phase: "p".into(),
                    hypothesis: String::new(),
                    rationale: String::new(),
                }),
            ),
        );
        for (i, &(epoch, v)) in samples.iter().enumerate() {
            apply(
                &mut s,
                &ev(
                    2 + i as u64,
                    Payload::EpochEnded(EpochEnded {
                        experiment_id: id.clone(),
                        epoch,
                        step: None,
                        metrics: Metrics(vec![("loss".into(), v)]),
                        learning_rate: None,
                        wall_time_seconds: None,
                        gpu_memory_mb: None,
                    }),
                ),
            );
        }
        s
    }

    fn draws(samples: &[(u64, f64)]) -> String {
        let s = state(samples);
        let e = &s.experiments[0];
        let svg = render(e, &default_metrics(e)).expect("drawn");
        roxmltree::Document::parse(&svg).expect("valid XML");
        assert_eq!(
            svg,
            render(e, &default_metrics(e)).unwrap(),
            "deterministic"
        );
        svg
    }

    #[test]
    fn extreme_and_degenerate_series_still_draw() {
        draws(&[(0, 1.0)]);
        draws(&[(0, f64::NAN)]);
        draws(&[(0, f64::NAN), (1, f64::INFINITY), (2, f64::NEG_INFINITY)]);
        draws(&[(0, 0.0), (1, 0.0)]);
        draws(&[(0, f64::MAX), (1, -f64::MAX), (2, 5e-324)]);
        draws(&[(0, 1e-300), (1, 2e-300)]);
        draws(&[(u64::MAX - 1, 1.0), (u64::MAX, 2.0)]);
        draws(&[(5, 1.0), (3, 2.0), (5, 0.5)]);
        let many: Vec<(u64, f64)> = (0..5000).map(|e| (e, (e as f64).sin())).collect();
        let svg = draws(&many);
        assert!(svg.len() < 200_000, "a bounded plot: {} bytes", svg.len());
    }
}
