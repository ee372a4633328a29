//! `zolog exp mint|result|status|next|list|show` and `zolog note`: argument structs that turn into
//! calls of [`crate::exp`], and the printing of what a script can use.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::{Ctx, out, stdout_error};
use crate::error::{Error, Result};
use crate::event::{
    ExpId, ExperimentStatus, Metrics, NextIdea, NoteSection, OracleTier, Timestamp,
};
use crate::exp::{self, ResultInput, parse};
use crate::project::fmt::{g, g_signed, pad_from, push_cell, push_g, push_padded};
use crate::project::registry::{ExperimentOut, ExperimentsOut};
use crate::project::state::{Experiment, MetricAgg};
use crate::project::{self, diagnosis};

#[derive(Debug, Args)]
pub struct ExpArgs {
    #[command(subcommand)]
    pub command: ExpCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExpCommand {
    /// Mint the next experiment (exp-NNN, highest number + 1) and print its id.
    Mint(MintArgs),
    /// Record the oracle's result (from flags or from result.md); the experiment becomes complete.
    Result(ResultArgs),
    /// Change an experiment's status (running, complete, failed, aborted).
    Status(StatusArgs),
    /// Record next-experiment ideas (from flags or from next.md).
    Next(NextArgs),
    /// List experiments in mint order.
    List(ListArgs),
    /// Show one experiment, with its lineage (root first) and what its run did.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// The experiment this one iterates on.
    #[arg(long, value_name = "ID")]
    pub parent: Option<ExpId>,
    /// Phase (default: phase_4).
    #[arg(long, value_name = "P")]
    pub phase: Option<String>,
    /// One-sentence testable claim.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub hypothesis: String,
    /// Why this next.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub rationale: String,
    /// Print `{"id": ...}`.
    #[arg(long)]
    pub json: bool,
}

/// `NAME=VALUE` with a float value (`NaN`, `inf` accepted).
fn name_value(s: &str) -> std::result::Result<(String, f64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty metric name in {s:?}"));
    }
    Ok((k.trim().to_owned(), float(v)?))
}

