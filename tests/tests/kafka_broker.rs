//! What only a real Apache Kafka broker offers, used for real: the topics the services create
//! carry their production settings (read back with `DescribeConfigs`), and the SASL/SCRAM
//! listener with the standard authorizer lets a service in with its credentials and grants and
//! refuses a user without a grant. On another broker (`TRAILGUARD_TEST_BROKER=tansu`) these
//! tests say so and pass: tansu has no ACLs and keeps no topic configs.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use trailguard_common::config::{KafkaConfig, TopicRole, Topics};
use trailguard_tests::{broker_kind, brokers, read_topic, repo, Run};

const TIMEOUT: Duration = Duration::from_secs(120);

fn on_apache_kafka(test: &str) -> Result<bool> {
    let kind = broker_kind()?;
    if kind != "kafka" {
        eprintln!("{test}: Apache Kafka only; the suite runs on {kind}");
    }
    Ok(kind == "kafka")
}

/// The settings of `topic` that were set explicitly (not broker defaults).
async fn topic_settings(topic: &str) -> Result<BTreeMap<String, String>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers()?)
        .create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let mut results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?;
    let resource = match results.pop() {
        Some(Ok(resource)) => resource,
        Some(Err(code)) => bail!("DescribeConfigs {topic}: {code}"),
        None => bail!("DescribeConfigs {topic}: no answer"),
    };
    Ok(resource
        .entries
        .into_iter()
        .filter(|e| !e.is_default)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect())
}

/// Every topic a service creates, read back from the broker: cleanup policy and retention by
/// role, `min.insync.replicas`, and an operator's `kafka.topic_config` on top.
#[tokio::test(flavor = "multi_thread")]
async fn created_topics_carry_their_production_settings() -> Result<()> {
    if !on_apache_kafka("created_topics_carry_their_production_settings")? {
        return Ok(());
    }
    let run = Run::new("topic-config")?;
    let topic = |role: &str| run.topic(role);
    let cfg = KafkaConfig {
        brokers: brokers()?,
        partitions: 2,
        topics: Topics {
            activities: topic("activities"),
            dlq: topic("dlq"),
            alerts: topic("alerts"),
            actions: topic("actions"),
            checkpoints: topic("checkpoints"),
            detect_state: topic("state"),
            detect_facts: topic("facts"),
            detect_signin_failures: topic("signin-failures"),
            detect_correlations: topic("correlations"),
            alerts_ocsf: topic("alerts-ocsf"),
        },
        topic_config: BTreeMap::from([(
            "alerts".to_string(),
            BTreeMap::from([("retention.ms".to_string(), "7776000000".to_string())]),
        )]),
        ..KafkaConfig::default()
    };
    cfg.validate()?;
    trailguard_common::kafka::ensure_topics(&cfg, &TopicRole::ALL).await?;

    const DAY: u64 = 86_400_000;
    let expected: [(&str, &str, Option<u64>); 9] = [
        ("activities", "delete", Some(7 * DAY)),
        ("signin-failures", "delete", Some(7 * DAY)),
        ("dlq", "delete", Some(30 * DAY)),
        // The operator's 90 days replace the default 30.
        ("alerts", "delete", Some(90 * DAY)),
        ("alerts-ocsf", "delete", Some(30 * DAY)),
        ("actions", "delete", Some(365 * DAY)),
        ("checkpoints", "compact", None),
        ("state", "compact", None),
        ("facts", "compact", None),
    ];
    for (name, policy, retention) in expected {
        let settings = topic_settings(&topic(name)).await?;
        ensure!(
            settings.get("cleanup.policy").map(String::as_str) == Some(policy),
            "{name}: cleanup.policy {policy} expected: {settings:?}"
        );
        ensure!(
            settings.get("retention.ms") == retention.map(|ms| ms.to_string()).as_ref(),
            "{name}: retention.ms {retention:?} expected: {settings:?}"
        );
        // One broker, one replica: an acknowledged write needs that one.
        ensure!(
            settings.get("min.insync.replicas").map(String::as_str) == Some("1"),
            "{name}: min.insync.replicas 1 expected: {settings:?}"
        );
    }
    // Created again (a second instance starting): left as they are.
    trailguard_common::kafka::ensure_topics(&cfg, &TopicRole::ALL).await?;
    Ok(())
}

/// Runs one of Kafka's admin tools against the local Apache Kafka (`deploy/local/kafka.sh`).
/// `deploy/local/kafka.sh` and the PLAINTEXT port of the local node.
fn kafka_script() -> Result<(String, String)> {
    let script = std::env::var("TRAILGUARD_TEST_KAFKA_SCRIPT")
        .context("TRAILGUARD_TEST_KAFKA_SCRIPT is not set (make test sets it)")?;
    let port = brokers()?
        .rsplit_once(':')
        .map(|(_, port)| port.to_string())
        .context("brokers")?;
    Ok((script, port))
}

