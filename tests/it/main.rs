//! One integration-test binary (see ARCHITECTURE.md).

mod checkpoints;
mod ingest;
