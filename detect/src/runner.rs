//! The Kafka loop around [`Detector`]: consume an activity, evaluate it, publish its alerts and
//! wait until the broker has them, and only then store the offset the detector says is safe.
//!
//! The same consumer also reads the sign-in failures topic: every failed console sign-in is
//! published there again keyed by source IP (before its activity is committed), and each of
//! that topic's partitions has a [`SourceIpFailures`] that counts per address with offsets of
//! its own. A password spray's targets are spread over every activities partition; their
//! failures from one address all meet on one failures partition.

use std::collections::HashMap;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use trailguard_common::config::TopicRole;
use trailguard_common::contract::{dlq_headers, ACTIVITY_SCHEMA_VERSION};
use trailguard_common::telemetry::Health;
use trailguard_common::{kafka, sign, Activity, Alert, Poison};

use crate::detector::Detector;
use crate::sigma::correlation::{Correlator, Hit};
use crate::signin::{counts_per_source_ip, SourceIpFailures};
use crate::{DetectConfig, Error};

/// Detect's metrics. Labels come from closed sets only.
#[derive(Clone)]
pub struct Metrics {
    activities: IntCounterVec,
    /// `activities{result="evaluated"}`, held: counted for every activity.
    evaluated: prometheus::IntCounter,
    unverified: IntCounterVec,
    alerts: IntCounterVec,
    state: IntGauge,
    lag: Histogram,
    consumer_lag: kafka::ConsumerLag,
    refused: IntCounterVec,
    held: IntGauge,
    decided_early: prometheus::IntCounter,
    evicted: prometheus::IntCounter,
    sigma_rules: prometheus::IntGaugeVec,
    correlation_dropped: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let activities = IntCounterVec::new(
            Opts::new(
                "trailguard_detect_activities_total",
                "Activities consumed, by result (evaluated, dead_lettered).",
            ),
            &["result"],
        )?;
        let alerts = IntCounterVec::new(
            Opts::new(
                "trailguard_detect_alerts_total",
                "Alerts durably published, by policy and severity.",
            ),
            &["policy", "severity"],
        )?;
        let state = IntGauge::new(
            "trailguard_detect_state_entries",
            "Open windows held in detector state.",
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "trailguard_detect_event_lag_seconds",
                "Wall-clock time minus event time when an activity is evaluated (the clock read once a batch of up to 512 records, and after any send or restore).",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
            ]),
        )?;
        let unverified = IntCounterVec::new(
            Opts::new(
                "trailguard_detect_unverified_records_total",
                "Records read back from detect's own topics (facts, state, signin_failures, correlations) that carry no valid signature: ignored.",
            ),
            &["topic"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "trailguard_detect_publish_refused_total",
                "Records the broker refused for good (too large, not authorized, no such topic), by topic role and kind: alerts are dead-lettered as pointers, the others logged; detect moves on instead of retrying forever.",
            ),
            &["topic", "kind"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        let held = IntGauge::new(
            "trailguard_detect_held_activities",
            "Activities waiting for the organization's facts to be complete through their event time before a decision that depends on them (unusual region).",
        )?;
        registry.register(Box::new(held.clone()))?;
        let decided_early = prometheus::IntCounter::new(
            "trailguard_detect_decided_before_facts_complete_total",
            "Held activities decided on the facts known because a partition's hold was full (a partition's marks stopped: an instance gone, a partition added): such decisions may differ from run to run.",
        )?;
        registry.register(Box::new(decided_early.clone()))?;
        let evicted = prometheus::IntCounter::new(
            "trailguard_detect_baselines_evicted_total",
            "Baselines forgotten, least recently seen first, because a partition held policies.anomaly.max_baselines / kafka.partitions of them: those actors learn again like new ones.",
        )?;
        registry.register(Box::new(evicted.clone()))?;
        let sigma_rules = prometheus::IntGaugeVec::new(
            Opts::new(
                "trailguard_detect_sigma_rules",
                "Sigma rules (detection and correlation) for CloudTrail under policies.sigma.paths, by state (loaded, skipped: policies.sigma.skip_unsupported).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(sigma_rules.clone()))?;
        for state in ["loaded", "skipped"] {
            sigma_rules.with_label_values(&[state]);
        }
        let correlation_dropped = IntCounterVec::new(
            Opts::new(
                "trailguard_detect_sigma_correlation_dropped_total",
                "Matches of Sigma correlations not counted, by reason: full (a group held 10,000 matches in its window, or a partition of the correlations topic 1,000,000), late (older than the latest time less the allowed lateness and the timespan), unknown (a record naming a correlation not configured, another definition of it, or rules it does not have).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(correlation_dropped.clone()))?;
        for reason in ["full", "late", "unknown"] {
            correlation_dropped.with_label_values(&[reason]);
        }
        for role in ["alerts", "dlq", "facts", "signin_failures", "correlations"] {
            refused.with_label_values(&[role, "too_large"]);
        }
        registry.register(Box::new(activities.clone()))?;
        registry.register(Box::new(unverified.clone()))?;
        registry.register(Box::new(alerts.clone()))?;
        for topic in ["facts", "state", "signin_failures", "correlations"] {
            unverified.with_label_values(&[topic]);
        }
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        // Every result from the start, so rates and alert rules see zeros, not absent series.
        for result in ["evaluated", "dead_lettered"] {
            activities.with_label_values(&[result]);
        }
        Ok(Metrics {
            evaluated: activities.with_label_values(&["evaluated"]),
            activities,
            unverified,
            alerts,
            state,
            lag,
            consumer_lag: kafka::ConsumerLag::new(registry)?,
            refused,
            held,
            decided_early,
            evicted,
            sigma_rules,
            correlation_dropped,
        })
    }
}

/// An activities-topic message as the [`Activity`] detect evaluates, or why it cannot be
/// evaluated: its JSON, or its compact encoding (told apart by the compact one's first byte,
/// which JSON cannot begin with). JSON is checked as UTF-8 once and parsed once: a schema
/// version newer than this detect reads is refused whether or not the rest would decode.
pub fn decode(payload: Option<&[u8]>) -> Result<Activity, Poison> {
    let bytes = payload.ok_or(Poison::new("empty_message", "message has no value"))?;
    let mut activity = if trailguard_common::compact::is_compact(bytes) {
        compact(bytes)?
    } else {
        json(bytes)?
    };
    if activity.schema_version > ACTIVITY_SCHEMA_VERSION {
        return Err(newer(activity.schema_version));
    }
    // Ingest reads CloudTrail's four-digit years; a time near the ends of what chrono holds
    // (anyone who may write the topic can publish one) would overflow windows' arithmetic.
    let year = chrono::Datelike::year(&activity.event_time);
    if !(1970..=9999).contains(&year) {
        return Err(Poison::new(
            "event_time_out_of_range",
            format!("event_time year {year} is outside 1970-9999"),
        ));
    }
    if activity.actor.is_empty() {
        // Written before actors (schema version 1): resolved as ingest would now.
        activity.actor = trailguard_common::contract::Actor::of_in(
            &activity.principal,
            activity.partition.as_deref(),
        );
    }
    Ok(activity)
}

/// A compact activity ([`trailguard_common::compact`]: ingest's `publish.activity_encoding`).
fn compact(bytes: &[u8]) -> Result<Activity, Poison> {
    use trailguard_common::compact::CompactError;
    trailguard_common::compact::decode(bytes).map_err(|e| match e {
        CompactError::NewerFormat(_) => Poison::new("unsupported_schema_version", e.to_string()),
        e => Poison::new(
            "undecodable_activity",
            format!("not an Activity: compact, {e}"),
        ),
    })
}

/// An activity's JSON.
fn json(bytes: &[u8]) -> Result<Activity, Poison> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        schema_version: u32,
    }
    // JSON is UTF-8 throughout; one pass here spares serde_json a check of every string.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Poison::new(
            "undecodable_activity",
            format!("not an Activity: not UTF-8 ({e})"),
        )
    })?;
    serde_json::from_str(text).map_err(|e| {
        // Only a message that does not decode is read again, for a version to name.
        match serde_json::from_str::<Versioned>(text) {
            Ok(v) if v.schema_version > ACTIVITY_SCHEMA_VERSION => newer(v.schema_version),
            _ => Poison::new("undecodable_activity", format!("not an Activity: {e}")),
        }
    })
}

fn newer(version: u32) -> Poison {
    Poison::new(
        "unsupported_schema_version",
        format!(
            "schema_version {version} is newer than this detect reads ({ACTIVITY_SCHEMA_VERSION})"
        ),
    )
}

