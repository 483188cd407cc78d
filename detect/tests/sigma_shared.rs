//! SigmaHQ's AWS CloudTrail rules (`../shared/data/sigma`, DRL 1.1: see its README) over the
//! shared CloudTrail records (`../shared/data/cloudtrail`): every rule loads, and the hits are
//! the ones checked by hand, record by record (see `EXPECTED`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use trailguard_detect::sigma::{SigmaConfig, SigmaRules};

fn shared_cloudtrail() -> PathBuf {
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

fn sigma_rules() -> PathBuf {
    shared_cloudtrail().join("../sigma/rules/cloud/aws/cloudtrail")
}

/// Every activity of the shared records (those that normalize), as `ingest files` reads them.
fn activities() -> Vec<trailguard_common::Activity> {
    let root = shared_cloudtrail();
    let (files, _) = trailguard_detect::backtest::expand(std::slice::from_ref(&root));
    assert!(
        files.len() >= 13,
        "shared data not found at {}",
        root.display()
    );
    let mut out = Vec::new();
    trailguard_detect::backtest::read_records(&files, |a| out.extend(a.ok()));
    out
}

/// Hits per rule title on the shared records (each activity once), each checked by hand
/// against the record: the call the rule names, by the identity it names, with the parameters
/// it looks for (`SIGMA_HITS=1 cargo test -p trailguard-detect --test sigma_shared -- --nocapture`
/// lists them). Rules that fire on failed calls too (no `errorCode` test) count those.
///
/// Checked misses: `EnableRegion` is recorded under `cloudtrail.amazonaws.com` (the rule wants
/// `account.amazonaws.com`); the `ModifyInstanceAttribute` record sets `userData` directly (the
/// rule wants `attribute: userData`); `ListBuckets` is by assumed roles (filtered out); the
/// `PutUserPolicy`, `CreateUser` and `CreateAccessKey` records are not from S3 Browser; the
/// public `RestoreDBInstanceFromDBSnapshot` repeats the private one's event id (one activity);
/// `DeleteSAMLProvider`'s rule tests `status: success`, not a CloudTrail field (never matches);
/// the `DisableEbsEncryptionByDefault` record has no identity and is dead-lettered by ingest.
const EXPECTED: &[(&str, usize)] = &[
    ("AWS Bedrock Guardrail Deleted", 1),
    ("AWS Bedrock Guardrail Updated", 1),
    // Successful only (errorCode null or 'Success').
    ("AWS Bucket Deleted", 1),
    // StopLogging, UpdateTrail, DeleteTrail, failed ones included.
    ("AWS CloudTrail Important Change", 6),
    ("AWS Config Disabling Channel/Recorder", 2),
    // python-requests, not the console's Jersey agent.
    ("AWS Console GetSigninToken Potential Abuse", 1),
    ("AWS ConsoleLogin Failed Authentication", 4),
    // Every CreateAccessKey: the rule's filter compares the ARN with a literal string.
    ("AWS IAM Backdoor Users Keys", 9),
    ("AWS RDS Master Password Change", 1),
    // Root, anything but AwsServiceEvent.
    ("AWS Root Credentials", 22),
    // `requestParameters|contains: Suspended`, inside the versioning configuration.
    ("AWS S3 Bucket Versioning Disable", 2),
    ("AWS S3 Data Management Tampering", 6),
    // Every role session through AssumeRole: noisy by design (see the data's README).
    ("AWS STS AssumeRole Misuse", 198),
    // Two fixtures without eventID or requestID (user agents `TruffleHog`, `trufflehog/3.63.0`):
    // records without ids are told apart by where they were read, as ingest does.
    ("AWS STS GetCallerIdentity Enumeration Via TruffleHog", 2),
    ("AWS STS GetSessionToken Misuse", 2),
    ("AWS SecurityHub Findings Evasion", 2),
    ("AWS Snapshot Backup Exfiltration", 4),
    // MFAUsed 'No' compared case-insensitively with 'NO'; SSO and SAML console sign-ins too
    // (two more fixtures without ids told apart by where they were read, as above).
    ("AWS Successful Console Login Without MFA", 15),
    ("AWS Suspicious SAML Activity", 1),
    // fieldref of an ARN with a bare name never equal: every UpdateLoginProfile.
    ("AWS User Login Profile Was Modified", 3),
    ("AWS VPC Flow Logs Deleted", 1),
    ("Ingress/Egress Security Group Modification", 6),
    ("Modification or Deletion of an AWS RDS Cluster", 4),
    ("New Network ACL Entry Added", 5),
    ("New Network Route Added", 2),
    ("PUA - AWS TruffleHog Execution", 2),
    // Successful SendCommand only.
    ("Potential Malicious Usage of CloudTrail System Manager", 1),
    ("RDS Database Security Group Modification", 5),
];

#[test]
fn every_shared_rule_loads_and_hits_what_was_checked_by_hand() {
    let cfg = SigmaConfig {
        paths: vec![sigma_rules()],
        ..SigmaConfig::default()
    };
    let rules = SigmaRules::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.rules().len(), 57, "SigmaHQ's 57 AWS CloudTrail rules");
    assert!(rules.skipped().is_empty());
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for a in activities() {
        // The shared files repeat some records (Panther's rule tests): count each once.
        if !seen.insert(a.id.clone()) {
            continue;
        }
        let mut out = Vec::new();
        rules.evaluate(&a, &mut out, &mut Vec::new());
        for alert in out {
            // `SIGMA_HITS=1` lists every hit, for checking one by hand.
            if std::env::var_os("SIGMA_HITS").is_some() {
                println!(
                    "{} | {} {} | {} {} | err={:?} | {}",
                    alert.policy_name,
                    a.event_source,
                    a.event_name,
                    a.principal.kind,
                    a.principal.arn.as_deref().unwrap_or("-"),
                    a.outcome.error_code,
                    a.user_agent
                        .as_deref()
                        .unwrap_or("-")
                        .chars()
                        .take(60)
                        .collect::<String>()
                );
            }
            *hits.entry(alert.policy_name.clone()).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, usize> =
        EXPECTED.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(hits, expected);
}

/// The unsupported SigmaHQ rules (old aggregation notation) are refused, each naming its
/// file and `timeframe` or the condition it cannot read; with `skip_unsupported`, skipped.
#[test]
fn the_old_aggregation_rules_are_refused_by_name() {
    let dir = shared_cloudtrail().join("../sigma/unsupported");
    let cfg = SigmaConfig {
        paths: vec![dir.clone()],
        ..SigmaConfig::default()
    };
    let err = SigmaRules::load(&cfg)
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(".yml") && (err.contains("cannot be parsed") || err.contains("timeframe")),
        "{err}"
    );
    let cfg = SigmaConfig {
        paths: vec![dir],
        skip_unsupported: true,
        ..SigmaConfig::default()
    };
    let rules = SigmaRules::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rules.rules().is_empty(),
        "{:?}",
        rules.rules().iter().map(|r| &r.title).collect::<Vec<_>>()
    );
    assert_eq!(rules.skipped().len(), 8, "{:#?}", rules.skipped());
}

