//! Every `zolog ...` command written in README.md, docs/ and agents/*.md parses with the real
//! command-line parser, so the instructions cannot drift from the program.

use std::path::{Path, PathBuf};

use clap::Parser;
use zolog::cli::Cli;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The zolog invocations in one shell line: split on pipes and `&&`/`;`, drop env assignments,
/// and map `cargo run [--release] -- ARGS` to `zolog ARGS`.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let line = line.trim().trim_start_matches("$ ");
    let line = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut out = Vec::new();
    for part in line.split(['|', ';']).flat_map(|p| p.split("&&")) {
        let Some(mut words) = shlex::split(part.trim()) else {
            continue;
        };
        while words
            .first()
            .is_some_and(|w| w.contains('=') && !w.starts_with('-'))
        {
            words.remove(0);
        }
        if words.first().map(String::as_str) == Some("zolog") {
            out.push(words);
        } else if words.len() >= 2
            && words[0] == "cargo"
            && words[1] == "run"
            && let Some(dash) = words.iter().position(|w| w == "--")
        {
            let mut args = vec!["zolog".to_owned()];
            args.extend(words[dash + 1..].iter().cloned());
            out.push(args);
        }
    }
    out
}

/// (line number, command text) of every zolog command in a Markdown file: lines of fenced shell
/// blocks, and inline code spans that start with `zolog `.
fn commands(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(rest) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                None => Some(rest.trim().to_owned()),
                Some(_) => None,
            };
            continue;
        }
        match fence.as_deref() {
            Some("sh" | "bash" | "console" | "shell" | "") => out.push((n, line.to_owned())),
            Some(_) => {}
            None => {
                for (j, span) in line.split('`').enumerate() {
                    if j % 2 == 1 && span.trim_start().starts_with("zolog ") {
                        out.push((n, span.to_owned()));
                    }
                }
            }
        }
    }
    out
}

fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for dir in ["agents", "docs"] {
        if let Ok(rd) = std::fs::read_dir(repo().join(dir)) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "md") {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    files
}

fn check(path: &Path) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (line, text) in commands(path) {
        for args in invocations(&text) {
            checked += 1;
            if let Err(e) = Cli::try_parse_from(&args) {
                let first = e.to_string().lines().next().unwrap_or("").to_owned();
                failures.push(format!(
                    "{}:{line}: `{}`: {first}",
                    path.display(),
                    args.join(" ")
                ));
            }
        }
    }
    (checked, failures)
}

#[test]
fn every_documented_command_parses() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let (n, f) = check(&doc);
        checked += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "commands that do not parse:\n{}",
        failures.join("\n")
    );
    assert!(
        checked >= 5,
        "found only {checked} zolog commands in the docs"
    );
}

#[test]
fn a_misspelt_command_is_caught_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("agent.md");
    std::fs::write(
        &doc,
        "# Agent\n\nRun `zolog verify` first.\n\n```sh\nzolog log --kind EpochEnded\nzolog apend events.jsonl\n```\n",
    )
    .unwrap();
    let (checked, failures) = check(&doc);
    assert_eq!(checked, 3);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("agent.md:7"), "{}", failures[0]);
    assert!(failures[0].contains("apend"), "{}", failures[0]);
}

#[test]
fn pipelines_env_and_cargo_run_are_understood() {
    assert_eq!(
        invocations("ZO_STORE=/tmp/s zolog log | zolog --store b append  # copy"),
        vec![
            vec!["zolog".to_owned(), "log".to_owned()],
            vec![
                "zolog".into(),
                "--store".into(),
                "b".into(),
                "append".into()
            ],
        ]
    );
    assert_eq!(
        invocations("cargo run --release -- verify --json"),
        vec![vec![
            "zolog".to_owned(),
            "verify".to_owned(),
            "--json".to_owned()
        ]]
    );
}
