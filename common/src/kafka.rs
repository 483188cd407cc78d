//! Kafka client construction and the few produce/consume helpers every service needs.
//!
//! Nothing here depends on a particular broker: the same settings run against Apache Kafka,
//! Amazon MSK (TLS, SASL/SCRAM through `kafka.client`) and the local tansu broker.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, TopicRole};
use crate::Error;

/// Consumer lag per assigned partition, from librdkafka's statistics (emitted every
/// `statistics.interval.ms`: 10 s unless `kafka.client` says otherwise) as
/// `trailguard_kafka_consumer_lag_records{topic, partition}`. A partition this consumer no
/// longer fetches loses its series, so a sum over instances counts each partition once.
#[derive(Clone)]
pub struct ConsumerLag(prometheus::IntGaugeVec);

impl ConsumerLag {
    /// Creates and registers the gauge.
    pub fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "trailguard_kafka_consumer_lag_records",
                "Records between this consumer group's committed offset and the end of each partition it owns (librdkafka statistics).",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(ConsumerLag(gauge))
    }

    /// Takes the lag of every partition from one statistics report.
    pub fn record(&self, stats: &rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition.
                if partition < 0 {
                    continue;
                }
                let label = partition.to_string();
                let labels = [topic.as_str(), label.as_str()];
                if p.consumer_lag >= 0 && p.fetch_state != "none" && p.fetch_state != "stopped" {
                    self.0.with_label_values(&labels).set(p.consumer_lag);
                } else {
                    let _ = self.0.remove_label_values(&labels);
                }
            }
        }
    }
}

/// Every Kafka client of the services: counts consumer lag from librdkafka's statistics
/// (when given a [`ConsumerLag`]), notes rebalances for the group consumers, and, with
/// `kafka.msk_iam.enabled`, answers librdkafka's OAUTHBEARER token requests with an Amazon
/// MSK IAM token signed by the default AWS credentials. (Token requests only come when
/// `sasl.mechanism` is OAUTHBEARER.)
#[derive(Clone, Default)]
pub struct KafkaContext {
    msk_iam: Option<std::sync::Arc<MskIam>>,
    lag: Option<ConsumerLag>,
    rebalances: std::sync::Arc<Rebalances>,
    /// Keep revoked partitions for [`Self::take_revoked`] (a consumer that never takes them
    /// must not collect them).
    track_revoked: bool,
}

/// What rebalances did since the service last asked.
#[derive(Default)]
struct Rebalances {
    /// (topic, partition) taken away.
    revoked: std::sync::Mutex<Vec<(String, i32)>>,
    /// Partitions were assigned.
    assigned: std::sync::atomic::AtomicBool,
    /// Partitions owned now: added on assignment, removed on revocation, cleared on a
    /// rebalance error (right for the eager and the cooperative protocols alike).
    owned: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    /// [`watch_group`] found the group stalled while this consumer owns nothing: the service
    /// should leave and join the group again.
    rejoin: std::sync::atomic::AtomicBool,
}

/// Where MSK IAM tokens are signed.
struct MskIam {
    region: Option<String>,
}

/// The producer every service uses.
pub type Producer = FutureProducer<KafkaContext>;

impl KafkaContext {
    /// The context for clients of `cfg`.
    pub fn new(cfg: &KafkaConfig) -> Self {
        KafkaContext {
            msk_iam: cfg.msk_iam.enabled.then(|| {
                std::sync::Arc::new(MskIam {
                    region: cfg.msk_iam.region.clone(),
                })
            }),
            lag: None,
            rebalances: std::sync::Arc::default(),
            track_revoked: false,
        }
    }

    /// Keeps the partitions revoked by rebalances for [`Self::take_revoked`].
    pub fn tracking_revoked(mut self) -> Self {
        self.track_revoked = true;
        self
    }

    /// Also records consumer lag into `lag`.
    pub fn with_lag(mut self, lag: ConsumerLag) -> Self {
        self.lag = Some(lag);
        self
    }

