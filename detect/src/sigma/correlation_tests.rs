//! Sigma correlations: loading, each type's semantics, the forwarded record, restarts.

use std::sync::Arc;

use serde_json::{json, Value};
use trailguard_common::contract::{ActionKind, Alert, Severity};
use trailguard_common::Activity;

use super::correlation::{Correlator, Hit};
use super::{SigmaConfig, SigmaRules};

fn load(
    files: &[(&str, &str)],
    tweak: impl FnOnce(&mut SigmaConfig),
) -> Result<SigmaRules, String> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut cfg = SigmaConfig {
        paths: vec![dir.path().to_path_buf()],
        ..SigmaConfig::default()
    };
    tweak(&mut cfg);
    SigmaRules::load(&cfg).map_err(|e| e.to_string())
}

fn loaded(files: &[(&str, &str)]) -> Arc<SigmaRules> {
    Arc::new(load(files, |_| {}).unwrap_or_else(|e| panic!("{e}")))
}

/// A CloudTrail rule matching `eventName: name`.
fn rule(id: &str, name: &str) -> String {
    format!(
        "title: {id}\nid: {id}\nname: {id}\nstatus: test\nlevel: low\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n  selection:\n    eventName: '{name}'\n  condition: selection\n"
    )
}

/// A correlation rule with `body` under `correlation:` (indented two spaces).
fn correlation(id: &str, body: &str) -> String {
    format!("title: corr {id}\nid: {id}\nlevel: high\ntags:\n  - attack.credential-access\n  - attack.t1110.003\ncorrelation:\n{body}\n")
}

/// An activity at `second` (from a fixed start) by IAM user `user`, with `fields` over it.
fn at(second: i64, user: &str, fields: Value) -> Activity {
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_717_000_000 + second, 0)
        .unwrap_or_default();
    let mut r = json!({
        "eventVersion": "1.09", "eventTime": time.to_rfc3339(),
        "eventSource": "iam.amazonaws.com", "eventName": "CreateUser",
        "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0",
        "eventID": format!("00000000-0000-4000-8000-{:012}", second),
        "eventType": "AwsApiCall",
        "userIdentity": {"type": "IAMUser", "userName": user, "accountId": "111111111111",
            "arn": format!("arn:aws:iam::111111111111:user/{user}"), "principalId": "AIDAEXAMPLE"},
        "requestParameters": {"userName": "bob"},
    });
    if let (Some(map), Value::Object(fields)) = (r.as_object_mut(), fields) {
        for (k, v) in fields {
            map.insert(k, v);
        }
    }
    trailguard_ingest::normalize::normalize(&r.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// Rule alerts and correlation alerts for `activities`, in order, through one correlator;
/// each hit goes through its forwarded form (JSON) as on the topic.
fn run(rules: &Arc<SigmaRules>, activities: &[Activity]) -> (Vec<Alert>, Vec<Alert>) {
    let mut correlator = Correlator::new(rules.clone(), std::time::Duration::from_secs(300));
    let (mut own, mut correlated) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for a in activities {
        let mut hits = Vec::new();
        rules.evaluate(a, &mut own, &mut hits);
        for hit in hits {
            let text = serde_json::to_vec(&hit).unwrap_or_default();
            let hit: Hit = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{e}"));
            correlated.extend(correlator.observe(&hit, offset));
            offset += 1;
        }
    }
    (own, correlated)
}

fn failure(second: i64, user: &str, ip: &str) -> Activity {
    at(
        second,
        user,
        json!({"eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin",
               "eventType": "AwsConsoleSignIn", "sourceIPAddress": ip,
               "responseElements": {"ConsoleLogin": "Failure"}, "errorMessage": "Failed authentication"}),
    )
}

#[test]
fn event_count_groups_across_principals_and_counts_each_match_once() {
    let rules = loaded(&[
        ("login.yml", &rule("login-failed", "ConsoleLogin")),
        (
            "spray.yml",
            &correlation(
                "spray",
                "  type: event_count\n  rules:\n    - login-failed\n  group-by:\n    - sourceIPAddress\n  timespan: 10m\n  condition:\n    gte: 5",
            ),
        ),
    ]);
    assert_eq!(rules.correlations().len(), 1);
    // Five users, one address, a minute apart; a sixth address elsewhere; one repeated.
    let mut activities: Vec<Activity> = (0..5)
        .map(|i| failure(i * 60, &format!("user{i}"), "203.0.113.9"))
        .collect();
    activities.insert(2, failure(30, "user9", "192.0.2.1"));
    let (own, alerts) = run(&rules, &activities);
    assert!(
        own.is_empty(),
        "the rule alerts only through its correlation (generate: false)"
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert.policy_id, "sigma-spray");
    assert_eq!(alert.severity, Severity::High);
    assert_eq!(alert.entity.kind, "group");
    assert_eq!(alert.entity.id, "sourceIPAddress=203.0.113.9");
    assert_eq!(alert.evidence.activity_ids.len(), 5);
    assert!(
        alert.evidence.summary.contains("5 matching activities"),
        "{}",
        alert.evidence.summary
    );
    // Four are not enough, a repeat of one is not a fifth, and the window is 10 minutes.
    let (_, none) = run(&rules, &activities[..5]);
    assert!(none.is_empty(), "{none:#?}");
    let mut repeated = activities[..5].to_vec();
    repeated.push(activities[0].clone());
    assert!(run(&rules, &repeated).1.is_empty());
    let slow: Vec<Activity> = (0..5)
        .map(|i| failure(i * 200, &format!("user{i}"), "203.0.113.9"))
        .collect();
    assert!(run(&rules, &slow).1.is_empty(), "800 s apart end to end");
    // Any order: the same alert (event time, not arrival).
    let mut reversed = activities.clone();
    reversed.reverse();
    let (_, again) = run(&rules, &reversed);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, alert.id);
    // Matches that made an alert do not make another: ten in a row make two.
    let ten: Vec<Activity> = (0..10)
        .map(|i| failure(i * 10, &format!("user{i}"), "203.0.113.9"))
        .collect();
    assert_eq!(run(&rules, &ten).1.len(), 2);
}

