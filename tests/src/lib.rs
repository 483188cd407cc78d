//! Helpers for the end-to-end tests in `tests/`: where the broker, the AWS server, the shared
//! data and the built binaries are (set by `deploy/test.sh`), fresh topic names per test, the
//! three services as child processes, and reading topics back.

pub mod iam_check;
pub mod synthetic;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// An environment variable `deploy/test.sh` sets, or an error that says to run the tests with it.
pub fn env(name: &str) -> Result<String> {
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
///
/// Found at run time (cargo sets `CARGO_MANIFEST_DIR` for the test it runs): the target
/// directory is shared between clones, and cargo reuses a library built in another clone (its
/// fingerprint does not hold the clone's path) with that clone's path compiled in.
pub fn repo() -> PathBuf {
    manifest_dir(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of the package whose test or bench is running: `CARGO_MANIFEST_DIR` at run
/// time, else `compiled` (its value when the caller was compiled, which may name another
/// clone: see [`repo`]).
pub fn manifest_dir(compiled: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(compiled), PathBuf::from)
}

/// `prefix` and a number that differs between calls (names of users, buckets and roles on the
/// shared AWS-API server).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}", nanos % 1_000_000_000_000)
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
    /// A detect configuration file in this run's directory: IP intelligence that lists one
    /// Tor exit range (185.220.101.0/24), then `extra` (more TOML tables).
    pub fn detect_config(&self, extra: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(&self.id);
        std::fs::create_dir_all(&dir)?;
        let tor = dir.join("tor.txt");
        std::fs::write(&tor, "185.220.101.0/24\n")?;
        let malicious = dir.join("malicious.txt");
        std::fs::write(&malicious, "# a scanner's range\n45.155.205.0/24\n")?;
        let config = dir.join("detect.toml");
        let intel = format!(
            "[intel]\nlists = [{{ category = \"tor\", path = {:?} }}, {{ category = \"malicious\", path = {:?} }}]\n\n",
            tor.display().to_string(),
            malicious.display().to_string()
        );
        std::fs::write(&config, intel + extra)?;
        Ok(config)
    }

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
            (
                "TRAILGUARD_KAFKA__TOPICS__DETECT_CORRELATIONS".into(),
                format!("{id}.correlations"),
            ),
            ("TRAILGUARD_KAFKA__PARTITIONS".into(), "3".into()),
            ("TRAILGUARD_DETECT__GROUP_ID".into(), format!("{id}-detect")),
            (
                "TRAILGUARD_REMEDIATE__GROUP_ID".into(),
                format!("{id}-remediate"),
            ),
            ("TRAILGUARD_LOG__FORMAT".into(), "json".into()),
            // The test data is years old (real CloudTrail samples): no maximum alert age,
            // except in the test of that limit.
            ("TRAILGUARD_REMEDIATE__MAX_ALERT_AGE".into(), "0s".into()),
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
    /// Settings named (comma-separated) in `TRAILGUARD_TEST_DROP_ENV` are left out, so today's
    /// tests can run against an older build that does not know them.
    pub fn command(&self, binary: &str, args: &[&str]) -> Result<Command> {
        let dir = PathBuf::from(env("TRAILGUARD_TEST_BIN_DIR")?);
        let dropped = std::env::var("TRAILGUARD_TEST_DROP_ENV").unwrap_or_default();
        let dropped: Vec<&str> = dropped.split(',').map(str::trim).collect();
        let mut cmd = Command::new(dir.join(binary));
        cmd.args(args).envs(
            self.env
                .iter()
                .filter(|(k, _)| !dropped.contains(&k.as_str()))
                .map(|(k, v)| (k, v)),
        );
        Ok(cmd)
    }

    /// Writes `records` as NDJSON into this run's directory and runs `ingest files` on them.
    pub fn ingest_records<'a>(
        &self,
        records: impl IntoIterator<Item = &'a serde_json::Value>,
    ) -> Result<()> {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(&self.id);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("records.jsonl");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for record in records {
            writeln!(file, "{record}")?;
        }
        file.flush()?;
        drop(file);
        self.ingest_files(&path)
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
        let mut args = vec!["--admin-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.start(binary, &args)
    }

    /// Starts `ingest SOURCE …` (`source` holds the source and its flags) with its admin
    /// endpoint on a free port: ingest takes that flag after the source.
    pub fn spawn_ingest(&self, source: &[&str]) -> Result<Service> {
        let mut args = source.to_vec();
        args.extend_from_slice(&["--admin-listen", "127.0.0.1:0"]);
        self.start("ingest", &args)
    }

    fn start(&self, binary: &str, args: &[&str]) -> Result<Service> {
        // One log per service, also when a run starts several of one binary.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "{}-{binary}-{}-{n}.log",
            self.id,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = self
            .command(binary, args)?
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

/// The action records on `topic`, once there are `at_least` (or `timeout` has passed).
pub fn action_records(
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Result<Vec<trailguard_common::contract::ActionRecord>> {
    read_topic(topic, timeout, Duration::from_secs(2), |r| {
        r.len() >= at_least
    })?
    .iter()
    .map(|r| serde_json::from_slice(&r.value).map_err(Into::into))
    .collect()
}

/// `remediate --config CONFIG undo ACTION_ID` in `run`; its output, or why it failed.
pub fn remediate_undo(run: &Run, config: &str, action_id: &str) -> Result<String> {
    let out = run
        .command("remediate", &["--config", config, "undo", action_id])?
        .output()?;
    if !out.status.success() {
        bail!(
            "undo: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `topic` from the beginning until `done(records)` says so (asked after every record:
/// keep it incremental for long topics) — then on for `settle`, to
/// catch anything extra (a duplicate, a record too many) — or fails after `timeout`.
pub fn read_topic(
    topic: &str,
    timeout: Duration,
    settle: Duration,
    done: impl FnMut(&[Record]) -> bool,
) -> Result<Vec<Record>> {
    read_topic_at(&brokers()?, topic, timeout, settle, done)
}

/// [`read_topic`] from the broker at `brokers`.
pub fn read_topic_at(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    settle: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
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
    Ok(s3_with(&aws_shared().await?))
}

/// An S3 client with `config`, addressing buckets by path (as the AWS-API server needs).
pub fn s3_with(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
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
    Ok(aws_at(&aws_endpoint()?).await)
}

/// The SDK configuration for an AWS-API server at `endpoint` (the benches name theirs), with
/// the test credentials.
pub async fn aws_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await
}

/// The SDK configuration acting in another account of the AWS-API server, through an
/// assumed role.
pub async fn aws_in_account(account: &str) -> Result<aws_config::SdkConfig> {
    let shared = aws_shared().await?;
    let role = aws_config::sts::AssumeRoleProvider::builder(format!(
        "arn:aws:iam::{account}:role/test-admin"
    ))
    .session_name("test")
    .configure(&shared)
    .build()
    .await;
    Ok(shared
        .to_builder()
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(role))
        .build())
}

/// An S3 client acting in another account of the AWS-API server, through an assumed role.
pub async fn s3_in_account(account: &str) -> Result<aws_sdk_s3::Client> {
    let config = aws_sdk_s3::config::Builder::from(&aws_in_account(account).await?)
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// An IAM client acting in another account of the AWS-API server, through an assumed role.
pub async fn iam_in_account(account: &str) -> Result<aws_sdk_iam::Client> {
    Ok(aws_sdk_iam::Client::new(&aws_in_account(account).await?))
}

/// A CloudTrail API-call record of IAM user `user` in account 123456789012, `minutes` after
/// 2024-05-10 12:00Z, its eventID numbered from `id_base` (so two tests' records differ).
pub fn api_call(
    minutes: i64,
    name: &str,
    source: &str,
    user: &str,
    ip: &str,
    params: serde_json::Value,
    id_base: i64,
) -> serde_json::Value {
    let time = chrono::DateTime::parse_from_rfc3339("2024-05-10T12:00:00Z")
        .map(|t| t + chrono::Duration::minutes(minutes))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    serde_json::json!({
        "eventVersion": "1.09", "eventTime": time, "eventSource": source, "eventName": name,
        "awsRegion": "us-east-1", "recipientAccountId": "123456789012", "sourceIPAddress": ip,
        "userAgent": "aws-cli/2.15.0 Python/3.11", "eventType": "AwsApiCall",
        "readOnly": name.starts_with("List") || name.starts_with("Describe"),
        "eventID": format!("00000000-0000-4000-8000-{:012}", minutes + id_base),
        "userIdentity": {"type": "IAMUser", "userName": user, "accountId": "123456789012",
            "arn": format!("arn:aws:iam::123456789012:user/{user}"),
            "accessKeyId": format!("AKIA{}", user.to_uppercase())},
        "requestParameters": params,
    })
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

/// How many records `topic` holds now (the sum of its partitions' high watermarks, at the
/// broker): what a reader must read past to see anything written from now on.
pub fn topic_end(topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers()?)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut end = 0;
    for t in metadata.topics() {
        for p in t.partitions() {
            end += consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))?
                .1;
        }
    }
    Ok(end)
}

/// The kind of broker the suite runs on (`TRAILGUARD_TEST_BROKER`: `kafka` or `tansu`).
pub fn broker_kind() -> Result<String> {
    let kind = env("TRAILGUARD_TEST_BROKER")?;
    match kind.as_str() {
        "kafka" | "tansu" => Ok(kind),
        other => bail!("TRAILGUARD_TEST_BROKER must be kafka or tansu, not {other:?}"),
    }
}

/// A free TCP port on loopback (free now; a race with other processes is possible but rare).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A broker of a test's own, of the kind the suite runs on, on free ports, with its data in a
/// directory of the test's: for tests that kill and restart the broker without disturbing the
/// shared one. Killed when dropped.
pub struct PrivateBroker {
    kind: String,
    dir: PathBuf,
    /// Plaintext port, then (Apache Kafka) the SASL and controller ports.
    ports: [u16; 3],
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a broker with its data in `dir` and waits until it accepts connections.
    pub fn start(dir: &std::path::Path) -> Result<PrivateBroker> {
        std::fs::create_dir_all(dir)?;
        let mut broker = PrivateBroker {
            kind: broker_kind()?,
            dir: dir.to_path_buf(),
            ports: [free_port()?, free_port()?, free_port()?],
            child: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }

    /// Kills the broker at once (SIGKILL: no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the broker again on the same ports and data, and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.out"))?;
        let mut command = if self.kind == "kafka" {
            let mut command = Command::new(env("TRAILGUARD_TEST_KAFKA_SCRIPT")?);
            command.arg("run").arg(&self.dir);
            command.args(self.ports.iter().map(u16::to_string));
            command
        } else {
            let url = format!("tcp://{}", self.address());
            let mut command = Command::new(env("TRAILGUARD_TEST_TANSU_BIN")?);
            command
                .args(["broker", "--cluster-id", "private-test-broker"])
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(&self.dir);
            command
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting a private {} broker", self.kind))?;
        self.child = Some(child);
        // Apache Kafka starts a JVM and formats its storage on first use: allow a minute.
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports[0])).is_err() {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    // The end of its output says why: CI keeps the test's output, not the file.
                    let out = self.dir.join("broker.out");
                    let text = std::fs::read_to_string(&out).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    bail!(
                        "the private {} broker exited ({status}); the end of {}:\n{}",
                        self.kind,
                        out.display(),
                        lines[lines.len().saturating_sub(20)..].join("\n")
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("the private {} broker did not listen in 90 s", self.kind);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// NDJSON of `users` × 7 failed console sign-ins a minute apart (enough for one burst each, on
/// both the principal and the source IP), built from the real failure record in the demo sample;
/// and per user a baseline of one TerminateInstances call a day for the 8 days before, then a
/// burst of 6 calls (12 instances) among the sign-ins — a "multiple delete VM activities" alert
/// that only a detector which kept the user's week-old baseline can raise.
/// User `u` starts at minute 3u, and records are in time order, so windows keep closing and the
/// committed offsets keep moving while the stream is consumed.
pub fn burst_file(users: usize) -> Result<PathBuf> {
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("deploy/demo/sample/02-signin-failures.json"),
    )?)?;
    let template = sample["Records"][0].clone();
    // A file of its own per call: tests running at once must not share one.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let path = std::env::temp_dir().join(format!(
        "bursts-{}-{users}-{nanos}.jsonl",
        std::process::id()
    ));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")?;
    let events: Vec<(i64, usize)> = (0..users)
        .flat_map(|user| (0..7).map(move |m| (user as i64 * 3 + m, user)))
        .collect();
    // Terminations: (minute, user, -1 for the baseline days / burst index).
    let mut terminations: Vec<(i64, usize)> = (0..users)
        .flat_map(|user| {
            let history = (1..=8).map(move |day| (-day * 1440 + user as i64, user));
            let burst = (0..6).map(move |i| (user as i64 * 3 + 1 + i, user));
            history.chain(burst)
        })
        .collect();
    terminations.sort();
    let mut merged: Vec<(i64, usize, bool)> = events
        .into_iter()
        .map(|(m, u)| (m, u, false))
        .chain(terminations.into_iter().map(|(m, u)| (m, u, true)))
        .collect();
    merged.sort();
    for (minute, user, terminate) in merged {
        if terminate {
            let time = start + chrono::Duration::minutes(minute);
            let record = serde_json::json!({
                "eventVersion": "1.09", "eventTime": time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "eventSource": "ec2.amazonaws.com", "eventName": "TerminateInstances",
                "awsRegion": "us-east-1", "recipientAccountId": "123456789012",
                "sourceIPAddress": format!("10.{}.{}.1", user / 250, user % 250),
                "userAgent": "aws-cli/2.15.0", "eventType": "AwsApiCall", "readOnly": false,
                "eventID": format!("t-{user}-{minute}"),
                "userIdentity": {"type": "IAMUser", "userName": format!("u{user}"),
                    "arn": format!("arn:aws:iam::123456789012:user/u{user}"), "accountId": "123456789012"},
                "requestParameters": {"instancesSet": {"items": [
                    {"instanceId": format!("i-{user}-{minute}-a")}, {"instanceId": format!("i-{user}-{minute}-b")}]}},
            });
            writeln!(file, "{record}")?;
            continue;
        }
        {
            let mut record = template.clone();
            record["userIdentity"]["arn"] =
                Value::from(format!("arn:aws:iam::123456789012:user/u{user}"));
            record["userIdentity"]["userName"] = Value::from(format!("u{user}"));
            record["sourceIPAddress"] = Value::from(format!("10.{}.{}.1", user / 250, user % 250));
            record["eventID"] = Value::from(format!("e-{user}-{minute}"));
            let time = start + chrono::Duration::minutes(minute);
            record["eventTime"] = Value::from(time.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            writeln!(file, "{record}")?;
        }
    }
    file.flush()?;
    Ok(path)
}

/// Decides, from a request's body, whether the AWS-API proxy answers it with an error instead
/// of forwarding it: `Some((status, code))`.
pub type FaultRule = Box<dyn FnMut(&str) -> Option<(u16, &'static str)> + Send>;

/// An AWS-API server in front of moto that answers some requests with the error a rule picks —
/// a 503 `ServiceUnavailable`, a 403 `AccessDenied` — and forwards the rest. The rule sees
/// `METHOD PATH?QUERY`, a newline and the body; errors take the query protocol's form (IAM, STS)
/// when the body is a query-protocol form, else S3's. Returns its endpoint URL.
pub async fn faulty_aws(rule: FaultRule) -> Result<String> {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    type Shared = std::sync::Arc<(std::sync::Mutex<FaultRule>, reqwest::Client, String)>;
    async fn handle(
        State(shared): State<Shared>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let body_text = String::from_utf8_lossy(&body).into_owned();
        let text = format!(
            "{method} {}\n{body_text}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        let fault = match shared.0.lock() {
            Ok(mut rule) => rule(&text),
            Err(_) => Some((500, "InternalFailure")),
        };
        if let Some((status, code)) = fault {
            let kind = if status >= 500 { "Receiver" } else { "Sender" };
            let xml = if body_text.contains("Action=") {
                format!(
                    "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>injected by the test</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
                )
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message><RequestId>fault</RequestId></Error>"
                )
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, [("content-type", "text/xml")], xml).into_response();
        }
        let url = format!(
            "{}{}",
            shared.2,
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        let mut request = shared.1.request(
            reqwest::Method::from_bytes(method.as_str().as_bytes())
                .unwrap_or(reqwest::Method::POST),
            url,
        );
        for (name, value) in &headers {
            if name != "host" && name != "content-length" {
                request = request.header(name.as_str(), value.as_bytes());
            }
        }
        match request.body(body.to_vec()).send().await {
            Ok(answer) => {
                let status =
                    StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::OK);
                let content_type = answer
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("text/xml")
                    .to_string();
                let bytes = answer.bytes().await.unwrap_or_default();
                (status, [("content-type", content_type)], bytes.to_vec()).into_response()
            }
            Err(_) => StatusCode::BAD_GATEWAY.into_response(),
        }
    }
    let shared: Shared = std::sync::Arc::new((
        std::sync::Mutex::new(rule),
        reqwest::Client::new(),
        aws_endpoint()?,
    ));
    let app = axum::Router::new().fallback(handle).with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// An alert of policy `trust-test` asking for one action on one target in `account` (a bucket
/// for the bucket actions, else a principal), from the fixture `tests/tests/alert.json`.
pub fn alert_asking(
    id: &str,
    kind: trailguard_common::contract::ActionKind,
    target: &str,
    account: &str,
    grantee: Option<&str>,
) -> Result<trailguard_common::Alert> {
    use trailguard_common::contract::{ActionKind, RequestedAction, Target};
    let mut alert: trailguard_common::Alert =
        serde_json::from_str(include_str!("../tests/alert.json"))?;
    alert.id = id.into();
    alert.policy_id = "trust-test".into();
    alert.time = chrono::Utc::now();
    alert.actions = vec![RequestedAction {
        kind,
        target: Target {
            kind: if matches!(
                kind,
                ActionKind::MakeBucketPrivate | ActionKind::RemoveCollaborator
            ) {
                "s3-bucket".into()
            } else {
                "principal".into()
            },
            id: target.into(),
            account_id: Some(account.into()),
            grantee: grantee.map(str::to_string),
        },
    }];
    Ok(alert)
}

/// An alert asking to suspend the IAM user `user` of moto's account.
pub fn suspend_alert(id: &str, user: &str) -> Result<trailguard_common::Alert> {
    alert_asking(
        id,
        trailguard_common::contract::ActionKind::SuspendUser,
        &format!("arn:aws:iam::123456789012:user/{user}"),
        "123456789012",
        None,
    )
}

/// Creates the IAM user `name` with one active access key.
pub async fn user_with_active_key(client: &aws_sdk_iam::Client, name: &str) -> Result<()> {
    client.create_user().user_name(name).send().await?;
    client.create_access_key().user_name(name).send().await?;
    Ok(())
}

/// How many of `name`'s access keys are active.
pub async fn active_keys(client: &aws_sdk_iam::Client, name: &str) -> Result<usize> {
    let out = client.list_access_keys().user_name(name).send().await?;
    Ok(out
        .access_key_metadata()
        .iter()
        .filter(|k| k.status() == Some(&aws_sdk_iam::types::StatusType::Active))
        .count())
}

/// A plain HTTP GET of `path` on `addr` (an admin endpoint): the whole response, headers first.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// The admin address a service logged (JSON logs).
pub fn admin_addr(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("admin endpoint"))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| {
            v.get("addr")
                .or(v["fields"].get("addr"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        })
}

/// The value of one sample in a Prometheus text scrape, e.g.
/// `trailguard_ingest_records_read_total{source="s3"}`; `None` when absent.
pub fn sample_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// An SNS topic named from `topic` with a queue named from `queue` subscribed to it (raw
/// delivery), on the AWS-API server: (topic ARN, queue URL). What a notification sent there
/// says is read back with [`received`].
pub async fn topic_with_queue(topic: &str, queue: &str) -> Result<(String, String)> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let shared = aws_shared().await?;
    let sns = aws_sdk_sns::Client::new(&shared);
    let sqs = aws_sdk_sqs::Client::new(&shared);
    let topic = sns
        .create_topic()
        .name(unique(topic))
        .send()
        .await?
        .topic_arn()
        .context("topic arn")?
        .to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name(unique(queue))
        .send()
        .await?
        .queue_url()
        .context("queue url")?
        .to_string();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("queue arn")?;
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await?;
    Ok((topic, queue_url))
}

/// The message bodies waiting in `queue` (waiting up to 5 s for the first).
pub async fn received(queue: &str) -> Result<Vec<String>> {
    let sqs = aws_sdk_sqs::Client::new(&aws_shared().await?);
    let out = sqs
        .receive_message()
        .queue_url(queue)
        .wait_time_seconds(5)
        .max_number_of_messages(10)
        .send()
        .await?;
    Ok(out
        .messages()
        .iter()
        .filter_map(|m| m.body().map(str::to_string))
        .collect())
}

/// The files named by the environment variables `keys` that exist: the data the setup fetched
/// (`deploy/test.sh` exports their paths), empty when run another way.
fn fetched(keys: &[&str]) -> Vec<String> {
    keys.iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter(|p| std::path::Path::new(p).exists())
        .collect()
}

/// The DB-IP geolocation databases the setup fetched.
pub fn geo_databases() -> Vec<String> {
    fetched(&["TRAILGUARD_TEST_GEO_V4", "TRAILGUARD_TEST_GEO_V6"])
}

/// The AS databases the setup fetched.
pub fn asn_databases() -> Vec<String> {
    fetched(&["TRAILGUARD_TEST_ASN_V4", "TRAILGUARD_TEST_ASN_V6"])
}
