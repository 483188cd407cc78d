//! Golden test: every record of every file under `../shared/data/cloudtrail` normalizes to what
//! `tests/golden/shared-data.jsonl` says — the activity's identifying fields, or the dead-letter
//! kind. Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p trailguard-ingest --test golden`
//! and review the diff.

use std::path::PathBuf;

use serde_json::{json, Value};
use trailguard_ingest::files::{expand, Input};
use trailguard_ingest::normalize::normalize;
use trailguard_ingest::split::{decompress, split, Limits};

fn shared_data() -> PathBuf {
    std::env::var("TRAILGUARD_TEST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(
                    || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
                    std::path::PathBuf::from,
                )
                .join("../../shared/data/cloudtrail")
        })
}

fn line(file: &str, index: usize, result: Value) -> String {
    json!({"file": file, "index": index, "result": result}).to_string()
}

#[test]
fn shared_data_normalizes_as_recorded() -> Result<(), Box<dyn std::error::Error>> {
    let root = shared_data();
    let (inputs, _, unreadable) = expand(&[Input::Path(root.clone())]);
    assert!(unreadable.is_empty());
    assert!(
        inputs.len() >= 13,
        "shared data not found at {}",
        root.display()
    );
    let mut lines = Vec::new();
    for input in inputs {
        let Input::Path(path) = input else { continue };
        let file = path.strip_prefix(&root)?.display().to_string();
        let bytes = std::fs::read(&path)?;
        let limits = Limits::default();
        let plain = decompress(&bytes, limits);
        if let Some(err) = &plain.broke {
            lines.push(line(&file, 0, json!({"dead_letter": err.kind()})));
        }
        let items: Vec<_> = split(&plain.bytes, limits)
            .into_iter()
            .map(|item| (item.index, item.text.map(|t| t.into_owned())))
            .collect();
        for (index, text) in items {
            let result = match text
                .map_err(|e| e.kind())
                .and_then(|t| normalize(&t).map_err(|e| e.kind()))
            {
                Ok(a) => json!({
                    "id": a.id, "time": a.event_time, "source": a.event_source, "name": a.event_name,
                    "account": a.account_id, "region": a.region, "partition": a.partition,
                    "principal": a.principal, "actor": a.actor, "ip": a.source_ip, "host": a.source_host,
                    "outcome": a.outcome, "resources": a.resources,
                }),
                Err(kind) => json!({"dead_letter": kind}),
            };
            lines.push(line(&file, index, result));
        }
    }
    let golden = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("tests/golden/shared-data.jsonl");
    let actual = lines.join("\n") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual)?;
    }
    let expected = std::fs::read_to_string(&golden)?;
    for (n, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, e, "golden line {} differs", n + 1);
    }
    assert_eq!(actual.lines().count(), expected.lines().count());
    Ok(())
}
