//! Reading what agents write: result.md (YAML front matter and `## Shortfalls` bullets) and
//! next.md (`## exp-NNN` sections), with the reference's rules.

use std::path::Path;

use serde_yaml_ng::Value;

use super::ResultInput;
use crate::error::{Error, Result};
use crate::event::{Metrics, NextIdea, OracleTier, Timestamp};

fn invalid(file: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        file: file.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Front matter: the YAML text, the line it starts on (1-based, after the opening `---`), the
/// line of the closing `---`, and the body after it.
struct FrontMatter<'a> {
    yaml: String,
    first_line: usize,
    close_line: usize,
    body: &'a str,
}

fn split_front_matter<'a>(file: &Path, text: &'a str) -> Result<FrontMatter<'a>> {
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end_matches(['\n', '\r']) != "---" {
        return Err(invalid(
            file,
            1,
            "no YAML front matter: the file must start with a `---` line, then the fields \
             (oracle_tier, primary_metric {name, value}), then a closing `---` line",
        ));
    }
    let mut yaml = String::new();
    let mut at = first.len();
    for (i, l) in lines.enumerate() {
        at += l.len();
        if l.trim_end_matches(['\n', '\r']) == "---" {
            return Ok(FrontMatter {
                yaml,
                first_line: 2,
                close_line: i + 2,
                body: &text[at..],
            });
        }
        yaml.push_str(l);
    }
    Err(invalid(
        file,
        1,
        "the front matter opened here is never closed by a `---` line",
    ))
}

/// Line (1-based, in the file) of the top-level key `key` in the front matter, if present.
fn key_line(fm: &FrontMatter<'_>, key: &str) -> Option<usize> {
    fm.yaml.lines().enumerate().find_map(|(i, l)| {
        let rest = l.strip_prefix(key)?;
        rest.trim_start()
            .starts_with(':')
            .then_some(fm.first_line + i)
    })
}

/// A YAML value as a float: numbers, `.nan`/`.inf`, and strings Python's `float()` accepts.
fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            match t.to_ascii_lowercase().as_str() {
                "nan" | "+nan" | "-nan" => Some(f64::NAN),
                "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
                "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
                _ => t.parse().ok(),
            }
        }
        _ => None,
    }
}

/// Parse result.md. Missing front matter, a YAML error, or a missing or malformed required field
/// is an error naming the file, the line and what is wrong.
pub fn result_md(file: &Path, text: &str) -> Result<ResultInput> {
    let fm = split_front_matter(file, text)?;
    let doc: Value = serde_yaml_ng::from_str(&fm.yaml).map_err(|e| {
        let line = e.location().map_or(fm.first_line, |l| {
            fm.first_line + l.line().saturating_sub(1)
        });
        invalid(file, line, format!("invalid YAML in the front matter: {e}"))
    })?;
    let map = match &doc {
        Value::Mapping(m) => Some(m),
        Value::Null => None,
        _ => {
            return Err(invalid(
                file,
                fm.first_line,
                "the front matter must be a mapping of fields",
            ));
        }
    };
    let get = |k: &str| map.and_then(|m| m.get(k)).filter(|v| !v.is_null());
    let pm = get("primary_metric");
    let pm_line = key_line(&fm, "primary_metric").unwrap_or(fm.close_line);
    // Every missing required field, with where it should be.
    let mut missing: Vec<(&str, usize)> = Vec::new();
    if get("oracle_tier").is_none() {
        missing.push(("oracle_tier", fm.close_line));
    }
    match pm {
        None => missing.push(("primary_metric", fm.close_line)),
        Some(Value::Mapping(m)) => {
            for f in ["name", "value"] {
                if m.get(f).is_none_or(Value::is_null) {
                    missing.push((
                        if f == "name" {
                            "primary_metric.name"
                        } else {
                            "primary_metric.value"
                        },
                        pm_line,
                    ));
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                file,
                pm_line,
                "primary_metric must be a mapping with name, value and optionally delta_vs_parent",
            ));
        }
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let line = missing.iter().map(|m| m.1).min().unwrap_or(fm.close_line);
        return Err(invalid(
            file,
            line,
            format!(
                "front matter is missing required field(s): {} (required: oracle_tier, primary_metric {{name, value}})",
                names.join(", ")
            ),
        ));
    }
    let tier_line = key_line(&fm, "oracle_tier").unwrap_or(fm.first_line);
    let tier: OracleTier = get("oracle_tier")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(file, tier_line, "oracle_tier must be a string"))?
        .parse()
        .map_err(|e: String| invalid(file, tier_line, e))?;
    let pm = pm.and_then(Value::as_mapping).expect("checked above");
    let name = match pm.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(invalid(
                file,
                pm_line,
                "primary_metric.name must be a string",
            ));
        }
    };
    let value = pm
        .get("value")
        .and_then(as_float)
        .ok_or_else(|| invalid(file, pm_line, "primary_metric.value must be a number"))?;
    let delta = match pm.get("delta_vs_parent") {
        None | Some(Value::Null) => None,
        Some(v) => Some(as_float(v).ok_or_else(|| {
            invalid(
                file,
                pm_line,
                "primary_metric.delta_vs_parent must be a number or null",
            )
        })?),
    };
    let mut secondary = Metrics::new();
    if let Some(s) = get("secondary_metrics") {
        let line = key_line(&fm, "secondary_metrics").unwrap_or(fm.first_line);
        let m = s.as_mapping().ok_or_else(|| {
            invalid(
                file,
                line,
                "secondary_metrics must be a mapping of name to number",
            )
        })?;
        for (k, v) in m {
            let k = match k {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(invalid(file, line, "secondary_metrics keys must be names")),
            };
            let v = as_float(v).ok_or_else(|| {
                invalid(
                    file,
                    line,
                    format!("secondary_metrics.{k} must be a number"),
                )
            })?;
            secondary.insert(k, v);
        }
    }
    let evaluated_at = match get("evaluated_at") {
        None => None,
        Some(v) => {
            let line = key_line(&fm, "evaluated_at").unwrap_or(fm.first_line);
            let s = v
                .as_str()
                .ok_or_else(|| invalid(file, line, "evaluated_at must be an ISO 8601 datetime"))?;
            Some(
                Timestamp::parse(s)
                    .map_err(|e| invalid(file, line, format!("evaluated_at: {e}")))?,
            )
        }
    };
    Ok(ResultInput {
        tier,
        metric: name,
        value,
        delta,
        secondary,
        shortfalls: bullets_under(fm.body, "shortfalls"),
        evaluated_at,
    })
}

