use super::*;
use serde_json::{json, Value};

/// A directory holding `files` (name, text).
fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

fn load(
    files: &[(&str, &str)],
    tweak: impl FnOnce(&mut SigmaConfig),
) -> Result<SigmaRules, String> {
    let d = dir(files);
    let mut cfg = SigmaConfig {
        paths: vec![d.path().to_path_buf()],
        ..SigmaConfig::default()
    };
    tweak(&mut cfg);
    SigmaRules::load(&cfg).map_err(|e| e.to_string())
}

/// A CloudTrail rule with `detection` (YAML, indented two spaces).
fn rule(id: &str, detection: &str) -> String {
    format!(
        "title: Test {id}\nid: {id}\nstatus: test\nlevel: high\ntags:\n  - attack.persistence\n  - attack.t1098.001\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n{detection}\n"
    )
}

/// A normalized CloudTrail record: `fields` over an ordinary IAM call by alice.
fn record(fields: Value) -> Activity {
    let mut r = json!({
        "eventVersion": "1.09", "eventTime": "2024-06-02T19:41:40Z",
        "eventSource": "iam.amazonaws.com", "eventName": "CreateUser",
        "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0",
        "eventID": "00000000-0000-4000-8000-000000000001", "eventType": "AwsApiCall",
        "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": "111111111111",
            "arn": "arn:aws:iam::111111111111:user/alice", "principalId": "AIDAEXAMPLE",
            "accessKeyId": "AKIAEXAMPLE"},
        "requestParameters": {"userName": "bob"},
    });
    if let (Some(map), Value::Object(fields)) = (r.as_object_mut(), fields) {
        for (k, v) in fields {
            if v.is_null() {
                map.remove(&k);
            } else {
                map.insert(k, v);
            }
        }
    }
    trailguard_ingest::normalize::normalize(&r.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the one rule with `detection` fires on the record with `fields`.
fn fires(detection: &str, fields: Value) -> bool {
    let rules =
        load(&[("r.yml", &rule("r1", detection))], |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.rules().len(), 1);
    let mut out = Vec::new();
    rules.evaluate(&record(fields), &mut out, &mut Vec::new());
    !out.is_empty()
}

#[test]
fn matching_is_case_insensitive_with_wildcards_and_escapes() {
    let d = "  selection:\n    eventName: 'createuser'\n  condition: selection";
    assert!(fires(d, json!({})));
    let d = "  selection:\n    eventName: 'Create*'\n    eventSource: 'ia?.amazonaws.com'\n  condition: selection";
    assert!(fires(d, json!({})));
    assert!(!fires(d, json!({"eventName": "DeleteUser"})));
    // An escaped star is a star.
    let d = "  selection:\n    requestParameters.userName: 'bo\\*'\n  condition: selection";
    assert!(!fires(d, json!({})), "bob is not bo*");
    assert!(fires(d, json!({"requestParameters": {"userName": "bo*"}})));
}

#[test]
fn dotted_paths_descend_objects_and_fan_out_over_arrays() {
    let d = "  selection:\n    requestParameters.containerDefinitions.command|contains: 'curl'\n  condition: selection";
    let ecs = json!({"requestParameters": {"containerDefinitions": [
        {"name": "a", "command": ["sleep", "10"]},
        {"name": "b", "command": ["sh", "-c", "curl http://169.254.169.254/"]}]}});
    assert!(fires(d, ecs));
    assert!(!fires(
        d,
        json!({"requestParameters": {"containerDefinitions": [{"command": ["sleep"]}]}})
    ));
    // A key holding a dot is read whole.
    let d = "  selection:\n    additionalEventData.x.y: 'z'\n  condition: selection";
    assert!(fires(d, json!({"additionalEventData": {"x.y": "z"}})));
}

#[test]
fn a_modifier_on_an_object_searches_inside_it_and_its_json_documents() {
    let d = "  selection:\n    requestParameters|contains: 'Suspended'\n  condition: selection";
    assert!(fires(
        d,
        json!({"requestParameters": {"bucketName": "b",
        "VersioningConfiguration": {"Status": "Suspended"}}})
    ));
    assert!(!fires(d, json!({})));
    // A policy held as a JSON string inside the parameters: its values are values of the
    // parameters (equality finds one only through the document).
    let d = "  selection:\n    requestParameters: 's3:GetObject'\n  condition: selection";
    let policy =
        json!({"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"]}]})
            .to_string();
    assert!(fires(
        d,
        json!({"requestParameters": {"policyDocument": policy}})
    ));
    assert!(!fires(
        d,
        json!({"requestParameters": {"policyDocument": "s3:GetObjectAcl"}})
    ));
    // A key, or a quoted pair of an object given as an object, is found in its JSON text.
    let d = "  selection:\n    requestParameters|contains: 'MFADelete'\n  condition: selection";
    assert!(fires(
        d,
        json!({"requestParameters": {"VersioningConfiguration": {"MFADelete": "Disabled"}}})
    ));
    let d = "  selection:\n    requestParameters|contains|all:\n      - '\"Effect\":\"Allow\"'\n      - 's3:GetObject'\n  condition: selection";
    let object =
        json!({"bucketPolicy": {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject"}]}});
    assert!(fires(d, json!({"requestParameters": object})));
    let policy =
        json!({"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}]})
            .to_string();
    assert!(fires(
        d,
        json!({"requestParameters": {"policyDocument": policy}})
    ));
    let d = "  selection:\n    requestParameters|contains|all:\n      - 'Deny'\n      - 's3:GetObject'\n  condition: selection";
    let policy = json!({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject"}]}).to_string();
    assert!(!fires(
        d,
        json!({"requestParameters": {"policyDocument": policy}})
    ));
}

#[test]
fn yaml_strings_equal_json_booleans_and_null_means_absent_or_null() {
    let d = "  selection:\n    responseElements.publiclyAccessible: 'true'\n  condition: selection";
    assert!(fires(
        d,
        json!({"responseElements": {"publiclyAccessible": true}})
    ));
    assert!(!fires(
        d,
        json!({"responseElements": {"publiclyAccessible": false}})
    ));
    let d = "  selection:\n    errorCode: null\n  condition: selection";
    assert!(fires(d, json!({})), "absent");
    assert!(!fires(d, json!({"errorCode": "AccessDenied"})));
    let d = "  selection:\n    responseElements.x: null\n  condition: selection";
    assert!(fires(d, json!({"responseElements": {"x": null}})), "null");
    // Null wherever a fanned-out path leads is null.
    let d = "  selection:\n    responseElements.items.x: null\n  condition: selection";
    assert!(fires(
        d,
        json!({"responseElements": {"items": [{"x": null}, {"x": null}]}})
    ));
    assert!(!fires(
        d,
        json!({"responseElements": {"items": [{"x": null}, {"x": "a"}]}})
    ));
}

#[test]
fn a_list_of_maps_is_or_and_value_lists_are_or() {
    let d = "  selection:\n    - eventName: 'DeleteUser'\n    - requestParameters.userName: 'bob'\n  condition: selection";
    assert!(fires(d, json!({})));
    let d = "  selection:\n    eventName:\n      - 'DeleteUser'\n      - 'CreateUser'\n  condition: selection";
    assert!(fires(d, json!({})));
    assert!(!fires(d, json!({"eventName": "GetUser"})));
}

#[test]
fn modifiers() {
    let cases: &[(&str, bool)] = &[
        ("eventName|startswith: 'create'", true),
        ("eventName|endswith: 'USER'", true),
        (
            "eventName|contains|all:\n      - 'Create'\n      - 'User'",
            true,
        ),
        (
            "eventName|contains|all:\n      - 'Create'\n      - 'Role'",
            false,
        ),
        ("eventName|re: '^Create(User|Role)$'", true),
        ("eventName|re: '^create'", false),
        ("eventName|re|i: '^create'", true),
        ("sourceIPAddress|cidr: '198.51.100.0/24'", true),
        ("sourceIPAddress|cidr: '10.0.0.0/8'", false),
        ("requestParameters.userName|exists: true", true),
        ("requestParameters.groupName|exists: true", false),
        (
            "userIdentity.userName|fieldref: requestParameters.userName",
            false,
        ),
    ];
    for (item, want) in cases {
        let d = format!("  selection:\n    {item}\n  condition: selection");
        assert_eq!(fires(&d, json!({})), *want, "{item}");
    }
    // fieldref: a user changing their own password.
    let d = "  selection:\n    userIdentity.userName|fieldref: requestParameters.userName\n  condition: selection";
    assert!(fires(
        d,
        json!({"requestParameters": {"userName": "alice"}})
    ));
}

#[test]
fn conditions() {
    let base = "  sel_a:\n    eventName: 'CreateUser'\n  sel_b:\n    eventSource: 'iam.amazonaws.com'\n  filter_x:\n    requestParameters.userName: 'bob'\n";
    let cases: &[(&str, bool)] = &[
        ("sel_a and sel_b", true),
        ("sel_a and not filter_x", false),
        ("(sel_a or filter_x) and not (sel_b and not sel_a)", true),
        ("1 of sel_*", true),
        ("all of sel_*", true),
        ("all of sel_* and not 1 of filter_*", false),
        ("all of them", true),
        ("1 of them and not sel_b", false),
    ];
    for (condition, want) in cases {
        let d = format!("{base}  condition: {condition}");
        assert_eq!(fires(&d, json!({})), *want, "{condition}");
    }
}

#[test]
fn identity_under_cloudtrails_names() {
    let role = json!({"userIdentity": {"type": "AssumedRole", "accountId": "111111111111",
        "principalId": "AROAEXAMPLE:alice@example.com",
        "arn": "arn:aws:sts::111111111111:assumed-role/AWSReservedSSO_Admin_0123/alice@example.com",
        "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE",
            "arn": "arn:aws:iam::111111111111:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123",
            "accountId": "111111111111", "userName": "AWSReservedSSO_Admin_0123"},
            "attributes": {"creationDate": "2024-06-02T19:00:00Z", "mfaAuthenticated": "false"}}}});
    for (item, want) in [
        ("userIdentity.type: 'AssumedRole'", true),
        (
            "userIdentity.sessionContext.sessionIssuer.type: 'Role'",
            true,
        ),
        (
            "userIdentity.sessionContext.sessionIssuer.userName|startswith: 'AWSReservedSSO_'",
            true,
        ),
        (
            "userIdentity.sessionContext.sessionIssuer.accountId: '111111111111'",
            true,
        ),
        (
            "userIdentity.sessionContext.attributes.mfaAuthenticated: 'false'",
            true,
        ),
        (
            "userIdentity.arn|contains: 'assumed-role/AWSReservedSSO'",
            true,
        ),
        ("userIdentity.userName: null", true),
    ] {
        let d = format!("  selection:\n    {item}\n  condition: selection");
        assert_eq!(fires(&d, role.clone()), want, "{item}");
    }
    let d = "  selection:\n    userIdentity.userName: 'alice'\n  condition: selection";
    assert!(fires(d, json!({})), "an IAM user's name");
}

#[test]
fn what_cannot_be_honoured_stops_start_up_naming_file_and_construct() {
    let timeframe = rule(
        "t1",
        "  selection:\n    eventName: 'x'\n  timeframe: 10m\n  condition: selection",
    );
    let err = load(&[("old.yml", &timeframe)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("old.yml") && err.contains("timeframe"),
        "{err}"
    );
    let not_kept = rule(
        "t2",
        "  selection:\n    tlsDetails.tlsVersion: 'TLSv1'\n  condition: selection",
    );
    let err = load(&[("tls.yml", &not_kept)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("tls.yml") && err.contains("tlsDetails.tlsVersion"),
        "{err}"
    );
    let identity = rule("t3", "  selection:\n    userIdentity.sessionContext.webIdFederationData.federatedProvider: 'x'\n  condition: selection");
    let err = load(&[("web.yml", &identity)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(err.contains("webIdFederationData"), "{err}");
    let index = rule(
        "t4",
        "  selection:\n    requestParameters.items[0].name: 'x'\n  condition: selection",
    );
    let err = load(&[("index.yml", &index)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("index.yml") && err.contains("array indexes"),
        "{err}"
    );
    let whole = rule(
        "t5",
        "  selection:\n    userIdentity|contains: 'admin'\n  condition: selection",
    );
    let err = load(&[("whole.yml", &whole)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("whole.yml") && err.contains("whole userIdentity"),
        "{err}"
    );
    // A correlation that cannot run, or a filter, in a file of its own, over a loaded rule:
    // refused, not dropped.
    let base = rule(
        "base-1",
        "  selection:\n    eventName: 'CreateUser'\n  condition: selection",
    );
    let correlation = "title: many users\ncorrelation:\n  type: value_sum\n  rules:\n    - base-1\n  group-by:\n    - userIdentity.arn\n  timespan: 10m\n  condition:\n    gte: 5\n    field: requestParameters.count\n";
    let err = load(&[("base.yml", &base), ("many.yml", correlation)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("many.yml") && err.contains("value_sum"),
        "{err}"
    );
    let filter = "title: not ci\nlogsource:\n  product: aws\n  service: cloudtrail\nfilter:\n  rules:\n    - base-1\n  selection:\n    userAgent: 'ci'\n  condition: not selection\n";
    let err = load(&[("base.yml", &base), ("filter.yml", filter)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("filter.yml") && err.contains("filter"),
        "{err}"
    );
    // A rule its authors deprecated is not loaded, and stops nothing.
    let old = rule(
        "old-1",
        "  selection:\n    eventName: 'CreateUser'\n  condition: selection",
    )
    .replace("status: test", "status: deprecated");
    let rules =
        load(&[("old.yml", &old), ("base.yml", &base)], |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.rules().len(), 1);
    let broken = "title: x\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n  selection:\n    eventName: x\n  condition: selection and\n";
    let err = load(&[("broken.yml", broken)], |_| {})
        .err()
        .unwrap_or_default();
    assert!(err.contains("broken.yml") && err.contains("parse"), "{err}");
    // Skipped instead, each named, the rest loaded; rules of other products are not read.
    let good = rule(
        "g1",
        "  selection:\n    eventName: 'CreateUser'\n  condition: selection",
    );
    let windows = "title: w\nlogsource:\n  product: windows\n  service: security\ndetection:\n  selection:\n    EventID|base64offset: 4688\n  condition: selection\n";
    let rules = load(
        &[
            ("old.yml", &timeframe),
            ("tls.yml", &not_kept),
            ("good.yml", &good),
            ("win.yml", windows),
        ],
        |cfg| cfg.skip_unsupported = true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.rules().len(), 1);
    assert_eq!(rules.skipped().len(), 2);
    assert_eq!(rules.other_sources(), 1);
}

#[test]
fn per_rule_settings_and_the_alert() {
    let a = rule(
        "11111111-2222-3333-4444-555555555555",
        "  selection:\n    eventName: 'CreateUser'\n  condition: selection",
    );
    let rules = load(&[("a.yml", &a)], |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    rules.evaluate(&record(json!({})), &mut out, &mut Vec::new());
    assert_eq!(out.len(), 1);
    let alert = &out[0];
    assert_eq!(
        alert.policy_id,
        "sigma-11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(alert.severity, Severity::High, "level high");
    assert!(
        alert.evidence.summary.contains("Test 11111111"),
        "{}",
        alert.evidence.summary
    );
    let mitre = alert
        .mitre
        .first()
        .map(|m| (m.tactic.clone(), m.technique_id.clone()));
    assert_eq!(
        mitre,
        Some(("Persistence".to_string(), "T1098.001".to_string()))
    );
    // The same record, the same alert id.
    let mut again = Vec::new();
    rules.evaluate(&record(json!({})), &mut again, &mut Vec::new());
    assert_eq!(again[0].id, alert.id);
    // Overrides by rule id.
    let key = "11111111-2222-3333-4444-555555555555";
    let tuned = load(&[("a.yml", &a)], |cfg| {
        cfg.rules.insert(
            key.into(),
            SigmaRuleConfig {
                severity: Some(Severity::Low),
                actions: Some(vec![ActionKind::Notify, ActionKind::RequireSignIn]),
                allow_principals: vec!["alice".into()],
                ..SigmaRuleConfig::default()
            },
        );
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    tuned.evaluate(&record(json!({})), &mut out, &mut Vec::new());
    assert!(out.is_empty(), "alice is allowed");
    let bob = json!({"userIdentity": {"type": "IAMUser", "userName": "carol", "accountId": "111111111111",
        "arn": "arn:aws:iam::111111111111:user/carol"}});
    tuned.evaluate(&record(bob), &mut out, &mut Vec::new());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].severity, Severity::Low);
    assert_eq!(out[0].actions.len(), 2);
    let off = load(&[("a.yml", &a)], |cfg| {
        cfg.rules.insert(
            key.into(),
            SigmaRuleConfig {
                enabled: Some(false),
                ..Default::default()
            },
        );
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(off.rules().is_empty());
    // A setting naming no rule is a typo.
    let err = load(&[("a.yml", &a)], |cfg| {
        cfg.rules
            .insert("no-such-rule".into(), SigmaRuleConfig::default());
    })
    .err()
    .unwrap_or_default();
    assert!(err.contains("policies.sigma.rules.no-such-rule"), "{err}");
}

#[test]
fn mitre_from_tags() {
    let tags = |t: &[&str]| mitre_of(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        tags(&["attack.defense-evasion", "attack.t1562.008", "attack.g0016"]),
        (
            "Defense Evasion".into(),
            "T1562.008".into(),
            "T1562.008".into()
        )
    );
    assert_eq!(
        tags(&["cve.2021-1234"]),
        (String::new(), String::new(), String::new())
    );
}