    /// An MSK IAM token for librdkafka (the body of
    /// [`rdkafka::ClientContext::generate_oauth_token`]).
    pub fn oauth_token(&self) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let Some(iam) = &self.msk_iam else {
            return Err("sasl.mechanism is OAUTHBEARER but kafka.msk_iam.enabled is false".into());
        };
        let region = iam.region.clone();
        // librdkafka asks from inside a poll, possibly on a runtime thread: sign on a thread
        // of its own, with a runtime of its own.
        let signed = std::thread::spawn(move || -> Result<(String, i64), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let sign = async move {
                let region = match region {
                    Some(r) => aws_config::Region::new(r),
                    None => aws_config::load_defaults(aws_config::BehaviorVersion::latest())
                        .await
                        .region()
                        .cloned()
                        .ok_or("no AWS region for MSK IAM (kafka.msk_iam.region or AWS_REGION)")?,
                };
                aws_msk_iam_sasl_signer::generate_auth_token(region)
                    .await
                    .map_err(|e| format!("signing the MSK IAM token: {e}"))
            };
            runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(10), sign)
                    .await
                    .map_err(|_| "signing the MSK IAM token timed out".to_string())?
            })
        })
        .join()
        .map_err(|_| "the MSK IAM signer panicked")??;
        let (token, lifetime_ms) = signed;
        Ok(rdkafka::client::OAuthToken {
            token,
            principal_name: String::new(),
            lifetime_ms,
        })
    }

    /// The (topic, partition)s revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *crate::sync::lock(&self.rebalances.revoked))
    }

    /// How many partitions the consumer owns now.
    pub fn owned_partitions(&self) -> usize {
        crate::sync::lock(&self.rebalances.owned).len()
    }

    /// The partitions of `topic` the consumer owns now.
    pub fn owned(&self, topic: &str) -> Vec<i32> {
        let mut owned: Vec<i32> = crate::sync::lock(&self.rebalances.owned)
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect();
        owned.sort_unstable();
        owned
    }

    fn update_owned(&self, change: impl FnOnce(&mut std::collections::HashSet<(String, i32)>)) {
        change(&mut crate::sync::lock(&self.rebalances.owned))
    }

    /// Whether the consumer should leave and join its group again (see [`watch_group`]): asked
    /// for, and still owning nothing.
    pub fn take_rejoin(&self) -> bool {
        self.rebalances
            .rejoin
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            && self.owned_partitions() == 0
    }

    /// Whether partitions were assigned since the last call.
    pub fn take_assigned(&self) -> bool {
        self.rebalances
            .assigned
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

impl rdkafka::ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.oauth_token()
            .inspect_err(|e| tracing::error!(error = %e, "no MSK IAM token"))
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(lag) = &self.lag {
            lag.record(&statistics);
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(
        &self,
        _consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Revoke(list) => self.update_owned(|owned| {
                for e in list.elements() {
                    owned.remove(&(e.topic().to_string(), e.partition()));
                }
            }),
            rdkafka::consumer::Rebalance::Error(_) => self.update_owned(|owned| owned.clear()),
            rdkafka::consumer::Rebalance::Assign(_) => {}
        }
        if let (true, rdkafka::consumer::Rebalance::Revoke(list)) = (self.track_revoked, rebalance)
        {
            let taken: Vec<(String, i32)> = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            crate::sync::lock(&self.rebalances.revoked).extend(taken);
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(list) = rebalance {
            self.update_owned(|owned| {
                owned.extend(
                    list.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition())),
                )
            });
            // Owning partitions again: a rejoin asked for before is moot.
            self.rebalances
                .rejoin
                .store(false, std::sync::atomic::Ordering::SeqCst);
            self.rebalances
                .assigned
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A client of the cluster with the user's settings: for admin and metadata clients.
fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    with_user_settings(connection(cfg), cfg)
}

/// Where the cluster is and how to authenticate to it (MSK IAM), nothing else.
fn connection(cfg: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &cfg.brokers);
    if cfg.msk_iam.enabled {
        client
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "OAUTHBEARER");
    }
    client
}

/// The user's `kafka.client` settings, applied once, after ours: tuning (`linger.ms`,
/// compression, timeouts) is theirs to change; the settings a guarantee rests on are refused
/// at start-up ([`crate::config::RESERVED_CLIENT_SETTINGS`]).
fn with_user_settings(mut client: ClientConfig, cfg: &KafkaConfig) -> ClientConfig {
    for (key, value) in cfg.client_settings() {
        client.set(key, value);
    }
    client
}

/// An idempotent producer (`acks=all`): a retried send never duplicates or reorders.
/// `linger_ms` trades latency for batching: 0 for services that wait on each send (alerts,
/// action records), a few ms for bulk publishing.
pub fn producer(cfg: &KafkaConfig, client_id: &str, linger_ms: u32) -> Result<Producer, Error> {
    let mut client = connection(cfg);
    client
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "lz4");
    Ok(with_user_settings(client, cfg).create_with_context(KafkaContext::new(cfg))?)
}

