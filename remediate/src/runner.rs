//! The Kafka loop: consume an alert, verify its signature, decide, act, publish the action
//! record, and only then store the offset. Alerts already answered (by this or an earlier
//! instance, as the actions topic shows) are skipped, so no alert is acted on twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use trailguard_common::config::TopicRole;
use trailguard_common::contract::{
    stable_id, ActionKind, ActionOutcome, ActionRecord, Mode, RequestedAction,
    ACTION_SCHEMA_VERSION, ALERT_SCHEMA_VERSION,
};
use trailguard_common::sign::Rejection;
use trailguard_common::telemetry::Health;
use trailguard_common::{kafka, Alert};

use crate::intent::Intent;
use crate::notify::Notifier;
use crate::plan::{plan, Decision, Protection, RateLimiter};
use crate::{bucket, iam, Error, RemediateConfig};

/// Remediate's metrics. Labels come from closed sets only.
#[derive(Clone)]
pub struct Metrics {
    alerts: IntCounterVec,
    unverified: prometheus::IntCounter,
    actions: IntCounterVec,
    rejected: IntCounterVec,
    latency: prometheus::Histogram,
    consumer_lag: kafka::ConsumerLag,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let alerts = IntCounterVec::new(
            Opts::new(
                "trailguard_remediate_alerts_total",
                "Alerts consumed, by result (handled, duplicate, rejected, undecodable).",
            ),
            &["result"],
        )?;
        let actions = IntCounterVec::new(
            Opts::new(
                "trailguard_remediate_actions_total",
                "Action records published, by action kind and outcome.",
            ),
            &["kind", "outcome"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "trailguard_remediate_rejected_alerts_total",
                "Alerts refused as not authentic, by reason (unsigned, unknown_key, bad_signature).",
            ),
            &["reason"],
        )?;
        let latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "trailguard_remediate_alert_to_action_seconds",
                "From an alert's arrival on the alerts topic (its Kafka timestamp) to its action records being durable.",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )?;
        let unverified = prometheus::IntCounter::new(
            "trailguard_remediate_unverified_records_total",
            "Records on the actions topic without remediate's signature, ignored when reading it back.",
        )?;
        registry.register(Box::new(alerts.clone()))?;
        registry.register(Box::new(unverified.clone()))?;
        registry.register(Box::new(actions.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        // Every closed label set from the start, so rates and alert rules see zeros, not
        // absent series.
        for result in ["handled", "duplicate", "rejected", "undecodable"] {
            alerts.with_label_values(&[result]);
        }
        for reason in ["unsigned", "unknown_key", "bad_signature"] {
            rejected.with_label_values(&[reason]);
        }
        use trailguard_common::contract::{ActionKind as K, ActionOutcome as O};
        for kind in [
            K::MakeBucketPrivate,
            K::RemoveCollaborator,
            K::Notify,
            K::RequireSignIn,
            K::SuspendUser,
        ] {
            for outcome in [
                O::Applied,
                O::AlreadyCompliant,
                O::DryRun,
                O::Skipped,
                O::Refused,
                O::Failed,
                O::Rejected,
            ] {
                actions.with_label_values(&[kind.as_str(), outcome.as_str()]);
            }
        }
        Ok(Metrics {
            alerts,
            unverified,
            actions,
            rejected,
            latency,
            consumer_lag: kafka::ConsumerLag::new(registry)?,
        })
    }
}

/// Who remediate's own credentials are (`sts:GetCallerIdentity`).
#[derive(Debug, Clone)]
struct Caller {
    account: String,
    arn: String,
}

/// Why no clients can act in an account.
#[derive(Debug, Clone, PartialEq)]
enum NoClients {
    /// Acting there is not allowed by the configuration: the action is refused.
    Refused(String),
    /// The credentials' own account could not be resolved (a transient STS failure).
    Failed(String),
}

/// Clients kept at most (one pair per target account).
const MAX_ACCOUNTS: usize = 1024;

/// AWS clients per target account. The credentials' own account (resolved once with
/// `sts:GetCallerIdentity`) is acted in with the credentials themselves; any other account
/// only through the role `aws.role_arn_template` names there (and, when `aws.accounts` is set,
/// only for the accounts it lists) — never with the base credentials, which would act on a
/// same-named user or role of their own account. S3 clients send the account as the expected
/// bucket owner, so no call touches a bucket of another account.
struct Clients {
    aws: trailguard_common::aws::AwsConfig,
    caller: tokio::sync::OnceCell<Caller>,
    by_account: tokio::sync::Mutex<HashMap<String, (aws_sdk_s3::Client, aws_sdk_iam::Client)>>,
}

