//! One integration-test binary (see ARCHITECTURE.md).

mod bitflips;
mod cli_append;
mod common;
mod fixture;
mod kill9;
mod log_faults;
mod roundtrip;
mod torn_tail;