/// A group consumer that never commits an offset it was not told to: offsets are stored by the
/// service after its outputs are durable (`enable.auto.offset.store=false`) and committed
/// periodically and on shutdown.
pub fn consumer<C: ConsumerContext + 'static>(
    cfg: &KafkaConfig,
    group_id: &str,
    client_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, Error> {
    Ok(consumer_config(cfg, group_id, client_id).create_with_context(context)?)
}

/// The settings of a [`consumer`].
fn consumer_config(cfg: &KafkaConfig, group_id: &str, client_id: &str) -> ClientConfig {
    let mut client = connection(cfg);
    client
        .set("group.id", group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "10000")
        // librdkafka stops fetching for `fetch.queue.backoff.ms` (1 s by default) once
        // `queued.min.messages` (100,000) wait in its queue: a service working through a
        // backlog faster than 100,000 records a second drained the queue and sat idle until
        // the second was up (measured: detect idle in gaps of up to half a second). Fetch
        // again as soon as there is room (the user's `kafka.client` may still set it).
        .set("fetch.queue.backoff.ms", "10");
    with_user_settings(client, cfg)
}

/// A consumer without a group, for reading a topic back from the start (e.g. remediate
/// loading what it has already done).
pub fn reader(cfg: &KafkaConfig, client_id: &str) -> Result<BaseConsumer<KafkaContext>, Error> {
    Ok(reader_config(cfg, client_id).create_with_context(KafkaContext::new(cfg))?)
}

/// The settings of a [`reader`].
fn reader_config(cfg: &KafkaConfig, client_id: &str) -> ClientConfig {
    // Ours after the user's: a read-back is ours to shape whatever the user tunes.
    let mut client = base_config(cfg);
    client
        .set("group.id", format!("{client_id}-reader"))
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        // Should the start be deleted (retention) before the first fetch, start at the new
        // start, never at the end: a read-back that skipped to the end would end "complete".
        .set("auto.offset.reset", "earliest")
        // Reading back to the end is done when the broker says the end is reached, not when
        // a record at the high watermark's offset arrives (there may be none).
        .set("enable.partition.eof", "true")
        // Up to the high watermark, not the last stable offset: right after a transactional
        // writer's commit returns, its markers are not yet on the partition, and a
        // read-committed reader would see the end before the records. Trailguard's own topics
        // have no transactional writers; what they hold is checked by signature, not by
        // isolation.
        .set("isolation.level", "read_uncommitted")
        // Read-backs read whole partitions: larger fetches than a stream consumer's.
        .set("max.partition.fetch.bytes", "8388608")
        // librdkafka fetches ahead until `queued.min.messages` (100,000) wait in its queue,
        // then stops fetching for `fetch.queue.backoff.ms` (1 s by default) — a restore
        // drained 100,000 small records in about half that and then sat idle for the rest:
        // a third of its time (measured). Fetch again as soon as the queue has room.
        .set("fetch.queue.backoff.ms", "10");
    client
}

/// The value of the setting `name` of `topic` as the broker has it (DescribeConfigs). `None`
/// when the broker does not say (some Kafka-protocol brokers do not implement it).
pub async fn topic_setting(
    cfg: &KafkaConfig,
    topic: &str,
    name: &str,
) -> Result<Option<String>, Error> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<KafkaContext> =
        base_config(cfg).create_with_context(KafkaContext::new(cfg))?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?;
    Ok(results
        .into_iter()
        .filter_map(Result::ok)
        .flat_map(|r| r.entries)
        .find(|e| e.name == name)
        .and_then(|e| e.value))
}