impl Clients {
    fn new(aws: trailguard_common::aws::AwsConfig) -> Self {
        Clients {
            aws,
            caller: tokio::sync::OnceCell::new(),
            by_account: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The credentials' own identity (asked once; a failure is asked again next time).
    async fn caller(&self) -> Result<&Caller, NoClients> {
        self.caller
            .get_or_try_init(|| async {
                let sdk = self.aws.sdk_config().await;
                let mut config = aws_sdk_sts::config::Builder::from(&sdk)
                    .interceptor(trailguard_common::aws_calls::CallRecorder);
                if let Some(url) = self.aws.endpoints.get("sts") {
                    config = config.endpoint_url(url);
                }
                let me = aws_sdk_sts::Client::from_conf(config.build())
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| {
                        NoClients::Failed(format!(
                            "sts:GetCallerIdentity: {}",
                            trailguard_common::aws::error_text(&e)
                        ))
                    })?;
                match (me.account(), me.arn()) {
                    (Some(account), Some(arn)) => {
                        tracing::info!(account, arn, "remediate acts as");
                        Ok(Caller {
                            account: account.to_string(),
                            arn: arn.to_string(),
                        })
                    }
                    _ => Err(NoClients::Failed(
                        "sts:GetCallerIdentity returned no account".into(),
                    )),
                }
            })
            .await
    }

    /// Clients acting in `account` (`None` or empty: the credentials' own account).
    async fn get(
        &self,
        account: Option<&str>,
    ) -> Result<(aws_sdk_s3::Client, aws_sdk_iam::Client), NoClients> {
        let caller = self.caller().await?;
        let account = account
            .filter(|a| !a.is_empty())
            .unwrap_or(caller.account.as_str());
        let mut map = self.by_account.lock().await;
        if let Some(c) = map.get(account) {
            return Ok(c.clone());
        }
        let sdk = if account == caller.account {
            self.aws.sdk_config().await
        } else {
            match self.aws.sdk_config_in(account).await {
                Some(sdk) => sdk,
                None => {
                    return Err(NoClients::Refused(format!(
                        "the target is in account {account}, remediate's credentials act in {} \
                         and no role is configured for {account} (aws.role_arn_template{})",
                        caller.account,
                        if self.aws.accounts.is_empty() {
                            ""
                        } else {
                            ", aws.accounts"
                        }
                    )))
                }
            }
        };
        let s3 = trailguard_common::aws::s3_client_owned_by(&self.aws, &sdk, account);
        let mut iam = aws_sdk_iam::config::Builder::from(&sdk)
            .interceptor(trailguard_common::aws_calls::CallRecorder);
        if let Some(url) = self.aws.endpoints.get("iam") {
            iam = iam.endpoint_url(url);
        }
        let clients = (s3, aws_sdk_iam::Client::from_conf(iam.build()));
        if map.len() >= MAX_ACCOUNTS {
            map.clear();
        }
        map.insert(account.to_string(), clients.clone());
        Ok(clients)
    }
}

/// Fills `record` with why no clients could act, and says whether that was the case.
fn no_clients(record: &mut ActionRecord, why: NoClients) {
    match why {
        NoClients::Refused(why) => {
            record.outcome = ActionOutcome::Refused;
            record.detail = format!("refused: {why}");
        }
        NoClients::Failed(why) => {
            record.outcome = ActionOutcome::Failed;
            record.detail = why;
        }
    }
}

/// What the loop needs to act.
struct Actor {
    clients: Clients,
    /// Who must never be touched; known once remediate knows its own identity.
    protection: tokio::sync::OnceCell<Protection>,
    notifier: Notifier,
    limiter: std::sync::Mutex<RateLimiter>,
}

impl Actor {
    /// The protections, resolving remediate's own identity first if it is not known yet.
    /// `None` while `sts:GetCallerIdentity` fails: then nothing but notifications is done.
    async fn protection(&self, aws: &trailguard_common::aws::AwsConfig) -> Option<&Protection> {
        self.protection
            .get_or_try_init(|| async {
                let caller = self.clients.caller().await?;
                Ok::<_, NoClients>(Protection::new(&caller.account, &caller.arn, aws))
            })
            .await
            .ok()
    }
}

/// The id of the record answering `action` of `alert`.
fn record_id(alert: &Alert, action: &RequestedAction) -> String {
    stable_id([
        alert.id.as_str(),
        action.kind.as_str(),
        action.target.id.as_str(),
        action.target.grantee.as_deref().unwrap_or(""),
    ])
}

fn new_record(alert: &Alert, decision: &Decision) -> ActionRecord {
    let target = &decision.action.target;
    ActionRecord {
        schema_version: ACTION_SCHEMA_VERSION,
        id: record_id(alert, &decision.action),
        alert_id: alert.id.clone(),
        policy_id: alert.policy_id.clone(),
        kind: decision.action.kind,
        target: target.clone(),
        mode: decision.mode,
        outcome: ActionOutcome::Skipped,
        detail: String::new(),
        steps: Vec::new(),
        aws_request_ids: Vec::new(),
        time: chrono::Utc::now(),
        undo: None,
        undo_of: None,
    }
}

fn fill(
    record: &mut ActionRecord,
    outcome: ActionOutcome,
    detail: String,
    steps: Vec<trailguard_common::contract::ActionStep>,
    undo: Option<serde_json::Value>,
) {
    record.outcome = outcome;
    record.detail = detail;
    record.aws_request_ids = steps.iter().filter_map(|s| s.request_id.clone()).collect();
    record.steps = steps;
    record.undo = undo;
}

/// Where an action's `started` record goes, and what an earlier attempt recorded.
struct Journal<'a> {
    producer: &'a kafka::Producer,
    shutdown: &'a CancellationToken,
    /// The prior state from the earliest `started` record of this action, when an earlier
    /// attempt (before a crash, or by another instance) got that far and recorded no end.
    earlier: Option<&'a serde_json::Value>,
}

/// The runner's [`Intent`]: publishes the action's prior state as a `started` record, and
/// returns only once the broker has it.
struct WriteAhead<'a> {
    cfg: &'a RemediateConfig,
    journal: &'a Journal<'a>,
    record: &'a ActionRecord,
}