/// `#` or `##` then whitespace (or the end of the line): a heading that ends a section.
fn is_h1_h2(line: &str) -> bool {
    let hashes = line.len() - line.trim_start_matches('#').len();
    (1..=2).contains(&hashes)
        && line[hashes..]
            .chars()
            .next()
            .is_none_or(char::is_whitespace)
}

/// The text of a `- ` bullet line (stripped), if it is one.
fn bullet_text(line: &str) -> Option<&str> {
    line.trim().strip_prefix("- ").map(str::trim)
}

/// Bullets under the first `#`/`##` heading named `heading` (any case), up to the next `#`/`##`
/// heading: the reference's `_parse_bullets`.
pub fn bullets_under(text: &str, heading: &str) -> Vec<String> {
    let mut lines = text.lines();
    let found = lines.by_ref().any(|l| {
        is_h1_h2(l)
            && l.trim_start_matches('#')
                .trim()
                .eq_ignore_ascii_case(heading)
            && l.starts_with('#')
    });
    if !found {
        return Vec::new();
    }
    lines
        .take_while(|l| !is_h1_h2(l))
        .filter_map(bullet_text)
        .map(str::to_owned)
        .collect()
}

/// `## exp-NNN ...` heading: the label.
fn exp_heading(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("##")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let digits = rest.strip_prefix("exp-")?;
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    (n > 0).then(|| &rest[..4 + n])
}

/// Parse next.md: each `## exp-NNN` section is one idea labelled `exp-NNN` (its first `- ` bullet,
/// or its first line), with the section's other bullets as details; with no such section, the
/// bullets under `# Next experiments`, unlabelled.
pub fn next_md(text: &str) -> Vec<NextIdea> {
    let lines: Vec<&str> = text.lines().collect();
    let mut ideas = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(label) = exp_heading(lines[i]) else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let mut end = start;
        while end < lines.len()
            && !(lines[end].starts_with("##") && lines[end][2..].starts_with(char::is_whitespace))
        {
            end += 1;
        }
        let body = &lines[start..end];
        let bullets: Vec<&str> = body.iter().filter_map(|l| bullet_text(l)).collect();
        let first_line = body.iter().map(|l| l.trim()).find(|l| !l.is_empty());
        let (idea, details) = match bullets.split_first() {
            Some((first, rest)) => (Some(*first), rest.iter().map(|s| (*s).to_owned()).collect()),
            None => (first_line, Vec::new()),
        };
        if let Some(idea) = idea.filter(|s| !s.is_empty()) {
            ideas.push(NextIdea {
                label: Some(label.to_owned()),
                idea: idea.to_owned(),
                details,
            });
        }
        i = end;
    }
    if ideas.is_empty() {
        ideas = bullets_under(text, "next experiments")
            .into_iter()
            .map(|idea| NextIdea {
                label: None,
                idea,
                details: Vec::new(),
            })
            .collect();
    }
    ideas
}

