//! The documentation cannot drift where a list is mechanical: the policy tables list exactly
//! the policies detect registers, the configuration reference lists exactly the keys each
//! service accepts with their defaults, and the topics table lists every topic. Pure: no
//! broker, no AWS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Map, Value};

fn repo() -> PathBuf {
    trailguard_tests::repo()
}

fn read(path: &str) -> String {
    match std::fs::read_to_string(repo().join(path)) {
        Ok(text) => text,
        Err(e) => panic!("{path}: {e}"),
    }
}

/// The first cell of every table row that starts with a backticked id.
fn table_ids(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(id, _)| id.to_string()))
        .collect()
}

#[test]
fn the_policy_tables_list_exactly_the_registered_policies() {
    let registered: BTreeSet<String> = trailguard_detect::config::builtin_policies()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    let documented = table_ids(&read("docs/policies.md"));
    let missing: Vec<_> = registered.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/policies.md: undocumented policies {missing:?}, documented but not registered {stale:?}"
    );
}

/// `value` flattened to dotted keys: every leaf (a scalar, an array, an empty table, or `None`
/// for a key without a default).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Option<Value>>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        Value::Null => {
            out.insert(prefix.to_string(), None);
        }
        other => {
            out.insert(prefix.to_string(), Some(other.clone()));
        }
    }
}

/// A TOML value for a JSON scalar or array (the reference's notation).
fn toml_value(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// The reference block a service's defaults make: tables in order, keys without a default
/// commented out. Printed when the documentation differs, to paste in.
fn render(defaults: &Value) -> String {
    fn table(prefix: &str, map: &Map<String, Value>, out: &mut String) {
        let mut nested = Vec::new();
        let mut body = String::new();
        for (key, value) in map {
            match value {
                Value::Object(inner) => nested.push((key, inner)),
                Value::Null => body.push_str(&format!("# {key} =\n")),
                other => body.push_str(&format!("{key} = {}\n", toml_value(other))),
            }
        }
        if !prefix.is_empty() && (!body.is_empty() || nested.iter().all(|(_, m)| m.is_empty())) {
            out.push_str(&format!("\n[{prefix}]\n"));
        }
        out.push_str(&body);
        for (key, inner) in nested {
            let quoted = if key.contains(['-', '.']) {
                format!("\"{key}\"")
            } else {
                key.clone()
            };
            let path = if prefix.is_empty() {
                quoted
            } else {
                format!("{prefix}.{quoted}")
            };
            if inner.is_empty() {
                out.push_str(&format!("\n[{path}]\n"));
            } else {
                table(&path, inner, out);
            }
        }
    }
    let mut out = String::new();
    if let Value::Object(map) = defaults {
        table("", map, &mut out);
    }
    out.trim_start().to_string()
}

/// The keys a reference block documents: its TOML, and its commented-out keys (`# key =`,
/// at the start of a line) under the table they follow, which have no default.
fn documented(block: &str) -> BTreeMap<String, Option<Value>> {
    let parsed: toml::Value = match toml::from_str(block) {
        Ok(v) => v,
        Err(e) => panic!("a reference block is not TOML: {e}\n{block}"),
    };
    let json = match serde_json::to_value(parsed) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    let mut keys = BTreeMap::new();
    flatten("", &json, &mut keys);
    let mut table = String::new();
    for line in block.lines() {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
            table = header.0.replace('"', "");
        } else if let Some((key, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(" =")) {
            if !key.contains(' ') {
                let path = if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                };
                keys.insert(path, None);
            }
        }
    }
    keys
}

/// The ```toml block that follows the line `heading` in `markdown`.
fn block_after(markdown: &str, heading: &str) -> String {
    let Some(start) = markdown.find(&format!("\n{heading}\n")) else {
        panic!("docs/configuration.md has no `{heading}` section");
    };
    let rest = &markdown[start..];
    let Some(open) = rest.find("```toml\n") else {
        panic!("`{heading}` has no ```toml block");
    };
    let body = &rest[open + "```toml\n".len()..];
    if body.starts_with("```") {
        return String::new();
    }
    let Some(close) = body.find("\n```") else {
        panic!("`{heading}`'s block is not closed");
    };
    body[..close].to_string()
}

