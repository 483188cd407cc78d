//! `check-iam-policies CALL_LOG [REPO]`: after the test suite, every AWS call the services made (one
//! `binary<TAB>service<TAB>operation` line each) must be allowed by `deploy/iam/<binary>.json`.
//! Fails when one is not, or when the log shows no call of ingest or remediate (a check that
//! saw nothing proves nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use trailguard_tests::iam_check::{allows, iam_action};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check-iam-policies CALL_LOG [REPO]");
        return ExitCode::FAILURE;
    };
    let log = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("check-iam-policies: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut calls: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in log.lines() {
        let mut parts = line.split('\t');
        if let (Some(binary), Some(service), Some(op)) = (parts.next(), parts.next(), parts.next())
        {
            calls
                .entry(binary.to_string())
                .or_default()
                .insert(iam_action(service, op));
        }
    }
    // The clone under test (this binary may have been built in another one).
    let repo = std::env::args()
        .nth(2)
        .map_or_else(trailguard_tests::repo, std::path::PathBuf::from);
    let mut failed = false;
    for required in ["ingest", "remediate"] {
        if !calls.contains_key(required) {
            eprintln!("check-iam-policies: no AWS call of {required} was logged");
            failed = true;
        }
    }
    for (binary, actions) in &calls {
        let file = repo.join("deploy/iam").join(format!("{binary}.json"));
        let policy: serde_json::Value = match std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("check-iam-policies: {}: {e}", file.display());
                failed = true;
                continue;
            }
        };
        for action in actions {
            if allows(&policy, action) {
                println!("  {binary}: {action} allowed");
            } else {
                eprintln!("check-iam-policies: {binary} calls {action}, which deploy/iam/{binary}.json does not allow");
                failed = true;
            }
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!(
        "iam policies: {} distinct calls of {} services, all allowed",
        calls.values().map(BTreeSet::len).sum::<usize>(),
        calls.len()
    );
    ExitCode::SUCCESS
}
