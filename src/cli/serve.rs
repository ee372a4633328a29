//! `zolog serve`: hold the store and take appends from many clients over a socket.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::logcmd::SourceArg;
use super::{Ctx, out};
use crate::error::{Error, Result};
use crate::serve::{self, ServeOptions, TcpOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Also listen on this loopback TCP address (e.g. 127.0.0.1:7878; port 0 picks one). Needs
    /// --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    pub tcp: Option<SocketAddr>,
    /// File holding the token TCP clients must send as `AUTH <token>` (mode 0600 or stricter).
    #[arg(long, value_name = "FILE", requires = "tcp")]
    pub token_file: Option<PathBuf>,
    /// Longest line accepted, in bytes.
    #[arg(long, default_value_t = serve::DEFAULT_MAX_LINE, value_name = "BYTES")]
    pub max_line: usize,
    /// Connections served at once; more are refused with an error line.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// Drop a client that takes none of its acknowledgements for this many seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub ack_timeout: f64,
    /// Least seconds between two projection refreshes.
    #[arg(long, default_value_t = 0.25, value_name = "SECONDS")]
    pub refresh_interval: f64,
    /// Source recorded for events that name none (a connection can set its own with `#source`).
    #[arg(long, value_enum, default_value_t = SourceArg::Trainer)]
    pub source: SourceArg,
    /// Worker threads (default: the number of CPUs, at most 8).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

/// Read a token file, refusing one that others can read.
fn read_token(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Invalid(format!(
            "token file {} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!(
            "token file {} must hold one token without spaces",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

fn seconds(flag: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Error::Invalid(format!("--{flag} {s}: expected a number of seconds")))
}

pub fn serve(ctx: &Ctx, a: ServeArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let tcp = match (a.tcp, &a.token_file) {
        (Some(addr), Some(f)) => Some(TcpOptions {
            addr,
            token: read_token(f)?,
        }),
        _ => None,
    };
    let defaults = ServeOptions::default();
    let opts = ServeOptions {
        tcp,
        max_line: a.max_line.max(1024),
        max_connections: a.max_connections.max(1),
        ack_timeout: seconds("ack-timeout", a.ack_timeout)?,
        refresh_interval: seconds("refresh-interval", a.refresh_interval)?,
        source_kind: a.source.into(),
        workers: a.workers.unwrap_or(defaults.workers),
        ..defaults
    };
    let root = store.root().to_path_buf();
    let report = serve::run(&store, opts, serve::signals, |r| {
        let mut stdout = io::stdout().lock();
        let tcp = r.tcp.map(|a| format!(" and tcp:{a}")).unwrap_or_default();
        let _ = writeln!(
            stdout,
            "serving {} on unix:{}{tcp} (next seq {}); stop with SIGTERM or Ctrl-C",
            root.display(),
            r.socket.display(),
            r.next_seq
        );
        let _ = stdout.flush();
    })?;
    let mut stdout = io::stdout().lock();
    let q = |p: f64| {
        report.append_times.quantile(p).map_or_else(
            || "-".to_owned(),
            |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
        )
    };
    out(
        &mut stdout,
        format_args!(
            "stopped: {} connection(s), {} event(s) appended in {} sync(s) (append+fdatasync p50 ≤ {}, p99 ≤ {}), last seq {}; {} line(s) rejected, {} client(s) dropped, {} connection(s) refused\n",
            report.connections,
            report.events,
            report.syncs,
            q(0.5),
            q(0.99),
            report
                .last_seq
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            report.rejected_lines,
            report.dropped_clients,
            report.refused_connections
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}