/// Runs detect until `shutdown`, then commits what is safe and returns; `health` hears when
/// this instance owns no partitions of a stalled group.
pub async fn run(
    cfg: DetectConfig,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Sigma rules, read once: a rule that cannot be honoured stops start-up here,
    // before anything else.
    let sigma = std::sync::Arc::new(crate::sigma::SigmaRules::load(&cfg.policies.sigma)?);
    metrics
        .sigma_rules
        .with_label_values(&["loaded"])
        .set((sigma.rules().len() + sigma.correlations().len()) as i64);
    metrics
        .sigma_rules
        .with_label_values(&["skipped"])
        .set(sigma.skipped().len() as i64);
    if !cfg.policies.sigma.paths.is_empty() {
        let (named_engines, evaluated_always) = sigma.routing();
        tracing::info!(
            loaded = sigma.rules().len(),
            skipped = sigma.skipped().len(),
            named_engines,
            evaluated_always,
            "Sigma rules"
        );
    }
    let topics = &cfg.kafka.topics;
    // The correlations topic only when a correlation is loaded: a deployment without one
    // needs no access to it.
    let correlating = sigma.correlations().len() > 0;
    let mut roles = vec![
        TopicRole::Activities,
        TopicRole::Dlq,
        TopicRole::Alerts,
        TopicRole::DetectState,
        TopicRole::DetectFacts,
        TopicRole::DetectSigninFailures,
        TopicRole::AlertsOcsf,
    ];
    let mut inputs = vec![
        topics.activities.as_str(),
        topics.detect_signin_failures.as_str(),
    ];
    if correlating {
        roles.push(TopicRole::DetectCorrelations);
        inputs.push(topics.detect_correlations.as_str());
    }
    kafka::ensure_topics(&cfg.kafka, &roles).await?;
    match &cfg.signing.key_id {
        Some(key_id) => tracing::info!(%key_id, "alerts are signed"),
        None => tracing::warn!(
            "no signing key (signing.key_id / TRAILGUARD_SIGNING__KEY): alerts are published \
             unsigned and remediate, which requires signatures by default, will refuse them"
        ),
    }
    let producer = kafka::producer(&cfg.kafka, "trailguard-detect", 0)?;
    let sink = Sink {
        producer: &producer,
        cfg: &cfg,
        metrics: &metrics,
        shutdown: &shutdown,
        waited: Default::default(),
    };
    // Notes revoked partitions, so their state is dropped (the next owner rebuilds it from
    // the committed offset).
    let context = kafka::KafkaContext::new(&cfg.kafka)
        .with_lag(metrics.consumer_lag.clone())
        .tracking_revoked();
    let consumer = kafka::consumer(
        &cfg.kafka,
        &cfg.detect.group_id,
        "trailguard-detect",
        context.clone(),
    )?;
    consumer.subscribe(&inputs)?;
    kafka::watch_group(
        &cfg.kafka,
        &cfg.detect.group_id,
        &inputs,
        context.clone(),
        health,
        shutdown.clone(),
    );
    tracing::info!(topic = %topics.activities, group = %cfg.detect.group_id, "detect running");

    let tasks = trailguard_common::shutdown::Tasks::new(shutdown.clone());
    let mut enricher = enricher(&cfg, &tasks).await?;
    let verifier = cfg.signing.verifier();
    if !verifier.authenticates_records() {
        tracing::warn!("no signing key: detect's own topics (facts, state, sign-in failures) are read back unauthenticated");
    }
    // The shape first: a mark or count read back for a partition outside it is not kept.
    let facts = crate::facts::SharedFacts::default();
    crate::facts::lock(&facts)
        .census
        .keep(i64::from(cfg.policies.anomaly.tuning.org_window_days));
    let facts_partitions = shape_facts(&cfg, &facts).await?;
    follow_facts(&cfg, &facts, &metrics, &tasks).await?;
    let progress = follow_progress(&cfg, &tasks)?;

    let mut state = Partitions {
        failures_topic: topics.detect_signin_failures.clone(),
        correlations_topic: topics.detect_correlations.clone(),
        ..Default::default()
    };
    let signin_cfg = &cfg.policies.console_signin_failures;
    let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sources = Sources {
        failures: &topics.detect_signin_failures,
        correlations: correlating.then_some(topics.detect_correlations.as_str()),
    };
    // This thread evaluates; the others read (at least one, also on one core: reading then
    // waits for the evaluation's sends rather than the other way round).
    let workers = crate::state::decoders().saturating_sub(1).max(1);
    let reader = std::sync::Arc::new((verifier.clone(), metrics.clone()));
    let read_on = |taken: Taken| read_on(taken, workers, reader.clone());
    // Records read and waiting to be evaluated, in the order read: at most one batch.
    let mut ready = std::collections::VecDeque::with_capacity(BATCH);
    // The batch taken after them, being read meanwhile.
    let mut reading: Option<
        tokio::task::JoinHandle<Result<Vec<Prepared>, tokio::task::JoinError>>,
    > = None;
    let mut checkpointed = std::time::Instant::now();
    // The clock the event lag is measured against, read once a batch and again after anything
    // that waited (a send, a partition's restore): a clock read is a system call on some
    // virtual machines, once an activity it was ≈ 4 % of this thread.
    let mut now = chrono::Utc::now();
    loop {
        let Some(Prepared {
            source: from,
            partition,
            offset,
            read,
        }) = ready.pop_front()
        else {
            // Once a batch (and once a wake-up while idle), not once a record: it sums over
            // every partition.
            metrics.state.set(state.size() as i64);
            if let Some(batch) = reading.take() {
                let batch = batch
                    .await
                    .and_then(|read| read)
                    .map_err(|e| Error::Stopped(format!("reading consumed records: {e}")))?;
                ready.extend(batch);
                now = chrono::Utc::now();
                sink.take_waited();
                // The next batch, if records wait, is read while this one is evaluated —
                // unless a checkpoint is due (it runs when nothing is being read), or detect
                // is stopping.
                if checkpointed.elapsed() < CHECKPOINT_EVERY && !shutdown.is_cancelled() {
                    let polled = futures::FutureExt::now_or_never(consumer.recv());
                    // A rebalance this poll served came after every record in `ready`.
                    let mut revoked = context.take_revoked();
                    match polled {
                        Some(Ok(message)) => {
                            let (taken, later) = take_batch(&consumer, message, &sources, &context);
                            reading = Some(read_on(taken));
                            revoked.extend(later);
                        }
                        Some(Err(err)) => tracing::warn!(error = %err, "consume failed; retrying"),
                        None => {}
                    }
                    // What was taken before a rebalance revoked its partition is not this
                    // instance's to evaluate any more.
                    if !revoked.is_empty() {
                        ready.retain(|p| !is_revoked(&revoked, &sources, p));
                        metrics.evicted.inc_by(state.forget(revoked));
                    }
                }
                continue;
            }
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if context.take_rejoin() {
                        kafka::rejoin(&consumer, &inputs)?;
                    }
                    metrics.evicted.inc_by(state.forget_revoked(&context));
                    let owned = context.owned(&topics.activities);
                    // Every owned partition's baselines, also of one with nothing new to read:
                    // countries held in them wait for decisions.
                    let unrestored: Vec<i32> = owned.iter().copied().filter(|p| !state.detectors.contains_key(p)).collect();
                    for partition in unrestored {
                        let detector = restore_partition(&cfg, partition, &verifier, &metrics, enricher.has_geo(), &facts, &sigma).await?;
                        state.detectors.insert(partition, detector);
                    }
                    crate::facts::lock(&facts).prune_census();
                    // A partition's counts are published before its mark vouches for them.
                    let mut unpublished = Vec::new();
                    for (&partition, detector) in state.detectors.iter_mut() {
                        if !publish_census(&producer, &cfg, detector, &facts).await {
                            unpublished.push(partition);
                        }
                    }
                    let owned: Vec<i32> = owned.into_iter().filter(|p| !unpublished.contains(p)).collect();
                    let marks = state.marks(&owned, &trailguard_common::sync::lock(&progress), &cfg, &crate::facts::lock(&facts));
                    // Every facts partition at once: a mark is the only record detect sends
                    // per partition per checkpoint.
                    let sink = &sink;
                    let sends = marks.iter().flat_map(|&(partition, mark)| {
                        (0..facts_partitions).map(move |k| sink.mark(partition, k, mark))
                    });
                    if let Some(Err(stopped)) = futures::future::join_all(sends).await.into_iter().find(Result::is_err) {
                        return commit_stored(&consumer, stopped, &tasks);
                    }
                    for (partition, mark) in marks {
                        for k in 0..facts_partitions {
                            crate::facts::lock(&facts).mark(partition, k, mark);
                        }
                        state.marked.insert(partition, mark);
                    }
                    let mut held = 0;
                    for detector in state.detectors.values_mut() {
                        let mut alerts = detector.look_back(&crate::facts::lock(&facts));
                        alerts.extend(detector.decide_held(&crate::facts::lock(&facts)));
                        metrics.decided_early.inc_by(detector.take_decided_early());
                        metrics.evicted.inc_by(detector.take_evicted());
                        held += detector.held();
                        if let Err(stopped) = sink.alerts(alerts).await {
                            return commit_stored(&consumer, stopped, &tasks);
                        }
                    }
                    metrics.held.set(held as i64);
                    checkpoint(&producer, &consumer, &cfg, &mut state, &facts).await?;
                    checkpointed = std::time::Instant::now();
                    // The next one a period from now, however long this one took: records
                    // are served in between.
                    ticker.reset();
                    continue;
                }
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(m) => m,
                Err(err) => {
                    tracing::warn!(error = %err, "consume failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            metrics.evicted.inc_by(state.forget_revoked(&context));
            let (taken, revoked) = take_batch(&consumer, message, &sources, &context);
            reading = Some(read_on(taken));
            metrics.evicted.inc_by(state.forget(revoked));
            continue;
        };
        let input = match read {
            Reading::Input(input) => input,
            Reading::Hit(input) => {
                match input {
                    HitInput::Hit(hit) => {
                        let correlator = state.correlators.entry(partition).or_insert_with(|| {
                            Correlator::new(sigma.clone(), cfg.detect.allowed_lateness)
                        });
                        let alerts = correlator.observe(&hit, offset);
                        let dropped = correlator.take_dropped();
                        for (reason, n) in [
                            ("full", dropped.full),
                            ("late", dropped.late),
                            ("unknown", dropped.unknown),
                        ] {
                            metrics
                                .correlation_dropped
                                .with_label_values(&[reason])
                                .inc_by(n);
                        }
                        if let Err(stopped) = sink.alerts(alerts).await {
                            return commit_stored(&consumer, stopped, &tasks);
                        }
                    }
                    HitInput::Ignored => {}
                    HitInput::Poison(Poison { kind, reason }, original) => {
                        let source = format!("{}/{partition}/{offset}", topics.detect_correlations);
                        if let Err(stopped) =
                            sink.dead_letter(&source, kind, &reason, &original).await
                        {
                            return commit_stored(&consumer, stopped, &tasks);
                        }
                    }
                }
                state.pending_correlators.insert(partition, offset + 1);
                continue;
            }
        };
        let from_failures = from == Source::Failures;
        let activity = match input {
            Input::Activity(activity) => Some(activity),
            Input::Ignored => {
                state.pending_counters.insert(partition, offset + 1);
                continue;
            }
            Input::Poison(Poison { kind, reason }, original) => {
                let topic = if from_failures {
                    &topics.detect_signin_failures
                } else {
                    &topics.activities
                };
                let source = format!("{topic}/{partition}/{offset}");
                if let Err(stopped) = sink.dead_letter(&source, kind, &reason, &original).await {
                    // Not durable: do not advance past it; the next start retries.
                    return commit_stored(&consumer, stopped, &tasks);
                }
                if !from_failures {
                    metrics
                        .activities
                        .with_label_values(&["dead_lettered"])
                        .inc();
                }
                None
            }
        };
        if from_failures {
            let counter = state
                .counters
                .entry(partition)
                .or_insert_with(|| SourceIpFailures::new(signin_cfg, cfg.detect.allowed_lateness));
            if let Some(activity) = &activity {
                let alerts = counter.observe(activity, offset);
                if let Err(stopped) = sink.alerts(alerts).await {
                    return commit_stored(&consumer, stopped, &tasks);
                }
            }
            state.pending_counters.insert(partition, offset + 1);
            continue;
        }
        #[allow(clippy::map_entry)] // the entry cannot be held across the await
        if !state.detectors.contains_key(&partition) {
            // A partition new to this instance: its baselines first.
            let detector = restore_partition(
                &cfg,
                partition,
                &verifier,
                &metrics,
                enricher.has_geo(),
                &facts,
                &sigma,
            )
            .await?;
            state.detectors.insert(partition, detector);
            now = chrono::Utc::now();
        }
        let Some(detector) = state.detectors.get_mut(&partition) else {
            continue;
        };
        if let Some(mut activity) = activity {
            enricher.enrich(&mut activity);
            metrics.evaluated.inc();
            if sink.take_waited() {
                now = chrono::Utc::now();
            }
            let lag = (now - activity.event_time).num_milliseconds() as f64 / 1000.0;
            metrics.lag.observe(lag.max(0.0));
            // Forwarded before, if its baseline was saved: a replay does not count it twice.
            let applied = detector.already_applied(&activity, offset);
            let forward = counts_per_source_ip(signin_cfg, &activity) && !applied;
            let alerts = detector.observe(&activity, offset, &mut crate::facts::lock(&facts));
            let hits = detector.take_correlation_hits();
            if let Err(stopped) = sink.alerts(alerts).await {
                return commit_stored(&consumer, stopped, &tasks);
            }
            // Durable on the failures topic before this activity can be committed.
            if forward {
                if let Err(stopped) = sink.failure(&activity).await {
                    return commit_stored(&consumer, stopped, &tasks);
                }
            }
            // So are its correlation matches, on the correlations topic.
            if correlating && !applied {
                for hit in &hits {
                    if let Err(stopped) = sink.hit(hit).await {
                        return commit_stored(&consumer, stopped, &tasks);
                    }
                }
            }
        }
        // Facts are durable before the activity's offset may be committed: another instance,
        // or this one after a restart, must learn a termination.
        for (key, fact) in detector.take_facts() {
            if let Err(stopped) = sink.fact(&key, &fact).await {
                return commit_stored(&consumer, stopped, &tasks);
            }
        }
        state.pending.insert(partition, offset + 1);
        state.next.insert(partition, offset + 1);
    }
    metrics.evicted.inc_by(state.forget_revoked(&context));
    checkpoint(&producer, &consumer, &cfg, &mut state, &facts).await?;
    kafka::flush(&producer, cfg.detect.drain_timeout)?;
    commit_stored(&consumer, Stopped("shutdown"), &tasks)?;
    tracing::info!("detect stopped");
    Ok(())
}

/// The enricher of a run without the service (a backtest): the geolocation database, the IP
/// intelligence lists as they read now (not reloaded), the AS databases.
pub async fn offline_enricher(cfg: &DetectConfig) -> Result<crate::enrich::Enricher, Error> {
    let geo = crate::enrich::GeoDb::open(&cfg.geo)?;
    if geo.is_none() {
        tracing::warn!(
            "no geolocation database (geo.databases): infrequent-country and impossible-travel \
             are off in this backtest"
        );
    }
    let mut lists = crate::enrich::IntelLists::new(&cfg.intel);
    lists.read().await;
    if !lists.complete() {
        tracing::warn!(
            "an IP intelligence list could not be read (above): the policies that use it see \
             less in this backtest than the service does"
        );
    }
    let intel = std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(lists.intel())));
    let paths = cfg.geo.asn_databases.clone();
    let asn = tokio::task::spawn_blocking(move || crate::network::AsnDb::open(&paths))
        .await
        .map_err(|e| Error::Stopped(format!("reading the AS databases: {e}")))??;
    Ok(crate::enrich::Enricher::new(geo, intel).with_networks(asn, cfg.intel.network_risk()))
}

