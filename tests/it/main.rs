//! One integration-test binary (see ARCHITECTURE.md).
mod doc_commands;
mod schemas;