#[test]
fn generate_lets_the_rules_alert_on_their_own_too() {
    let rules = loaded(&[
        ("login.yml", &rule("login-failed", "ConsoleLogin")),
        (
            "spray.yml",
            &(correlation(
                "spray",
                "  type: event_count\n  rules:\n    - login-failed\n  group-by:\n    - sourceIPAddress\n  timespan: 10m\n  condition:\n    gte: 2",
            ) + "generate: true\n"),
        ),
    ]);
    let (own, alerts) = run(
        &rules,
        &[
            failure(0, "a", "203.0.113.9"),
            failure(1, "b", "203.0.113.9"),
        ],
    );
    assert_eq!(own.len(), 2);
    assert_eq!(alerts.len(), 1);
}

#[test]
fn value_count_counts_distinct_values_per_principal() {
    let rules = Arc::new(
        load(
            &[
                ("create.yml", &rule("create-user", "CreateUser")),
                (
                    "many.yml",
                    &correlation(
                        "many-users",
                        "  type: value_count\n  rules:\n    - create-user\n  group-by:\n    - userIdentity.arn\n  timespan: 1h\n  condition:\n    gt: 2\n    field: requestParameters.userName",
                    ),
                ),
            ],
            |cfg| {
                cfg.rules.insert(
                    "many-users".into(),
                    super::SigmaRuleConfig {
                        actions: Some(vec![ActionKind::Notify, ActionKind::SuspendUser]),
                        ..Default::default()
                    },
                );
            },
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let create = |s: i64, user: &str, name: &str| {
        at(s, user, json!({"requestParameters": {"userName": name}}))
    };
    // The same name three times is one value; a third name (of alice's) makes three.
    let activities = [
        create(0, "alice", "x1"),
        create(60, "alice", "x1"),
        create(120, "mallory", "x2"),
        create(180, "alice", "x2"),
        create(240, "alice", "x1"),
        create(300, "alice", "x3"),
    ];
    let (_, alerts) = run(&rules, &activities);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert.entity.kind, "principal", "every match was alice's");
    assert!(alert.entity.id.contains("alice"), "{}", alert.entity.id);
    assert!(alert
        .evidence
        .summary
        .contains("3 distinct requestParameters.userName"));
    let kinds: Vec<ActionKind> = alert.actions.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, vec![ActionKind::Notify, ActionKind::SuspendUser]);
    assert!(run(&rules, &activities[..5]).1.is_empty());
}

