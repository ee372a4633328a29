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

/// Where a command was written: a fenced shell block holds runnable lines, which must parse in
/// full; an inline span in prose may name a command with placeholders (`zolog watch ID`), so
/// only its subcommands and flags must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Block,
    Inline,
}

/// (line number, place, command text) of every zolog command in a Markdown file: lines of fenced
/// shell blocks, and inline code spans that start with `zolog `.
fn commands(path: &Path) -> Vec<(usize, Place, String)> {
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
            Some("sh" | "bash" | "console" | "shell" | "") => {
                out.push((n, Place::Block, line.to_owned()))
            }
            Some(_) => {}
            None => {
                for (j, span) in line.split('`').enumerate() {
                    if j % 2 == 1 && span.trim_start().starts_with("zolog ") {
                        out.push((n, Place::Inline, span.to_owned()));
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

/// A usage synopsis (`zolog watch ID [--kill] [--config FILE] [--reason best|last]`) made
/// parseable: optional brackets unwrapped, alternatives reduced to the first, placeholders
/// replaced by sample values, so every flag it names is still checked.
fn instantiate(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        let a = a
            .trim_matches(|c| c == '[' || c == ']')
            .trim_end_matches("...");
        let a = a.split('|').next().unwrap_or(a).trim_end_matches(",");
        if a.is_empty() {
            continue;
        }
        let placeholder = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            && a.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        out.push(if !placeholder {
            a.to_owned()
        } else {
            match a {
                "ID" | "EXP" | "PARENT" => "exp-001".to_owned(),
                "N" | "E" | "T" | "SEQ" | "SECS" | "SECONDS" | "EPOCH" | "TOTAL" | "OFFSET" => {
                    "1".to_owned()
                }
                "NAME=VALUE" => "m=1".to_owned(),
                "K" | "KIND" => "EpochEnded".to_owned(),
                _ => "x".to_owned(),
            }
        });
    }
    out
}

fn check(path: &Path) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (line, place, text) in commands(path) {
        for args in invocations(&text) {
            checked += 1;
            let args = instantiate(&args);
            if let Err(e) = Cli::try_parse_from(&args) {
                use clap::error::ErrorKind;
                let mention_only = matches!(
                    e.kind(),
                    ErrorKind::MissingRequiredArgument
                        | ErrorKind::InvalidValue
                        | ErrorKind::ValueValidation
                        | ErrorKind::MissingSubcommand
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                );
                if place == Place::Inline && mention_only {
                    continue;
                }
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
        "# Agent\n\nRun `zolog verify` first, then `zolog watch ID` or `zolog wach ID`.\n\n```sh\nzolog log --kind EpochEnded\nzolog apend events.jsonl\nzolog watch\n```\n",
    )
    .unwrap();
    let (checked, failures) = check(&doc);
    assert_eq!(checked, 6);
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(
        failures[0].contains("agent.md:3") && failures[0].contains("wach"),
        "{}",
        failures[0]
    );
    assert!(
        failures[1].contains("agent.md:7") && failures[1].contains("apend"),
        "{}",
        failures[1]
    );
    // In a runnable block, a missing argument is an error too.
    assert!(failures[2].contains("agent.md:8"), "{}", failures[2]);
}

#[test]
fn synopses_are_checked_flag_by_flag() {
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let ok = instantiate(&words(
        "zolog log [--exp ID] [--kind K] [--since SEQ] [--follow]",
    ));
    assert!(Cli::try_parse_from(&ok).is_ok(), "{ok:?}");
    let bad = instantiate(&words("zolog log [--exp ID] [--knd K]"));
    assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
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
