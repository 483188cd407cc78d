//! Helpers for the end-to-end tests in `tests/`: where the broker, the AWS server, the shared
//! data and the built binaries are (set by `deploy/test.sh`), fresh topic names per test, the
//! three services as child processes, and reading topics back.

pub mod iam_check;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run the tests with `make test` (deploy/test.sh)")
    })
}

/// The broker, `HOST:PORT`.
pub fn brokers() -> Result<String> {
    env("TRAILGUARD_TEST_BROKERS")
}

/// The AWS-API server (moto), `http://HOST:PORT`.
pub fn aws_endpoint() -> Result<String> {
    env("TRAILGUARD_TEST_AWS_ENDPOINT")
}

/// `../shared/data/cloudtrail`.
pub fn shared_data() -> Result<PathBuf> {
    Ok(PathBuf::from(env("TRAILGUARD_TEST_SHARED_DATA")?))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One test's topics and groups: unique names, so tests never see each other's records.
pub struct Run {
    /// Unique prefix.
    pub id: String,
    /// Environment for the services.
    pub env: Vec<(String, String)>,
}

/// The alert-signing key id of test runs.
pub const TEST_KEY_ID: &str = "test";
/// The alert-signing key of test runs.
pub const TEST_KEY: &str = "trailguard-test-signing-key-0123456789abcdef";

impl Run {
    /// Fresh names for a test called `name`.
    pub fn new(name: &str) -> Result<Run> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let id = format!("t-{name}-{nanos}");
        let env = vec![
            ("TRAILGUARD_BROKERS".into(), brokers()?),
            (
                "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES".into(),
                format!("{id}.activities"),
            ),
            ("TRAILGUARD_KAFKA__TOPICS__DLQ".into(), format!("{id}.dlq")),
            (
                "TRAILGUARD_KAFKA__TOPICS__ALERTS".into(),
                format!("{id}.alerts"),
            ),
            (
                "TRAILGUARD_KAFKA__TOPICS__ACTIONS".into(),
                format!("{id}.actions"),
            ),
            (
                "TRAILGUARD_KAFKA__TOPICS__CHECKPOINTS".into(),
                format!("{id}.checkpoints"),
            ),
            (
                "TRAILGUARD_KAFKA__TOPICS__DETECT_STATE".into(),
                format!("{id}.state"),
            ),
            (
                "TRAILGUARD_KAFKA__TOPICS__DETECT_FACTS".into(),
                format!("{id}.facts"),
            ),
            (
                "TRAILGUARD_KAFKA__TOPICS__DETECT_SIGNIN_FAILURES".into(),
                format!("{id}.signin-failures"),
            ),
            ("TRAILGUARD_KAFKA__PARTITIONS".into(), "3".into()),
            ("TRAILGUARD_DETECT__GROUP_ID".into(), format!("{id}-detect")),
            (
                "TRAILGUARD_REMEDIATE__GROUP_ID".into(),
                format!("{id}-remediate"),
            ),
            ("TRAILGUARD_LOG__FORMAT".into(), "json".into()),
            // detect signs with this key; remediate accepts it.
            ("TRAILGUARD_SIGNING__KEY_ID".into(), TEST_KEY_ID.into()),
            ("TRAILGUARD_SIGNING__KEY".into(), TEST_KEY.into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ];
        Ok(Run { id, env })
    }

    /// A topic's name: `activities`, `dlq`, `alerts` or `actions`.
    pub fn topic(&self, which: &str) -> String {
        match which {
            "dlq" => format!("{}.dlq", self.id),
            other => format!("{}.{other}", self.id),
        }
    }

    /// A command for one of the binaries with this run's environment; logs go to a file.
    pub fn command(&self, binary: &str, args: &[&str]) -> Result<Command> {
        let dir = PathBuf::from(env("TRAILGUARD_TEST_BIN_DIR")?);
        let mut cmd = Command::new(dir.join(binary));
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    /// Runs `ingest files PATH` to completion; fails with its stderr unless it succeeds.
    pub fn ingest_files(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_str().context("path")?;
        let output = self.command("ingest", &["files", path])?.output()?;
        if !output.status.success() {
            bail!("ingest: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// Starts a long-running service (detect, remediate) with its admin endpoint on a free port.
    pub fn spawn(&self, binary: &str, extra: &[&str]) -> Result<Service> {
        let log =
            std::env::temp_dir().join(format!("{}-{binary}-{}.log", self.id, std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut args = vec!["--admin-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let child = self
            .command(binary, &args)?
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {binary} (built? run `make test`)"))?;
        Ok(Service { child, log })
    }
}

/// A running service; killed when dropped.
pub struct Service {
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Service {
    /// Sends SIGTERM (or `signal`) and waits for the exit status.
    pub fn stop(&mut self, signal: &str) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} failed");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "service did not stop within 60 s; log: {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// The key, as text.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Headers, as text.
    pub headers: HashMap<String, String>,
}

impl Record {
    /// The value as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.value)?)
    }
}

/// Reads `topic` from the beginning until `done(records)` says so — then on for `settle`, to
/// catch anything extra (a duplicate, a record too many) — or fails after `timeout`.
pub fn read_topic(
    topic: &str,
    timeout: Duration,
    settle: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Result<Vec<Record>> {
    read_topic_at(&brokers()?, topic, timeout, settle, done)
}

/// [`read_topic`] from the broker at `brokers`.
pub fn read_topic_at(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    settle: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()?;
    let deadline = Instant::now() + timeout;
    // The topic may not exist yet: wait for it.
    let partitions = loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let count = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if count > 0 {
            break count;
        }
        if Instant::now() > deadline {
            bail!("topic {topic} never appeared");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut records = Vec::new();
    let mut settled_at: Option<Instant> = None;
    loop {
        match settled_at {
            Some(at) if Instant::now() > at => return Ok(records),
            None if done(&records) => settled_at = Some(Instant::now() + settle),
            _ => {}
        }
        if settled_at.is_none() && Instant::now() > deadline {
            bail!(
                "timed out reading {topic}: {} records so far",
                records.len()
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
}

/// An S3 client for the AWS-API server.
pub async fn s3() -> Result<aws_sdk_s3::Client> {
    let shared = aws_shared().await?;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// An IAM client for the AWS-API server.
pub async fn iam() -> Result<aws_sdk_iam::Client> {
    Ok(aws_sdk_iam::Client::new(&aws_shared().await?))
}

/// `alert` signed with the test runs' key, as bytes for the alerts topic.
pub fn signed(mut alert: trailguard_common::Alert) -> Result<Vec<u8>> {
    trailguard_common::sign::Signer::new(TEST_KEY_ID, TEST_KEY).sign(&mut alert);
    Ok(serde_json::to_vec(&alert)?)
}

/// The SDK configuration for the AWS-API server, with the test credentials (the server's
/// default account, 123456789012).
pub async fn aws_shared() -> Result<aws_config::SdkConfig> {
    Ok(aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(aws_endpoint()?)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await)
}

/// An S3 client acting in another account of the AWS-API server, through an assumed role.
pub async fn s3_in_account(account: &str) -> Result<aws_sdk_s3::Client> {
    let shared = aws_shared().await?;
    let role = aws_config::sts::AssumeRoleProvider::builder(format!(
        "arn:aws:iam::{account}:role/test-admin"
    ))
    .session_name("test")
    .configure(&shared)
    .build()
    .await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .credentials_provider(role)
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Publishes one record and waits for the broker to acknowledge it.
pub async fn produce(topic: &str, key: &str, value: &[u8]) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers()?)
        .create()?;
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok(())
}

/// Waits until `topic` exists (a service creates its topics at start-up).
pub fn wait_for_topic(topic: &str, timeout: Duration) -> Result<()> {
    read_topic(topic, timeout, Duration::ZERO, |_| true).map(|_| ())
}

/// Creates `bucket` on the AWS-API server and makes it public: a public-read ACL and a policy
/// with a public statement (`Public`) beside a private one (`Admin`).
pub async fn make_public_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    client.create_bucket().bucket(bucket).send().await?;
    client
        .put_bucket_acl()
        .bucket(bucket)
        .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
        .send()
        .await?;
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Public", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")},
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "s3:*", "Resource": format!("arn:aws:s3:::{bucket}")}
    ]});
    client
        .put_bucket_policy()
        .bucket(bucket)
        .policy(policy.to_string())
        .send()
        .await?;
    Ok(())
}
