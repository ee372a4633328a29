//! One integration-test binary (see ARCHITECTURE.md): every module below is a group of tests.

mod bitflips;
mod checker;
mod checkpoints;
mod cli_append;
mod common;
mod curve_cache;
mod doc_commands;
mod exp_cli;
mod fixture;
mod ingest;
mod kill9;
mod log_faults;
mod projections;
mod roundtrip;
mod run;
mod schemas;
mod see;
mod serve;
mod serve_clients;
mod tail_hint;
mod torn_tail;