#[test]
fn temporal_in_any_order_and_temporal_ordered_in_order() {
    let base = [
        ("create.yml", rule("create-key", "CreateAccessKey")),
        ("attach.yml", rule("attach-policy", "AttachUserPolicy")),
    ];
    let files = |body: &str| {
        let mut files: Vec<(&str, String)> = base.iter().map(|(n, t)| (*n, t.clone())).collect();
        files.push(("c.yml", correlation("persist", body)));
        files
    };
    let with = |body: &str| {
        let files = files(body);
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        loaded(&refs)
    };
    let key = |s: i64, user: &str| at(s, user, json!({"eventName": "CreateAccessKey"}));
    let attach = |s: i64, user: &str| at(s, user, json!({"eventName": "AttachUserPolicy"}));
    let temporal = with("  type: temporal\n  rules:\n    - create-key\n    - attach-policy\n  group-by:\n    - userIdentity.arn\n  timespan: 5m");
    // Both rules by one principal within 5 minutes, in either order.
    assert_eq!(
        run(&temporal, &[key(0, "eve"), attach(100, "eve")]).1.len(),
        1
    );
    assert_eq!(
        run(&temporal, &[attach(0, "eve"), key(100, "eve")]).1.len(),
        1
    );
    // Not by two principals, nor 10 minutes apart, nor one rule twice.
    assert!(run(&temporal, &[key(0, "eve"), attach(100, "bob")])
        .1
        .is_empty());
    assert!(run(&temporal, &[key(0, "eve"), attach(600, "eve")])
        .1
        .is_empty());
    assert!(run(&temporal, &[key(0, "eve"), key(100, "eve")])
        .1
        .is_empty());
    let ordered = with("  type: temporal_ordered\n  rules:\n    - create-key\n    - attach-policy\n  group-by:\n    - userIdentity.arn\n  timespan: 5m");
    assert_eq!(
        run(&ordered, &[key(0, "eve"), attach(100, "eve")]).1.len(),
        1
    );
    assert!(run(&ordered, &[attach(0, "eve"), key(100, "eve")])
        .1
        .is_empty());
    // Out of order arrival, in order in event time: still in order.
    assert_eq!(
        run(&ordered, &[attach(100, "eve"), key(0, "eve")]).1.len(),
        1
    );
    // A condition: one of two rules is enough.
    let either = with("  type: temporal\n  rules:\n    - create-key\n    - attach-policy\n  group-by:\n    - userIdentity.arn\n  timespan: 5m\n  condition:\n    gte: 1");
    assert_eq!(run(&either, &[key(0, "eve")]).1.len(), 1);
}

/// An ordered correlation over a group of thousands of first steps that no second step
/// follows (a guesser's failed sign-ins) still finds the chain the next step completes — the
/// earliest start's, with the earliest steps after it.
#[test]
fn an_ordered_correlation_over_a_large_group_finds_its_chain() {
    let rules = loaded(&[
        ("failed.yml", &rule("login-failed", "ConsoleLogin")),
        ("attach.yml", &rule("attach-policy", "AttachUserPolicy")),
        (
            "c.yml",
            &correlation(
                "guess-then-persist",
                "  type: temporal_ordered\n  rules:\n    - login-failed\n    - attach-policy\n  group-by:\n    - userIdentity.arn\n  timespan: 1h",
            ),
        ),
    ]);
    let mut acts: Vec<Activity> = (0..3_000)
        .map(|s| failure(s, "eve", "198.51.100.7"))
        .collect();
    acts.push(at(3_100, "eve", json!({"eventName": "AttachUserPolicy"})));
    let (_, correlated) = run(&rules, &acts);
    assert_eq!(correlated.len(), 1);
    // The first failure within the hour before the step that completes it, then that step.
    assert_eq!(
        correlated[0].evidence.activity_ids,
        [acts[0].id.clone(), acts[3_000].id.clone()]
    );
}