/// Creates the topics of the given roles if they are missing (explicitly, never by
/// auto-creation), with the settings of their roles ([`KafkaConfig::topic_settings`]). A role
/// whose topic is not configured (empty name) is skipped. Existing topics are left as they are.
pub async fn ensure_topics(cfg: &KafkaConfig, roles: &[TopicRole]) -> Result<(), Error> {
    if !cfg.create_topics {
        return Ok(());
    }
    let admin: AdminClient<KafkaContext> =
        base_config(cfg).create_with_context(KafkaContext::new(cfg))?;
    let mut wanted: Vec<(&str, BTreeMap<String, String>)> = roles
        .iter()
        .map(|role| (role.topic(&cfg.topics), cfg.topic_settings(*role)))
        .filter(|(name, _)| !name.is_empty())
        .collect();
    // Only the missing ones are asked for: with ACLs a service may be allowed to create only the
    // topics it writes (or none, when an administrator creates them all), and a broker refuses
    // a CreateTopics it does not authorize even for a topic that exists.
    let existing = {
        let cfg = cfg.clone();
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.to_string()).collect();
        tokio::task::spawn_blocking(move || existing_topics(&cfg, &names))
            .await
            .unwrap_or_default()
    };
    wanted.retain(|(name, _)| !existing.iter().any(|e| e == name));
    let new_topics: Vec<NewTopic> = wanted
        .iter()
        .map(|(name, settings)| {
            settings.iter().fold(
                NewTopic::new(
                    name,
                    cfg.partitions,
                    TopicReplication::Fixed(cfg.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    if new_topics.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = cfg.partitions, "created topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Kafka(KafkaError::AdminOp(code)).context(format!(
                    "creating topic `{name}` (set kafka.create_topics = false if topics are managed elsewhere)"
                )))
            }
        }
    }
    if created.is_empty() {
        return Ok(());
    }
    // A created topic is usable once every partition has a leader the brokers know of (Apache
    // Kafka answers "not leader" for a moment after CreateTopics returns).
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || await_leaders(&cfg, &created))
        .await
        .map_err(|e| Error::Timeout(format!("waiting for partition leaders: {e}")))?
}

/// Which of `names` exist (and may be described); empty when the broker cannot be asked.
/// Blocking.
fn existing_topics(cfg: &KafkaConfig, names: &[String]) -> Vec<String> {
    let Ok(consumer) = base_config(cfg)
        .create_with_context::<_, BaseConsumer<KafkaContext>>(KafkaContext::new(cfg))
    else {
        return Vec::new();
    };
    names
        .iter()
        .filter(|name| {
            consumer
                .fetch_metadata(Some(name), Duration::from_secs(10))
                .is_ok_and(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == name.as_str()
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                    })
                })
        })
        .cloned()
        .collect()
}

/// Waits (up to 30 s) until every partition of `topics` has a leader. Blocking.
fn await_leaders(cfg: &KafkaConfig, topics: &[String]) -> Result<(), Error> {
    let consumer: BaseConsumer<KafkaContext> =
        base_config(cfg).create_with_context(KafkaContext::new(cfg))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for topic in topics {
        loop {
            let ready = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                Ok(metadata) => metadata.topics().iter().any(|t| {
                    t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions()
                            .iter()
                            .all(|p| p.error().is_none() && p.leader() >= 0)
                }),
                Err(err) => {
                    tracing::debug!(error = %err, topic, "metadata not available yet");
                    false
                }
            };
            if ready {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "topic `{topic}` was created but its partitions have no leader after 120 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Sends one record and waits until the broker has it (all in-sync replicas). A full local
/// queue is waited out, never dropped; other errors are returned to the caller, which decides
/// whether they are retryable.
pub async fn send(
    producer: &Producer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<(i32, i64), Error> {
    send_to(producer, topic, None, key, payload, headers).await
}

/// [`send`] to `partition` of `topic` when given (else the partitioner's choice by key).
pub async fn send_to(
    producer: &Producer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<(i32, i64), Error> {
    loop {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(h) = headers.clone() {
            record = record.headers(h);
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(60)))
            .await
        {
            Ok(delivery) => return Ok((delivery.partition, delivery.offset)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((err, _)) => {
                return Err(Error::Kafka(err).context(format!("producing to `{topic}`")))
            }
        }
    }
}

/// Builds dead-letter headers from `(name, value)` pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}

/// Flushes a producer, waiting at most `timeout` for outstanding deliveries.
pub fn flush(producer: &Producer, timeout: Duration) -> Result<(), Error> {
    producer.flush(Timeout::After(timeout))?;
    Ok(())
}

/// A partition's low and high watermarks, retried for up to 30 s while the broker says it is
/// still settling the partition: just after a topic is created, or while its leader moves,
/// Apache Kafka answers `NotLeaderForPartition` / `LeaderNotAvailable` for a moment.
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Err(err) if settling(&err) && std::time::Instant::now() < deadline => {
                tracing::debug!(error = %err, topic, partition, "partition settling; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return Ok(other?),
        }
    }
}

/// Errors that mean "the cluster is still settling this partition; ask again".
fn settling(err: &KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        err.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::UnknownTopicOrPartition
                | Code::NotCoordinator
                | Code::CoordinatorLoadInProgress
                | Code::CoordinatorNotAvailable
        )
    )
}

/// How long a read-back may go without receiving anything before it fails.
const READ_STALL: Duration = Duration::from_secs(120);

/// The next message (or error) of a read-back, however long the reading takes: an error only
/// when nothing arrives for [`READ_STALL`] (a big topic must not turn start-up into a crash
/// loop). The wait is timed from the first empty poll, so no clock is read per message (two
/// reads were ≈ 14 % of a restore's reading thread).
fn next_read<'c>(
    consumer: &'c BaseConsumer<KafkaContext>,
    what: impl Fn() -> String,
) -> Result<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'c>>, Error> {
    let mut idle_since: Option<std::time::Instant> = None;
    loop {
        if let Some(read) = consumer.poll(Duration::from_millis(500)) {
            return Ok(read);
        }
        if idle_since
            .get_or_insert_with(std::time::Instant::now)
            .elapsed()
            > READ_STALL
        {
            return Err(Error::Timeout(format!(
                "reading {} back: nothing arrived for {} s",
                what(),
                READ_STALL.as_secs()
            )));
        }
    }
}

