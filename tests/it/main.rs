//! One integration-test binary (see ARCHITECTURE.md).

mod exp_cli;
mod projections;