#[test]
fn aliases_name_each_rules_field() {
    // Who created a key, and for whom a key was created: the same person, by two fields.
    let rules = loaded(&[
        ("create.yml", &rule("create-key", "CreateAccessKey")),
        ("attach.yml", &rule("attach-policy", "AttachUserPolicy")),
        (
            "c.yml",
            &correlation(
                "target",
                "  type: temporal\n  rules:\n    - create-key\n    - attach-policy\n  group-by:\n    - target\n  timespan: 5m\n  aliases:\n    target:\n      create-key: requestParameters.userName\n      attach-policy: requestParameters.userName",
            ),
        ),
    ]);
    let key = at(
        0,
        "eve",
        json!({"eventName": "CreateAccessKey", "requestParameters": {"userName": "backdoor"}}),
    );
    let attach = at(
        60,
        "mallory",
        json!({"eventName": "AttachUserPolicy", "requestParameters": {"userName": "backdoor", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}}),
    );
    let (_, alerts) = run(&rules, &[key, attach]);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].entity.id, "target=backdoor");
    assert!(
        alerts[0].principal.is_none() && alerts[0].account_id.is_none(),
        "a group's alert names nobody who merely completed it: {:#?}",
        alerts[0]
    );
    assert!(
        alerts[0]
            .actions
            .iter()
            .all(|a| a.kind == ActionKind::Notify),
        "two principals: nothing but notify"
    );
}

#[test]
fn a_restart_from_the_safe_offset_raises_the_same_alert() {
    let rules = loaded(&[
        ("login.yml", &rule("login-failed", "ConsoleLogin")),
        (
            "spray.yml",
            &correlation(
                "spray",
                "  type: event_count\n  rules:\n    - login-failed\n  group-by:\n    - sourceIPAddress\n  timespan: 10m\n  condition:\n    gte: 3",
            ),
        ),
    ]);
    let mut hits = Vec::new();
    for (i, user) in ["a", "b", "c", "d"].iter().enumerate() {
        rules.evaluate(
            &failure(i as i64 * 60, user, "203.0.113.9"),
            &mut Vec::new(),
            &mut hits,
        );
    }
    assert_eq!(hits.len(), 4);
    let mut first = Correlator::new(rules.clone(), std::time::Duration::from_secs(300));
    let mut alerts = Vec::new();
    for (offset, hit) in hits.iter().enumerate().take(3) {
        alerts.extend(first.observe(hit, offset as i64));
    }
    assert_eq!(alerts.len(), 1);
    // Committed at the safe offset, then restarted: the replay rebuilds the window.
    let safe = first.safe_offset(3);
    assert_eq!(safe, 0, "the window's first match is still held");
    let mut second = Correlator::new(rules.clone(), std::time::Duration::from_secs(300));
    let mut again = Vec::new();
    for (offset, hit) in hits.iter().enumerate().skip(safe as usize) {
        again.extend(second.observe(hit, offset as i64));
    }
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, alerts[0].id);
    // Once the watermark passes the window, nothing is held and the offset moves on.
    let late = failure(3_600, "z", "192.0.2.50");
    let mut more = Vec::new();
    rules.evaluate(&late, &mut Vec::new(), &mut more);
    second.observe(&more[0], 4);
    second.expire(late.event_time - chrono::Duration::seconds(300));
    assert_eq!(second.safe_offset(5), 4, "only the last match is held");
}