/// The enricher: the geolocation database (if configured) and the IP intelligence lists,
/// reloaded as one of `tasks`.
async fn enricher(
    cfg: &DetectConfig,
    tasks: &trailguard_common::shutdown::Tasks,
) -> Result<crate::enrich::Enricher, Error> {
    let geo = crate::enrich::GeoDb::open(&cfg.geo)?;
    if geo.is_none() {
        tracing::warn!(
            "no geolocation database (geo.databases): infrequent-country and impossible-travel \
             detections are off"
        );
    }
    // A list that cannot be read now is a warning, and is tried again; never a refusal to start.
    let mut lists = crate::enrich::IntelLists::new(&cfg.intel);
    lists.read().await;
    let intel = lists.intel();
    tracing::info!(entries = intel.len(), "IP intelligence loaded");
    let intel = std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(intel)));
    crate::enrich::refresh_intel(lists, cfg.intel.refresh_interval, intel.clone(), tasks);
    let paths = cfg.geo.asn_databases.clone();
    let asn = tokio::task::spawn_blocking(move || crate::network::AsnDb::open(&paths))
        .await
        .map_err(|e| Error::Stopped(format!("reading the AS databases: {e}")))??;
    if asn.is_none() {
        tracing::info!(
            "no AS database (geo.asn_databases): hosting and risky networks are known only from intel lists"
        );
    }
    Ok(crate::enrich::Enricher::new(geo, intel).with_networks(asn, cfg.intel.network_risk()))
}

/// Which input topic a consumed record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Activities,
    Failures,
    Correlations,
}

/// A consumed record's parts, as the decoders read them (a message cannot cross threads; its
/// bytes can).
#[derive(Debug, Clone, Copy)]
struct Raw<'a> {
    source: Source,
    partition: i32,
    offset: i64,
    key: &'a [u8],
    payload: Option<&'a [u8]>,
}

/// A consumed record, read: what the loop evaluates, in the order the records were read.
struct Prepared {
    source: Source,
    partition: i32,
    offset: i64,
    read: Reading,
}

/// What a record was read as.
#[allow(clippy::large_enum_variant)]
enum Reading {
    Input(Input),
    Hit(HitInput),
}

/// The most records taken from the consumer's queue at once. They are read (decoded, and
/// opened when sealed) together — on several threads when there are many — and then
/// evaluated one at a time in the order they were read. Decoding an activity costs about
/// twice what evaluating it does; on one thread it bounded the service.
const BATCH: usize = 512;

/// A batch stops growing once its keys and values hold this many bytes: what waits in memory
/// stays small when records are large (two batches at a time, and their copies).
const BATCH_BYTES: usize = 8 << 20;

/// Fewer records than this are read by one thread: sharing them out would cost more than it
/// saves.
const PARALLEL_FROM: usize = 64;

/// Reads one record.
fn read_one(raw: &Raw<'_>, verifier: &sign::Verifier, metrics: &Metrics) -> Prepared {
    Prepared {
        source: raw.source,
        partition: raw.partition,
        offset: raw.offset,
        read: match raw.source {
            Source::Correlations => Reading::Hit(read_hit(raw, verifier, metrics)),
            Source::Failures | Source::Activities => {
                Reading::Input(read_input(raw, verifier, metrics))
            }
        },
    }
}

/// Reads `taken` on up to `workers` of tokio's blocking threads, each a contiguous part; the
/// results in the order taken. The blocking threads are kept between batches (a thread
/// started per batch would also start its allocator's heap afresh, page by page). A reader
/// that panics fails the whole read.
fn read_on(
    taken: Taken,
    workers: usize,
    reader: std::sync::Arc<(sign::Verifier, Metrics)>,
) -> tokio::task::JoinHandle<Result<Vec<Prepared>, tokio::task::JoinError>> {
    let taken = std::sync::Arc::new(taken);
    let count = taken.records.len();
    // Started here, not in the task below: they run whenever that task is first polled.
    let parts: Vec<_> = taken
        .parts(workers)
        .map(|part| {
            let (taken, reader) = (taken.clone(), reader.clone());
            tokio::task::spawn_blocking(move || taken.read(part, &reader.0, &reader.1))
        })
        .collect();
    tokio::spawn(async move {
        let mut all = Vec::with_capacity(count);
        for part in parts {
            all.extend(part.await?);
        }
        Ok(all)
    })
}

/// The input topics' names, to tell which a consumed record came from.
struct Sources<'a> {
    failures: &'a str,
    /// Only when a correlation is loaded (the topic is read only then).
    correlations: Option<&'a str>,
}

impl Sources<'_> {
    fn of(&self, topic: &str) -> Source {
        if self.correlations == Some(topic) {
            Source::Correlations
        } else if topic == self.failures {
            Source::Failures
        } else {
            Source::Activities
        }
    }
}

