//! One integration-test binary (see ARCHITECTURE.md).

mod bitflips;
mod common;
mod log_faults;
mod roundtrip;
mod torn_tail;
