//! `zolog checkpoint should|record|list|verify` and `zolog resume`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::{Ctx, out};
use crate::checkpoint::{self, FileCheck, RecordRequest, RunKind, reason_str};
use crate::error::Result;
use crate::event::{CheckpointReason, ExpId, Metrics, Source, SourceKind};

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub command: CheckpointCommand,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Should a checkpoint be saved at this epoch? Prints true or false; exit 0 or 1.
    Should(ShouldArgs),
    /// Record a saved checkpoint: its size, content hash (BLAKE3) and state keys.
    Record(RecordArgs),
    /// List an experiment's recorded checkpoints.
    List(ListArgs),
    /// Re-hash an experiment's checkpoints; non-zero exit if any is missing or changed.
    Verify(ListArgs),
}

#[derive(Debug, Args)]
pub struct ShouldArgs {
    /// The epoch just finished (counting from 0).
    #[arg(long, allow_negative_numbers = true)]
    pub epoch: i64,
    /// Total epochs of the run.
    #[arg(long, allow_negative_numbers = true)]
    pub total: i64,
    /// Periodic cadence; 0 or negative count as 1.
    #[arg(long, default_value_t = checkpoint::DEFAULT_EVERY, allow_negative_numbers = true)]
    pub every: i64,
    /// This epoch is a new best.
    #[arg(long)]
    pub best: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum ReasonArg {
    Best,
    Last,
    Periodic,
    Fold,
    Manual,
    #[value(alias = "search_state")]
    SearchState,
}

impl From<ReasonArg> for CheckpointReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::Best => CheckpointReason::Best,
            ReasonArg::Last => CheckpointReason::Last,
            ReasonArg::Periodic => CheckpointReason::Periodic,
            ReasonArg::Fold => CheckpointReason::Fold,
            ReasonArg::Manual => CheckpointReason::Manual,
            ReasonArg::SearchState => CheckpointReason::SearchState,
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The experiment.
    #[arg(value_name = "ID")]
    pub exp: ExpId,
    /// The epoch the checkpoint was saved after (counting from 0).
    #[arg(long)]
    pub epoch: Option<u64>,
    /// The checkpoint file (relative to the current directory, or absolute). It is recorded
    /// relative to the project directory when it lies inside it.
    #[arg(long)]
    pub path: PathBuf,
    #[arg(long, value_enum)]
    pub reason: ReasonArg,
    /// The resumable-state keys it holds, e.g.
    /// epoch,model_state_dict,optimizer_state_dict,rng_state.
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub keys: Vec<String>,
    /// Cross-validation fold (for --reason fold).
    #[arg(long)]
    pub fold: Option<u32>,
    /// Search trial (for --reason search-state).
    #[arg(long)]
    pub trial: Option<u64>,
    /// Print the recorded event as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The experiment.
    #[arg(value_name = "ID")]
    pub exp: ExpId,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The experiment.
    #[arg(value_name = "ID")]
    pub exp: ExpId,
    /// Print the whole plan (choice, candidates, reasons) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: CheckpointArgs) -> Result<ExitCode> {
    match a.command {
        CheckpointCommand::Should(a) => should(a),
        CheckpointCommand::Record(a) => record(ctx, a),
        CheckpointCommand::List(a) => list(ctx, a),
        CheckpointCommand::Verify(a) => verify(ctx, a),
    }
}

fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn should(a: ShouldArgs) -> Result<ExitCode> {
    let yes = checkpoint::should_checkpoint(a.epoch, a.total, a.every, a.best);
    out(&mut io::stdout().lock(), format_args!("{yes}\n"))?;
    Ok(status(yes))
}