fn kafka_admin(class: &str, args: &[&str]) -> Result<()> {
    let (script, port) = kafka_script()?;
    let output = Command::new(script)
        .args(["admin", &port, class])
        .args(args)
        .output()?;
    ensure!(
        output.status.success(),
        "{class} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn scram_user(name: &str, password: &str) -> Result<()> {
    kafka_admin(
        "kafka.admin.ConfigCommand",
        &[
            "--alter",
            "--entity-type",
            "users",
            "--entity-name",
            name,
            "--add-config",
            &format!("SCRAM-SHA-512=[password={password}]"),
        ],
    )
}

/// `run`'s services, connecting to the SCRAM listener as `user`.
fn as_user(run: &mut Run, user: &str, password: &str) -> Result<()> {
    let sasl = std::env::var("TRAILGUARD_TEST_KAFKA_SASL_BROKERS")
        .context("TRAILGUARD_TEST_KAFKA_SASL_BROKERS is not set (make test sets it)")?;
    for (key, value) in run.env.iter_mut() {
        if key == "TRAILGUARD_BROKERS" {
            *value = sasl.clone();
        }
    }
    for (key, value) in [
        ("SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("SASL_MECHANISM", "SCRAM-SHA-512"),
        ("SASL_USERNAME", user),
        ("SASL_PASSWORD", password),
    ] {
        run.env.push((
            format!("TRAILGUARD_KAFKA__CLIENT__{key}"),
            value.to_string(),
        ));
    }
    Ok(())
}

/// The services connect with SCRAM credentials and do what their ACLs grant: ingest publishes,
/// detect consumes in its group and raises alerts. A user without a grant is refused and ingest
/// says so and fails, publishing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn scram_users_get_what_their_acls_grant_and_nothing_else() -> Result<()> {
    if !on_apache_kafka("scram_users_get_what_their_acls_grant_and_nothing_else")? {
        return Ok(());
    }
    let mut run = Run::new("scram")?;
    let service = format!("{}-svc", run.id);
    let stranger = format!("{}-stranger", run.id);
    scram_user(&service, "service-secret")?;
    scram_user(&stranger, "stranger-secret")?;
    // The service may use this run's topics (created on first use) and consumer groups.
    let principal = format!("User:{service}");
    let grant = |what: &[&str]| -> Result<()> {
        let mut args = vec!["--add", "--allow-principal", principal.as_str()];
        args.extend_from_slice(what);
        kafka_admin("org.apache.kafka.tools.AclCommand", &args)
    };
    let (topics, groups) = (format!("{}.", run.id), format!("{}-", run.id));
    grant(&[
        "--operation",
        "All",
        "--topic",
        &topics,
        "--group",
        &groups,
        "--resource-pattern-type",
        "prefixed",
    ])?;
    grant(&["--operation", "IdempotentWrite", "--cluster"])?;
    // Without a grant for the followers' group (docs/kafka.md's ACL table has it), detect's
    // facts follower is refused for good: detect stops and says why, instead of running on
    // blind to the facts other instances learn.
    {
        let mut blind = Run {
            id: run.id.clone(),
            env: run.env.clone(),
        };
        as_user(&mut blind, &service, "service-secret")?;
        let mut detect = blind.spawn("detect", &[])?;
        let deadline = std::time::Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = detect.child.try_wait()? {
                break status;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "detect ran on without its facts follower: {}",
                detect.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        ensure!(!status.success(), "detect exited 0: {}", detect.log());
        ensure!(
            detect.log().contains("facts follower"),
            "the failure names the facts follower: {}",
            detect.log()
        );
    }
    grant(&["--operation", "Read", "--group", "trailguard-follow"])?;
    // And the groups detect reads its own topics back with (`trailguard-detect*` in the ACL
    // table): the blind detect above may have marked the facts topic before it stopped, and
    // reading back a topic with records in it names a group.
    grant(&[
        "--operation",
        "Read",
        "--group",
        "trailguard-detect",
        "--resource-pattern-type",
        "prefixed",
    ])?;

    // Refused: the stranger authenticates but has no grant.
    let mut refused = Run {
        id: run.id.clone(),
        env: run.env.clone(),
    };
    as_user(&mut refused, &stranger, "stranger-secret")?;
    let sample = repo().join("deploy/demo/sample/02-signin-failures.json");
    let output = refused
        .command("ingest", &["files", sample.to_str().context("path")?])?
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "ingest without a grant succeeded: {stderr}"
    );
    ensure!(
        stderr.to_lowercase().contains("authoriz"),
        "the refusal names authorization: {stderr}"
    );

    // Granted: ingest publishes, detect reads in its group and alerts.
    as_user(&mut run, &service, "service-secret")?;
    run.ingest_files(&sample)?;
    let _detect = run.spawn("detect", &[])?;
    let alerts = read_topic(&run.topic("alerts"), TIMEOUT, Duration::ZERO, |r| {
        !r.is_empty()
    })?;
    ensure!(!alerts.is_empty());
    Ok(())
}

/// Reading a partition back ends at the end of the log, even when no record sits at the last
/// offset below the high watermark: here a transaction's commit marker, written by a
/// transactional producer (Kafka Streams, an exactly-once connector, a replication tool). A
/// reader that waits for a record at that offset never finishes (it timed out after 300 s).
#[tokio::test(flavor = "multi_thread")]
async fn reading_back_ends_where_the_log_ends() -> Result<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    if !on_apache_kafka("reading_back_ends_where_the_log_ends")? {
        return Ok(()); // tansu has no transactions
    }
    let run = Run::new("read-back")?;
    let cfg = KafkaConfig {
        brokers: brokers()?,
        partitions: 1,
        topics: Topics {
            detect_state: run.topic("state"),
            ..Topics::default()
        },
        ..KafkaConfig::default()
    };
    trailguard_common::kafka::ensure_topics(&cfg, &[TopicRole::DetectState]).await?;
    let topic = run.topic("state");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers()?)
        .set("transactional.id", format!("{}-tx", run.id))
        .create()?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;
    producer.begin_transaction()?;
    for i in 0..3 {
        let key = format!("principal-{i}");
        producer
            .send(BaseRecord::to(&topic).key(&key).payload("{}"))
            .map_err(|(e, _)| e)?;
    }
    producer.commit_transaction(timeout)?;

    let (done, finished) = std::sync::mpsc::channel();
    let reader_cfg = cfg.clone();
    std::thread::spawn(move || {
        let mut keys = Vec::new();
        let read = trailguard_common::kafka::read_partition(
            &reader_cfg,
            &topic,
            0,
            "read-back-test",
            |read| {
                keys.push(String::from_utf8_lossy(read.key).into_owned());
                true
            },
        );
        let _ = done.send(read.map(|_| keys));
    });
    let keys = finished
        .recv_timeout(Duration::from_secs(60))
        .context("reading the partition back did not end at the end of the log")??;
    assert_eq!(keys, ["principal-0", "principal-1", "principal-2"]);
    Ok(())
}