/// Takes `first` and the records already waiting behind it in the consumer's queue (up to
/// [`BATCH`] in all, or [`BATCH_BYTES`] of keys and values), copied out of their messages to
/// be read on another thread; returns them and the partitions revoked meanwhile.
///
/// Taking stops at the first poll that finds the queue empty, hands over something other
/// than a record, or serves a rebalance. A record taken before a rebalance that revoked its
/// partition is dropped, as the consumer drops those it had not yet handed over: it is no
/// longer this instance's to evaluate (its offset was not stored, and the partition's next
/// owner reads it from the last commit). So must be any such record taken earlier and not yet
/// evaluated: the caller drops those.
fn take_batch(
    consumer: &rdkafka::consumer::StreamConsumer<kafka::KafkaContext>,
    first: rdkafka::message::BorrowedMessage<'_>,
    sources: &Sources<'_>,
    context: &kafka::KafkaContext,
) -> (Taken, Vec<(String, i32)>) {
    // Keys count too: anyone who may write a topic may write large ones.
    let mut bytes = first.payload_len() + first.key_len();
    let mut batch = vec![first];
    let mut revoked = Vec::new();
    while batch.len() < BATCH && bytes < BATCH_BYTES {
        let polled = futures::FutureExt::now_or_never(consumer.recv());
        // A rebalance this poll served came after every record taken so far: those of a
        // partition it revoked are dropped, and the batch ends with this poll (a record it
        // handed over after the rebalance is kept).
        let rebalanced = context.take_revoked();
        let ends = !rebalanced.is_empty();
        if ends {
            batch.retain(|m| {
                !rebalanced
                    .iter()
                    .any(|(t, p)| t == m.topic() && *p == m.partition())
            });
            revoked.extend(rebalanced);
        }
        match polled {
            Some(Ok(message)) => {
                bytes += message.payload_len() + message.key_len();
                batch.push(message);
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "consume failed; retrying");
                break;
            }
            None => break,
        }
        if ends {
            break;
        }
    }
    let mut taken = Taken {
        bytes: Vec::with_capacity(bytes + batch.len() * 64),
        records: Vec::with_capacity(batch.len()),
    };
    for m in &batch {
        taken.push(
            sources.of(m.topic()),
            m.partition(),
            m.offset(),
            m.key().unwrap_or_default(),
            m.payload(),
        );
    }
    (taken, revoked)
}

/// Whether `prepared` came from a partition in `revoked`.
fn is_revoked(revoked: &[(String, i32)], sources: &Sources<'_>, prepared: &Prepared) -> bool {
    revoked
        .iter()
        .any(|(t, p)| sources.of(t) == prepared.source && *p == prepared.partition)
}

/// Records taken from the consumer, their keys and values copied into one buffer (a message
/// cannot leave the consumer's thread; a copy of ≈ 1 KB is a small part of reading it).
#[derive(Debug, Default)]
struct Taken {
    bytes: Vec<u8>,
    records: Vec<TakenRecord>,
}

/// A taken record: where it came from, and its key and value in [`Taken::bytes`].
#[derive(Debug)]
struct TakenRecord {
    source: Source,
    partition: i32,
    offset: i64,
    key: std::ops::Range<usize>,
    /// `None`: no value.
    payload: Option<std::ops::Range<usize>>,
}

impl Taken {
    fn push(
        &mut self,
        source: Source,
        partition: i32,
        offset: i64,
        key: &[u8],
        payload: Option<&[u8]>,
    ) {
        let mut copy = |part: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(part);
            start..self.bytes.len()
        };
        let key = copy(key);
        let payload = payload.map(copy);
        self.records.push(TakenRecord {
            source,
            partition,
            offset,
            key,
            payload,
        });
    }

    /// The records' indexes, in up to `workers` contiguous parts (one for a few records).
    fn parts(&self, workers: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let n = self.records.len();
        let workers = if n < PARALLEL_FROM { 1 } else { workers.max(1) };
        let part = n.div_ceil(workers).max(1);
        (0..n)
            .step_by(part)
            .map(move |start| start..(start + part).min(n))
    }

    /// The records of `part`, read in order.
    fn read(
        &self,
        part: std::ops::Range<usize>,
        verifier: &sign::Verifier,
        metrics: &Metrics,
    ) -> Vec<Prepared> {
        self.records[part]
            .iter()
            .map(|r| {
                let raw = Raw {
                    source: r.source,
                    partition: r.partition,
                    offset: r.offset,
                    key: &self.bytes[r.key.clone()],
                    payload: r.payload.clone().map(|p| &self.bytes[p]),
                };
                read_one(&raw, verifier, metrics)
            })
            .collect()
    }
}

/// Reads a record of the correlations topic. Only detect forwards matches: a record it did
/// not sign is ignored, so nobody who can write the topic can complete a correlation (or
/// fill a group so that real matches are dropped).
fn read_hit(raw: &Raw<'_>, verifier: &sign::Verifier, metrics: &Metrics) -> HitInput {
    let opened = verifier.open(
        sign::purpose::CORRELATIONS,
        raw.key,
        raw.payload.unwrap_or_default(),
    );
    let payload = match opened {
        Ok(payload) => payload,
        Err(why) => {
            metrics
                .unverified
                .with_label_values(&["correlations"])
                .inc();
            let (partition, offset) = (raw.partition, raw.offset);
            tracing::warn!(partition, offset, reason = %why, "ignored an unverifiable record on the correlations topic");
            return HitInput::Ignored;
        }
    };
    match serde_json::from_slice::<Hit>(payload) {
        Ok(hit) => HitInput::Hit(hit),
        Err(e) => HitInput::Poison(
            Poison::new(
                "undecodable_correlation_match",
                format!("not a correlation match: {e}"),
            ),
            raw.payload.map(<[u8]>::to_vec).unwrap_or_default(),
        ),
    }
}

/// What a record of the correlations topic is to detect.
#[allow(clippy::large_enum_variant)]
enum HitInput {
    /// A match to count.
    Hit(Hit),
    /// Not sealed by detect: ignored and counted.
    Ignored,
    /// Sealed by detect but not a match this detect reads (another version's): dead-lettered.
    Poison(Poison, Vec<u8>),
}

/// What a consumed record is to detect. One per record, moved at once: its size is no cost.
#[allow(clippy::large_enum_variant)]
enum Input {
    /// An activity to evaluate (or, from the sign-in failures topic, to count).
    Activity(Activity),
    /// Never evaluable: dead-lettered with the original bytes.
    Poison(Poison, Vec<u8>),
    /// A record on the sign-in failures topic detect did not seal: ignored and counted.
    Ignored,
}

/// Reads a consumed record. A forwarded failure is the activity inside its sealed envelope.
/// Only detect forwards failures: a record it did not sign is ignored, so nobody who can write
/// the topic can fake a password spray (or hide one). The payload is copied only when it is
/// going to the dead-letter topic.
fn read_input(raw: &Raw<'_>, verifier: &sign::Verifier, metrics: &Metrics) -> Input {
    let payload = if raw.source == Source::Failures {
        match verifier.open(
            sign::purpose::SIGNIN_FAILURES,
            raw.key,
            raw.payload.unwrap_or_default(),
        ) {
            Ok(activity) => Some(activity),
            Err(why) => {
                metrics
                    .unverified
                    .with_label_values(&["signin_failures"])
                    .inc();
                let (partition, offset) = (raw.partition, raw.offset);
                tracing::warn!(partition, offset, reason = %why, "ignored an unverifiable record on the sign-in failures topic");
                return Input::Ignored;
            }
        }
    } else {
        raw.payload
    };
    match decode(payload) {
        Ok(activity) => Input::Activity(activity),
        Err(poison) => Input::Poison(poison, raw.payload.map(<[u8]>::to_vec).unwrap_or_default()),
    }
}

/// A detector for a partition new to this instance, with the partition's baselines restored
/// from the changelog.
async fn restore_partition(
    cfg: &DetectConfig,
    partition: i32,
    verifier: &sign::Verifier,
    metrics: &Metrics,
    has_geo: bool,
    facts: &crate::facts::SharedFacts,
    sigma: &std::sync::Arc<crate::sigma::SigmaRules>,
) -> Result<Detector, Error> {
    let kafka_cfg = cfg.kafka.clone();
    let restore_verifier = verifier.clone();
    let restored = tokio::task::spawn_blocking(move || {
        crate::state::restore(&kafka_cfg, partition, &restore_verifier)
    })
    .await
    .map_err(|e| Error::Stopped(format!("restoring baselines: {e}")))??;
    metrics
        .unverified
        .with_label_values(&["state"])
        .inc_by(restored.unverified);
    // The counts as of the baselines' save (newer ones, from the facts topic, win).
    {
        let latest = crate::census::day_of(chrono::Utc::now().timestamp()) + 1;
        let mut facts = crate::facts::lock(facts);
        for (day, counts) in restored.census {
            facts.census.apply(day, partition, counts, latest);
        }
    }
    let mut detector = Detector::new(&cfg.policies, cfg.detect.allowed_lateness)
        .with_geo(&cfg.policies, has_geo)
        .counting_source_ips_elsewhere()
        .with_sigma(sigma.clone())
        .on_partition(partition)
        // The topic's own count (a topic expanded, or made by hand, may differ from
        // kafka.partitions): the shares then add up to the bound.
        .for_partitions(
            &cfg.policies,
            crate::facts::lock(facts)
                .activities_partitions()
                .unwrap_or(cfg.kafka.partitions),
        );
    detector.restore(restored.states, restored.applied_through);
    Ok(detector)
}