impl Intent for WriteAhead<'_> {
    fn record<'a>(
        &'a self,
        undo: &'a serde_json::Value,
        planned: &'a [trailguard_common::contract::ActionStep],
    ) -> futures::future::BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut started = self.record.clone();
            started.outcome = ActionOutcome::Started;
            started.detail = format!(
                "prior state recorded; making {} change(s)",
                planned.len()
            );
            started.steps = planned.to_vec();
            // The earliest attempt read the state before anyone changed it.
            started.undo = Some(self.journal.earlier.unwrap_or(undo).clone());
            started.time = chrono::Utc::now();
            publish(
                self.journal.producer,
                self.cfg,
                &started,
                self.journal.shutdown,
            )
            .await
        })
    }
}

/// Carries out one decision and describes it as an action record. Before its first change the
/// action's prior state goes to the actions topic as a `started` record (see [`WriteAhead`]).
async fn execute(
    actor: &Actor,
    cfg: &RemediateConfig,
    alert: &Alert,
    decision: &Decision,
    journal: &Journal<'_>,
) -> ActionRecord {
    let mut record = act(actor, cfg, alert, decision, journal).await;
    // An earlier attempt stopped after recording the prior state: whatever it changed is part
    // of this action, and its record holds the state from before any change.
    if let Some(prior) = journal.earlier {
        if record.outcome == ActionOutcome::AlreadyCompliant {
            record.outcome = ActionOutcome::Applied;
            record.detail = format!(
                "{}: an earlier attempt made the changes and stopped before recording its result",
                record.detail
            );
        }
        if matches!(
            record.outcome,
            ActionOutcome::Applied | ActionOutcome::Failed
        ) {
            record.undo = Some(prior.clone());
        }
    }
    record
}

async fn act(
    actor: &Actor,
    cfg: &RemediateConfig,
    alert: &Alert,
    decision: &Decision,
    journal: &Journal<'_>,
) -> ActionRecord {
    let target = &decision.action.target;
    let mut record = new_record(alert, decision);
    let template = record.clone();
    let intent = WriteAhead {
        cfg,
        journal,
        record: &template,
    };
    if let Some(refusal) = &decision.refusal {
        record.outcome = ActionOutcome::Refused;
        record.detail = format!("refused: {refusal}");
        return record;
    }
    if decision.mode == Mode::Off {
        record.detail = format!(
            "mode is off for {} on policy {}",
            decision.action.kind.as_str(),
            alert.policy_id
        );
        return record;
    }
    let dry_run = decision.mode == Mode::DryRun;
    if !dry_run {
        let limit = cfg.remediate.rate_limits.get(&decision.action.kind);
        let taken = match actor.limiter.lock() {
            Ok(mut l) => l.take(decision.action.kind, limit, std::time::Instant::now()),
            Err(poisoned) => {
                poisoned
                    .into_inner()
                    .take(decision.action.kind, limit, std::time::Instant::now())
            }
        };
        if let Err(why) = taken {
            record.outcome = ActionOutcome::Refused;
            record.detail = format!("refused: {why}");
            return record;
        }
    }
    // Nothing but a notification before remediate knows who it is (and so who is protected).
    let protection = match actor.protection.get() {
        Some(p) => p,
        None if decision.action.kind == ActionKind::Notify => &Protection::default(),
        None => {
            let why = match actor.clients.caller().await {
                Err(NoClients::Failed(why) | NoClients::Refused(why)) => why,
                Ok(_) => "remediate's own identity was not resolved yet".into(),
            };
            record.outcome = ActionOutcome::Failed;
            record.detail = format!(
                "cannot tell which account remediate's credentials act in, nothing done: {why}"
            );
            return record;
        }
    };
    let account = target.account_id.as_deref();
    match decision.action.kind {
        ActionKind::MakeBucketPrivate => {
            let s3 = match actor.clients.get(account).await {
                Ok((s3, _)) => s3,
                Err(why) => {
                    no_clients(&mut record, why);
                    return record;
                }
            };
            let r = bucket::make_private_recorded(&s3, &target.id, dry_run, &intent).await;
            fill(&mut record, r.outcome, r.detail, r.steps, r.undo);
        }
        ActionKind::RemoveCollaborator => {
            let Some(grantee) = target.grantee.as_deref().filter(|g| !g.is_empty()) else {
                record.outcome = ActionOutcome::Failed;
                record.detail = "remove_collaborator needs a grantee in its target".into();
                return record;
            };
            let s3 = match actor.clients.get(account).await {
                Ok((s3, _)) => s3,
                Err(why) => {
                    no_clients(&mut record, why);
                    return record;
                }
            };
            let r = bucket::remove_collaborator_recorded(
                &s3,
                &target.id,
                grantee,
                dry_run,
                |policy| crate::plan::strip_refusal(policy, grantee, &cfg.remediate, protection),
                &intent,
            )
            .await;
            fill(&mut record, r.outcome, r.detail, r.steps, r.undo);
        }
        ActionKind::RequireSignIn | ActionKind::SuspendUser => {
            let who = match iam::Identity::parse(&target.id) {
                Ok(who) => who,
                Err(why) => {
                    record.outcome = ActionOutcome::Failed;
                    record.detail = why;
                    return record;
                }
            };
            // IAM names are per account: act in the principal's own account (from its ARN), never
            // in the account where the activity happened (a cross-account session acts there),
            // and never in the credentials' own account for a principal of another one.
            let client = match actor.clients.get(Some(who.account())).await {
                Ok((_, iam)) => iam,
                Err(why) => {
                    no_clients(&mut record, why);
                    return record;
                }
            };
            let r = if decision.action.kind == ActionKind::SuspendUser {
                iam::suspend_user_recorded(
                    &client,
                    &who,
                    dry_run,
                    cfg.remediate.suspend_deletes_console_password,
                    &intent,
                )
                .await
            } else {
                let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
                iam::require_sign_in_recorded(&client, &who, &now, dry_run, &intent).await
            };
            fill(&mut record, r.outcome, r.detail, r.steps, r.undo);
        }
        ActionKind::Notify => {
            let r = actor.notifier.notify(alert, target, dry_run).await;
            fill(&mut record, r.outcome, r.detail, r.steps, None);
        }
    }
    record
}