/// A registry `next_ideas` string as an idea: `exp-NNN: idea` keeps its label.
pub fn idea_from_string(s: &str) -> NextIdea {
    if let Some((label, idea)) = s.split_once(": ")
        && let Some(digits) = label.strip_prefix("exp-")
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return NextIdea {
            label: Some(label.to_owned()),
            idea: idea.to_owned(),
            details: Vec::new(),
        };
    }
    NextIdea {
        label: None,
        idea: s.to_owned(),
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ResultInput> {
        result_md(Path::new("exp-001/result.md"), text)
    }

    fn err(text: &str) -> (usize, String) {
        match parse(text).unwrap_err() {
            Error::InvalidInput { file, line, reason } => {
                assert_eq!(file, Path::new("exp-001/result.md"));
                (line, reason)
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn result_md_reads_front_matter_and_shortfalls() {
        let r = parse(
            "---\noracle_tier: should_pass\nprimary_metric:\n  name: mae_t+3\n  value: 0.0412\n  delta_vs_parent: -0.0086\nsecondary_metrics:\n  rmse: 0.07\n  r2: 1\nevaluated_at: 2026-11-24T09:53:33.639907Z\n---\n\n# Result\n\n## Shortfalls\n- Horizon 3 | still weak\n  - nested counts too\n\n## Notes\n- not a shortfall\n",
        )
        .unwrap();
        assert_eq!(r.tier, OracleTier::ShouldPass);
        assert_eq!(
            (r.metric.as_str(), r.value, r.delta),
            ("mae_t+3", 0.0412, Some(-0.0086))
        );
        assert_eq!(r.secondary.get("r2"), Some(1.0));
        assert_eq!(
            r.shortfalls,
            vec!["Horizon 3 | still weak", "nested counts too"]
        );
        assert_eq!(
            r.evaluated_at.unwrap().to_micros_z(),
            "2026-11-24T09:53:33.639907Z"
        );
    }

    #[test]
    fn malformed_front_matter_names_line_and_fields() {
        let (line, why) = err("# Result\n");
        assert_eq!(line, 1);
        assert!(why.contains("no YAML front matter"), "{why}");
        let (line, why) = err("---\noracle_tier: fail\n");
        assert_eq!(line, 1);
        assert!(why.contains("never closed"), "{why}");
        let (line, why) = err("---\nevaluated_at: 2026-01-01T00:00:00Z\n---\n");
        assert_eq!(line, 3);
        assert!(why.contains("oracle_tier, primary_metric"), "{why}");
        let (line, why) = err("---\noracle_tier: fail\n\nprimary_metric:\n  name: acc\n---\n");
        assert_eq!(line, 4);
        assert!(
            why.starts_with("front matter is missing required field(s): primary_metric.value ("),
            "{why}"
        );
        let (line, why) = err("---\noracle_tier: fail\nprimary_metric: [1, 2\n---\n");
        assert!(why.contains("invalid YAML"), "{why}");
        assert!((2..=4).contains(&line), "{line}");
        let (line, why) =
            err("---\noracle_tier: great\nprimary_metric: {name: a, value: 1}\n---\n");
        assert_eq!(line, 2);
        assert!(why.contains("great"), "{why}");
        let (line, why) =
            err("---\noracle_tier: fail\nprimary_metric: {name: a, value: high}\n---\n");
        assert_eq!(line, 3);
        assert!(why.contains("value must be a number"), "{why}");
    }

    #[test]
    fn next_md_sections_and_fallback() {
        let ideas = next_md(
            "# Next experiments\n\n## exp-004 — clip\n- Add gradient clipping at 1.0\n- Rationale: grad_norm spiked\n\n## exp-005\nTry a smaller LR.\n\n## Notes\n- not an idea\n",
        );
        assert_eq!(ideas.len(), 2);
        assert_eq!(ideas[0].label.as_deref(), Some("exp-004"));
        assert_eq!(ideas[0].idea, "Add gradient clipping at 1.0");
        assert_eq!(ideas[0].details, vec!["Rationale: grad_norm spiked"]);
        assert_eq!(ideas[1].idea, "Try a smaller LR.");
        let ideas = next_md("# Next experiments\n- one\n- two\n\n## Other\n- no\n");
        let got: Vec<_> = ideas
            .iter()
            .map(|i| (i.label.clone(), i.idea.as_str()))
            .collect();
        assert_eq!(got, vec![(None, "one"), (None, "two")]);
        assert!(next_md("nothing here").is_empty());
    }

    #[test]
    fn registry_idea_strings_keep_their_label() {
        let i = idea_from_string("exp-004: add clipping: at 1.0");
        assert_eq!(i.label.as_deref(), Some("exp-004"));
        assert_eq!(i.idea, "add clipping: at 1.0");
        assert_eq!(idea_from_string("plain: idea").label, None);
        assert_eq!(
            crate::project::state::idea_string(&i),
            "exp-004: add clipping: at 1.0"
        );
    }
}