#[test]
fn the_forwarded_record_is_checked_against_the_configuration() {
    let rules = loaded(&[
        ("login.yml", &rule("login-failed", "ConsoleLogin")),
        (
            "spray.yml",
            &correlation(
                "spray",
                "  type: event_count\n  rules:\n    - login-failed\n  group-by:\n    - sourceIPAddress\n  timespan: 10m\n  condition:\n    gte: 1",
            ),
        ),
    ]);
    let mut hits = Vec::new();
    rules.evaluate(&failure(0, "a", "203.0.113.9"), &mut Vec::new(), &mut hits);
    let hit = hits.remove(0);
    assert_eq!(hit.key(), "sigma-spray\u{1f}=203.0.113.9");
    let mut correlator = Correlator::new(rules.clone(), std::time::Duration::from_secs(300));
    for bad in [
        Hit {
            correlation: "sigma-nope".into(),
            ..hit.clone()
        },
        Hit {
            rules: vec![7],
            ..hit.clone()
        },
        Hit {
            group: vec![],
            ..hit.clone()
        },
        // Forwarded under another definition of the correlation (it was changed since).
        Hit {
            definition: "0".repeat(32),
            ..hit.clone()
        },
    ] {
        assert!(correlator.observe(&bad, 0).is_empty());
    }
    assert_eq!(
        correlator.take_dropped(),
        super::correlation::Dropped {
            full: 0,
            late: 0,
            unknown: 4
        }
    );
    assert_eq!(correlator.observe(&hit, 1).len(), 1);
    // A long group value is kept as its digest: bounded keys, no two values merged.
    let long = "x".repeat(10_000);
    let mut hits = Vec::new();
    rules.evaluate(
        &at(5, "a", json!({"eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin", "sourceIPAddress": long})),
        &mut Vec::new(),
        &mut hits,
    );
    let group = hits[0].group[0].clone().unwrap_or_default();
    assert!(
        group.starts_with("#sha256:") && group.len() < 100,
        "{group}"
    );
    // A value written like a digest is a value, not that digest.
    let mut looks_alike = Vec::new();
    rules.evaluate(
        &at(6, "a", json!({"eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin", "sourceIPAddress": &group[1..]})),
        &mut Vec::new(),
        &mut looks_alike,
    );
    assert_ne!(looks_alike[0].group, hits[0].group);
    // The forwarded activity leaves its documents out.
    assert!(hits[0].activity.request_parameters.is_none());
}

#[test]
fn correlations_that_cannot_run_stop_start_up_naming_the_construct() {
    let base = rule("login-failed", "ConsoleLogin");
    let cases = [
        ("  type: value_sum\n  rules:\n    - login-failed\n  timespan: 10m\n  condition:\n    gte: 5\n    field: x", "value_sum"),
        ("  type: event_count\n  rules:\n    - login-failed\n  timespan: 10m\n  window: tumbling\n  condition:\n    gte: 5", "window tumbling"),
        ("  type: event_count\n  rules:\n    - login-failed\n  timespan: 10m\n  condition:\n    lt: 5", "only a lower bound"),
        ("  type: event_count\n  rules:\n    - login-failed\n    - not-there\n  timespan: 10m\n  condition:\n    gte: 5", "not-there"),
        ("  type: event_count\n  rules:\n    - login-failed\n  group-by:\n    - tlsDetails.tlsVersion\n  timespan: 10m\n  condition:\n    gte: 5", "tlsDetails.tlsVersion"),
        ("  type: value_count\n  rules:\n    - login-failed\n  timespan: 10m\n  condition:\n    gte: 5", "condition field"),
        ("  type: event_count\n  rules:\n    - login-failed\n  timespan: 90d\n  condition:\n    gte: 5", "timespan 90d"),
        ("  type: temporal_ordered\n  rules:\n    - login-failed\n  timespan: 10m\n  condition:\n    gte: 5", "temporal_ordered"),
        // Every match carries every group-by field: thousands would make each megabytes.
        (
            &format!(
                "  type: event_count\n  rules:\n    - login-failed\n  group-by:\n{}  timespan: 10m\n  condition:\n    gte: 5",
                "    - sourceIPAddress\n".repeat(9)
            ),
            "at most 8",
        ),
    ];
    for (body, construct) in cases {
        let err = load(
            &[("base.yml", &base), ("bad.yml", &correlation("bad", body))],
            |_| {},
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("bad.yml") && err.contains(construct),
            "{construct}: {err}"
        );
    }
    // Over another correlation.
    let first = correlation("first", "  type: event_count\n  rules:\n    - login-failed\n  timespan: 10m\n  condition:\n    gte: 2");
    let second = correlation(
        "second",
        "  type: event_count\n  rules:\n    - first\n  timespan: 1h\n  condition:\n    gte: 2",
    );
    let err = load(
        &[("base.yml", &base), ("a.yml", &first), ("b.yml", &second)],
        |_| {},
    )
    .err()
    .unwrap_or_default();
    assert!(
        err.contains("b.yml") && err.contains("correlations of correlations"),
        "{err}"
    );
    // Over a rule switched off.
    let err = load(&[("base.yml", &base), ("a.yml", &first)], |cfg| {
        cfg.rules.insert(
            "login-failed".into(),
            super::SigmaRuleConfig {
                enabled: Some(false),
                ..Default::default()
            },
        );
    })
    .err()
    .unwrap_or_default();
    assert!(
        err.contains("a.yml") && err.contains("switched off"),
        "{err}"
    );
    // Skipped with skip_unsupported, the rest loaded.
    let rules = load(
        &[("base.yml", &base), ("a.yml", &first), ("b.yml", &second)],
        |cfg| cfg.skip_unsupported = true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.correlations().len(), 1);
    assert_eq!(rules.skipped().len(), 1);
    // A correlation over another product's rules is not ours: passed over.
    let windows = "title: w\nid: win-1\nlogsource:\n  product: windows\n  service: security\ndetection:\n  selection:\n    EventID: 4625\n  condition: selection\n";
    let over_windows = correlation(
        "w-burst",
        "  type: event_count\n  rules:\n    - win-1\n  timespan: 10m\n  condition:\n    gte: 5",
    );
    let rules = load(
        &[
            ("base.yml", &base),
            ("w.yml", windows),
            ("wc.yml", &over_windows),
        ],
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.correlations().len(), 0);
    assert_eq!(rules.rules().len(), 1);
}