/// One record read back: its key, payload (`None`: a tombstone) and the value of its
/// [`crate::sign::RECORD_SIGNATURE_HEADER`], if any.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    /// The record's key (empty when it has none).
    pub key: &'a [u8],
    /// The record's value; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// The signature header, when the record carries one.
    pub signature: Option<&'a [u8]>,
}

impl<'a> Read<'a> {
    /// The parts of `message` a reader checks.
    pub fn of<M: rdkafka::message::Message>(message: &'a M) -> Read<'a> {
        Read {
            key: message.key().unwrap_or_default(),
            payload: message.payload(),
            signature: signature_of(message),
        }
    }
}

/// The [`crate::sign::RECORD_SIGNATURE_HEADER`] value of `message`, if it has one.
pub fn signature_of<M: rdkafka::message::Message>(message: &M) -> Option<&[u8]> {
    use rdkafka::message::Headers;
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == crate::sign::RECORD_SIGNATURE_HEADER)
            .and_then(|h| h.value)
    })
}

/// Headers carrying the signature of an internal record, when there is a signer.
pub fn signed(
    signer: Option<&crate::sign::Signer>,
    purpose: &str,
    key: &[u8],
    payload: Option<&[u8]>,
) -> Option<OwnedHeaders> {
    let signature = signer?.sign_record(purpose, key, payload);
    Some(OwnedHeaders::new().insert(rdkafka::message::Header {
        key: crate::sign::RECORD_SIGNATURE_HEADER,
        value: Some(signature.as_bytes()),
    }))
}