/// Publishes the counts `detector` changed since the last call, signed; false (and kept to
/// publish again) when one was not delivered.
async fn publish_census(
    producer: &kafka::Producer,
    cfg: &DetectConfig,
    detector: &mut Detector,
    facts: &crate::facts::SharedFacts,
) -> bool {
    let days = detector.take_census(&crate::facts::lock(facts));
    if days.is_empty() {
        return true;
    }
    let partition = detector.partition();
    let records: Vec<(String, Vec<u8>)> = days
        .iter()
        .filter_map(|(day, counts)| {
            let key = format!("census:{partition}:{day}");
            let record = FactRecord {
                key: key.clone(),
                fact: None,
                mark: None,
                census: Some(PartitionCensus {
                    partition,
                    day: *day,
                    counts: counts.clone(),
                }),
            };
            let payload = serde_json::to_vec(&record).ok()?;
            let sealed = sign::seal(
                cfg.signing.signer().as_ref(),
                sign::purpose::FACTS,
                key.as_bytes(),
                &payload,
            );
            Some((key, sealed))
        })
        .collect();
    let sends = records.iter().map(|(key, payload)| {
        producer.send(
            rdkafka::producer::FutureRecord::to(&cfg.kafka.topics.detect_facts)
                .key(key)
                .payload(payload),
            Duration::from_secs(30),
        )
    });
    let delivered = futures::future::join_all(sends).await;
    if let Some(Err((err, _))) = delivered.iter().find(|d| d.is_err()) {
        tracing::warn!(error = %err, partition, "organization counts not published; retrying at the next checkpoint");
        detector.census_unpublished(days.into_iter().map(|(day, _)| day));
        return false;
    }
    true
}

/// A record of the facts topic: a fact, a partition's mark, or a partition's counts of one
/// day. Its key travels in the value too, so the topic can be read back whole.
#[derive(serde::Serialize, serde::Deserialize)]
struct FactRecord {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fact: Option<crate::facts::Fact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mark: Option<PartitionMark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    census: Option<PartitionCensus>,
}

/// One activities partition's counts of one day (see [`crate::census`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct PartitionCensus {
    partition: i32,
    day: i64,
    #[serde(flatten)]
    counts: crate::census::CensusDay,
}

/// A mark, for the activities partition and the facts partition it was published on.
#[derive(serde::Serialize, serde::Deserialize)]
struct PartitionMark {
    partition: i32,
    facts_partition: i32,
    #[serde(flatten)]
    mark: crate::facts::Mark,
}

impl FactRecord {
    /// Applies the record to `facts`.
    fn apply(self, facts: &crate::facts::SharedFacts) {
        let mut facts = crate::facts::lock(facts);
        if let Some(fact) = self.fact {
            facts.learn(&self.key, fact);
        }
        if let Some(m) = self.mark {
            facts.mark(m.partition, m.facts_partition, m.mark);
        }
        if let Some(c) = self.census {
            if facts.knows_partition(c.partition) {
                // Never a day beyond tomorrow: detect counts no activity dated past the clock.
                let latest = crate::census::day_of(chrono::Utc::now().timestamp()) + 1;
                facts.census.apply(c.day, c.partition, c.counts, latest);
            }
        }
    }
}

/// Tells `facts` how many activities and facts partitions there are, so decisions wait for
/// every partition's marks; returns the facts partitions.
async fn shape_facts(cfg: &DetectConfig, facts: &crate::facts::SharedFacts) -> Result<i32, Error> {
    let kafka_cfg = cfg.kafka.clone();
    let topics = cfg.kafka.topics.clone();
    let (activities, facts_partitions) = tokio::task::spawn_blocking(move || {
        Ok::<_, trailguard_common::Error>((
            kafka::partition_count(&kafka_cfg, &topics.activities)?,
            kafka::partition_count(&kafka_cfg, &topics.detect_facts)?,
        ))
    })
    .await
    .map_err(|e| Error::Stopped(format!("reading partition counts: {e}")))??;
    crate::facts::lock(facts).set_shape(activities, facts_partitions);
    tracing::info!(
        activities,
        facts_partitions,
        "facts are complete when every activities partition has marked every facts partition"
    );
    Ok(facts_partitions.max(1))
}

/// Per activities partition: detect's committed offset and the high watermark.
type Progress = std::sync::Arc<std::sync::Mutex<HashMap<i32, (Option<i64>, i64)>>>;