/// The hit of `rules`' one correlation for `a`.
fn hit_of(rules: &SigmaRules, a: &Activity) -> Hit {
    let mut hits = Vec::new();
    rules.evaluate(a, &mut Vec::new(), &mut hits);
    assert_eq!(hits.len(), 1);
    hits.remove(0)
}

fn spray(gte: u32, timespan: &str) -> Arc<SigmaRules> {
    loaded(&[
        ("login.yml", &rule("login-failed", "ConsoleLogin")),
        (
            "spray.yml",
            &correlation(
                "spray",
                &format!("  type: event_count\n  rules:\n    - login-failed\n  group-by:\n    - sourceIPAddress\n  timespan: {timespan}\n  condition:\n    gte: {gte}"),
            ),
        ),
    ])
}

#[test]
fn a_restart_after_part_of_an_alert_expired_counts_the_same() {
    let rules = spray(3, "5m");
    let ip = "203.0.113.9";
    // m1..m3 make an alert; m4 follows; another address moves the watermark past m1 and m2
    // (at offset 64, an expiry point); then m5.
    let hits: Vec<(i64, Hit)> = vec![
        (0, hit_of(&rules, &failure(0, "a", ip))),
        (1, hit_of(&rules, &failure(100, "b", ip))),
        (2, hit_of(&rules, &failure(250, "c", ip))),
        (3, hit_of(&rules, &failure(320, "d", ip))),
        (64, hit_of(&rules, &failure(450, "z", "192.0.2.7"))),
        (65, hit_of(&rules, &failure(400, "e", ip))),
    ];
    let lateness = std::time::Duration::ZERO;
    let mut once = Correlator::new(rules.clone(), lateness);
    let mut uninterrupted = Vec::new();
    let mut safe = -1;
    for (offset, hit) in &hits {
        uninterrupted.extend(once.observe(hit, *offset));
        if *offset == 64 {
            safe = once.safe_offset(65);
        }
    }
    assert_eq!(
        uninterrupted.len(),
        1,
        "m4 and m5 are two: {uninterrupted:#?}"
    );
    assert_eq!(
        safe, 0,
        "m3 counted toward m1's alert: the replay starts at m1"
    );
    // Stopped after offset 64, restarted from the safe offset.
    let mut again = Correlator::new(rules.clone(), lateness);
    let replayed: Vec<Alert> = hits
        .iter()
        .filter(|(offset, _)| *offset >= safe)
        .flat_map(|(offset, hit)| again.observe(hit, *offset))
        .collect();
    let ids = |alerts: &[Alert]| alerts.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&replayed), ids(&uninterrupted));
}

