//! One integration-test binary (see ARCHITECTURE.md).

mod common;
mod roundtrip;
