//! `zolog watch` and `zolog audit`: the training checker.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{Ctx, out};
use crate::checker::watch::{WatchOptions, Watcher, describe};
use crate::checker::{CheckerConfig, audit};
use crate::error::{Error, Result};
use crate::event::ExpId;
use crate::tui::Panel;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The experiment to watch (exp-NNN).
    #[arg(value_name = "ID")]
    pub exp: ExpId,
    /// On a stop alert, SIGTERM the trainer (pid from TrainingStarted), SIGKILL after --grace,
    /// and record RunKilled and the experiment aborted.
    #[arg(long)]
    pub kill: bool,
    /// Checker configuration (JSON; any subset of `zolog watch --print-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Evaluate what the log holds, then exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub grace: f64,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// One line per event instead of the live panel (the default when stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,
}

/// Exit status of `zolog watch` when the experiment has a stop alert (raised now or before).
pub const EXIT_STOP_ALERT: u8 = 2;

pub fn watch(ctx: &Ctx, a: WatchArgs) -> Result<ExitCode> {
    let config = match &a.config {
        Some(p) => CheckerConfig::load(p)?,
        None => CheckerConfig::default(),
    };
    if a.print_config {
        let text = serde_json::to_string_pretty(&config.to_json()).expect("serializes");
        out(&mut io::stdout().lock(), format_args!("{text}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if !(a.grace.is_finite() && a.grace >= 0.0) {
        return Err(Error::Invalid(format!(
            "--grace {}: expected seconds ≥ 0",
            a.grace
        )));
    }
    let store = ctx.open_store()?;
    let opts = WatchOptions {
        kill: a.kill,
        grace: Duration::from_secs_f64(a.grace),
        once: a.once,
        ..WatchOptions::default()
    };
    let watcher = Watcher::new(store.clone(), a.exp.clone(), config.clone()).options(opts);
    if !a.plain && !a.once && io::stdout().is_terminal() {
        let panel = Panel::new(a.exp, config.monitor.clone()).kill_enabled(a.kill);
        let report = crate::tui::watch(&store, panel, watcher)?;
        return Ok(if report.has_stop() {
            ExitCode::from(EXIT_STOP_ALERT)
        } else {
            ExitCode::SUCCESS
        });
    }
    let watcher = watcher.on_event(|ev| {
        if let Some(line) = describe(&ev) {
            // A closed stdout must not stop the watcher from protecting the run.
            let _ = out(&mut io::stdout().lock(), format_args!("{line}\n"));
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start", "tokio runtime", e))?;
    let report = rt.block_on(watcher.run(async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(if report.has_stop() {
        ExitCode::from(EXIT_STOP_ALERT)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The experiment (exp-NNN).
    #[arg(value_name = "ID")]
    pub exp: ExpId,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit status of `zolog audit` when a kill's alert is not reproduced by its replay.
pub const EXIT_NOT_REPRODUCED: u8 = 2;

pub fn audit(ctx: &Ctx, a: AuditArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let report = audit::audit(&store, &a.exp)?;
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::to_string_pretty(&report).expect("serializes");
        out(&mut stdout, format_args!("{v}\n"))?;
    } else {
        out(&mut stdout, format_args!("{}", audit::render(&report)))?;
    }
    Ok(if report.decisions_reproduced() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_REPRODUCED)
    })
}