fn check_reference(service: &str, defaults: Value) -> Option<String> {
    let doc = read("docs/configuration.md");
    let block = block_after(&doc, &format!("### {service}"));
    let mut expected = BTreeMap::new();
    flatten("", &defaults, &mut expected);
    let found = documented(&block);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !found.contains_key(*k))
        .collect();
    let unknown: Vec<&String> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(k, v)| match (v, found.get(k)) {
            (Some(want), Some(Some(have))) if want != have => {
                Some(format!("{k}: documented {have}, default {want}"))
            }
            (Some(want), Some(None)) => {
                Some(format!("{k}: documented without default, default {want}"))
            }
            _ => None,
        })
        .collect();
    if missing.is_empty() && unknown.is_empty() && wrong.is_empty() {
        return None;
    }
    Some(format!(
        "docs/configuration.md, {service}: missing {missing:?}, not accepted {unknown:?}, wrong defaults {wrong:?}\nthe defaults as a reference block:\n{}",
        render(&defaults)
    ))
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    match serde_json::to_value(value) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_configuration_reference_lists_every_key_with_its_default() {
    let problems: Vec<String> = [
        check_reference("ingest", json(&trailguard_ingest::IngestConfig::default())),
        check_reference("detect", json(&trailguard_detect::DetectConfig::default())),
        check_reference(
            "remediate",
            json(&trailguard_remediate::RemediateConfig::default()),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// docs/kafka.md's topics table: every topic role once, with the cleanup policy and retention
/// the services create it with.
#[test]
fn the_topics_table_matches_the_topic_settings() {
    use trailguard_common::config::TopicRole;
    let doc = read("docs/kafka.md");
    let Some(start) = doc.find("| topic (`kafka.topics.") else {
        panic!("docs/kafka.md has no topics table");
    };
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for row in doc[start..].lines().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 4 || !row.starts_with('|') {
            break;
        }
        let (keys, cleanup, retention) = (cells[1], cells[2], cells[3]);
        for key in keys.split('`').skip(1).step_by(2) {
            let Some(role) = TopicRole::from_key(key) else {
                problems.push(format!("`{key}` is not a topic"));
                continue;
            };
            seen.insert(key.to_string());
            let settings: BTreeMap<&str, String> = role.settings(1).into_iter().collect();
            let want_cleanup = settings.get("cleanup.policy").map(String::as_str);
            if want_cleanup != Some(cleanup) {
                problems.push(format!(
                    "{key}: cleanup `{cleanup}`, created with {want_cleanup:?}"
                ));
            }
            let days = settings
                .get("retention.ms")
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| ms / 86_400_000);
            let documented_days = retention
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            if days != documented_days {
                problems.push(format!(
                    "{key}: retention `{retention}`, created with {days:?} days"
                ));
            }
        }
    }
    for role in TopicRole::ALL {
        if !seen.contains(role.key()) {
            problems.push(format!("`{}` is missing", role.key()));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/kafka.md topics table: {problems:?}"
    );
}

/// The subcommands a `--help` lists (the first word of each line under `Commands:`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

fn help(binary: &str, args: &[&str]) -> String {
    let dir = match std::env::var("TRAILGUARD_TEST_BIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => panic!("TRAILGUARD_TEST_BIN_DIR is not set: run the tests with `make test`"),
    };
    let out = match std::process::Command::new(dir.join(binary))
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("{binary}: {e}"),
    };
    assert!(out.status.success(), "{binary} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every subcommand of every binary is documented where its service is, and no `--help`
/// promises what is not there ("later", "next").
#[test]
fn every_command_is_documented_and_help_promises_nothing_missing() {
    for (binary, doc) in [
        ("ingest", "docs/sources.md"),
        ("detect", "docs/policies.md"),
        ("remediate", "docs/remediation.md"),
    ] {
        let text = read(doc);
        let top = help(binary, &["--help"]);
        let mut texts = vec![(binary.to_string(), top.clone())];
        for command in commands(&top) {
            assert!(
                text.contains(&format!("{binary} {command}")),
                "{doc} does not show `{binary} {command}`"
            );
            let sub = help(binary, &[&command, "--help"]);
            texts.push((format!("{binary} {command}"), sub));
        }
        for (what, text) in texts {
            for stale in ["(later)", "later)", " next)", "not yet"] {
                assert!(
                    !text.contains(stale),
                    "`{what} --help` says {stale:?}:\n{text}"
                );
            }
        }
    }
}
