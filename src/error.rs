//! The library's error type. Every variant says what went wrong and where (file, line, offset).

use std::path::PathBuf;

use crate::event::ExpId;
use crate::event::codec::CodecError;
use crate::log::LogError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("event {seq}: {source}")]
    Codec {
        seq: u64,
        #[source]
        source: CodecError,
    },
    #[error(
        "no zolog store found in {} or any parent directory (run `zolog init`, or pass --store / set ZO_STORE)",
        start.display()
    )]
    NoStore { start: PathBuf },
    #[error("{} is already a zolog store", .0.display())]
    AlreadyInitialized(PathBuf),
    #[error("{}:{line}: {reason}", file.display())]
    InvalidInput {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("unknown experiment {0}")]
    UnknownExperiment(ExpId),
    #[error(transparent)]
    InvalidId(#[from] crate::event::IdError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Serve(#[from] crate::serve::client::ServeError),
    /// A conditional append (`Appender::append_if`) found the log at another seq; nothing was
    /// appended.
    #[error("the log moved on: the batch was for seq {expected}, the log is at seq {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// A keyed conditional append (`Appender::append_unless_keys_since`) found an event carrying
    /// one of its conflict keys at or after seq `since` (or a server that cannot tell); nothing
    /// was appended. Read the log up to `next_seq` - 1 and decide again.
    #[error("conflict since seq {since} (the log is at seq {next_seq}): {reason}")]
    KeyConflict {
        since: u64,
        next_seq: u64,
        reason: String,
    },
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