/// Why `alert` is too old to act on, if it is: its event time (the latest repeat folded in)
/// is more than `max_age` before `now`. Zero `max_age`: no limit.
fn staleness(
    alert: &Alert,
    max_age: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if max_age.is_zero() {
        return None;
    }
    let latest = alert.last_time.unwrap_or(alert.time).max(alert.time);
    let age = (now - latest).to_std().ok()?;
    (age > max_age).then(|| {
        format!(
            "the alert is {} old, older than remediate.max_alert_age ({}): a replayed or long-delayed alert is not acted on",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        )
    })
}

/// Rejection records allowed per minute (fixed windows).
struct RejectionBudget {
    per_minute: u32,
    window: i64,
    used: u32,
    suppressed: u64,
}

impl RejectionBudget {
    fn new(per_minute: u32) -> Self {
        RejectionBudget {
            per_minute,
            window: 0,
            used: 0,
            suppressed: 0,
        }
    }

    /// True when one more record may be written now (unix seconds).
    fn take(&mut self, now: i64) -> bool {
        let window = now.div_euclid(60);
        if window != self.window {
            if self.suppressed > 0 {
                tracing::warn!(suppressed = self.suppressed, "rejection records not written last minute (remediate.max_rejection_records_per_minute); the rejections were counted");
            }
            self.window = window;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.per_minute {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// An alert's decisions not yet recorded, and its Kafka timestamp (ms).
type Pending = (Vec<Decision>, Option<i64>);

/// Alerts taken in one batch at most.
const BATCH: usize = 64;

/// What remediate needs of one message (the message itself borrows the consumer).
struct Incoming {
    partition: i32,
    offset: i64,
    /// Kafka timestamp (ms).
    arrived: Option<i64>,
    alert: Option<Result<Alert, String>>,
    /// The alert as it arrived (its signature covers every member, known or not).
    raw: Option<serde_json::Value>,
}

impl Incoming {
    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        // The bytes are parsed once; the typed alert is read from that tree.
        let raw = m.payload().map(serde_json::from_slice::<serde_json::Value>);
        let alert = raw.as_ref().map(|r| match r {
            Ok(value) => {
                <Alert as serde::Deserialize>::deserialize(value).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        });
        Incoming {
            partition: m.partition(),
            offset: m.offset(),
            arrived: m.timestamp().to_millis(),
            alert,
            raw: raw.and_then(Result::ok),
        }
    }
}

/// Splits alerts into groups that share no target (other than notification channels), keeping
/// the order within each group: a group runs in order, groups run concurrently.
fn group_by_target<T>(work: Vec<(Alert, T)>) -> Vec<Vec<(Alert, T)>> {
    let mut groups: Vec<Vec<(Alert, T)>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for item in work {
        let keys: Vec<String> = item
            .0
            .actions
            .iter()
            .filter(|a| a.kind != ActionKind::Notify)
            .map(|a| match iam::Identity::parse(&a.target.id) {
                // A role and its sessions are one target (one inline policy).
                Ok(who) => format!("{who:?}"),
                Err(_) => a.target.id.clone(),
            })
            .collect();
        let mut found: Vec<usize> = keys
            .iter()
            .filter_map(|k| group_of.get(k).copied())
            .collect();
        found.sort_unstable();
        found.dedup();
        let index = match found.first() {
            Some(&first) => {
                // The alert joins groups that were apart: merge them into the first.
                for &other in found.iter().skip(1).rev() {
                    let moved = std::mem::take(&mut groups[other]);
                    groups[first].extend(moved);
                    for g in group_of.values_mut() {
                        if *g == other {
                            *g = first;
                        }
                    }
                }
                first
            }
            None => {
                groups.push(Vec::new());
                groups.len() - 1
            }
        };
        for k in keys {
            group_of.insert(k, index);
        }
        groups[index].push(item);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// The record of an alert that was not authentic: never acted on.
fn rejection_record(alert: &Alert, action: &RequestedAction, why: &Rejection) -> ActionRecord {
    let mut record = new_record(
        alert,
        &Decision {
            action: action.clone(),
            mode: Mode::Off,
            refusal: None,
        },
    );
    // Its own id: a forged copy must never stand in for the genuine alert's records.
    record.id = stable_id([
        "rejected",
        record.id.as_str(),
        alert
            .signature
            .as_ref()
            .map(|s| s.hmac_sha256.as_str())
            .unwrap_or(""),
    ]);
    record.outcome = ActionOutcome::Rejected;
    record.detail = format!("alert rejected, not acted on: {why}");
    record
}

/// An action record read back, when remediate signed it (see [`publish`]); otherwise `None`,
/// and `unverified` counts it. Anyone who can write the actions topic could otherwise mark a
/// pending alert answered, or hand `undo` a policy document of their choosing.
fn verified_record(
    verifier: &trailguard_common::sign::Verifier,
    read: &kafka::Read<'_>,
    unverified: &mut u64,
) -> Option<ActionRecord> {
    let payload = read.payload?;
    if verifier
        .verify_record(
            trailguard_common::sign::purpose::ACTIONS,
            read.key,
            Some(payload),
            read.signature,
        )
        .is_err()
    {
        *unverified += 1;
        return None;
    }
    serde_json::from_slice::<ActionRecord>(payload).ok()
}

/// What the actions topic says was done.
#[derive(Default)]
struct ReadBack {
    /// Ids of the action records that answer their alert's action for good.
    answered: HashSet<String>,
    /// Actions that got as far as `started` with no end on record: the prior state from the
    /// earliest `started` record of each.
    unfinished: HashMap<String, serde_json::Value>,
    /// Records ignored as not signed by remediate.
    unverified: u64,
}

/// Whether `record` answers its alert's action for good: a rejected (forged) copy does not
/// answer the genuine alert, and a `started` record is only the beginning of an action.
fn answers(record: &ActionRecord) -> bool {
    record.undo_of.is_none()
        && !matches!(
            record.outcome,
            ActionOutcome::Rejected | ActionOutcome::Started
        )
}

/// Reads the actions topic back (see [`ReadBack`]).
fn answered_alerts(cfg: &RemediateConfig) -> Result<ReadBack, Error> {
    let mut back = ReadBack::default();
    let verifier = cfg.signing.verifier();
    let mut unverified = 0u64;
    let read = kafka::read_all(
        &cfg.kafka,
        &cfg.kafka.topics.actions,
        "trailguard-remediate",
        |read| {
            if let Some(record) = verified_record(&verifier, read, &mut unverified) {
                if answers(&record) {
                    back.answered.insert(record.id);
                } else if let Some(of) = record.undo_of {
                    // An undone action is answered, even one that only got as far as
                    // `started`: taking its alert up again would redo what was undone.
                    back.answered.insert(of);
                } else if record.outcome == ActionOutcome::Started && record.undo_of.is_none() {
                    if let Some(undo) = record.undo {
                        back.unfinished.entry(record.id).or_insert(undo);
                    }
                }
            }
        },
    )?;
    let ReadBack {
        answered,
        unfinished,
        ..
    } = &mut back;
    unfinished.retain(|id, _| !answered.contains(id));
    back.unverified = unverified;
    if unverified > 0 {
        tracing::warn!(
            unverified,
            "action records without remediate's signature ignored"
        );
    }
    tracing::info!(
        records = read,
        answered = back.answered.len(),
        unfinished = back.unfinished.len(),
        "loaded answered actions from the actions topic"
    );
    Ok(back)
}

async fn publish(
    producer: &kafka::Producer,
    cfg: &RemediateConfig,
    record: &ActionRecord,
    shutdown: &CancellationToken,
) -> bool {
    let Ok(payload) = serde_json::to_vec(record) else {
        return false;
    };
    let topic = &cfg.kafka.topics.actions;
    let headers = kafka::signed(
        cfg.signing.signer().as_ref(),
        trailguard_common::sign::purpose::ACTIONS,
        record.alert_id.as_bytes(),
        Some(&payload),
    );
    kafka::send_until_durable(
        producer,
        topic,
        record.alert_id.as_bytes(),
        &payload,
        headers,
        shutdown,
    )
    .await
}

/// The record of answered alerts (the actions topic) must outlast `remediate.max_alert_age`:
/// an alert younger than that limit whose record has expired would be acted on again.
async fn check_retention(cfg: &RemediateConfig) -> Result<(), Error> {
    let topic = &cfg.kafka.topics.actions;
    let max_age = cfg.remediate.max_alert_age;
    match kafka::topic_setting(&cfg.kafka, topic, "retention.ms").await {
        Ok(Some(text)) => {
            let retention_ms: i64 = text.parse().unwrap_or(-1);
            if max_age.is_zero() && retention_ms >= 0 {
                tracing::warn!(topic, retention_ms, "remediate.max_alert_age is zero (no limit): an alert replayed after the actions topic's retention is acted on again");
            } else if retention_ms >= 0 && (retention_ms as u128) <= max_age.as_millis() {
                return Err(trailguard_common::Error::config(
                    "remediate.max_alert_age",
                    format!(
                        "must be shorter than the retention of the actions topic `{topic}` ({}), which keeps the record of answered alerts",
                        humantime::format_duration(Duration::from_millis(retention_ms as u64))
                    ),
                )
                .into());
            }
        }
        Ok(None) => tracing::warn!(topic, "the broker did not say how long it keeps the actions topic; make sure its retention outlasts remediate.max_alert_age"),
        Err(err) => tracing::warn!(topic, error = %err, "cannot read the actions topic's retention; make sure it outlasts remediate.max_alert_age"),
    }
    Ok(())
}

/// Runs remediate until `shutdown`; `health` hears when this instance owns no partitions of a
/// stalled group.
pub async fn run(
    cfg: RemediateConfig,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let topics = &cfg.kafka.topics;
    kafka::ensure_topics(&cfg.kafka, &[TopicRole::Alerts, TopicRole::Actions]).await?;
    check_retention(&cfg).await?;
    let mut answered = HashSet::new();
    // Actions an earlier attempt started and did not finish: their recorded prior state.
    let mut unfinished: HashMap<String, serde_json::Value> = HashMap::new();
    let verifier = cfg.signing.verifier();
    let mut rejections = RejectionBudget::new(cfg.remediate.max_rejection_records_per_minute);
    let sns = if cfg
        .notify
        .channels
        .iter()
        .any(|c| c.kind == crate::notify::ChannelKind::Sns)
    {
        let sdk = cfg.aws.sdk_config().await;
        let mut b = aws_sdk_sns::config::Builder::from(&sdk)
            .interceptor(trailguard_common::aws_calls::CallRecorder);
        if let Some(url) = cfg.aws.endpoints.get("sns") {
            b = b.endpoint_url(url);
        }
        Some(aws_sdk_sns::Client::from_conf(b.build()))
    } else {
        None
    };
    let clients = Clients::new(cfg.aws.clone());
    let actor = Actor {
        clients,
        protection: tokio::sync::OnceCell::new(),
        notifier: Notifier::new(cfg.notify.clone(), sns),
        limiter: std::sync::Mutex::new(RateLimiter::default()),
    };
    if !cfg.signing.required {
        tracing::warn!("signing.required is false: unsigned alerts are acted on");
    }
    if let Some(call) = trailguard_common::aws_calls::fault_exit_after() {
        tracing::warn!(
            call,
            "fault injection is on: remediate exits after the first successful {call}"
        );
    }
    // Who remediate is decides which account it acts in and who is protected. Asked now, and
    // again whenever an alert needs it while it is unknown; until then only notifications go.
    if actor.protection(&cfg.aws).await.is_none() {
        tracing::warn!("cannot tell which account remediate's credentials act in (sts:GetCallerIdentity); only notifications are sent until it can");
    }
    let producer = kafka::producer(&cfg.kafka, "trailguard-remediate", 0)?;
    // Notes assignments: what other instances answered on new partitions must be read back
    // before acting on their alerts.
    let context = kafka::KafkaContext::new(&cfg.kafka).with_lag(metrics.consumer_lag.clone());
    let consumer = kafka::consumer(
        &cfg.kafka,
        &cfg.remediate.group_id,
        "trailguard-remediate",
        context.clone(),
    )?;
    consumer.subscribe(&[&topics.alerts])?;
    kafka::watch_group(
        &cfg.kafka,
        &cfg.remediate.group_id,
        &[&topics.alerts],
        context.clone(),
        health,
        shutdown.clone(),
    );
    tracing::info!(topic = %topics.alerts, default_mode = cfg.remediate.default_mode.as_str(), "remediate running");

    loop {
        // A batch: the first alert waited for, then whatever else is already there.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            // `recv` is cancel-safe: nothing is lost when the wait is cut short.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if context.take_rejoin() {
                    kafka::rejoin(&consumer, &[&topics.alerts])?;
                }
                continue;
            }
            message = consumer.recv() => message,
        };
        let mut batch = match first {
            Ok(m) => vec![Incoming::from(&m)],
            Err(err) => {
                tracing::warn!(error = %err, "consume failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while batch.len() < BATCH {
            match tokio::time::timeout(Duration::from_millis(2), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(Incoming::from(&m)),
                _ => break,
            }
        }
        if context.take_assigned() {
            // New partitions (at start or after a rebalance): another instance may have answered
            // some of their uncommitted alerts. Read the actions topic back first.
            let back = tokio::task::block_in_place(|| answered_alerts(&cfg))?;
            answered.extend(back.answered);
            for (id, prior) in back.unfinished {
                if !answered.contains(&id) {
                    unfinished.entry(id).or_insert(prior);
                }
            }
            metrics.unverified.inc_by(back.unverified);
        }
        let owned: HashSet<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => batch.iter().map(|i| i.partition).collect(),
        };
        // Each alert to act on, with the decisions not yet recorded and its arrival time.
        let mut work: Vec<(Alert, Pending)> = Vec::new();
        let mut in_batch: HashSet<String> = HashSet::new();
        for incoming in &batch {
            let (partition, offset) = (incoming.partition, incoming.offset);
            match &incoming.alert {
                Some(Ok(alert)) if alert.schema_version <= ALERT_SCHEMA_VERSION => {
                    let verdict = match &incoming.raw {
                        Some(raw) => verifier.verify_json(raw),
                        None => verifier.verify(alert),
                    };
                    if let Err(why) = verdict {
                        metrics.alerts.with_label_values(&["rejected"]).inc();
                        metrics.rejected.with_label_values(&[why.as_str()]).inc();
                        tracing::warn!(alert_id = %alert.id, policy = %alert.policy_id, partition, offset, reason = %why, "alert rejected: not authentic; nothing done");
                        // One record per alert, however many actions it asks for, and only so
                        // many a minute: a flood of forgeries must not stall the loop or grow
                        // the actions topic without bound.
                        let budget = rejections.take(chrono::Utc::now().timestamp());
                        for action in alert.actions.iter().take(usize::from(budget)) {
                            let record = rejection_record(alert, action, &why);
                            if !publish(&producer, &cfg, &record, &shutdown).await {
                                return Err(Error::Stopped(format!(
                                    "rejection record for alert {} not published",
                                    alert.id
                                )));
                            }
                            metrics
                                .actions
                                .with_label_values(&[record.kind.as_str(), record.outcome.as_str()])
                                .inc();
                        }
                    } else if !owned.contains(&incoming.partition) {
                        // Revoked while the batch was gathered: its new owner answers it.
                        tracing::info!(alert_id = %alert.id, partition, "partition revoked; left to its new owner");
                    } else {
                        // Decisions recorded before (an alert half answered before a restart)
                        // are not taken again.
                        let needs_aws = alert.actions.iter().any(|a| a.kind != ActionKind::Notify);
                        let protection = if needs_aws {
                            actor.protection(&cfg.aws).await
                        } else {
                            actor.protection.get()
                        };
                        let unknown = Protection::default();
                        // Too old: every action refused with the reason (and so answered).
                        let stale =
                            staleness(alert, cfg.remediate.max_alert_age, chrono::Utc::now());
                        let open: Vec<Decision> =
                            plan(alert, &cfg.remediate, protection.unwrap_or(&unknown))
                                .into_iter()
                                .filter(|d| !answered.contains(&record_id(alert, &d.action)))
                                .map(|mut d| {
                                    if let Some(why) = &stale {
                                        d.refusal = Some(why.clone());
                                    }
                                    d
                                })
                                .collect();
                        if !in_batch.insert(alert.id.clone()) || open.is_empty() {
                            metrics.alerts.with_label_values(&["duplicate"]).inc();
                            tracing::info!(alert_id = %alert.id, "alert already answered; skipped");
                        } else {
                            work.push((alert.clone(), (open, incoming.arrived)));
                        }
                    }
                }
                other => {
                    // Not an alert this version can read: never act on it; count and log it.
                    let why = match other {
                        Some(Err(e)) => e.clone(),
                        Some(Ok(a)) => format!("unsupported schema_version {}", a.schema_version),
                        None => "empty message".into(),
                    };
                    metrics.alerts.with_label_values(&["undecodable"]).inc();
                    tracing::warn!(partition, offset, %why, "ignored a record on the alerts topic that is not a readable alert");
                }
            }
        }
        let acted = !work.is_empty();
        // Alerts touching the same target run in order; the others run concurrently.
        let runs = futures::future::join_all(group_by_target(work).into_iter().map(|group| {
            let (actor, cfg, producer, shutdown, metrics, unfinished) =
                (&actor, &cfg, &producer, &shutdown, &metrics, &unfinished);
            async move {
                let mut done = Vec::new();
                for (alert, (decisions, arrived)) in group {
                    for decision in decisions {
                        let journal = Journal {
                            producer,
                            shutdown,
                            earlier: unfinished.get(&record_id(&alert, &decision.action)),
                        };
                        let record = execute(actor, cfg, &alert, &decision, &journal).await;
                        if !publish(producer, cfg, &record, shutdown).await {
                            return Err(alert.id);
                        }
                        done.push(record.id.clone());
                        tracing::info!(action_id = %record.id, alert_id = %alert.id, kind = record.kind.as_str(), outcome = record.outcome.as_str(), detail = %record.detail, "action");
                        metrics
                            .actions
                            .with_label_values(&[record.kind.as_str(), record.outcome.as_str()])
                            .inc();
                    }
                    metrics.alerts.with_label_values(&["handled"]).inc();
                    if let Some(ms) = arrived {
                        let now = chrono::Utc::now().timestamp_millis();
                        metrics.latency.observe((now - ms).max(0) as f64 / 1000.0);
                    }
                }
                Ok(done)
            }
        }))
        .await;
        for run in runs {
            match run {
                Ok(ids) => {
                    for id in &ids {
                        unfinished.remove(id);
                    }
                    answered.extend(ids)
                }
                Err(id) => {
                    return Err(Error::Stopped(format!(
                        "action record for alert {id} not published"
                    )))
                }
            }
        }
        let mut next: HashMap<i32, i64> = HashMap::new();
        for incoming in &batch {
            let e = next.entry(incoming.partition).or_insert(0);
            *e = (*e).max(incoming.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            list.add_partition_offset(&topics.alerts, partition, Offset::Offset(offset))?;
        }
        if let Err(err) = consumer.store_offsets(&list) {
            tracing::debug!(error = %err, "offsets not stored");
        }
        if acted {
            // Commit at once after acting, so no other instance replays these alerts.
            if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::warn!(error = %err, "commit after acting failed; the next commit retries");
            }
        }
    }
    if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %err, "nothing committed");
    }
    kafka::flush(&producer, cfg.remediate.drain_timeout)?;
    tracing::info!("remediate stopped");
    Ok(())
}

fn undo_refused(why: NoClients) -> Error {
    match why {
        NoClients::Refused(why) | NoClients::Failed(why) => Error::Undo(why),
    }
}

/// Undoes the action `action_id` from its recorded undo data and records that on the actions
/// topic. Refuses an action that changed nothing, has no undo data, or was undone already.
///
/// The undo data comes from the action's earliest `started` (or, from before write-ahead
/// records, `applied`) record: it was read before any attempt changed anything, whereas a
/// later attempt (a replay after a crash, a second instance) reads the state the first left.
/// An action whose last record is `started` or `failed` changed part of what it planned, and
/// is undone from that same record.
pub async fn undo(cfg: RemediateConfig, action_id: &str) -> Result<ActionRecord, Error> {
    let topic = cfg.kafka.topics.actions.clone();
    let cfg_for_read = cfg.clone();
    let id = action_id.to_string();
    let (first, last, previous) = tokio::task::spawn_blocking(move || {
        let verifier = cfg_for_read.signing.verifier();
        let mut unverified = 0u64;
        // The earliest record holding the prior state, the latest record, an undo of it.
        let mut first: Option<ActionRecord> = None;
        let mut last: Option<ActionRecord> = None;
        let mut undone: Option<ActionRecord> = None;
        kafka::read_all(
            &cfg_for_read.kafka,
            &topic,
            "trailguard-remediate-undo",
            |read| {
                // Only records remediate signed: undo applies what a record says.
                if let Some(record) = verified_record(&verifier, read, &mut unverified) {
                    if record.undo_of.as_deref() == Some(id.as_str())
                        && record.outcome == ActionOutcome::Applied
                    {
                        undone = Some(record);
                    } else if record.id == id && record.undo_of.is_none() {
                        let holds_prior = matches!(
                            record.outcome,
                            ActionOutcome::Started | ActionOutcome::Applied
                        ) && record.undo.is_some();
                        if holds_prior && first.is_none() {
                            first = Some(record.clone());
                        }
                        last = Some(record);
                    }
                }
            },
        )
        .map(|_| {
            if unverified > 0 {
                tracing::warn!(
                    unverified,
                    "action records without remediate's signature ignored"
                );
            }
            (first, last, undone)
        })
    })
    .await
    .map_err(|e| Error::Stopped(format!("reading the actions topic: {e}")))??;
    let Some(last) = last else {
        return Err(Error::Undo(format!(
            "no action {action_id} on topic {}",
            cfg.kafka.topics.actions
        )));
    };
    if let Some(previous) = previous {
        return Err(Error::Undo(format!(
            "action {action_id} was undone already at {} ({})",
            previous.time, previous.id
        )));
    }
    let Some(original) = first else {
        return Err(Error::Undo(format!(
            "action {action_id} changed nothing (outcome {}): there is nothing to undo",
            last.outcome.as_str()
        )));
    };
    let Some(data) = original.undo.clone() else {
        return Err(Error::Undo(format!(
            "action {action_id} recorded no undo data"
        )));
    };
    let clients = Clients::new(cfg.aws.clone());
    let account = original.target.account_id.clone();
    let mut record = original.clone();
    record.id = stable_id(["undo", action_id]);
    record.undo_of = Some(action_id.to_string());
    record.time = chrono::Utc::now();
    record.mode = Mode::Auto;
    match original.kind {
        ActionKind::MakeBucketPrivate | ActionKind::RemoveCollaborator => {
            let (s3, _) = clients
                .get(account.as_deref())
                .await
                .map_err(undo_refused)?;
            let r = bucket::undo(&s3, &data).await;
            fill(&mut record, r.outcome, r.detail, r.steps, None);
        }
        ActionKind::RequireSignIn | ActionKind::SuspendUser => {
            // The principal's own account, as the action itself used.
            let who = iam::Identity::parse(&original.target.id).map_err(Error::Undo)?;
            let (_, client) = clients
                .get(Some(who.account()))
                .await
                .map_err(undo_refused)?;
            let r = iam::undo(&client, &who, &data).await;
            fill(&mut record, r.outcome, r.detail, r.steps, None);
        }
        ActionKind::Notify => {
            return Err(Error::Undo("a notification cannot be unsent".into()));
        }
    }
    let producer = kafka::producer(&cfg.kafka, "trailguard-remediate-undo", 0)?;
    let shutdown = CancellationToken::new();
    if !publish(&producer, &cfg, &record, &shutdown).await {
        return Err(Error::Stopped("the undo record was not published".into()));
    }
    kafka::flush(&producer, cfg.remediate.drain_timeout)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trailguard_common::contract::Target;

    fn alert(id: &str, targets: &[(ActionKind, &str)]) -> Alert {
        let mut a: Alert = match serde_json::from_str(include_str!("../../tests/tests/alert.json"))
        {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        a.id = id.into();
        a.actions = targets
            .iter()
            .map(|(kind, t)| RequestedAction {
                kind: *kind,
                target: Target {
                    kind: "x".into(),
                    id: (*t).into(),
                    account_id: None,
                    grantee: None,
                },
            })
            .collect();
        a
    }

    fn ids(groups: &[Vec<(Alert, ())>]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.iter().map(|(a, _)| a.id.clone()).collect())
            .collect()
    }

    #[test]
    fn old_alerts_are_stale_and_folds_count_from_their_last_repeat() {
        let now = chrono::Utc::now();
        let day = Duration::from_secs(86_400);
        let mut a = alert("x", &[]);
        a.time = now - chrono::Duration::hours(30);
        let why = staleness(&a, day, now).unwrap_or_default();
        assert!(why.contains("max_alert_age"), "{why}");
        assert_eq!(staleness(&a, Duration::ZERO, now), None, "zero: no limit");
        a.last_time = Some(now - chrono::Duration::hours(2));
        assert_eq!(staleness(&a, day, now), None);
        a.time = now + chrono::Duration::hours(1);
        assert_eq!(staleness(&a, day, now), None, "a clock ahead is not stale");
    }

    #[test]
    fn rejection_records_are_bounded_per_minute() {
        let mut b = RejectionBudget::new(3);
        let taken = (0..10).filter(|_| b.take(120)).count();
        assert_eq!(taken, 3);
        assert!(b.take(180), "a new minute");
        assert!(!RejectionBudget::new(0).take(0));
    }

    #[test]
    fn alerts_on_one_target_stay_in_order_and_others_run_apart() {
        use ActionKind::*;
        let work = vec![
            (
                alert("1", &[(MakeBucketPrivate, "b1"), (Notify, "default")]),
                (),
            ),
            (
                alert("2", &[(MakeBucketPrivate, "b2"), (Notify, "default")]),
                (),
            ),
            (alert("3", &[(RemoveCollaborator, "b1")]), ()),
            (alert("4", &[(Notify, "default")]), ()),
        ];
        assert_eq!(
            ids(&group_by_target(work)),
            [vec!["1", "3"], vec!["2"], vec!["4"]]
        );
    }

    #[test]
    fn an_alert_spanning_two_groups_merges_them() {
        use ActionKind::*;
        let work = vec![
            (alert("1", &[(SuspendUser, "u1")]), ()),
            (alert("2", &[(SuspendUser, "u2")]), ()),
            (
                alert("3", &[(SuspendUser, "u1"), (RequireSignIn, "u2")]),
                (),
            ),
            (alert("4", &[(RequireSignIn, "u2")]), ()),
        ];
        assert_eq!(ids(&group_by_target(work)), [vec!["1", "2", "3", "4"]]);
    }
}
