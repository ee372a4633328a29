//! One integration-test binary (see ARCHITECTURE.md).

mod serve;
