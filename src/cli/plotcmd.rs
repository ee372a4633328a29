//! `zolog plot`: an SVG of an experiment's metrics over epochs.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Ctx;
use crate::error::{Error, Result};
use crate::event::ExpId;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The experiment (exp-NNN).
    #[arg(value_name = "ID")]
    pub exp: ExpId,
    /// A metric to plot (repeatable; `learning_rate` is the epochs' learning rate). Default: the
    /// monitored ones (losses, gradient norms, learning rate).
    #[arg(long = "metric", value_name = "NAME")]
    pub metrics: Vec<String>,
    /// Write the SVG here instead of to standard output.
    #[arg(long, value_name = "FILE.svg")]
    pub out: Option<PathBuf>,
}

pub fn plot(ctx: &Ctx, a: PlotArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let state = crate::project::current_with_curves(&store, std::slice::from_ref(&a.exp))?;
    let e = state
        .get(&a.exp)
        .ok_or_else(|| Error::UnknownExperiment(a.exp.clone()))?;
    let metrics = if a.metrics.is_empty() {
        crate::plot::default_metrics(e)
    } else {
        a.metrics
    };
    let svg = crate::plot::render(e, &metrics)?;
    match &a.out {
        Some(p) => std::fs::write(p, svg.as_bytes()).map_err(|e| Error::io("write", p, e))?,
        None => io::stdout()
            .lock()
            .write_all(svg.as_bytes())
            .map_err(super::stdout_error)?,
    }
    Ok(ExitCode::SUCCESS)
}
