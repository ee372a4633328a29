//! `zolog rebuild` and `zolog import`: regenerate the projections from the log alone, and bring
//! a Python-layer registry.json into the log.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Ctx;
use super::exp::print;
use crate::error::Result;
use crate::exp::import;
use crate::project;

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The registry.json to import (`.zo/experiments/registry.json` of a Python-layer project).
    #[arg(value_name = "PATH/registry.json")]
    pub path: PathBuf,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn rebuild(ctx: &Ctx, a: RebuildArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let r = project::rebuild(&store)?;
    if a.json {
        let s = serde_json::to_string_pretty(&r).expect("report serializes");
        print(format_args!("{s}\n"))?;
    } else {
        print(format_args!(
            "rebuilt projections from {} event(s) (through seq {}): {} experiment(s), {} file(s) written, {} unchanged\n",
            r.events, r.seq, r.experiments, r.files_written, r.files_unchanged
        ))?;
        if r.ignored_events > 0 {
            let _ = writeln!(
                io::stderr(),
                "zolog: {} event(s) name an experiment that was never minted (or mint one twice) and were not folded",
                r.ignored_events
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(ctx: &Ctx, a: ImportArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let r = import::import(&store, &a.path)?;
    if a.json {
        let s = serde_json::to_string_pretty(&r).expect("report serializes");
        print(format_args!("{s}\n"))?;
    } else {
        let seqs = match (r.first_seq, r.last_seq) {
            (Some(a), Some(b)) => format!(" (seq {a}..={b})"),
            _ => String::new(),
        };
        print(format_args!(
            "imported {}: {} experiment(s) in the file, {} minted, {} updated, {} already up to date; {} event(s) appended{seqs}\n",
            a.path.display(),
            r.experiments_in_file,
            r.minted,
            r.updated,
            r.unchanged,
            r.events
        ))?;
        if r.reproduces_file {
            print(format_args!(
                "registry.json now equals the imported file byte for byte\n"
            ))?;
        }
        for w in &r.warnings {
            let _ = writeln!(io::stderr(), "zolog: warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
