//! The committed JSON Schemas match the Rust types, and every JSON example zolog documents or
//! prints validates against them.

use std::path::{Path, PathBuf};

use serde_json::Value;
use zolog::event::Payload;
use zolog::schema;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schemas_match_the_rust_types() {
    let mut stale = Vec::new();
    for (rel, contents) in schema::generate() {
        let path = repo().join("schemas").join(&rel);
        match std::fs::read_to_string(&path) {
            Ok(current) if current == contents => {}
            _ => stale.push(rel),
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is out of date ({}); run `{}` to regenerate",
        stale.join(", "),
        schema::REGENERATE
    );
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("generated schemas compile")
}

/// Validate one JSON value: an envelope against the event schema, a bare payload against its
/// kind's schema. Returns None for JSON that is not an event (e.g. a registry.json example).
fn check_value(v: &Value) -> Option<Result<(), String>> {
    let obj = v.as_object()?;
    if obj.contains_key("payload") && obj.contains_key("source") {
        let errors: Vec<String> = validator(&schema::event_schema())
            .iter_errors(v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        return Some(if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        });
    }
    let kind = obj.get("type")?.as_str()?;
    if !Payload::KINDS.contains(&kind) {
        return Some(Err(format!("unknown event type {kind:?}")));
    }
    let schema = schema::payload_schema_for(kind).expect("every kind has a schema");
    let errors: Vec<String> = validator(&schema)
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    Some(if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    })
}

/// JSON examples in fenced ```json / ```jsonl blocks of a Markdown file: (line, value).
fn examples(path: &Path) -> Vec<(usize, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut block: Option<(String, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match block.take() {
                None => block = Some((rest.trim().to_owned(), lineno + 1, String::new())),
                Some((lang, start, body)) => match lang.as_str() {
                    "json" => {
                        let v = serde_json::from_str(&body).unwrap_or_else(|e| {
                            panic!("{}:{start}: invalid JSON example: {e}", path.display())
                        });
                        out.push((start, v));
                    }
                    "jsonl" => {
                        for (j, l) in body.lines().enumerate() {
                            if l.trim().is_empty() {
                                continue;
                            }
                            let v = serde_json::from_str(l).unwrap_or_else(|e| {
                                panic!("{}:{}: invalid JSON line: {e}", path.display(), start + j)
                            });
                            out.push((start + j, v));
                        }
                    }
                    _ => {}
                },
            }
            continue;
        }
        if let Some((_, _, body)) = block.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for dir in ["docs", "agents"] {
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

#[test]
fn every_documented_json_example_validates() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        for (line, v) in examples(&file) {
            match check_value(&v) {
                None => {}
                Some(Ok(())) => checked += 1,
                Some(Err(e)) => failures.push(format!("{}:{line}: {e}", file.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid examples:\n{}",
        failures.join("\n")
    );
    assert!(
        checked > 0,
        "no event examples found in README.md, docs/ or agents/"
    );
}

#[test]
fn the_schema_check_rejects_a_wrong_example() {
    // The checker itself must be able to fail: a string where a number is due.
    let bad: Value = serde_json::json!({
        "type": "EpochEnded", "experiment_id": "exp-001", "epoch": "one"
    });
    assert!(matches!(check_value(&bad), Some(Err(_))));
    let good: Value = serde_json::json!({
        "type": "EpochEnded", "experiment_id": "exp-001", "epoch": 1,
        "metrics": {"loss": "NaN", "acc": 0.5}
    });
    assert_eq!(check_value(&good), Some(Ok(())));
}

/// Validate every line `zolog log` prints for a store holding every event kind.
fn assert_log_output_validates(lines: &str) {
    let v = validator(&schema::event_schema());
    for (i, line) in lines.lines().enumerate() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("zolog log line {} is not JSON: {e}: {line}", i + 1));
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "zolog log line {}: {errors:?}\n{line}",
            i + 1
        );
    }
}

#[test]
fn zolog_log_output_of_every_kind_validates() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(".zo");
    let bin = assert_cmd::cargo::cargo_bin("zolog");
    let init = std::process::Command::new(&bin)
        .args(["--store"])
        .arg(&store)
        .args(["init", "--project", "schemas"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let fixture = repo().join("tests/fixtures/every_kind.jsonl");
    let append = std::process::Command::new(&bin)
        .arg("--store")
        .arg(&store)
        .arg("append")
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(append.status.success(), "{append:?}");
    let log = std::process::Command::new(&bin)
        .arg("--store")
        .arg(&store)
        .arg("log")
        .output()
        .unwrap();
    assert!(log.status.success());
    let text = String::from_utf8(log.stdout).unwrap();
    let kinds: std::collections::BTreeSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["payload"]["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds.len(),
        Payload::KINDS.len(),
        "fixture must hold every kind: {kinds:?}"
    );
    assert_log_output_validates(&text);
}