/// One record to `topic` on the SCRAM listener as `user`; the broker's answer.
async fn produce_as(
    user: &str,
    password: &str,
    topic: &str,
    payload: &[u8],
) -> Result<std::result::Result<(), String>> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set(
            "bootstrap.servers",
            std::env::var("TRAILGUARD_TEST_KAFKA_SASL_BROKERS")
                .context("TRAILGUARD_TEST_KAFKA_SASL_BROKERS is not set (make test sets it)")?,
        )
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("message.timeout.ms", "20000")
        .create()?;
    Ok(producer
        .send(
            FutureRecord::to(topic).key("acl-test").payload(payload),
            Duration::from_secs(20),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string()))
}

/// The ACL layout of `deploy/kafka-acls.sh` (the one docs/kafka.md gives for MSK, Kubernetes
/// and compose), for real on the SCRAM listener with the standard authorizer: each service as
/// its own user, the pipeline passes from a trail file to action records; and a service writing
/// a topic another owns is refused.
#[tokio::test(flavor = "multi_thread")]
async fn each_service_writes_only_its_own_topics() -> Result<()> {
    if !on_apache_kafka("each_service_writes_only_its_own_topics")? {
        return Ok(());
    }
    let run = Run::new("acl-layout")?;
    let users = ["ingest", "detect", "remediate"].map(|s| format!("{}-{s}", run.id));
    let password = |user: &str| format!("{user}-password");
    for user in &users {
        scram_user(user, &password(user))?;
    }
    let (script, port) = kafka_script()?;
    let mut layout = Command::new(repo().join("deploy/kafka-acls.sh"));
    layout
        .args([
            script.as_str(),
            "admin",
            &port,
            "org.apache.kafka.tools.AclCommand",
        ])
        .env("INGEST_USER", &users[0])
        .env("DETECT_USER", &users[1])
        .env("REMEDIATE_USER", &users[2])
        .env("DETECT_GROUP", format!("{}-detect", run.id))
        .env("REMEDIATE_GROUP", format!("{}-remediate", run.id));
    for (var, role) in [
        ("TOPIC_ACTIVITIES", "activities"),
        ("TOPIC_DLQ", "dlq"),
        ("TOPIC_ALERTS", "alerts"),
        ("TOPIC_ACTIONS", "actions"),
        ("TOPIC_CHECKPOINTS", "checkpoints"),
        ("TOPIC_DETECT_STATE", "state"),
        ("TOPIC_DETECT_FACTS", "facts"),
        ("TOPIC_DETECT_SIGNIN_FAILURES", "signin-failures"),
        ("TOPIC_DETECT_CORRELATIONS", "correlations"),
    ] {
        layout.env(var, run.topic(role));
    }
    let output = layout.output()?;
    ensure!(
        output.status.success(),
        "deploy/kafka-acls.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let as_service = |i: usize| -> Result<Run> {
        let mut service = Run {
            id: run.id.clone(),
            env: run.env.clone(),
        };
        as_user(&mut service, &users[i], &password(&users[i]))?;
        Ok(service)
    };

    // The pipeline, each service as itself: a trail file in, action records out.
    let sample = repo().join("deploy/demo/sample/02-signin-failures.json");
    as_service(0)?.ingest_files(&sample)?;
    let _detect = as_service(1)?.spawn("detect", &[])?;
    // detect owns the alerts topic; remediate may not create it.
    trailguard_tests::wait_for_topic(&run.topic("alerts"), TIMEOUT)?;
    let aws = trailguard_tests::aws_endpoint()?;
    let _remediate = as_service(2)?.spawn("remediate", &["--aws-endpoint", &aws])?;
    read_topic(&run.topic("alerts"), TIMEOUT, Duration::ZERO, |r| {
        !r.is_empty()
    })?;
    // The sample's alerts ask for no action: one that does, as detect would write it.
    let (ingest, detect, remediate) = (&users[0], &users[1], &users[2]);
    let mut alert: trailguard_common::Alert = serde_json::from_str(include_str!("alert.json"))?;
    alert.id = format!("{}-notify", run.id);
    alert.actions = vec![trailguard_common::contract::RequestedAction {
        kind: trailguard_common::contract::ActionKind::Notify,
        target: trailguard_common::contract::Target {
            kind: "channel".into(),
            id: "default".into(),
            account_id: None,
            grantee: None,
        },
    }];
    let signed = trailguard_tests::signed(alert)?;
    produce_as(detect, &password(detect), &run.topic("alerts"), &signed)
        .await?
        .map_err(anyhow::Error::msg)
        .context("detect writes alerts")?;
    let actions = read_topic(&run.topic("actions"), TIMEOUT, Duration::ZERO, |r| {
        !r.is_empty()
    })?;
    ensure!(!actions.is_empty());

    // Each may write its own topic; none may write another's.
    produce_as(ingest, &password(ingest), &run.topic("activities"), b"{}")
        .await?
        .map_err(anyhow::Error::msg)
        .context("ingest writes activities")?;
    for (user, topic) in [
        (detect, "activities"),
        (remediate, "activities"),
        (ingest, "alerts"),
        (remediate, "alerts"),
        (ingest, "actions"),
        (detect, "actions"),
        (ingest, "state"),
        (remediate, "checkpoints"),
    ] {
        let answer = produce_as(user, &password(user), &run.topic(topic), b"{}").await?;
        match answer {
            Ok(()) => bail!("{user} wrote {topic}, which it does not own"),
            Err(why) => ensure!(
                why.to_lowercase().contains("authorization"),
                "{user} writing {topic}: {why}"
            ),
        }
    }
    Ok(())
}

/// A node's cluster id is 16 random bytes in URL-safe base64, so about one in 64 begins with
/// `-`, which Kafka's storage tool reads as an option: formatting failed and the node never
/// started (a private broker of the suite failed that way in CI). Every id `kafka.sh` makes
/// must be 22 base64url characters not beginning with `-`.
#[test]
fn cluster_ids_never_look_like_options() -> Result<()> {
    let script = trailguard_tests::env("TRAILGUARD_TEST_KAFKA_SCRIPT")?;
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"for _ in $(seq 1 400); do "$0" cluster-id || exit 1; done"#)
        .arg(&script)
        .output()?;
    ensure!(
        out.status.success(),
        "{script} cluster-id: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = String::from_utf8(out.stdout)?;
    let ids: Vec<&str> = ids.lines().collect();
    ensure!(ids.len() == 400, "{} ids, not 400", ids.len());
    for id in ids {
        ensure!(
            id.len() == 22
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id:?} is not 22 base64url characters"
        );
        ensure!(!id.starts_with('-'), "{id:?} begins with '-'");
    }
    Ok(())
}