/// Rules routed by the event name they require (`sigma::route`) match what one engine of all
/// the rules matches: every shared rule and some written to probe the routing (wildcards,
/// modifiers, negation, quantifiers, escapes, names that are not ASCII), over every shared
/// activity with its event name as recorded, upper-cased, lower-cased, in alternating case,
/// with a letter that is not ASCII, eight times over and empty; and `SigmaRules::evaluate`
/// alerts for the shared rules the one engine matches.
#[test]
fn rules_routed_by_event_name_match_what_one_engine_of_them_all_matches() {
    use trailguard_detect::sigma::route::Routed;
    use trailguard_detect::sigma::view::CloudTrailView;

    let mut rules = Vec::new();
    for entry in walkdir::WalkDir::new(sigma_rules()) {
        let entry = entry.expect("a readable rules directory");
        if entry.path().extension().is_some_and(|e| e == "yml") {
            let text = std::fs::read_to_string(entry.path()).expect("a rule file");
            let collection = rsigma_parser::parse_sigma_yaml(&text).expect("a rule");
            rules.extend(collection.rules);
        }
    }
    let shared = rules.len();
    assert_eq!(shared, 57);
    for (id, detection) in [
        ("wild", "  selection:\n    eventName: 'Create*'\n  condition: selection\n"),
        ("lower", "  selection:\n    eventName: 'assumerole'\n  condition: selection\n"),
        ("starts", "  selection:\n    eventName|startswith: 'Put'\n  condition: selection\n"),
        ("not", "  filter:\n    eventName: AssumeRole\n  condition: not filter\n"),
        ("andnot", "  selection:\n    eventName: [ConsoleLogin, GetSessionToken]\n  filter:\n    errorCode: AccessDenied\n  condition: selection and not filter\n"),
        ("either", "  a:\n    eventName: CreateAccessKey\n  b:\n    eventSource: s3.amazonaws.com\n  condition: a or b\n"),
        ("maps", "  selection:\n    - eventName: DeleteTrail\n    - eventName: StopLogging\n      errorCode: null\n  condition: selection\n"),
        ("allof", "  sel_a:\n    eventName: [CreateAccessKey, ListBuckets]\n  sel_b:\n    eventSource: iam.amazonaws.com\n  condition: all of sel_*\n"),
        ("nof", "  sel_a:\n    eventName: ListBuckets\n  sel_b:\n    eventName: GetCallerIdentity\n  sel_c:\n    readOnly: true\n  condition: 2 of sel_*\n"),
        ("zeroof", "  sel_a:\n    eventName: ListBuckets\n  condition: 0 of sel_*\n"),
        ("them", "  selection:\n    eventName: ConsoleLogin\n  _hidden:\n    eventSource: s3.amazonaws.com\n  condition: all of them\n"),
        ("conditions", "  a:\n    eventName: DeleteTrail\n  b:\n    eventName: AssumeRole\n  condition:\n    - a\n    - b\n"),
        ("contradiction", "  a:\n    eventName: AssumeRole\n  b:\n    eventName: ListBuckets\n  c:\n    eventName: GetCallerIdentity\n  condition: (a and b) or c\n"),
        ("escaped", "  selection:\n    eventName: 'Assume\\*Role'\n  condition: selection\n"),
        ("empty", "  selection:\n    eventName: ''\n  condition: selection\n"),
        ("unicode", "  selection:\n    eventName: 'AssumeRole\u{130}'\n  condition: selection\n"),
        ("kelvin", "  selection:\n    eventName: 'ListBuc\u{212a}ets'\n  condition: selection\n"),
    ] {
        let yaml = format!("title: probe {id}\nid: probe-{id}\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n{detection}");
        rules.extend(rsigma_parser::parse_sigma_yaml(&yaml).expect("a rule").rules);
    }
    let (routed, errors) = Routed::compile(&rules);
    assert!(errors.is_empty(), "{errors:?}");
    let mut one = rsigma_eval::Engine::new();
    assert!(one.add_rules(rules.iter()).is_empty());
    // Most shared rules name their calls; the probes without a plain name are open.
    let (names, open) = routed.shape();
    assert!(
        names > 50 && open < shared / 4,
        "{names} names, {open} open"
    );

    let matched = |results: Vec<rsigma_eval::EvaluationResult>| {
        let mut ids: Vec<String> = results
            .into_iter()
            .map(|r| r.header.rule_id.unwrap_or(r.header.rule_title))
            .collect();
        ids.sort();
        ids
    };
    let mut matches = 0;
    let mut named_matches = 0;
    // The shared rules as detect loads them.
    let loaded = SigmaRules::load(&SigmaConfig {
        paths: vec![sigma_rules()],
        ..SigmaConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let shared_titles: std::collections::HashSet<&str> =
        loaded.rules().iter().map(|r| r.title.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    for a in activities() {
        if !seen.insert(a.id.clone()) {
            continue;
        }
        let alternating: String = a
            .event_name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        for name in [
            a.event_name.clone(),
            a.event_name.to_uppercase(),
            a.event_name.to_lowercase(),
            alternating,
            // Not ASCII (the lookup's fallback), and longer than its stack buffer.
            format!("{}\u{130}", a.event_name),
            a.event_name.replace('k', "\u{212a}"),
            a.event_name.repeat(8),
            String::new(),
        ] {
            let mut a = a.clone();
            a.event_name = name;
            let view = CloudTrailView::new(&a);
            let expected = matched(one.evaluate(&view));
            let mut routed_results = Vec::new();
            let engines: Vec<_> = routed.engines(&a.event_name).collect();
            for (i, engine) in engines.iter().enumerate() {
                let results = engine.evaluate(&view);
                // All but the last are named engines (the open one comes last).
                if i + 1 < engines.len() {
                    named_matches += results.len();
                }
                routed_results.extend(results);
            }
            assert_eq!(
                matched(routed_results),
                expected,
                "{} {}",
                a.event_name,
                a.id
            );
            matches += expected.len();
            // Through `SigmaRules::evaluate` (sorted by load order, each rule once): the shared
            // rules one engine matches alert.
            let mut alerts = Vec::new();
            loaded.evaluate(&a, &mut alerts, &mut Vec::new());
            let mut alerted: Vec<&str> = alerts.iter().map(|x| x.policy_name.as_str()).collect();
            let results = one.evaluate(&view);
            let mut titles: Vec<&str> = results
                .iter()
                .map(|r| r.header.rule_title.as_str())
                .filter(|t| shared_titles.contains(t))
                .collect();
            alerted.sort_unstable();
            titles.sort_unstable();
            assert_eq!(alerted, titles, "{} {}", a.event_name, a.id);
        }
    }
    // The comparison saw matches, through named engines as well as the open one.
    assert!(
        matches > 1000 && named_matches > 500,
        "{matches} matches, {named_matches} through named engines"
    );
}