#[test]
fn late_matches_and_hostile_times_are_not_counted_and_never_panic() {
    let rules = spray(2, "10m");
    let mut correlator = Correlator::new(rules.clone(), std::time::Duration::from_secs(300));
    assert!(correlator
        .observe(&hit_of(&rules, &failure(100_000, "a", "203.0.113.9")), 1)
        .is_empty());
    // A day before the latest time: too late to join anything held.
    let late = hit_of(&rules, &failure(100_000 - 86_400, "b", "203.0.113.9"));
    assert!(correlator.observe(&late, 2).is_empty());
    assert_eq!(correlator.take_dropped().late, 1);
    // Times at the ends of what chrono can hold (an activities topic anyone may write).
    for (i, time) in [
        chrono::DateTime::<chrono::Utc>::MAX_UTC,
        chrono::DateTime::<chrono::Utc>::MIN_UTC,
    ]
    .into_iter()
    .enumerate()
    {
        let mut hit = hit_of(&rules, &failure(i as i64, "c", "198.51.100.1"));
        hit.activity.event_time = time;
        hit.activity.id = format!("edge-{i}");
        correlator.observe(&hit, 64 * (i as i64 + 1));
        correlator.expire(time);
        correlator.safe_offset(200);
    }
}

#[test]
fn loading_edge_cases() {
    let base = rule("login-failed", "ConsoleLogin");
    // A negative count (read as a huge one) could never be reached: refused.
    let negative = correlation(
        "neg",
        "  type: event_count\n  rules:\n    - login-failed\n  timespan: 10m\n  condition:\n    gte: -1",
    );
    let err = load(&[("base.yml", &base), ("neg.yml", &negative)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("neg.yml") && err.contains("condition"),
        "{err}"
    );
    // Two temporal correlations with one title in one file: each its own condition.
    let key = rule("create-key", "CreateAccessKey");
    let two = "title: same\nid: any-one\ncorrelation:\n  type: temporal\n  rules:\n    - login-failed\n    - create-key\n  timespan: 5m\n  condition:\n    gte: 1\n---\ntitle: same\nid: both\ncorrelation:\n  type: temporal\n  rules:\n    - login-failed\n    - create-key\n  timespan: 5m\n";
    let rules = loaded(&[("base.yml", &base), ("key.yml", &key), ("two.yml", two)]);
    let (_, alerts) = run(&rules, &[failure(0, "a", "203.0.113.9")]);
    let fired: Vec<&str> = alerts.iter().map(|a| a.policy_id.as_str()).collect();
    assert_eq!(fired, vec!["sigma-any-one"], "both needs both rules");
    // A correlation in its own file naming a rule switched off: refused, not passed over as
    // another product's.
    let named = correlation(
        "by-name",
        "  type: event_count\n  rules:\n    - create-key\n  timespan: 10m\n  condition:\n    gte: 2",
    );
    let err = load(&[("key.yml", &key), ("n.yml", &named)], |cfg| {
        cfg.rules.insert(
            "create-key".into(),
            super::SigmaRuleConfig {
                enabled: Some(false),
                ..Default::default()
            },
        );
    })
    .err()
    .unwrap_or_default();
    assert!(err.contains("n.yml") && err.contains("create-key"), "{err}");
    // Or naming a rule whose file was refused whole: listed as skipped, not passed over.
    let broken = "title: broken\nid: broken-1\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n  selection:\n    eventName: x\n  condition: selection and\n";
    let over_broken = correlation(
        "over-broken",
        "  type: event_count\n  rules:\n    - broken-1\n  timespan: 10m\n  condition:\n    gte: 2",
    );
    let rules = load(&[("broken.yml", broken), ("ob.yml", &over_broken)], |cfg| {
        cfg.skip_unsupported = true;
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let skipped: Vec<&str> = rules.skipped().iter().map(|s| s.rule.as_str()).collect();
    assert!(skipped.contains(&"over-broken"), "{skipped:?}");
}