fn record(ctx: &Ctx, a: RecordArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let keys = a
        .keys
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    let r = checkpoint::record(
        &store,
        RecordRequest {
            experiment_id: a.exp,
            epoch: a.epoch,
            path: a.path,
            reason: a.reason.into(),
            state_keys: keys,
            fold: a.fold,
            trial: a.trial,
            metrics: Metrics::default(),
        },
        Source::this_process(SourceKind::Cli),
    )?;
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::to_string(&r).expect("serializable");
        out(&mut stdout, format_args!("{v}\n"))?;
    } else {
        let c = &r.checkpoint;
        out(
            &mut stdout,
            format_args!(
                "recorded checkpoint {} ({}, {} bytes, {}) as seq {}\n",
                c.path,
                reason_str(c.reason),
                c.size_bytes.unwrap_or(0),
                c.content_hash.as_deref().unwrap_or("-"),
                r.seq
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(r: &checkpoint::Record) -> String {
    let c = &r.checkpoint;
    let mut s = format!("seq {} {}", r.seq, reason_str(c.reason));
    if let Some(e) = c.epoch {
        s.push_str(&format!(" epoch {e}"));
    }
    if let Some(f) = c.fold {
        s.push_str(&format!(" fold {f}"));
    }
    if let Some(t) = c.trial {
        s.push_str(&format!(" trial {t}"));
    }
    s.push_str(&format!(" {}", c.path));
    s
}

fn list(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let h = checkpoint::History::load(&store, &a.exp)?;
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::to_string(&h.records).expect("serializable");
        out(&mut stdout, format_args!("{v}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if h.records.is_empty() {
        out(
            &mut stdout,
            format_args!("no checkpoints recorded for {}\n", a.exp),
        )?;
    }
    for r in &h.records {
        let c = &r.checkpoint;
        let size = c
            .size_bytes
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        let hash = c
            .content_hash
            .as_deref()
            .map_or_else(|| "-".to_owned(), |h| h.chars().take(7 + 16).collect());
        let keys = if c.state_keys.is_empty() {
            "-".to_owned()
        } else {
            c.state_keys.join(",")
        };
        out(
            &mut stdout,
            format_args!("{}  size {size}  {hash}  keys {keys}\n", describe(r)),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let v = checkpoint::verify(&store, &a.exp)?;
    let problems = v.iter().filter(|x| x.check.is_problem()).count();
    let mut stdout = io::stdout().lock();
    if a.json {
        let j = serde_json::json!({"ok": problems == 0, "checkpoints": v});
        out(&mut stdout, format_args!("{j}\n"))?;
        return Ok(status(problems == 0));
    }
    for x in &v {
        let what = match &x.check {
            FileCheck::Ok => "ok".to_owned(),
            FileCheck::Superseded { by_seq } => format!("superseded by seq {by_seq}"),
            FileCheck::Missing { .. } => "MISSING".to_owned(),
            FileCheck::Changed { now, .. } => format!("CHANGED (now {now})"),
            FileCheck::Unhashed => "exists, no hash recorded".to_owned(),
            FileCheck::Unreadable { error } => format!("UNREADABLE ({error})"),
        };
        out(
            &mut stdout,
            format_args!("{}: {what}\n", describe(&x.record)),
        )?;
    }
    out(
        &mut stdout,
        format_args!("{} checkpoint(s), {problems} missing or changed\n", v.len()),
    )?;
    Ok(status(problems == 0))
}

pub fn resume(ctx: &Ctx, a: ResumeArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let plan = checkpoint::resume(&store, &a.exp)?;
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::json!({"found": plan.found(), "plan": plan});
        out(&mut stdout, format_args!("{v}\n"))?;
        return Ok(status(plan.found()));
    }
    let mut stderr = io::stderr().lock();
    for c in plan.candidates.iter().filter(|c| !c.qualifies) {
        let _ = writeln!(
            stderr,
            "zolog: skipped {}: {}",
            describe(&c.record),
            c.why_not.join("; ")
        );
    }
    match plan.kind {
        RunKind::DeepLearning => match (&plan.checkpoint, &plan.checkpoint_file) {
            (Some(r), Some(file)) => {
                let _ = writeln!(stderr, "zolog: resume {} from {}", a.exp, describe(r));
                out(&mut stdout, format_args!("{}\n", file.display()))?;
            }
            _ => {
                let _ = writeln!(
                    stderr,
                    "zolog: no checkpoint of {} qualifies for resume ({} considered)",
                    a.exp,
                    plan.candidates.len()
                );
            }
        },
        RunKind::Classical => {
            if let Some(file) = &plan.checkpoint_file {
                out(
                    &mut stdout,
                    format_args!("search_state {}\n", file.display()),
                )?;
            }
            for f in &plan.folds {
                out(
                    &mut stdout,
                    format_args!(
                        "fold {} {}\n",
                        f.checkpoint.fold.unwrap_or(0),
                        checkpoint::resolve(&store, &f.checkpoint.path).display()
                    ),
                )?;
            }
            if let Some(b) = &plan.best {
                out(
                    &mut stdout,
                    format_args!(
                        "best {}\n",
                        checkpoint::resolve(&store, &b.checkpoint.path).display()
                    ),
                )?;
            }
            if !plan.found() {
                let _ = writeln!(
                    stderr,
                    "zolog: no search state or completed fold of {} qualifies for resume",
                    a.exp
                );
            }
        }
    }
    Ok(status(plan.found()))
}
