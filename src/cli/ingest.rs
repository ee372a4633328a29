//! `zolog ingest`: a trainer's metrics.jsonl into the log, exactly once.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Args;

use super::{Ctx, out};
use crate::error::{Error, Result};
use crate::event::ExpId;
use crate::ingest::{FollowOptions, Follower, IngestOptions, Ingester, Notice, shutdown_signal};

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The trainer's metrics.jsonl.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// The experiment the lines belong to (default: the lines' `experiment_id`). Lines naming
    /// another experiment are rejected.
    #[arg(long = "exp", value_name = "ID")]
    pub exp: Option<ExpId>,
    /// Keep ingesting new lines as they are written, until SIGINT or SIGTERM.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// With --follow: poll the file instead of using inotify.
    #[arg(long, requires = "follow")]
    pub poll: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn ingest(ctx: &Ctx, a: IngestArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let mut ing = Ingester::open(store, IngestOptions::new(&a.path, a.exp.clone()))?;
    let rejected_now = Arc::new(AtomicU64::new(0));
    let seen = rejected_now.clone();
    ing.set_sink(move |n: &Notice| {
        if matches!(n, Notice::Rejected { .. }) {
            seen.fetch_add(1, Ordering::Relaxed);
        }
        let _ = writeln!(io::stderr(), "zolog: {n}");
    });
    let start = ing.position().clone();
    let ing = if a.follow {
        let exp = ing
            .experiment()
            .map_or_else(|| "experiment from the lines".to_owned(), |e| e.to_string());
        let _ = writeln!(
            io::stderr(),
            "zolog: following {} ({exp}) from line {}, byte {}; SIGINT or SIGTERM stops",
            a.path.display(),
            start.line,
            start.offset
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the runtime", "tokio", e))?;
        rt.block_on(async move {
            let stop = shutdown_signal()
                .map_err(|e| Error::io("install signal handlers", "SIGINT/SIGTERM", e))?;
            let opts = FollowOptions {
                use_notify: !a.poll,
                ..FollowOptions::default()
            };
            Follower::new(ing, opts).run(stop).await
        })?
    } else {
        let o = ing.poll(true)?;
        if o.no_file {
            return Err(Error::io(
                "open",
                &a.path,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        ing
    };
    let t = ing.totals();
    let pos = ing.position();
    let mut stdout = io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "path": ing.key_path(),
            "experiment_id": ing.experiment().map(|e| e.to_string()),
            "events": t.events,
            "lines": t.lines,
            "rejected": t.rejected,
            "generations": t.generations,
            "line": pos.line,
            "offset": pos.offset,
            "file_id": pos.file_id_string(),
        });
        out(&mut stdout, format_args!("{v}\n"))?;
    } else {
        out(
            &mut stdout,
            format_args!(
                "ingested {} event(s) from {} line(s) of {}{}; rejected {}; now at line {}, byte {}\n",
                t.events,
                t.lines,
                a.path.display(),
                ing.experiment()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                t.rejected,
                pos.line,
                pos.offset
            ),
        )?;
    }
    // Like `zolog append`: bad lines make a one-shot ingest fail (they were reported and
    // skipped; a re-run does not see them again). A follow that stopped cleanly succeeds.
    Ok(if !a.follow && rejected_now.load(Ordering::Relaxed) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