fn float(v: &str) -> std::result::Result<f64, String> {
    let t = v.trim();
    match t.to_ascii_lowercase().as_str() {
        "nan" => Ok(f64::NAN),
        "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
        "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
        _ => t.parse().map_err(|_| format!("not a number: {v:?}")),
    }
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    pub id: ExpId,
    /// Read everything from the oracle's result.md (YAML front matter, `## Shortfalls` bullets).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tier", "metric", "delta", "secondary", "shortfall"])]
    pub from: Option<PathBuf>,
    /// must_pass, should_pass, could_pass or fail.
    #[arg(long, value_name = "T", required_unless_present = "from")]
    pub tier: Option<OracleTier>,
    /// The primary metric, NAME=VALUE.
    #[arg(long, value_name = "NAME=VALUE", value_parser = name_value, required_unless_present = "from")]
    pub metric: Option<(String, f64)>,
    /// Delta vs the parent (default: computed from the parent's result on the same metric).
    #[arg(long, value_name = "D", value_parser = float, allow_hyphen_values = true)]
    pub delta: Option<f64>,
    /// A secondary metric, NAME=VALUE (repeatable).
    #[arg(long, value_name = "NAME=VALUE", value_parser = name_value)]
    pub secondary: Vec<(String, f64)>,
    /// A shortfall (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub shortfall: Vec<String>,
    /// When it was evaluated (ISO 8601; default: now).
    #[arg(long, value_name = "TIME", value_parser = Timestamp::parse)]
    pub evaluated_at: Option<Timestamp>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub id: ExpId,
    /// running, complete, failed or aborted.
    pub status: ExperimentStatus,
    /// Why (shown in diagnosis.md).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NextArgs {
    pub id: ExpId,
    /// An idea (repeatable).
    #[arg(long, value_name = "TEXT", required_unless_present = "from")]
    pub idea: Vec<String>,
    /// Read the ideas from a next.md (`## exp-NNN` sections, or bullets under `# Next experiments`).
    #[arg(long, value_name = "FILE", conflicts_with = "idea")]
    pub from: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the registry entries as a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: ExpId,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SectionArg {
    WhatHappened,
    Mechanism,
    Next,
}

impl From<SectionArg> for NoteSection {
    fn from(s: SectionArg) -> NoteSection {
        match s {
            SectionArg::WhatHappened => NoteSection::WhatHappened,
            SectionArg::Mechanism => NoteSection::Mechanism,
            SectionArg::Next => NoteSection::Next,
        }
    }
}

#[derive(Debug, Args)]
pub struct NoteArgs {
    pub id: ExpId,
    /// Which part of diagnosis.md (and next.md, for `next`) the note goes to.
    #[arg(long, value_enum)]
    pub section: SectionArg,
    /// The note (Markdown).
    pub text: String,
    #[arg(long)]
    pub json: bool,
}

/// Bytes handed to stdout at a time by the commands that print a lot (`exp list`, `--json`):
/// output is built in a buffer of this size and written as it fills, never whole in memory.
const OUT_BLOCK: usize = 64 * 1024;

/// Pretty JSON and a newline, serialized straight into a buffered, locked stdout.
fn print_json(v: &impl Serialize) -> Result<()> {
    let mut w = io::BufWriter::with_capacity(OUT_BLOCK, io::stdout().lock());
    if let Err(e) = serde_json::to_writer_pretty(&mut w, v) {
        // Only writing can fail: the output types always serialize.
        let kind = e
            .io_error_kind()
            .unwrap_or_else(|| panic!("output serializes: {e}"));
        return Err(stdout_error(io::Error::new(kind, e)));
    }
    w.write_all(b"\n")
        .and_then(|()| w.flush())
        .map_err(stdout_error)
}

/// Print to stdout (a closed pipe ends quietly, as `cli::report` arranges).
pub(super) fn print(text: std::fmt::Arguments<'_>) -> Result<()> {
    let mut stdout = io::stdout().lock();
    out(&mut stdout, text)?;
    stdout.flush().map_err(stdout_error)
}

pub fn run(ctx: &Ctx, a: ExpArgs) -> Result<ExitCode> {
    match a.command {
        ExpCommand::Mint(a) => mint(ctx, a),
        ExpCommand::Result(a) => result(ctx, a),
        ExpCommand::Status(a) => status(ctx, a),
        ExpCommand::Next(a) => next(ctx, a),
        ExpCommand::List(a) => list(ctx, a),
        ExpCommand::Show(a) => show(ctx, a),
    }
}

fn mint(ctx: &Ctx, a: MintArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let id = exp::mint(
        &store,
        exp::Mint {
            parent: a.parent,
            phase: a.phase,
            hypothesis: a.hypothesis,
            rationale: a.rationale,
        },
    )?;
    if a.json {
        print_json(&serde_json::json!({ "id": id }))?;
    } else {
        print(format_args!("{id}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn result(ctx: &Ctx, a: ResultArgs) -> Result<ExitCode> {
    // Parse everything before touching the store: a bad file appends nothing.
    let input = match &a.from {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
            let mut r = parse::result_md(path, &text)?;
            if a.evaluated_at.is_some() {
                r.evaluated_at = a.evaluated_at;
            }
            r
        }
        None => {
            let (metric, value) = a.metric.clone().expect("clap requires --metric");
            ResultInput {
                tier: a.tier.expect("clap requires --tier"),
                metric,
                value,
                delta: a.delta,
                secondary: a.secondary.iter().cloned().collect::<Metrics>(),
                shortfalls: a.shortfall.clone(),
                evaluated_at: a.evaluated_at,
            }
        }
    };
    let store = ctx.open_store()?;
    let (metric, value) = (input.metric.clone(), input.value);
    let delta = exp::record_result(&store, &a.id, input)?;
    if a.json {
        print_json(&serde_json::json!({
            "id": a.id,
            "status": "complete",
            "metric": metric,
            "value": value.is_finite().then_some(value),
            "delta_vs_parent": delta.filter(|d| d.is_finite()),
        }))?;
    } else {
        let d = delta.map_or_else(|| "—".to_owned(), g_signed);
        print(format_args!(
            "{} complete: {metric}={} (Δ vs parent {d})\n",
            a.id,
            g(value)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status(ctx: &Ctx, a: StatusArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    exp::set_status(&store, &a.id, a.status, &a.reason)?;
    if a.json {
        print_json(&serde_json::json!({ "id": a.id, "status": a.status }))?;
    } else {
        print(format_args!("{} {}\n", a.id, a.status.as_str()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn next(ctx: &Ctx, a: NextArgs) -> Result<ExitCode> {
    let ideas: Vec<NextIdea> = match &a.from {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
            let ideas = parse::next_md(&text);
            if ideas.is_empty() {
                return Err(Error::InvalidInput {
                    file: path.clone(),
                    line: 1,
                    reason: "no ideas found: expected `## exp-NNN` sections with a `- idea` bullet, or `- ` bullets under `# Next experiments`".into(),
                });
            }
            ideas
        }
        None => a
            .idea
            .iter()
            .map(|i| NextIdea {
                label: None,
                idea: i.clone(),
                details: Vec::new(),
            })
            .collect(),
    };
    let store = ctx.open_store()?;
    let strings: Vec<String> = ideas.iter().map(project::state::idea_string).collect();
    exp::set_next(&store, &a.id, ideas)?;
    if a.json {
        print_json(&serde_json::json!({ "id": a.id, "next_ideas": strings }))?;
    } else {
        print(format_args!("{}: {} idea(s)\n", a.id, strings.len()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let state = project::current(&store)?;
    let printed = if a.json {
        print_json(&ExperimentsOut(&state.experiments))
    } else {
        print_table(&state.experiments)
    };
    // Deliberately leaked: the process exits next, and freeing 10,000 experiments one
    // allocation at a time would only delay that.
    std::mem::forget(state);
    printed.map(|()| ExitCode::SUCCESS)
}

/// The `exp list` table. Rows are formatted into one buffer, without a string per cell, and
/// written to the locked stdout a block at a time.
fn print_table(exps: &[Experiment]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    let mut text = String::with_capacity(OUT_BLOCK + 4096);
    if exps.is_empty() {
        text.push_str("no experiments yet (mint one with `zolog exp mint`)\n");
    } else {
        let _ = writeln!(
            text,
            "{:<9} {:<9} {:<9} {:<24} {:<12} HYPOTHESIS",
            "ID", "PARENT", "STATUS", "METRIC", "Δ"
        );
    }
    for e in exps {
        push_padded(&mut text, e.id.as_str(), 9);
        text.push(' ');
        push_padded(
            &mut text,
            e.parent_id.as_ref().map_or("—", |p| p.as_str()),
            9,
        );
        text.push(' ');
        push_padded(&mut text, e.status.as_str(), 9);
        text.push(' ');
        let metric = text.len();
        match &e.result {
            Some(r) => {
                text.push_str(&r.metric);
                text.push('=');
                push_g(&mut text, r.value, false);
            }
            None => text.push('—'),
        }
        pad_from(&mut text, metric, 24);
        text.push(' ');
        let delta = text.len();
        match e.result.as_ref().and_then(|r| r.delta) {
            Some(d) => push_g(&mut text, d, true),
            None => text.push('—'),
        }
        pad_from(&mut text, delta, 12);
        text.push(' ');
        push_cell(&mut text, &e.hypothesis);
        text.push('\n');
        if text.len() >= OUT_BLOCK {
            stdout.write_all(text.as_bytes()).map_err(stdout_error)?;
            text.clear();
        }
    }
    stdout.write_all(text.as_bytes()).map_err(stdout_error)?;
    stdout.flush().map_err(stdout_error)
}

#[derive(Serialize)]
struct MetricOut<'a> {
    name: &'a str,
    samples: u64,
    last_epoch: u64,
    last: Option<f64>,
    best_epoch: Option<u64>,
    best: Option<f64>,
    non_finite: u64,
}

impl<'a> MetricOut<'a> {
    fn new(m: &'a MetricAgg) -> MetricOut<'a> {
        let best = if m.is_loss() { m.min } else { m.max };
        MetricOut {
            name: &m.name,
            samples: m.count,
            last_epoch: m.last.0,
            last: m.last.1.is_finite().then_some(m.last.1),
            best_epoch: best.map(|b| b.0),
            best: best.map(|b| b.1),
            non_finite: m.nonfinite,
        }
    }
}

#[derive(Serialize)]
struct ShowOut<'a> {
    experiment: ExperimentOut<'a>,
    /// Ids from the root to this experiment.
    lineage: Vec<&'a str>,
    status_reason: &'a str,
    epochs: u64,
    last_epoch: Option<u64>,
    metrics: Vec<MetricOut<'a>>,
    checkpoints: u64,
    alerts: u64,
    killed: bool,
}

fn show(ctx: &Ctx, a: ShowArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let state = project::current(&store)?;
    let e: &Experiment = exp::require(&state, &a.id)?;
    let lineage: Vec<&str> = state.lineage(&a.id).iter().map(|x| x.id.as_str()).collect();
    if a.json {
        print_json(&ShowOut {
            experiment: ExperimentOut::new(e),
            lineage,
            status_reason: &e.status_reason,
            epochs: e.details().run.epochs,
            last_epoch: e.details().run.last_epoch,
            metrics: e.details().run.metrics.iter().map(MetricOut::new).collect(),
            checkpoints: e.details().run.checkpoints.count,
            alerts: e.details().alerts.iter().map(|x| x.count).sum(),
            killed: e.details().kill.is_some(),
        })?;
        // Deliberately leaked, as in `list`.
        std::mem::forget(state);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = String::new();
    t.push_str(&format!("id:          {}\n", e.id));
    t.push_str(&format!("lineage:     {}\n", lineage.join(" → ")));
    t.push_str(&format!("phase:       {}\n", e.phase));
    t.push_str(&format!("created:     {}\n", e.created.to_micros_z()));
    t.push_str(&format!("status:      {}\n", e.status.as_str()));
    t.push_str(&format!("hypothesis:  {}\n", e.hypothesis));
    t.push_str(&format!("rationale:   {}\n", e.rationale));
    match &e.result {
        Some(r) => {
            let d = r.delta.map_or_else(|| "—".to_owned(), g_signed);
            t.push_str(&format!(
                "result:      {}={} (Δ vs parent {d}), tier {}\n",
                r.metric,
                g(r.value),
                r.tier.as_str()
            ));
        }
        None => t.push_str("result:      —\n"),
    }
    t.push_str(&format!(
        "files:       {}\n\n",
        store.experiments_dir().join(e.id.as_str()).display()
    ));
    t.push_str(&diagnosis::render_diagnosis(e));
    print(format_args!("{t}"))?;
    // Deliberately leaked, as in `list`.
    std::mem::forget(state);
    Ok(ExitCode::SUCCESS)
}

pub fn note(ctx: &Ctx, a: NoteArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    exp::add_note(&store, &a.id, a.section.into(), &a.text)?;
    if a.json {
        print_json(&serde_json::json!({ "id": a.id, "section": NoteSection::from(a.section) }))?;
    } else {
        print(format_args!("{}: note added\n", a.id))?;
    }
    Ok(ExitCode::SUCCESS)
}