/// Where detect's group stands on the activities topic (committed offset and high watermark
/// per partition), asked every half second as one of `tasks`: a partition read to its high
/// watermark is caught up.
fn follow_progress(
    cfg: &DetectConfig,
    tasks: &trailguard_common::shutdown::Tasks,
) -> Result<Progress, Error> {
    let progress = std::sync::Arc::new(kafka::GroupProgress::new(
        &cfg.kafka,
        &cfg.detect.group_id,
        &cfg.kafka.topics.activities,
    )?);
    let shared = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let (out, shutdown) = (shared.clone(), tasks.shutdown().clone());
    tasks.spawn("group progress", async move {
        loop {
            let asked = progress.clone();
            match tokio::task::spawn_blocking(move || asked.poll()).await {
                Ok(Ok(now)) => *trailguard_common::sync::lock(&out) = now,
                Ok(Err(err)) => {
                    // Not knowing is not caught up: no partition vouches past what it read.
                    trailguard_common::sync::lock(&out).clear();
                    tracing::debug!(error = %err, "asking the group's progress failed; asking again")
                }
                Err(err) => return Err(format!("asking the group's progress: {err}")),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
    Ok(shared)
}

/// Reads the facts topic whole (before any activity is processed, so the organization's history
/// is known), then keeps following it, into the facts every partition of this instance shares.
async fn follow_facts(
    cfg: &DetectConfig,
    facts: &crate::facts::SharedFacts,
    metrics: &Metrics,
    tasks: &trailguard_common::shutdown::Tasks,
) -> Result<(), Error> {
    let (loaded, kafka_cfg, topic, verifier, unverified) = (
        facts.clone(),
        cfg.kafka.clone(),
        cfg.kafka.topics.detect_facts.clone(),
        cfg.signing.verifier(),
        metrics.unverified.with_label_values(&["facts"]),
    );
    let count = tokio::task::spawn_blocking(move || {
        kafka::read_all(&kafka_cfg, &topic, "trailguard-detect-facts", |read| {
            if let Some(record) = verified_fact(&verifier, read, &unverified) {
                record.apply(&loaded);
            }
        })
    })
    .await
    .map_err(|e| Error::Stopped(format!("reading the facts topic: {e}")))??;
    tracing::info!(facts = count, "organization facts loaded");
    let (shared, kafka_cfg, topic, verifier, unverified) = (
        facts.clone(),
        cfg.kafka.clone(),
        cfg.kafka.topics.detect_facts.clone(),
        cfg.signing.verifier(),
        metrics.unverified.with_label_values(&["facts"]),
    );
    let shutdown = tasks.shutdown().clone();
    // Without it this instance would stop seeing the facts other instances learn (a
    // termination, a region in use). A failure that passes (the broker away for a while) is
    // followed again from the start (learning a fact twice changes nothing); one that will not
    // pass (refused: no grant, no topic) stops detect rather than degrade it unseen.
    tasks.spawn("facts follower", async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let followed = kafka::follow(&kafka_cfg, &topic, true, None, &shutdown, |message| {
                let read = kafka::Read::of(message);
                if let Some(record) = verified_fact(&verifier, &read, &unverified) {
                    record.apply(&shared);
                }
                true
            })
            .await;
            match followed {
                Ok(()) => return Ok(()),
                Err(err) if kafka::refused_for_good(&err) => {
                    return Err(format!("following the facts topic: {err}"))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "following the facts topic failed; following it again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    Ok(())
}

/// A fact record read back, when it is signed by a known key and its key matches the one
/// inside it; otherwise counted and logged, and `None`. A forged fact ("admin was deleted")
/// would otherwise raise signed alerts, and actions, about its subject.
fn verified_fact(
    verifier: &sign::Verifier,
    read: &kafka::Read<'_>,
    unverified: &prometheus::IntCounter,
) -> Option<FactRecord> {
    let sealed = read.payload?;
    let payload = match verifier.open(sign::purpose::FACTS, read.key, sealed) {
        Ok(payload) => payload,
        Err(why) => {
            unverified.inc();
            tracing::warn!(key = %String::from_utf8_lossy(read.key), reason = %why, "ignored an unverifiable fact");
            return None;
        }
    };
    let record = serde_json::from_slice::<FactRecord>(payload).ok()?;
    (record.key.as_bytes() == read.key).then_some(record)
}

/// How often baselines are saved and offsets stored.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// What this instance holds for the partitions it owns.
#[derive(Default)]
struct Partitions {
    /// Name of the sign-in failures topic (partition numbers are per topic).
    failures_topic: String,
    /// By activities partition.
    detectors: HashMap<i32, Detector>,
    /// The next offset of each activities partition since the last checkpoint; its safe
    /// offset is stored at the next checkpoint, after the baselines.
    pending: HashMap<i32, i64>,
    /// By sign-in failures partition.
    counters: HashMap<i32, SourceIpFailures>,
    /// As `pending`, for the sign-in failures partitions.
    pending_counters: HashMap<i32, i64>,
    /// Name of the correlations topic.
    correlations_topic: String,
    /// By correlations partition.
    correlators: HashMap<i32, Correlator>,
    /// As `pending`, for the correlations partitions.
    pending_correlators: HashMap<i32, i64>,
    /// The offset after the last activity read from each activities partition.
    next: HashMap<i32, i64>,
    /// The last mark published for each activities partition.
    marked: HashMap<i32, crate::facts::Mark>,
    /// What each activities partition read to its end vouches for.
    idle: HashMap<i32, IdleVouch>,
}

/// How long a partition must stay read to its end, after a time became the latest any
/// partition evaluated, before it vouches for that time itself (until then, for the latest
/// less the allowed lateness).
const IDLE_SETTLE: Duration = Duration::from_secs(10);

/// What an activities partition that is read to its end vouches for. A time becomes vouched
/// for only once the partition has stayed caught up for [`IDLE_SETTLE`] *after that time was
/// first the latest known*: records of the same moment sent to this partition have had that
/// long to arrive. (Vouching for whatever is latest as soon as the partition has been idle
/// long enough let a partition idle since start-up vouch for the first time another
/// partition read, before its own records of that time, a moment behind, arrived: they were
/// then late, and decisions waiting on them were made without them.) Dropped as soon as the
/// partition has records to read.
#[derive(Debug, Default)]
struct IdleVouch {
    /// The latest time vouched for in full (`None`: none yet).
    settled: Option<i64>,
    /// The latest time known, and when it was first seen, waiting to be vouched for in full.
    pending: Option<(i64, std::time::Instant)>,
}

impl IdleVouch {
    /// What the partition vouches for at `now`, the latest time any partition evaluated
    /// being `latest`. One time settles at a time, so a latest that keeps moving (the
    /// partition is quiet, others are busy) is vouched for about twice the settle behind (wall-clock, as checkpoints run).
    fn through(&mut self, latest: i64, lateness: i64, now: std::time::Instant) -> i64 {
        if let Some((time, seen)) = self.pending {
            if now.saturating_duration_since(seen) >= IDLE_SETTLE {
                self.settled = Some(self.settled.map_or(time, |s| s.max(time)));
                self.pending = None;
            }
        }
        if self.pending.is_none() && self.settled.is_none_or(|s| latest > s) {
            self.pending = Some((latest, now));
        }
        let less_lateness = latest.saturating_sub(lateness);
        self.settled.map_or(less_lateness, |s| s.max(less_lateness))
    }
}

impl Partitions {
    /// Drops the state of partitions this instance no longer owns (their next owner restores
    /// the baselines from the changelog and replays from the last commit; a counter is rebuilt
    /// by the replay alone).
    /// Returns how many baselines the forgotten detectors had evicted since they were last
    /// asked, so that the metric counts them too.
    fn forget_revoked(&mut self, context: &kafka::KafkaContext) -> u64 {
        self.forget(context.take_revoked())
    }

    fn forget(&mut self, revoked: Vec<(String, i32)>) -> u64 {
        let mut evicted = 0;
        for (topic, partition) in revoked {
            if topic == self.failures_topic {
                self.counters.remove(&partition);
                self.pending_counters.remove(&partition);
            } else if topic == self.correlations_topic {
                self.correlators.remove(&partition);
                self.pending_correlators.remove(&partition);
            } else {
                if let Some(mut detector) = self.detectors.remove(&partition) {
                    evicted += detector.take_evicted();
                }
                self.pending.remove(&partition);
                self.next.remove(&partition);
                self.marked.remove(&partition);
                self.idle.remove(&partition);
            }
        }
        evicted
    }

    /// The marks to publish for the `owned` activities partitions whose mark changed: what
    /// each vouches for (see [`crate::facts::Mark`]): the latest time it evaluated, less the
    /// allowed lateness. A partition caught up with the broker (`progress`: committed or read
    /// offset at the high watermark) vouches for the latest time any partition has evaluated,
    /// less the lateness — and for that time itself once it has stayed caught up for
    /// [`IDLE_SETTLE`] since the time was first seen ([`IdleVouch`]): a record of it that
    /// comes later with an earlier time is late.
    fn marks(
        &mut self,
        owned: &[i32],
        progress: &HashMap<i32, (Option<i64>, i64)>,
        cfg: &DetectConfig,
        facts: &crate::facts::Facts,
    ) -> Vec<(i32, crate::facts::Mark)> {
        let lateness = cfg.detect.allowed_lateness.as_secs() as i64;
        let max_of = |p: &i32| {
            self.detectors
                .get(p)
                .and_then(Detector::max_event_time)
                .unwrap_or(i64::MIN)
        };
        let org_max = owned
            .iter()
            .map(max_of)
            .chain(facts.org_max())
            .max()
            .unwrap_or(i64::MIN);
        let mut out = Vec::new();
        for &partition in owned {
            let max = max_of(&partition);
            let read = self.next.get(&partition).copied();
            let idle = progress
                .get(&partition)
                .is_some_and(|&(committed, high)| read.max(committed).unwrap_or(0) >= high);
            let through = if idle {
                self.idle.entry(partition).or_default().through(
                    max.max(org_max),
                    lateness,
                    std::time::Instant::now(),
                )
            } else {
                self.idle.remove(&partition);
                max.saturating_sub(lateness)
            };
            let mark = crate::facts::Mark { through, max, idle };
            if self.marked.get(&partition) != Some(&mark) {
                out.push((partition, mark));
            }
        }
        out
    }

    /// Open windows and baselines held.
    fn size(&self) -> usize {
        self.detectors
            .values()
            .map(Detector::state_size)
            .sum::<usize>()
            + self
                .counters
                .values()
                .map(SourceIpFailures::state_size)
                .sum::<usize>()
            + self
                .correlators
                .values()
                .map(Correlator::state_size)
                .sum::<usize>()
    }
}

/// Saves every changed baseline, then stores the safe offsets: an offset is committed only
/// once the baselines of the activities before it are durable. A partition whose baselines
/// could not be saved keeps its offset pending until a later checkpoint succeeds.
async fn checkpoint<C: ConsumerContext>(
    producer: &kafka::Producer,
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    cfg: &DetectConfig,
    state: &mut Partitions,
    facts: &crate::facts::SharedFacts,
) -> Result<(), Error> {
    let topics = &cfg.kafka.topics;
    let mut list = TopicPartitionList::new();
    for (&partition, detector) in state.detectors.iter_mut() {
        // Counts before baselines: a baseline saved past an activity is never applied again,
        // so the counts it made must already be on the topic — and in the changelog, for the
        // partition's next owner.
        if !publish_census(producer, cfg, detector, facts).await {
            continue;
        }
        let census = detector.take_census_to_save(&crate::facts::lock(facts));
        if !crate::state::save(
            producer,
            &topics.detect_state,
            partition,
            detector,
            census,
            cfg.signing.signer().as_ref(),
        )
        .await
        {
            continue;
        }
        if let Some(next) = state.pending.remove(&partition) {
            let safe = detector.safe_offset(next);
            list.add_partition_offset(&topics.activities, partition, Offset::Offset(safe))?;
        }
    }
    // The counters keep no changelog: their state is rebuilt by replay from the safe offset.
    for (&partition, counter) in state.counters.iter_mut() {
        if let Some(next) = state.pending_counters.remove(&partition) {
            let safe = counter.safe_offset(next);
            list.add_partition_offset(
                &topics.detect_signin_failures,
                partition,
                Offset::Offset(safe),
            )?;
        }
    }
    for (&partition, correlator) in state.correlators.iter_mut() {
        if let Some(next) = state.pending_correlators.remove(&partition) {
            let safe = correlator.safe_offset(next);
            list.add_partition_offset(
                &topics.detect_correlations,
                partition,
                Offset::Offset(safe),
            )?;
        }
    }
    if list.count() > 0 {
        if let Err(err) = consumer.store_offsets(&list) {
            // Happens when a partition was just revoked; its next owner replays from the last commit.
            tracing::debug!(error = %err, "offsets not stored");
        }
    }
    Ok(())
}

/// Commits the offsets stored so far and ends the loop; `stopped` says why it ended. When a
/// background task failed (and so stopped the loop, whatever send was under way), that
/// failure is the result.
fn commit_stored<C: ConsumerContext>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    stopped: Stopped,
    tasks: &trailguard_common::shutdown::Tasks,
) -> Result<(), Error> {
    let why = stopped.0;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(why, "committed stored offsets"),
        // Nothing stored yet is not an error.
        Err(err) => tracing::debug!(error = %err, why, "nothing committed"),
    }
    match tasks.failure() {
        Some(failure) => Err(Error::Stopped(failure)),
        None => Ok(()),
    }
}

/// Shutdown came before a record was durable: detect stops without storing an offset past
/// the record that produced it (the next start evaluates it again). Says what was unsent.
#[derive(Debug, Clone, Copy)]
struct Stopped(&'static str);

/// Where detect's outputs go — alerts (and their OCSF form), dead letters, facts, forwarded
/// sign-in failures — each send waiting until the broker has the record or refuses it for
/// good (counted; detect moves on). Every send ends `Err(Stopped)` if shutdown came first.
struct Sink<'a> {
    producer: &'a kafka::Producer,
    cfg: &'a DetectConfig,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
    /// Set by every send (each waits for the broker): the loop's clock is then read again
    /// before the next activity's lag is measured.
    waited: std::sync::atomic::AtomicBool,
}

impl Sink<'_> {
    /// Whether anything was sent since the last call.
    fn take_waited(&self) -> bool {
        self.waited
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes `alerts` in order ([`Sink::alert`]).
    async fn alerts(&self, alerts: Vec<Alert>) -> Result<(), Stopped> {
        for alert in &alerts {
            self.alert(alert).await?;
        }
        Ok(())
    }

    /// Publishes an alert, signed, and counts it. One the broker refuses for good (too large,
    /// not authorized) goes to the dead-letter topic as a pointer, so it is neither lost nor
    /// retried forever.
    async fn alert(&self, alert: &Alert) -> Result<(), Stopped> {
        match self.signed(alert).await {
            kafka::Sent::Durable => {
                self.metrics
                    .alerts
                    .with_label_values(&[&alert.policy_id, alert.severity.as_str()])
                    .inc();
                Ok(())
            }
            kafka::Sent::Stopped => Err(Stopped("shutdown while an alert was unpublished")),
            kafka::Sent::Refused { kind, error } => {
                self.metrics
                    .refused
                    .with_label_values(&["alerts", kind])
                    .inc();
                let pointer = serde_json::json!({
                    "alert_id": alert.id, "policy_id": alert.policy_id,
                    "severity": alert.severity.as_str(), "entity": alert.entity.id,
                    "summary": alert.evidence.summary.chars().take(500).collect::<String>(),
                })
                .to_string();
                let source = format!("alert/{}", alert.id);
                let reason = format!("the alerts topic refused the alert: {error}");
                self.dead_letter(&source, kind, &reason, pointer.as_bytes())
                    .await
            }
        }
    }

    /// Signs and publishes an alert (and its OCSF form), retrying until the broker has them
    /// or refuses them for good.
    async fn signed(&self, alert: &Alert) -> kafka::Sent {
        let signed;
        let alert = match self.cfg.signing.signer() {
            Some(signer) => {
                let mut copy = alert.clone();
                signer.sign(&mut copy);
                signed = copy;
                &signed
            }
            None => alert,
        };
        let Ok(payload) = serde_json::to_vec(alert) else {
            // Plain data always serializes; never advance past an alert that was not published.
            return kafka::Sent::Stopped;
        };
        let topics = &self.cfg.kafka.topics;
        let key = alert.entity.id.as_bytes();
        let sent = self.send(&topics.alerts, key, &payload, None).await;
        if sent != kafka::Sent::Durable {
            return sent;
        }
        tracing::info!(alert_id = %alert.id, policy = %alert.policy_id, severity = alert.severity.as_str(), summary = %alert.evidence.summary, "alert");
        if topics.alerts_ocsf.is_empty() {
            return kafka::Sent::Durable;
        }
        let Ok(finding) = serde_json::to_vec(&crate::ocsf::detection_finding(alert)) else {
            return kafka::Sent::Durable;
        };
        match self.send(&topics.alerts_ocsf, key, &finding, None).await {
            // The alert itself is durable; its OCSF copy, refused for good, is logged.
            kafka::Sent::Refused { .. } => kafka::Sent::Durable,
            other => other,
        }
    }

    /// Sends a record that cannot be evaluated to the dead-letter topic with its reason.
    async fn dead_letter(
        &self,
        source: &str,
        kind: &str,
        reason: &str,
        original: &[u8],
    ) -> Result<(), Stopped> {
        let headers = kafka::headers([
            (dlq_headers::REASON, reason),
            (dlq_headers::ERROR_KIND, kind),
            (dlq_headers::SOURCE, source),
            (dlq_headers::STAGE, "detect"),
            (dlq_headers::POINTER, "false"),
        ]);
        tracing::warn!(%source, kind, %reason, "dead-lettered activity");
        let topic = &self.cfg.kafka.topics.dlq;
        let sent = self.send(topic, source.as_bytes(), original, Some(headers));
        self.moved_on("dlq", sent.await)
            .map_err(|_| Stopped("shutdown while a dead letter was unpublished"))
    }

    /// Publishes a fact learned here, signed (facts are rare; one published twice is
    /// harmless).
    async fn fact(&self, key: &str, fact: &crate::facts::Fact) -> Result<(), Stopped> {
        let record = FactRecord {
            key: key.to_string(),
            fact: Some(fact.clone()),
            mark: None,
            census: None,
        };
        self.fact_record(None, &record)
            .await
            .map_err(|_| Stopped("shutdown while a fact was unpublished"))
    }

    /// Publishes the mark of activities `partition` on `facts_partition`, signed.
    async fn mark(
        &self,
        partition: i32,
        facts_partition: i32,
        mark: crate::facts::Mark,
    ) -> Result<(), Stopped> {
        let record = FactRecord {
            key: format!("mark:{partition}:{facts_partition}"),
            fact: None,
            mark: Some(PartitionMark {
                partition,
                facts_partition,
                mark,
            }),
            census: None,
        };
        self.fact_record(Some(facts_partition), &record)
            .await
            .map_err(|_| Stopped("shutdown while a mark was unpublished"))
    }

    /// Publishes a record of the facts topic (to `partition`, when given).
    async fn fact_record(
        &self,
        partition: Option<i32>,
        record: &FactRecord,
    ) -> Result<(), Stopped> {
        let Ok(payload) = serde_json::to_vec(record) else {
            return Ok(());
        };
        let key = record.key.as_bytes();
        let payload = sign::seal(
            self.cfg.signing.signer().as_ref(),
            sign::purpose::FACTS,
            key,
            &payload,
        );
        let topic = &self.cfg.kafka.topics.detect_facts;
        self.waited
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = kafka::send_until_durable_to(
            self.producer,
            topic,
            partition,
            key,
            &payload,
            None,
            self.shutdown,
        );
        self.moved_on("facts", sent.await)
    }

    /// Forwards a failed sign-in to the sign-in failures topic, keyed by its source IP.
    async fn failure(&self, activity: &Activity) -> Result<(), Stopped> {
        let (Some(ip), Ok(payload)) = (activity.source_ip, serde_json::to_vec(activity)) else {
            // Nothing to count it by (or, never, unserializable): nothing to forward.
            return Ok(());
        };
        let topic = &self.cfg.kafka.topics.detect_signin_failures;
        self.forward(
            topic,
            sign::purpose::SIGNIN_FAILURES,
            "signin_failures",
            &ip.to_string(),
            &payload,
        )
        .await
        .map_err(|_| Stopped("shutdown while a sign-in failure was unforwarded"))
    }

    /// Forwards a correlation's match to the correlations topic, keyed by correlation and
    /// group.
    async fn hit(&self, hit: &Hit) -> Result<(), Stopped> {
        let Ok(payload) = serde_json::to_vec(hit) else {
            return Ok(());
        };
        let topic = &self.cfg.kafka.topics.detect_correlations;
        self.forward(
            topic,
            sign::purpose::CORRELATIONS,
            "correlations",
            &hit.key(),
            &payload,
        )
        .await
        .map_err(|_| Stopped("shutdown while a correlation match was unforwarded"))
    }

    /// Sends `payload` to detect's own re-keyed `topic` under `key`, sealed for `purpose`
    /// (only detect's records are counted there), until durable or refused for good
    /// (counted under `role`).
    async fn forward(
        &self,
        topic: &str,
        purpose: &str,
        role: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(), Stopped> {
        let sealed = sign::seal(
            self.cfg.signing.signer().as_ref(),
            purpose,
            key.as_bytes(),
            payload,
        );
        let sent = self.send(topic, key.as_bytes(), &sealed, None);
        self.moved_on(role, sent.await)
    }

    /// One record, retried until the broker has it or refuses it for good.
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<rdkafka::message::OwnedHeaders>,
    ) -> kafka::Sent {
        self.waited
            .store(true, std::sync::atomic::Ordering::Relaxed);
        kafka::send_until_durable(self.producer, topic, key, payload, headers, self.shutdown).await
    }

    /// Ok when detect may go past the record: it is durable, or the broker refused it for
    /// good (counted under `role`; the broker's reason is logged).
    fn moved_on(&self, role: &str, sent: kafka::Sent) -> Result<(), Stopped> {
        match sent {
            kafka::Sent::Durable => Ok(()),
            kafka::Sent::Stopped => Err(Stopped("shutdown")),
            kafka::Sent::Refused { kind, .. } => {
                self.metrics.refused.with_label_values(&[role, kind]).inc();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// `CreateUser` by IAM user `user`, as ingest normalizes it; `n` makes its event id.
    fn created_user(user: &str, n: i64) -> Activity {
        let record = serde_json::json!({
            "eventVersion": "1.09", "eventTime": "2024-05-10T12:00:00Z",
            "eventSource": "iam.amazonaws.com", "eventName": "CreateUser",
            "eventID": format!("00000000-0000-4000-8000-{n:012}"),
            "userIdentity": {"type": "IAMUser", "userName": user, "accountId": "123456789012",
                "arn": format!("arn:aws:iam::123456789012:user/{user}")},
        });
        trailguard_ingest::normalize::normalize(&record.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What a read record is, in a form to compare.
    fn what(prepared: &Prepared) -> String {
        let read = match &prepared.read {
            Reading::Input(Input::Activity(a)) => format!("activity {}", a.id),
            Reading::Input(Input::Poison(p, original)) => {
                format!("poison {} ({} bytes)", p.kind, original.len())
            }
            Reading::Input(Input::Ignored) => "ignored".to_string(),
            Reading::Hit(HitInput::Hit(_)) => "hit".to_string(),
            Reading::Hit(HitInput::Ignored) => "ignored hit".to_string(),
            Reading::Hit(HitInput::Poison(p, original)) => {
                format!("poison hit {} ({} bytes)", p.kind, original.len())
            }
        };
        format!(
            "{:?} {}/{}: {read}",
            prepared.source, prepared.partition, prepared.offset
        )
    }

    /// `raws` as the loop reads them: copied out of their messages, then read on `workers`.
    async fn read_taken(
        raws: &[Raw<'_>],
        workers: usize,
        reader: &std::sync::Arc<(sign::Verifier, Metrics)>,
    ) -> Vec<String> {
        let mut taken = Taken::default();
        for r in raws {
            taken.push(r.source, r.partition, r.offset, r.key, r.payload);
        }
        read_on(taken, workers, reader.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(what)
            .collect()
    }

    #[test]
    fn a_batch_is_shared_out_in_contiguous_parts_that_cover_it_in_order() {
        for n in [
            0,
            1,
            PARALLEL_FROM - 1,
            PARALLEL_FROM,
            PARALLEL_FROM + 1,
            700,
        ] {
            let mut taken = Taken::default();
            for offset in 0..n {
                taken.push(Source::Activities, 0, offset as i64, b"", None);
            }
            for workers in [0, 1, 2, 3, 4, 7] {
                let parts: Vec<_> = taken.parts(workers).collect();
                let covered: Vec<usize> = parts.iter().cloned().flatten().collect();
                assert_eq!(
                    covered,
                    (0..n).collect::<Vec<_>>(),
                    "{n} records, {workers}"
                );
                let most = if n < PARALLEL_FROM { 1 } else { workers.max(1) };
                assert!(parts.len() <= most, "{n} records, {workers}: {parts:?}");
                // Shared out at all when there are enough.
                if n >= PARALLEL_FROM && workers > 1 {
                    assert!(parts.len() > 1, "{n} records, {workers}: {parts:?}");
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_read_on_several_threads_come_back_as_one_thread_reads_them_in_the_order_read()
    {
        let signing = sign::SigningConfig {
            key_id: Some("k1".into()),
            key: Some("0123456789abcdef0123456789abcdef".into()),
            ..sign::SigningConfig::default()
        };
        let (signer, verifier) = (signing.signer(), signing.verifier());
        let metrics = Metrics::new(&Registry::new()).unwrap_or_else(|e| panic!("{e}"));
        let records: Vec<(Source, Vec<u8>, Option<Vec<u8>>)> = (0..700i64)
            .map(|n| {
                let key = format!("k{n}").into_bytes();
                let activity = serde_json::to_vec(&created_user(&format!("u{}", n % 37), n))
                    .unwrap_or_default();
                let sealed =
                    |purpose, value: &[u8]| sign::seal(signer.as_ref(), purpose, &key, value);
                let (source, payload) = match n % 8 {
                    0..=2 => (Source::Activities, Some(activity)),
                    3 => (Source::Activities, Some(b"{\"schema_version\": 1".to_vec())),
                    4 => (Source::Activities, None),
                    // Forwarded by detect, and not: the second is ignored.
                    5 => (
                        Source::Failures,
                        Some(sealed(sign::purpose::SIGNIN_FAILURES, &activity)),
                    ),
                    6 => (Source::Failures, Some(activity)),
                    // Sealed by detect but not a match; and not sealed.
                    _ if n % 16 == 7 => (
                        Source::Correlations,
                        Some(sealed(sign::purpose::CORRELATIONS, b"[]")),
                    ),
                    _ => (Source::Correlations, Some(b"{}".to_vec())),
                };
                (source, key, payload)
            })
            .collect();
        let raws: Vec<Raw<'_>> = records
            .iter()
            .enumerate()
            .map(|(n, (source, key, payload))| Raw {
                source: *source,
                partition: (n % 3) as i32,
                offset: n as i64,
                key,
                payload: payload.as_deref(),
            })
            .collect();
        let one: Vec<String> = raws
            .iter()
            .map(|raw| what(&read_one(raw, &verifier, &metrics)))
            .collect();
        // Each kind of record was read as what it is (700 = 87 × 8 + 4).
        let count = |kind: &str| one.iter().filter(|w| w.contains(kind)).count();
        assert_eq!(count(": activity "), 3 * 88 + 87);
        assert_eq!(count(": poison undecodable_activity"), 88);
        assert_eq!(count(": poison empty_message"), 87);
        assert_eq!(one.iter().filter(|w| w.ends_with(": ignored")).count(), 87);
        assert_eq!(count(": poison hit undecodable_correlation_match"), 44);
        assert_eq!(count(": ignored hit"), 43);
        let reader = std::sync::Arc::new((verifier.clone(), metrics.clone()));
        for workers in [1, 2, 3, 4, 7] {
            assert_eq!(
                read_taken(&raws, workers, &reader).await,
                one,
                "{workers} threads"
            );
            // A batch too small to share out, and ones just large enough.
            for len in [PARALLEL_FROM - 1, PARALLEL_FROM, PARALLEL_FROM + 1] {
                assert_eq!(
                    read_taken(&raws[..len], workers, &reader).await,
                    one[..len],
                    "{workers} threads, {len} records"
                );
            }
        }
    }

    #[test]
    fn a_newer_schema_version_is_refused_whether_or_not_the_rest_decodes() {
        let activity = created_user("a", 1);
        let mut json = serde_json::to_value(&activity).unwrap_or_default();
        json["schema_version"] = serde_json::json!(ACTIVITY_SCHEMA_VERSION + 1);
        let kind = |payload: &[u8]| decode(Some(payload)).err().map(|p| p.kind);
        assert_eq!(
            kind(json.to_string().as_bytes()),
            Some("unsupported_schema_version")
        );
        assert_eq!(
            kind(br#"{"schema_version": 99, "id": 5}"#),
            Some("unsupported_schema_version")
        );
        assert_eq!(
            kind(br#"{"schema_version": 1, "id": 5}"#),
            Some("undecodable_activity")
        );
        // Invalid UTF-8 inside a string, and a lone byte outside one.
        let mut bad = json.to_string().into_bytes();
        bad.truncate(bad.len() - 1);
        let mut in_string = serde_json::to_vec(&activity).unwrap_or_default();
        let at = in_string
            .windows(3)
            .position(|w| w == b"iam")
            .unwrap_or_default();
        in_string[at] = 0xff;
        assert_eq!(kind(&in_string), Some("undecodable_activity"));
        bad.extend_from_slice(b"\xff}");
        assert_eq!(kind(&bad), Some("undecodable_activity"));
        assert_eq!(decode(None).err().map(|p| p.kind), Some("empty_message"));
    }

    #[test]
    fn an_activity_dated_beyond_what_windows_can_hold_is_poison() {
        let activity = created_user("a", 1);
        let mut json = serde_json::to_value(&activity).unwrap_or_default();
        assert!(decode(Some(json.to_string().as_bytes())).is_ok());
        for time in [
            "+262143-12-31T23:59:59Z",
            "-262143-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            json["event_time"] = serde_json::json!(time);
            let decoded = decode(Some(json.to_string().as_bytes()));
            assert!(
                decoded.as_ref().is_err_and(
                    |p| p.kind == "event_time_out_of_range" || p.kind == "undecodable_activity"
                ),
                "{time}: {:?}",
                decoded.map(|a| a.event_time)
            );
        }
        // A time chrono reads, outside ingest's years: refused for its range.
        json["event_time"] = serde_json::json!("0001-01-01T00:00:00Z");
        assert!(decode(Some(json.to_string().as_bytes()))
            .is_err_and(|p| p.kind == "event_time_out_of_range"));
    }

    #[test]
    fn compact_activities_decode_as_their_json_does() {
        use trailguard_common::compact::{ActivityEncoding, FORMAT, MAGIC};
        let kind = |payload: &[u8]| decode(Some(payload)).err().map(|p| p.kind);
        let activity = created_user("a", 1);
        let compact = ActivityEncoding::Compact
            .to_vec(&activity)
            .unwrap_or_default();
        let json = ActivityEncoding::Json.to_vec(&activity).unwrap_or_default();
        let (from_compact, from_json) = (decode(Some(&compact)), decode(Some(&json)));
        assert!(from_compact.is_ok() && from_json.is_ok());
        assert_eq!(
            serde_json::to_value(from_compact.ok()).ok(),
            serde_json::to_value(from_json.ok()).ok()
        );
        // The same refusals, for the same reasons.
        let mut newer = activity.clone();
        newer.schema_version = ACTIVITY_SCHEMA_VERSION + 1;
        let bytes = ActivityEncoding::Compact.to_vec(&newer).unwrap_or_default();
        assert_eq!(kind(&bytes), Some("unsupported_schema_version"));
        let mut format = compact.clone();
        format[MAGIC.len()] = FORMAT + 1;
        assert_eq!(kind(&format), Some("unsupported_schema_version"));
        let mut old = activity.clone();
        old.event_time = chrono::DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or_default();
        let bytes = ActivityEncoding::Compact.to_vec(&old).unwrap_or_default();
        assert_eq!(kind(&bytes), Some("event_time_out_of_range"));
        assert_eq!(
            kind(&compact[..compact.len() - 1]),
            Some("undecodable_activity")
        );
        assert_eq!(kind(&MAGIC), Some("undecodable_activity"));
        // Schema version 1 had no actor: resolved here, as from JSON.
        let mut first = activity.clone();
        first.actor = Default::default();
        let bytes = ActivityEncoding::Compact.to_vec(&first).unwrap_or_default();
        assert_eq!(
            decode(Some(&bytes)).map(|a| a.actor.id).ok(),
            Some(activity.actor.id.clone())
        );
    }

    #[test]
    fn evictions_of_a_partition_revoked_before_they_were_counted_are_counted() {
        let mut cfg = crate::config::PoliciesConfig::default();
        cfg.anomaly.max_baselines = 100;
        let mut detector = Detector::new(&cfg, Duration::from_secs(300));
        let mut facts = crate::facts::Facts::default();
        for i in 0..150 {
            detector.observe(&created_user(&format!("u{i}"), i), i, &mut facts);
        }
        let mut state = Partitions {
            failures_topic: "failures".into(),
            correlations_topic: "correlations".into(),
            ..Default::default()
        };
        state.detectors.insert(3, detector);
        assert!(state.forget(vec![("activities".into(), 3)]) > 0);
        assert!(state.detectors.is_empty());
    }

    #[test]
    fn an_idle_partition_vouches_for_a_time_only_after_it_settles() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut vouch = IdleVouch::default();
        // Idle since start-up: nothing evaluated anywhere.
        assert_eq!(vouch.through(i64::MIN, 300, at(0)), i64::MIN);
        // Long idle, then another partition reads its first records (time 10,000): this
        // one's records of that moment may be a moment behind, so only the lateness is given.
        assert_eq!(vouch.through(10_000, 300, at(60)), 9_700);
        assert_eq!(vouch.through(10_000, 300, at(69)), 9_700);
        // Caught up for the settle since 10,000 was first seen: that time itself.
        assert_eq!(vouch.through(10_000, 300, at(70)), 10_000);
        // A latest that keeps moving still settles, one time at a time.
        assert_eq!(vouch.through(10_500, 300, at(71)), 10_200);
        assert_eq!(vouch.through(11_000, 300, at(75)), 10_700);
        assert_eq!(vouch.through(11_000, 300, at(81)), 10_700, "10,500 settles");
        assert_eq!(vouch.through(11_000, 300, at(82)), 10_700);
        assert_eq!(vouch.through(11_000, 300, at(91)), 11_000, "then 11,000");
        // Never back, whatever the latest says.
        assert_eq!(vouch.through(5_000, 300, at(200)), 11_000);
    }
}