/// Reads every record of `topic` from the beginning up to its end at the time of the call, and
/// hands each one with a payload to `visit`.
pub fn read_all(
    cfg: &KafkaConfig,
    topic: &str,
    client_id: &str,
    mut visit: impl FnMut(&Read<'_>),
) -> Result<u64, Error> {
    use rdkafka::message::Message;
    let consumer = reader(cfg, client_id)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    for t in metadata.topics() {
        if t.error()
            .is_some_and(|e| e != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        {
            continue;
        }
        for p in t.partitions() {
            let (low, high) = watermarks(&consumer, topic, p.id())?;
            if high > low {
                assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                ends.insert(p.id(), high);
                remaining += 1;
            }
        }
    }
    if remaining == 0 {
        return Ok(0);
    }
    consumer.assign(&assignment)?;
    let mut count = 0;
    while remaining > 0 {
        let (partition, next) = match next_read(&consumer, || format!("`{topic}`"))? {
            Ok(message) => {
                if message.payload().is_some() {
                    visit(&Read::of(&message));
                    count += 1;
                }
                (message.partition(), message.offset() + 1)
            }
            // The end of the log as the broker has it now: past any offsets that compaction
            // or transaction markers left without a record.
            Err(KafkaError::PartitionEOF(partition)) => (partition, i64::MAX),
            Err(err) => return Err(err.into()),
        };
        if ends.get(&partition).is_some_and(|end| next >= *end) {
            ends.remove(&partition);
            remaining -= 1;
        }
    }
    Ok(count)
}

/// Reads one partition of `topic` from its start to its current end, handing each record
/// (tombstones included) to `visit`, until `visit` returns false. Returns the records handed
/// on. Errors when the partition does not exist.
pub fn read_partition(
    cfg: &KafkaConfig,
    topic: &str,
    partition: i32,
    client_id: &str,
    mut visit: impl FnMut(&Read<'_>) -> bool,
) -> Result<u64, Error> {
    use rdkafka::message::Message;
    let consumer = reader(cfg, client_id)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.partitions().iter().any(|p| p.id() == partition));
    if !exists {
        return Err(Error::Timeout(format!(
            "`{topic}` has no partition {partition}: it needs as many partitions as the topic it \
             follows"
        )));
    }
    let (low, high) = watermarks(&consumer, topic, partition)?;
    if high <= low {
        return Ok(0);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    consumer.assign(&assignment)?;
    let mut count = 0;
    loop {
        match next_read(&consumer, || format!("`{topic}` partition {partition}"))? {
            Ok(message) => {
                let more = visit(&Read::of(&message));
                count += 1;
                if !more || message.offset() + 1 >= high {
                    return Ok(count);
                }
            }
            // The end of the log as the broker has it now: the last offsets below the high
            // watermark may hold no record (compacted away, or a transaction marker).
            Err(KafkaError::PartitionEOF(p)) if p == partition => return Ok(count),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Follows `topic` (every partition, from the beginning or from the end) and hands each
/// message to `visit`, until `stop` is cancelled, `visit` returns false, or nothing arrives for
/// `idle` (when set).
pub async fn follow(
    cfg: &KafkaConfig,
    topic: &str,
    from_beginning: bool,
    idle: Option<Duration>,
    stop: &tokio_util::sync::CancellationToken,
    mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> Result<(), Error> {
    let consumer: StreamConsumer<KafkaContext> = {
        let mut client = base_config(cfg);
        client
            .set("group.id", "trailguard-follow")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        client.create_with_context(KafkaContext::new(cfg))?
    };
    // The topic may not exist yet (its producer creates it at start-up): wait for it.
    let offset = if from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    while assignment.count() == 0 {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment.add_partition_offset(topic, p.id(), offset)?;
            }
        }
        if assignment.count() == 0 {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    consumer.assign(&assignment)?;
    loop {
        let idle_wait = async {
            match idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = idle_wait => return Ok(()),
            m = consumer.recv() => m?,
        };
        if !visit(&message) {
            return Ok(());
        }
    }
}

/// Why the broker will never take a record however often it is sent — `too_large`,
/// `unauthorized`, `unknown_topic`, `invalid_record` — or `None` for a failure that may pass
/// (a broker down, a leader moving, a timeout).
pub fn refusal(err: &KafkaError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match err.rdkafka_error_code()? {
        C::MessageSizeTooLarge => Some("too_large"),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => Some("unauthorized"),
        C::UnknownTopicOrPartition | C::UnknownTopic | C::InvalidTopic => Some("unknown_topic"),
        C::InvalidMessage | C::InvalidRecord => Some("invalid_record"),
        _ => None,
    }
}

/// True when `err` will not pass by trying again: a refusal ([`refusal`]), or the group or
/// cluster not authorized for this client. Followers of a topic retry everything else.
pub fn refused_for_good(err: &Error) -> bool {
    err.kafka().is_some_and(|e| {
        refusal(e).is_some()
            || e.rdkafka_error_code() == Some(RDKafkaErrorCode::GroupAuthorizationFailed)
    })
}

/// How [`send_until_durable`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The broker has the record.
    Durable,
    /// Shutdown came first: the caller must not advance past its input.
    Stopped,
    /// The broker refuses the record for good ([`refusal`]): trim it, dead-letter it or count
    /// it, and move on — retrying would stop the pipeline behind it forever.
    Refused {
        /// The closed-set kind.
        kind: &'static str,
        /// The broker's words.
        error: String,
    },
}

/// Sends one record, retrying failures that may pass with exponential backoff (capped at
/// 10 s) until the broker has it.
pub async fn send_until_durable(
    producer: &Producer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Sent {
    send_until_durable_to(producer, topic, None, key, payload, headers, shutdown).await
}

/// [`send_until_durable`] to `partition` of `topic` when given.
pub async fn send_until_durable_to(
    producer: &Producer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Sent {
    let mut backoff = Duration::from_millis(200);
    loop {
        match send_to(producer, topic, partition, key, payload, headers.clone()).await {
            Ok(_) => return Sent::Durable,
            Err(err) => {
                if let Some(kind) = err.kafka().and_then(refusal) {
                    tracing::error!(error = %err, topic, kind, bytes = payload.len(), "the broker refuses the record");
                    return Sent::Refused {
                        kind,
                        error: err.to_string(),
                    };
                }
                tracing::warn!(error = %err, topic, "publish failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Sent::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Records not yet consumed by `group` on `topics` (high watermark minus committed offset, or
/// minus the log start where the group has committed nothing), and the sum of the committed
/// offsets (which moves when anyone in the group makes progress). Blocking.
pub fn group_lag(cfg: &KafkaConfig, group: &str, topics: &[&str]) -> Result<(i64, i64), Error> {
    let mut client = base_config(cfg);
    client
        .set("group.id", group)
        .set("client.id", "trailguard-group-watch")
        .set("enable.auto.commit", "false");
    // Never subscribes: it only asks the group coordinator for the group's offsets.
    let consumer: BaseConsumer<KafkaContext> =
        client.create_with_context(KafkaContext::new(cfg))?;
    let timeout = Duration::from_secs(10);
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    let (mut lag, mut progress) = (0i64, 0i64);
    for element in committed.elements() {
        let (low, high) = watermarks(&consumer, element.topic(), element.partition())?;
        let from = match element.offset() {
            Offset::Offset(offset) => {
                progress += offset;
                offset.max(low)
            }
            _ => low,
        };
        lag += (high - from).max(0);
    }
    Ok((lag, progress))
}

/// How many partitions `topic` has (0 when it does not exist). Blocking.
pub fn partition_count(cfg: &KafkaConfig, topic: &str) -> Result<i32, Error> {
    let consumer = reader(cfg, "trailguard-metadata")?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.partitions().len() as i32)
        .sum())
}

/// Where a consumer group stands on one topic: per partition, the group's committed offset
/// (if any) and the high watermark. Asked again on every [`GroupProgress::poll`].
pub struct GroupProgress {
    consumer: BaseConsumer<KafkaContext>,
    topic: String,
}

impl GroupProgress {
    /// Watches `group` on `topic` (never joins the group: only asks its coordinator).
    pub fn new(cfg: &KafkaConfig, group: &str, topic: &str) -> Result<Self, Error> {
        let mut client = base_config(cfg);
        client
            .set("group.id", group)
            .set("client.id", "trailguard-group-progress")
            .set("enable.auto.commit", "false");
        Ok(GroupProgress {
            consumer: client.create_with_context(KafkaContext::new(cfg))?,
            topic: topic.to_string(),
        })
    }

    /// partition → (committed offset, high watermark). Blocking.
    pub fn poll(&self) -> Result<HashMap<i32, (Option<i64>, i64)>, Error> {
        let timeout = Duration::from_secs(10);
        let mut list = TopicPartitionList::new();
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition(&self.topic, p.id());
            }
        }
        let committed = self.consumer.committed_offsets(list, timeout)?;
        let mut out = HashMap::new();
        for element in committed.elements() {
            let (_, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, element.partition(), timeout)?;
            let committed = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            out.insert(element.partition(), (committed, high));
        }
        Ok(out)
    }
}

/// How often [`watch_group`] looks, and how long a group may sit with lag and no progress
/// while this instance owns nothing before it is unhealthy.
const GROUP_WATCH_EVERY: Duration = Duration::from_secs(5);
const GROUP_STALL_AFTER: Duration = Duration::from_secs(20);

/// Watches, until `shutdown`, whether this consumer (its `context`) owns partitions of `group`.
/// While it owns none, the group has lag on `topics` and the group's committed offsets have
/// not moved for 20 s, `health` reports the instance unhealthy (`/healthz` 503, naming the
/// group and the lag): it is waiting on a rebalance that does not come, or on instances that
/// are gone. An instance that owns nothing while others make progress (more instances than
/// partitions) stays healthy.
///
/// A stalled group is also asked to rebalance again: [`KafkaContext::take_rejoin`] turns true
/// (at most once per 20 s) and the service leaves and rejoins. A broker that handed this member
/// an empty assignment from a dead leader, and never told it to rejoin when that leader's
/// session expired, otherwise keeps the group stuck for good (seen on tansu 0.6).
pub fn watch_group(
    cfg: &KafkaConfig,
    group: &str,
    topics: &[&str],
    context: KafkaContext,
    health: crate::telemetry::Health,
    shutdown: tokio_util::sync::CancellationToken,
) {
    const CHECK: &str = "consumer group";
    let cfg = cfg.clone();
    let group = group.to_string();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::spawn(async move {
        // (committed offsets' sum, since when unchanged) while owning nothing with lag.
        let mut stalled: Option<(i64, std::time::Instant)> = None;
        let mut last_rejoin: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(GROUP_WATCH_EVERY) => {}
            }
            if context.owned_partitions() > 0 {
                stalled = None;
                health.report(CHECK, None);
                continue;
            }
            let (cfg2, group2, topics2) = (cfg.clone(), group.clone(), topics.clone());
            let looked = tokio::task::spawn_blocking(move || {
                let topics: Vec<&str> = topics2.iter().map(String::as_str).collect();
                group_lag(&cfg2, &group2, &topics)
            })
            .await;
            let (lag, progress) = match looked {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, %group, "group lag unknown");
                    continue;
                }
                Err(_) => continue,
            };
            if lag == 0 {
                stalled = None;
                health.report(CHECK, None);
                continue;
            }
            let since = match stalled {
                Some((at, since)) if at == progress => since,
                _ => std::time::Instant::now(),
            };
            stalled = Some((progress, since));
            if since.elapsed() >= GROUP_STALL_AFTER {
                let problem = format!(
                    "owns no partitions of group `{group}`, which has {lag} records of lag and \
                     has made no progress for {} s",
                    since.elapsed().as_secs()
                );
                tracing::warn!(%group, lag, "owns no partitions while the group is stalled");
                health.report(CHECK, Some(problem));
                if last_rejoin.is_none_or(|at| at.elapsed() >= GROUP_STALL_AFTER) {
                    last_rejoin = Some(std::time::Instant::now());
                    context
                        .rebalances
                        .rejoin
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
}

/// Leaves `consumer`'s group and joins it again with the same subscription (after
/// [`watch_group`] found the group stalled).
pub fn rejoin<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    topics: &[&str],
) -> Result<(), Error> {
    tracing::warn!(
        "owning no partitions of a stalled group: leaving and joining it again to force a rebalance"
    );
    consumer.unsubscribe();
    consumer.subscribe(topics)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// librdkafka's default fetch backoff (1 s once 100,000 records wait) left a consumer
    /// working through a backlog idle; read-backs and group consumers fetch again in 10 ms, a
    /// group consumer's unless the user tunes it, a read-back's whatever the user sets.
    #[test]
    fn consumers_do_not_pause_fetching_for_a_second() {
        let mut cfg = KafkaConfig::default();
        let backoff = |c: &ClientConfig| c.get("fetch.queue.backoff.ms").map(str::to_string);
        assert_eq!(
            backoff(&consumer_config(&cfg, "g", "c")).as_deref(),
            Some("10")
        );
        assert_eq!(backoff(&reader_config(&cfg, "c")).as_deref(), Some("10"));
        cfg.client
            .insert("fetch.queue.backoff.ms".into(), "250".into());
        assert_eq!(
            backoff(&consumer_config(&cfg, "g", "c")).as_deref(),
            Some("250")
        );
        assert_eq!(backoff(&reader_config(&cfg, "c")).as_deref(), Some("10"));
    }

    fn iam_config() -> KafkaConfig {
        let mut cfg = KafkaConfig::default();
        cfg.msk_iam.enabled = true;
        cfg.msk_iam.region = Some("eu-west-1".into());
        cfg
    }

    /// The token librdkafka gets is MSK's: a SigV4-presigned `kafka-cluster:Connect` request
    /// to the region's kafka endpoint, base64url-encoded, signed with the default credentials.
    #[test]
    fn msk_iam_token_is_a_presigned_connect_request() -> Result<(), Box<dyn std::error::Error>> {
        // The default chain reads these first (no other test here reads AWS credentials).
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDTRAILGUARDTEST");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "secret");
        let token = KafkaContext::new(&iam_config()).oauth_token()?;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token.token)?;
        let url = String::from_utf8(url)?;
        assert!(
            url.starts_with("https://kafka.eu-west-1.amazonaws.com/?"),
            "{url}"
        );
        assert!(url.contains("Action=kafka-cluster%3AConnect"), "{url}");
        assert!(
            url.contains("X-Amz-Credential=AKIDTRAILGUARDTEST%2F"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Signature="), "{url}");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        assert!(token.lifetime_ms > now_ms, "expires in the future");
        Ok(())
    }

    #[test]
    fn without_msk_iam_no_token_is_made() {
        assert!(KafkaContext::new(&KafkaConfig::default())
            .oauth_token()
            .is_err());
    }

    #[test]
    fn msk_iam_sets_sasl_oauthbearer_unless_told_otherwise() {
        let client = base_config(&iam_config());
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("sasl.mechanism"), Some("OAUTHBEARER"));
        let mut plain = iam_config();
        plain
            .client
            .insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        assert_eq!(
            base_config(&plain).get("security.protocol"),
            Some("SASL_PLAINTEXT")
        );
        let mut scram = iam_config();
        scram
            .client
            .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        let err = scram.validate().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("kafka.client.sasl.mechanism")),
            "{err:?}"
        );
    }
}
