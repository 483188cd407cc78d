//! `make bench` part: alert → action-record latency of remediate against moto. 1,000 signed
//! alerts, each asking to make its own public bucket private (mode `auto`, rate limit off),
//! are published in one burst; latency is the Kafka timestamp of each action record minus that
//! of its alert (both CreateTime), so it includes queueing behind the burst.
//!
//! Env: `TRAILGUARD_BENCH_BROKERS`, `TRAILGUARD_BENCH_AWS_ENDPOINT` and
//! `TRAILGUARD_BENCH_REMEDIATE` (the release binary); `TRAILGUARD_BENCH_ALERTS` (default 1000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use trailguard_common::contract::{ActionKind, ActionRecord, RequestedAction, Target};
use trailguard_common::Alert;

fn main() -> Result<()> {
    let (Ok(brokers), Ok(endpoint), Ok(binary)) = (
        std::env::var("TRAILGUARD_BENCH_BROKERS"),
        std::env::var("TRAILGUARD_BENCH_AWS_ENDPOINT"),
        std::env::var("TRAILGUARD_BENCH_REMEDIATE"),
    ) else {
        println!("remediate latency: skipped (run `make bench`)");
        return Ok(());
    };
    let n: usize = std::env::var("TRAILGUARD_BENCH_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(&brokers, &endpoint, &binary, n))
}

async fn run(brokers: &str, endpoint: &str, binary: &str, n: usize) -> Result<()> {
    let id = format!("bench-remediate-{}", std::process::id());
    let (alerts_topic, actions_topic) = (format!("{id}.alerts"), format!("{id}.actions"));
    let s3 = trailguard_tests::s3_with(&trailguard_tests::aws_at(endpoint).await);
    let setup = Instant::now();
    for i in 0..n {
        let bucket = format!("{id}-{i}");
        s3.create_bucket().bucket(&bucket).send().await?;
        s3.put_bucket_acl()
            .bucket(&bucket)
            .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
            .send()
            .await?;
    }
    let config = std::env::temp_dir().join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint_url = \"{endpoint}\"\nforce_path_style = true\nregion = \"us-east-1\"\n\n\
             [remediate]\ndefault_mode = \"auto\"\n\n\
             [remediate.rate_limits.make_bucket_private]\nmax = 0\nper = \"1h\"\n\n\
             [kafka]\nbrokers = \"{brokers}\"\npartitions = 3\n[kafka.topics]\nalerts = \"{alerts_topic}\"\nactions = \"{actions_topic}\"\n"
        ),
    )?;
    let key = "bench-signing-key-0123456789abcdef0123456789";
    let mut child = std::process::Command::new(binary)
        .args([
            "--config",
            config.to_str().context("path")?,
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("TRAILGUARD_SIGNING__KEY_ID", "bench")
        .env("TRAILGUARD_SIGNING__KEY", key)
        .env("TRAILGUARD_REMEDIATE__GROUP_ID", format!("{id}-group"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("TRAILGUARD_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting remediate")?;
    let result = measure(brokers, &alerts_topic, &actions_topic, &id, key, n, setup).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // Leave the shared AWS-API server as it was: other runs list this account's buckets.
    for i in 0..n {
        let _ = s3.delete_bucket().bucket(format!("{id}-{i}")).send().await;
    }
    result
}

async fn measure(
    brokers: &str,
    alerts_topic: &str,
    actions_topic: &str,
    id: &str,
    key: &str,
    n: usize,
    setup: Instant,
) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{id}-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    // Wait until remediate has created its topics and joined.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let md = consumer.fetch_metadata(Some(actions_topic), Duration::from_secs(5));
        if md.as_ref().is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == actions_topic && !t.partitions().is_empty())
        }) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "remediate did not create {actions_topic}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    consumer.subscribe(&[actions_topic])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    let signer = trailguard_common::sign::Signer::new("bench", key);
    let template: Alert = serde_json::from_str(include_str!("../tests/alert.json"))?;
    println!(
        "remediate latency: {n} public buckets created in {:.1}s",
        setup.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut futures = Vec::with_capacity(n);
    for i in 0..n {
        let mut alert = template.clone();
        alert.id = format!("{id}-alert-{i}");
        alert.policy_id = "s3-bucket-public".into();
        alert.entity.id = format!("{id}-{i}");
        alert.actions = vec![RequestedAction {
            kind: ActionKind::MakeBucketPrivate,
            target: Target {
                kind: "s3-bucket".into(),
                id: format!("{id}-{i}"),
                account_id: None,
                grantee: None,
            },
        }];
        signer.sign(&mut alert);
        let payload = serde_json::to_vec(&alert)?;
        let key = alert.entity.id.clone();
        let producer = producer.clone();
        let topic = alerts_topic.to_string();
        futures.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }));
    }
    for f in futures {
        f.await??;
    }
    // Alert timestamps: read them back from the alerts topic (CreateTime).
    let alert_times = timestamps(brokers, alerts_topic, id, n, |v| {
        serde_json::from_slice::<Alert>(v).ok().map(|a| a.id)
    })?;
    let mut latencies = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut applied = 0usize;
    while latencies.len() < n && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        let Some(record) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<ActionRecord>(p).ok())
        else {
            continue;
        };
        if record.outcome == trailguard_common::contract::ActionOutcome::Applied {
            applied += 1;
        }
        if let (Some(t_action), Some(t_alert)) = (
            msg.timestamp().to_millis(),
            alert_times.get(&record.alert_id),
        ) {
            latencies.push((t_action - t_alert).max(0));
        }
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(
        latencies.len() == n,
        "only {} of {n} action records arrived",
        latencies.len()
    );
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(latencies.len() - 1)]
    };
    println!(
        "remediate latency: {n} alerts (make bucket private, auto, rate limit off) against moto: \
         p50 {} ms, p99 {} ms, max {} ms; {applied} applied; {:.0} alerts/s end to end",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1],
        n as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn timestamps(
    brokers: &str,
    topic: &str,
    id: &str,
    n: usize,
    key_of: impl Fn(&[u8]) -> Option<String>,
) -> Result<HashMap<String, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{id}-alerts-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < n && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        if let (Some(id), Some(ts)) = (msg.payload().and_then(&key_of), msg.timestamp().to_millis())
        {
            out.insert(id, ts);
        }
    }
    Ok(out)
}
