//! zolog: an event-sourced engine for ML training runs.
//!
//! Trainers, the training checker and agents append events to one crash-safe write-ahead log
//! ([`log`]); projections fold the log into the files people and agents read. See ARCHITECTURE.md
//! for the map and the invariants, docs/format.md for the bytes.

pub mod checker;
pub mod checkpoint;
pub mod cli;
pub mod demo;
pub mod error;
pub mod event;
pub mod exp;
pub mod ingest;
pub mod log;
pub mod plot;
pub mod project;
pub mod run;
pub mod schema;
pub mod serve;
pub mod store;
pub mod tui;

pub use error::{Error, Result};

#[cfg(test)]
mod testing;
