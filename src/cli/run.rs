//! `zolog run`, `zolog demo` and the demo's hidden simulated trainer.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{Ctx, out};
use crate::checker::CheckerConfig;
use crate::error::{Error, Result};
use crate::event::ExpId;
use crate::run::{RunSpec, Say};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment this run trains (exp-NNN, already minted).
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "mint",
        conflicts_with = "mint"
    )]
    pub exp: Option<ExpId>,
    /// Mint a new experiment for this run (with --parent, --phase, --hypothesis, --rationale).
    #[arg(long)]
    pub mint: bool,
    /// With --mint: the experiment this one iterates on.
    #[arg(long, value_name = "ID", requires = "mint")]
    pub parent: Option<ExpId>,
    /// With --mint: phase (default: phase_4).
    #[arg(long, value_name = "P", requires = "mint")]
    pub phase: Option<String>,
    /// With --mint: one-sentence testable claim.
    #[arg(long, value_name = "TEXT", requires = "mint")]
    pub hypothesis: Option<String>,
    /// With --mint: why this next.
    #[arg(long, value_name = "TEXT", requires = "mint")]
    pub rationale: Option<String>,
    /// On a stop alert, SIGTERM the trainer, SIGKILL after --grace, and record RunKilled and the
    /// experiment aborted.
    #[arg(long)]
    pub kill: bool,
    /// Checker configuration (JSON; any subset of `zolog watch --print-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL (the checker's kill, and a forwarded Ctrl-C).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub grace: f64,
    /// The metrics.jsonl the trainer writes (ZO_METRICS). Default:
    /// .zo/experiments/<id>/metrics.jsonl.
    #[arg(long, value_name = "PATH")]
    pub metrics: Option<PathBuf>,
    /// The trainer's command, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn grace(secs: f64) -> Result<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(Error::Invalid(format!(
            "--grace {secs}: expected seconds ≥ 0"
        )))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Current-thread: the watcher's checks and its signal happen in one poll, so they never
    // interleave with the run noticing that its child exited.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start", "tokio runtime", e))
}

pub fn run(ctx: &Ctx, a: RunArgs) -> Result<ExitCode> {
    let grace = grace(a.grace)?;
    let checker = match &a.config {
        Some(p) => CheckerConfig::load(p)?,
        None => CheckerConfig::default(),
    };
    let store = ctx.open_store()?;
    let exp = match a.exp {
        Some(e) => e,
        None => {
            let id = crate::exp::mint(
                &store,
                crate::exp::Mint {
                    parent: a.parent,
                    phase: a.phase,
                    hypothesis: a.hypothesis.unwrap_or_default(),
                    rationale: a.rationale.unwrap_or_default(),
                },
            )?;
            eprintln!("zolog: minted {id}");
            id
        }
    };
    let spec = RunSpec {
        exp,
        command: a.command,
        metrics: a.metrics,
        kill: a.kill,
        grace,
        checker,
        env: Vec::new(),
    };
    // The trainer owns stdout; zolog speaks on stderr.
    let say: Say = Arc::new(|line: &str| {
        let _ = writeln!(io::stderr().lock(), "zolog: {line}");
    });
    let outcome = runtime()?.block_on(crate::run::run(store, spec, say))?;
    for line in outcome.summary().lines() {
        let _ = writeln!(io::stderr().lock(), "zolog: {line}");
    }
    Ok(ExitCode::from(outcome.exit_status()))
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's project in DIR (created; must not hold a store yet) instead of a
    /// temporary directory that is deleted at the end.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Seconds the simulated trainer spends on each epoch.
    #[arg(long, value_name = "SECS", default_value_t = 0.3, hide = true)]
    pub epoch_seconds: f64,
}

pub fn demo(a: DemoArgs) -> Result<ExitCode> {
    let tmp;
    let project = match &a.keep {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("zolog-demo-")
                .tempdir()
                .map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
            tmp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("locate", "zolog", e))?;
    let mut stdout = io::stdout().lock();
    out(
        &mut stdout,
        format_args!(
            "zolog demo: a project in {}{}\n\n\
             1. zolog run --kill -- <a simulated trainer whose learning rate is too high>\n",
            project.display(),
            if a.keep.is_some() {
                " (kept)"
            } else {
                " (deleted at the end; --keep DIR keeps it)"
            }
        ),
    )?;
    drop(stdout);
    let say: Say = Arc::new(|line: &str| {
        let _ = writeln!(io::stdout().lock(), "  zolog: {line}");
    });
    let d = runtime()?.block_on(crate::demo::demo(&project, &exe, a.epoch_seconds, say))?;
    let mut stdout = io::stdout().lock();
    for line in d.outcome.summary().lines() {
        out(&mut stdout, format_args!("  zolog: {line}\n"))?;
    }
    let exp = &d.outcome.exp;
    out(
        &mut stdout,
        format_args!(
            "\n2. .zo/experiments/CHECKLIST.md\n\n{}\n3. .zo/experiments/{exp}/diagnosis.md\n\n{}\n\
             4. .zo/experiments/{exp}/next.md\n\n{}\n5. zolog audit {exp}\n\n{}",
            d.checklist, d.diagnosis, d.next, d.audit
        ),
    )?;
    if a.keep.is_some() {
        out(
            &mut stdout,
            format_args!(
                "\nThe project is kept: cd {} && zolog log, zolog audit {exp}, zolog rebuild.\n",
                project.display()
            ),
        )?;
    }
    if d.as_expected {
        Ok(ExitCode::SUCCESS)
    } else {
        out(
            &mut stdout,
            format_args!("\nzolog demo: the checker did not kill the run as expected\n"),
        )?;
        Ok(ExitCode::FAILURE)
    }
}

#[derive(Debug, Args)]
pub struct DemoTrainerArgs {
    #[arg(long, default_value_t = 0.3)]
    pub epoch_seconds: f64,
}

pub fn demo_trainer(a: DemoTrainerArgs) -> Result<ExitCode> {
    crate::demo::trainer(a.epoch_seconds)?;
    Ok(ExitCode::SUCCESS)
}
