//! The command line: clap argument structs that turn into plain library calls. No logic lives in
//! the argument structs; each command group has its own file.

mod checkcmd;
mod checkpoint;
mod exp;
mod ingest;
mod logcmd;
mod plotcmd;
mod projection;
mod run;
mod schemacmd;
mod serve;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::store::{Store, StoreOptions};

/// zolog: a crash-safe event log for ML training runs, and the .zo/ files folded from it.
#[derive(Debug, Parser)]
#[command(name = "zolog", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The store: a `.zo` directory, or a project directory holding one. Default: found by walking
    /// up from the current directory, as git finds its repository.
    #[arg(long, global = true, env = "ZO_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Seconds to wait for the writer lock before failing with who holds it.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    pub lock_timeout: f64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a store (`.zo/`) here, or at --store, and record ProjectInitialized.
    Init(logcmd::InitArgs),
    /// Append events, one JSON object per line, from FILE or standard input.
    Append(logcmd::AppendArgs),
    /// Print events as JSON lines.
    Log(logcmd::LogArgs),
    /// Check every segment and record; non-zero exit on damage.
    Verify(logcmd::VerifyArgs),
    /// Cut a torn tail (or, with --cut-at, damage in the middle of the log), keeping what is cut.
    Recover(logcmd::RecoverArgs),
    /// Write the JSON Schemas of the events (generated from the Rust types).
    Schema(schemacmd::SchemaArgs),
    /// Experiments: mint, result, status, next, list, show.
    Exp(exp::ExpArgs),
    /// Add agent narrative to an experiment's diagnosis.md (and next.md).
    Note(exp::NoteArgs),
    /// Regenerate every projection file from the log alone.
    Rebuild(projection::RebuildArgs),
    /// Turn a Python-layer registry.json into events (idempotent).
    Import(projection::ImportArgs),
    /// Ingest a trainer's metrics.jsonl, exactly once; --follow keeps ingesting as it grows.
    Ingest(ingest::IngestArgs),
    /// Checkpoint cadence, recording, listing and verification.
    Checkpoint(checkpoint::CheckpointArgs),
    /// The checkpoint a restarted trainer should load; exit 0 if there is one, 1 if not.
    Resume(checkpoint::ResumeArgs),
    /// Run the training checker on an experiment: follow the log, raise alerts, optionally kill.
    Watch(checkcmd::WatchArgs),
    /// Explain why an experiment's run ended, replaying the checker's decisions from the log.
    Audit(checkcmd::AuditArgs),
    /// Run a trainer under zolog: ingest its metrics.jsonl live, watch it, record how it ended.
    Run(run::RunArgs),
    /// See the whole product in one command: a diverging run killed by the checker, on a
    /// temporary store.
    Demo(run::DemoArgs),
    /// The demo's simulated trainer (run by `zolog demo`).
    #[command(name = "__demo-trainer", hide = true)]
    DemoTrainer(run::DemoTrainerArgs),
    /// Hold the store and take appends from many clients over `.zo/serve.sock` (and, with --tcp,
    /// a loopback port), with group commit. See docs/serve.md.
    Serve(serve::ServeArgs),
    /// Draw an experiment's metrics over epochs as SVG, with alerts, checkpoints and the kill.
    Plot(plotcmd::PlotArgs),
}

/// What every command gets: where the store is and how to open it.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub store_arg: Option<PathBuf>,
    pub opts: StoreOptions,
}

impl Ctx {
    /// The store's `.zo` directory, from --store / ZO_STORE or by discovery.
    pub fn store_root(&self) -> Result<PathBuf> {
        match &self.store_arg {
            Some(p) => Ok(Store::resolve(p)),
            None => {
                let cwd = std::env::current_dir().map_err(|e| Error::io("getcwd", ".", e))?;
                Store::discover(&cwd)
            }
        }
    }

    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.store_root()?, self.opts.clone())
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .try_init();
}

/// Parse the command line, run it, and map the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let ctx = Ctx {
        store_arg: cli.store.clone(),
        opts: StoreOptions::default()
            .with_lock_timeout(Duration::from_secs_f64(cli.lock_timeout.max(0.0))),
    };
    match run(cli.command, &ctx) {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Run one command.
pub fn run(command: Command, ctx: &Ctx) -> Result<ExitCode> {
    match command {
        Command::Init(a) => logcmd::init(ctx, a),
        Command::Append(a) => logcmd::append(ctx, a),
        Command::Log(a) => logcmd::log(ctx, a),
        Command::Verify(a) => logcmd::verify(ctx, a),
        Command::Recover(a) => logcmd::recover(ctx, a),
        Command::Schema(a) => schemacmd::schema(a),
        Command::Exp(a) => exp::run(ctx, a),
        Command::Note(a) => exp::note(ctx, a),
        Command::Rebuild(a) => projection::rebuild(ctx, a),
        Command::Import(a) => projection::import(ctx, a),
        Command::Ingest(a) => ingest::ingest(ctx, a),
        Command::Checkpoint(a) => checkpoint::run(ctx, a),
        Command::Resume(a) => checkpoint::resume(ctx, a),
        Command::Watch(a) => checkcmd::watch(ctx, a),
        Command::Audit(a) => checkcmd::audit(ctx, a),
        Command::Run(a) => run::run(ctx, a),
        Command::Demo(a) => run::demo(a),
        Command::DemoTrainer(a) => run::demo_trainer(a),
        Command::Serve(a) => serve::serve(ctx, a),
        Command::Plot(a) => plotcmd::plot(ctx, a),
    }
}

/// Print an error with its causes; a closed stdout (`zolog log | head`) exits quietly.
fn report(e: &Error) -> ExitCode {
    if let Error::Io { source, .. } = e
        && source.kind() == io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    let mut msg = format!("zolog: error: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        cause = c.source();
    }
    let _ = writeln!(io::stderr(), "{msg}");
    ExitCode::FAILURE
}

/// Write to stdout, turning a broken pipe into an error `report` keeps quiet about.
pub(crate) fn out(w: &mut impl Write, text: std::fmt::Arguments<'_>) -> Result<()> {
    w.write_fmt(text).map_err(stdout_error)
}

/// A failed write to stdout (or its flush), as every command reports it: a broken pipe among
/// them is one `report` keeps quiet about.
pub(crate) fn stdout_error(e: io::Error) -> Error {
    Error::io("write", "<stdout>", e)
}
