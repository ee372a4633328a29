//! One integration-test binary (see ARCHITECTURE.md).

mod bitflips;
mod common;
mod log_faults;
mod roundtrip;
mod torn_tail;
mod kill9;
mod cli_append;
mod fixture;
