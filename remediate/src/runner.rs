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
use trailguard_common::shutdown::Tasks;
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
    retries: IntCounterVec,
    pending: prometheus::IntGauge,
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
        let retries = IntCounterVec::new(
            Opts::new(
                "trailguard_remediate_retries_total",
                "Actions tried again in a row after a retryable failure (throttling, 5xx, timeout, STS), by action kind.",
            ),
            &["kind"],
        )?;
        let pending = prometheus::IntGauge::new(
            "trailguard_remediate_pending_actions",
            "Actions not finished yet: to be tried again after a retryable failure, or waiting for their rate limit.",
        )?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(pending.clone()))?;
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
            K::NotifyUser,
            K::UnshareSnapshot,
            K::UnshareImage,
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
            retries.with_label_values(&[kind.as_str()]);
        }
        Ok(Metrics {
            alerts,
            unverified,
            actions,
            rejected,
            latency,
            retries,
            pending,
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
    by_account: tokio::sync::Mutex<HashMap<String, InAccount>>,
}

/// What acts in one account: its SDK configuration (for clients made per region) and the
/// S3 and IAM clients.
#[derive(Clone)]
struct InAccount {
    sdk: aws_config::SdkConfig,
    s3: aws_sdk_s3::Client,
    iam: aws_sdk_iam::Client,
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
                let config = trailguard_common::sdk_config!(aws_sdk_sts, self.aws, &sdk, "sts");
                let me = aws_sdk_sts::Client::from_conf(config.build())
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| {
                        let err =
                            trailguard_common::aws::CallError::of("sts:GetCallerIdentity", &e);
                        NoClients::Failed(err.to_string())
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
        self.in_account(account).await.map(|c| (c.s3, c.iam))
    }

    /// The EC2 or RDS client for a shared resource, in its own account and region.
    async fn share_api(
        &self,
        shared: &crate::share::Shared,
    ) -> Result<crate::share::Api, NoClients> {
        let sdk = self.in_account(Some(&shared.account)).await?.sdk;
        let region = aws_config::Region::new(shared.region.clone());
        Ok(if shared.store.is_ec2() {
            let config = trailguard_common::sdk_config!(aws_sdk_ec2, self.aws, &sdk, "ec2");
            crate::share::Api::Ec2(aws_sdk_ec2::Client::from_conf(
                config.region(region).build(),
            ))
        } else {
            let config = trailguard_common::sdk_config!(aws_sdk_rds, self.aws, &sdk, "rds");
            crate::share::Api::Rds(aws_sdk_rds::Client::from_conf(
                config.region(region).build(),
            ))
        })
    }

    async fn in_account(&self, account: Option<&str>) -> Result<InAccount, NoClients> {
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
        let iam = trailguard_common::sdk_config!(aws_sdk_iam, self.aws, &sdk, "iam");
        let clients = InAccount {
            s3,
            iam: aws_sdk_iam::Client::from_conf(iam.build()),
            sdk,
        };
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
            // STS (our identity, an assumed role) did not answer: that may mend.
            record.outcome = ActionOutcome::Failed;
            record.detail = why;
            record.retryable = true;
        }
    }
}

/// What the loop needs to act.
struct Actor {
    clients: Clients,
    /// Who must never be touched; known once remediate knows its own identity.
    protection: tokio::sync::OnceCell<Protection>,
    notifier: Notifier,
    /// Action budgets, shared with the task that follows the actions topic.
    limiter: std::sync::Arc<std::sync::Mutex<RateLimiter>>,
    /// Ids of actions the followed actions topic shows ended (final or undone), by any
    /// instance or `remediate undo`: a pending retry of one is dropped.
    settled: std::sync::Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Actor {
    /// The protections, resolving remediate's own identity first if it is not known yet.
    /// `None` while `sts:GetCallerIdentity` fails: then nothing but notifications is done.
    async fn protection(&self, aws: &trailguard_common::aws::AwsConfig) -> Option<&Protection> {
        self.protection
            .get_or_try_init(|| async {
                let caller = self.clients.caller().await?;
                Ok::<_, NoClients>(Protection::new(
                    &caller.account,
                    &caller.arn,
                    aws.role_arn("*"),
                    &aws.accounts,
                ))
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
        retryable: false,
        attempts: None,
    }
}

fn fill(
    record: &mut ActionRecord,
    outcome: ActionOutcome,
    detail: String,
    steps: Vec<trailguard_common::contract::ActionStep>,
    undo: Option<serde_json::Value>,
    retryable: bool,
) {
    record.outcome = outcome;
    record.retryable = retryable && outcome == ActionOutcome::Failed;
    record.detail = detail;
    record.aws_request_ids = steps.iter().filter_map(|s| s.request_id.clone()).collect();
    record.steps = steps;
    record.undo = undo;
}

/// Fills `record` from what a bucket or identity action did.
fn fill_result(record: &mut ActionRecord, r: crate::ActionResult) {
    fill(record, r.outcome, r.detail, r.steps, r.undo, r.retryable);
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
            started.detail = format!("prior state recorded; making {} change(s)", planned.len());
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
                "{}: an earlier attempt began these changes (its `started` record holds the state before them) and stopped before recording its result",
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
    // Nothing but a notification before remediate knows who it is (and so who is protected).
    let notification = matches!(
        decision.action.kind,
        ActionKind::Notify | ActionKind::NotifyUser
    );
    let known = if notification {
        actor.protection.get()
    } else {
        actor.protection(&cfg.aws).await
    };
    let protection = match known {
        Some(p) => p,
        None if notification => &Protection::default(),
        None => {
            let why = match actor.clients.caller().await {
                Err(NoClients::Failed(why) | NoClients::Refused(why)) => why,
                Ok(_) => "remediate's own identity was not resolved yet".into(),
            };
            record.outcome = ActionOutcome::Failed;
            record.detail = format!(
                "cannot tell which account remediate's credentials act in, nothing done: {why}"
            );
            record.retryable = true;
            return record;
        }
    };
    // Judged again with what remediate knows of itself now: an action planned while it could
    // not tell who it is was planned without the protections that depend on that.
    if let Some(refusal) = crate::plan::refusal(&decision.action, &cfg.remediate, protection) {
        record.outcome = ActionOutcome::Refused;
        record.detail = format!("refused: {refusal}");
        return record;
    }
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
            fill_result(&mut record, r);
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
            fill_result(&mut record, r);
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
            // A protection by path cannot be judged from an ARN that does not say it (a
            // session's) or may say it wrong (a user moved since): judged again with the
            // principal's ARN as IAM has it.
            if crate::plan::path_decides(&cfg.remediate, protection) {
                match iam::principal_arn(&client, &who).await {
                    Ok(Some(full)) => {
                        let refusal =
                            crate::plan::principal_refusal(&full, &cfg.remediate, protection);
                        if let Some(refusal) = refusal {
                            record.outcome = ActionOutcome::Refused;
                            record.detail = format!("refused: {refusal} (its ARN as IAM has it)");
                            return record;
                        }
                    }
                    // Not there: the action itself says so.
                    Ok(None) => {}
                    Err(err) if err.code.as_deref() == Some("NoSuchEntity") => {}
                    Err(err) => {
                        record.outcome = ActionOutcome::Failed;
                        record.retryable = err.retryable;
                        record.detail = format!(
                            "reading the principal's path, to judge it against the protections: {err}"
                        );
                        return record;
                    }
                }
            }
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
            fill_result(&mut record, r);
        }
        ActionKind::UnshareSnapshot | ActionKind::UnshareImage => {
            let parsed = crate::share::Shared::parse(decision.action.kind, target).and_then(|s| {
                let grantees = target.grantee.as_deref().unwrap_or_default();
                crate::share::parse_grantees(grantees, s.store).map(|g| (s, g))
            });
            let (shared, grantees) = match parsed {
                Ok(parsed) => parsed,
                Err(why) => {
                    record.outcome = ActionOutcome::Failed;
                    record.detail = why;
                    return record;
                }
            };
            // In the resource's own account (its ARN's, which must be the target's) and region.
            let api = match actor.clients.share_api(&shared).await {
                Ok(api) => api,
                Err(why) => {
                    no_clients(&mut record, why);
                    return record;
                }
            };
            let r =
                crate::share::unshare_recorded(&api, &shared, &grantees, dry_run, &intent).await;
            fill_result(&mut record, r);
        }
        ActionKind::Notify => {
            let r = actor.notifier.notify(alert, target, dry_run).await;
            fill(&mut record, r.outcome, r.detail, r.steps, None, false);
        }
        ActionKind::NotifyUser => {
            let mut topic = actor.notifier.directory_topic(alert, target);
            let tag_key = &actor.notifier.users().tag_key;
            if topic.is_none() && !tag_key.is_empty() {
                if let Ok(who @ iam::Identity::User { .. }) = iam::Identity::parse(&target.id) {
                    let client = match actor.clients.get(Some(who.account())).await {
                        Ok((_, iam)) => iam,
                        Err(why) => {
                            no_clients(&mut record, why);
                            return record;
                        }
                    };
                    match iam::user_tag(&client, &who, tag_key).await {
                        Ok(found) => {
                            topic = found.map(|t| (t, format!("the user's `{tag_key}` tag")))
                        }
                        Err(err) => {
                            record.outcome = ActionOutcome::Failed;
                            record.retryable = err.retryable;
                            record.detail = format!("reading the user's tags: {err}");
                            return record;
                        }
                    }
                }
            }
            let r = actor
                .notifier
                .notify_user(alert, target, topic, dry_run)
                .await;
            fill(&mut record, r.outcome, r.detail, r.steps, None, false);
        }
    }
    record
}

/// The account an action's budget is counted in: a principal's own account (from its ARN),
/// else the target's account.
fn budget_account(action: &RequestedAction) -> String {
    match iam::Identity::parse(&action.target.id) {
        Ok(who) => who.account().to_string(),
        Err(_) => action
            .target
            .account_id
            .clone()
            .unwrap_or_else(|| "unknown".into()),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How an attempt at a decision ended.
enum Attempt {
    /// A record to publish: final, or `failed` with `retryable` set.
    Done(Box<ActionRecord>),
    /// Beyond the rate limit, with `when_rate_limited = "wait"`: try again at this time (ms).
    Wait(i64, String),
}

/// Decides one action in full: its rate limit, then up to `retry.attempts` tries in a row
/// with backoff while the failure is retryable. `earlier` is the prior state an earlier
/// attempt recorded (its `started` record), `tries` how many tries were made before.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    actor: &Actor,
    cfg: &RemediateConfig,
    alert: &Alert,
    decision: &Decision,
    producer: &kafka::Producer,
    shutdown: &CancellationToken,
    metrics: &Metrics,
    mut earlier: Option<serde_json::Value>,
    tries: u32,
    deadline: std::time::Instant,
) -> Attempt {
    let kind = decision.action.kind;
    let id = record_id(alert, &decision.action);
    // A later try of an action already begun was counted when it began: taking the budget
    // again could refuse it half done.
    let begun = tries > 0 || earlier.is_some();
    if !begun && decision.refusal.is_none() && decision.mode == Mode::Auto {
        let limit = cfg.remediate.rate_limits.get(&kind);
        let account = budget_account(&decision.action);
        let taken = trailguard_common::sync::lock(&actor.limiter).take(
            kind,
            &account,
            limit,
            &id,
            now_ms(),
        );
        if let Err((why, frees_at)) = taken {
            if cfg.remediate.when_rate_limited == crate::WhenRateLimited::Wait {
                return Attempt::Wait(frees_at, why);
            }
            return Attempt::Done(Box::new(escalate(actor, alert, decision, &why).await));
        }
    }
    let retry = &cfg.remediate.retry;
    let mut backoff = retry.backoff;
    let mut tried = tries;
    loop {
        tried += 1;
        let journal = Journal {
            producer,
            shutdown,
            earlier: earlier.as_ref(),
        };
        let mut record = execute(actor, cfg, alert, decision, &journal).await;
        record.attempts = (tried > 1).then_some(tried);
        let again = record.outcome == ActionOutcome::Failed && record.retryable;
        // Tries in a row only on the first go, and only while the batch's time allows: the
        // consumer must be polled again well inside max.poll.interval.ms. Later tries are
        // one each.
        let in_time = std::time::Instant::now() + backoff < deadline;
        if !again || tries > 0 || tried - tries >= retry.attempts || !in_time {
            return Attempt::Done(Box::new(record));
        }
        // A try that got as far as `started` holds the state from before any change.
        if earlier.is_none() && record.undo.is_some() {
            earlier = record.undo.clone();
        }
        metrics.retries.with_label_values(&[kind.as_str()]).inc();
        tracing::warn!(action_id = %record.id, alert_id = %alert.id, kind = kind.as_str(), attempt = tried, detail = %record.detail, "action failed, trying again");
        tokio::select! {
            _ = shutdown.cancelled() => return Attempt::Done(Box::new(record)),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}

/// The record of an action refused for its rate limit, after sending the alert to the default
/// notification channels, so a person decides.
async fn escalate(actor: &Actor, alert: &Alert, decision: &Decision, why: &str) -> ActionRecord {
    let mut record = new_record(alert, decision);
    record.outcome = ActionOutcome::Refused;
    let to = trailguard_common::contract::Target {
        kind: "channel".into(),
        id: "default".into(),
        account_id: None,
        grantee: None,
    };
    let sent = actor.notifier.notify(alert, &to, false).await;
    record.detail = format!(
        "refused: {why}; escalated to the default notification channels: {}",
        sent.detail
    );
    record.steps = sent.steps;
    record
}

/// An action not finished yet: retrying after a retryable failure, or waiting for its rate
/// limit. Its alert's offset is not committed while it waits, so a restart takes it up again.
struct Waiting {
    alert: Alert,
    decision: Decision,
    partition: i32,
    offset: i64,
    arrived: Option<i64>,
    /// When to try again (epoch ms).
    due: i64,
    /// The first try (epoch ms).
    first: i64,
    tries: u32,
    earlier: Option<serde_json::Value>,
}

/// Counts actions that records show were taken against their budgets.
fn note_uses(actor: &Actor, cfg: &RemediateConfig, uses: Vec<(ActionKind, String, String, i64)>) {
    let now = now_ms();
    let mut limiter = trailguard_common::sync::lock(&actor.limiter);
    for (kind, account, id, at) in uses {
        let limit = cfg.remediate.rate_limits.get(&kind);
        limiter.note(kind, &account, limit, &id, at, now);
    }
}

/// Follows the actions topic from its end until `shutdown`: counts every action any instance
/// takes against the shared budgets, and notes the actions that ended (see `Actor::settled`).
fn follow_actions(
    cfg: &RemediateConfig,
    limiter: std::sync::Arc<std::sync::Mutex<RateLimiter>>,
    settled: std::sync::Arc<std::sync::Mutex<HashSet<String>>>,
    tasks: &Tasks,
) {
    let cfg = cfg.clone();
    let shutdown = tasks.shutdown().clone();
    tasks.spawn("actions follower", async move {
        let verifier = cfg.signing.verifier();
        let mut unverified = 0u64;
        loop {
            let followed = kafka::follow(
                &cfg.kafka,
                &cfg.kafka.topics.actions,
                false,
                None,
                &shutdown,
                |m| {
                    let read = kafka::Read::of(m);
                    let record = verified_record(&verifier, &read, &mut unverified);
                    let ended = record.as_ref().and_then(|r| match &r.undo_of {
                        Some(of) => Some(of.clone()),
                        None => answers(r).then(|| r.id.clone()),
                    });
                    if let Some(id) = ended {
                        if let Ok(mut settled) = settled.lock() {
                            // Bounded: only pending retries consult it, and they are bounded too.
                            if settled.len() >= MAX_SETTLED {
                                settled.clear();
                            }
                            settled.insert(id);
                        }
                    }
                    if let Some(used) = record.as_ref().and_then(use_of) {
                        let (kind, account, id, at) = used;
                        let limit = cfg.remediate.rate_limits.get(&kind);
                        limiter
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .note(kind, &account, limit, &id, at, now_ms());
                    }
                    true
                },
            )
            .await;
            match followed {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "following the actions topic for the rate limits failed; again in 5 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
    });
}

/// Where a decision's alert came from, and when its first try was.
#[derive(Clone, Copy)]
struct Place {
    partition: i32,
    offset: i64,
    arrived: Option<i64>,
    first: i64,
}

/// What becomes of an attempt: the record to publish (none while waiting for a rate limit)
/// and, when it is not final, the entry that keeps it pending. A retryable failure stays
/// pending while there is `room` and `retry.give_up_after` has not passed since the first try;
/// otherwise it is final, and its record says so.
fn settle(
    cfg: &RemediateConfig,
    tried: Attempt,
    alert: &Alert,
    decision: &Decision,
    at: Place,
    room: bool,
) -> (Option<ActionRecord>, Option<Waiting>) {
    let retry = &cfg.remediate.retry;
    let give_up_at = at.first + i64::try_from(retry.give_up_after.as_millis()).unwrap_or(i64::MAX);
    let waiting = |due: i64, tries: u32, earlier: Option<serde_json::Value>| Waiting {
        alert: alert.clone(),
        decision: decision.clone(),
        partition: at.partition,
        offset: at.offset,
        arrived: at.arrived,
        due,
        first: at.first,
        tries,
        earlier,
    };
    match tried {
        Attempt::Wait(due, why) if room => {
            tracing::info!(alert_id = %alert.id, kind = decision.action.kind.as_str(), until = %ms_time(due), %why, "rate limited: waiting");
            (None, Some(waiting(due, 0, None)))
        }
        Attempt::Wait(_, why) => {
            let mut record = new_record(alert, decision);
            record.outcome = ActionOutcome::Refused;
            record.detail = format!(
                "refused: {why}; too many actions are pending (remediate.retry.max_pending)"
            );
            (Some(record), None)
        }
        Attempt::Done(mut record) if record.retryable => {
            let due = now_ms() + i64::try_from(retry.later.as_millis()).unwrap_or(i64::MAX);
            if room && due < give_up_at {
                record.detail = format!("{}; will try again at {}", record.detail, ms_time(due));
                let tries = record.attempts.unwrap_or(1);
                let earlier = record.undo.clone();
                (Some(*record), Some(waiting(due, tries, earlier)))
            } else {
                record.retryable = false;
                record.detail = format!(
                    "{}; giving up ({})",
                    record.detail,
                    if room {
                        "remediate.retry.give_up_after has passed"
                    } else {
                        "too many actions are pending (remediate.retry.max_pending)"
                    }
                );
                (Some(*record), None)
            }
        }
        Attempt::Done(record) => (Some(*record), None),
    }
}

fn ms_time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn note_published(metrics: &Metrics, alert: &Alert, record: &ActionRecord) {
    tracing::info!(action_id = %record.id, alert_id = %alert.id, kind = record.kind.as_str(), outcome = record.outcome.as_str(), retryable = record.retryable, detail = %record.detail, "action");
    metrics
        .actions
        .with_label_values(&[record.kind.as_str(), record.outcome.as_str()])
        .inc();
}

/// Stores for commit, per partition, the offset after the last alert taken — or, when an
/// action of an earlier alert is still pending, that alert's offset, so a restart takes it up.
fn store_offsets(
    consumer: &impl Consumer<kafka::KafkaContext>,
    topic: &str,
    seen: &HashMap<i32, i64>,
    pending: &[Waiting],
) -> Result<(), Error> {
    let mut list = TopicPartitionList::new();
    for (&partition, &next) in seen {
        let held = pending
            .iter()
            .filter(|w| w.partition == partition)
            .map(|w| w.offset)
            .min()
            .unwrap_or(next);
        list.add_partition_offset(topic, partition, Offset::Offset(next.min(held)))?;
    }
    if let Err(err) = consumer.store_offsets(&list) {
        tracing::debug!(error = %err, "offsets not stored");
    }
    Ok(())
}

/// Tries again the pending actions that are due, on partitions this instance still owns (the
/// others are dropped: their new owner reads the uncommitted alerts again). Returns the ids of
/// the actions that came to an end.
async fn run_due(
    actor: &Actor,
    cfg: &RemediateConfig,
    producer: &kafka::Producer,
    shutdown: &CancellationToken,
    metrics: &Metrics,
    pending: &mut Vec<Waiting>,
    owned: &HashSet<i32>,
) -> Result<Vec<String>, Error> {
    pending.retain(|w| owned.contains(&w.partition));
    // Ended elsewhere since (undone from the command line, answered by another instance).
    if let Ok(settled) = actor.settled.lock() {
        pending.retain(|w| !settled.contains(&record_id(&w.alert, &w.decision.action)));
    }
    let now = now_ms();
    let deadline = std::time::Instant::now() + ACT_BUDGET;
    let (due, later): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(pending)
        .into_iter()
        .partition(|w| w.due <= now);
    *pending = later;
    let mut finished = Vec::new();
    for w in due {
        // What time does not allow now waits for the next round.
        if shutdown.is_cancelled() || std::time::Instant::now() >= deadline {
            pending.push(w);
            continue;
        }
        let tried = attempt(
            actor,
            cfg,
            &w.alert,
            &w.decision,
            producer,
            shutdown,
            metrics,
            w.earlier.clone(),
            w.tries,
            deadline,
        )
        .await;
        let at = Place {
            partition: w.partition,
            offset: w.offset,
            arrived: w.arrived,
            first: w.first,
        };
        let room = pending.len() < cfg.remediate.retry.max_pending;
        let (record, wait) = settle(cfg, tried, &w.alert, &w.decision, at, room);
        if let Some(record) = record {
            if !publish(producer, cfg, &record, shutdown).await {
                return Err(Error::Stopped(format!(
                    "action record for alert {} not published",
                    w.alert.id
                )));
            }
            note_published(metrics, &w.alert, &record);
            if answers(&record) {
                finished.push(record.id);
            }
        }
        if let Some(mut again) = wait {
            if again.earlier.is_none() {
                again.earlier = w.earlier;
            }
            pending.push(again);
        }
    }
    Ok(finished)
}

/// How far ahead of remediate's clock an alert's time may be (clocks drift; CloudTrail's does
/// not by much). Less than the hour answered actions are kept past `max_alert_age`.
const MAX_AHEAD: Duration = Duration::from_secs(30 * 60);

/// Why `alert` is too old to act on, if it is: its event time (the latest repeat folded in)
/// is more than `max_age` before `now`, or more than [`MAX_AHEAD`] after it. Zero `max_age`:
/// no limit.
fn staleness(
    alert: &Alert,
    max_age: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if max_age.is_zero() {
        return None;
    }
    let latest = alert.last_time.unwrap_or(alert.time).max(alert.time);
    // An alert from the future never grows old: it would be acted on again once its answer
    // is forgotten (`max_age` and an hour after it was recorded).
    if let Ok(ahead) = (latest - now).to_std() {
        return (ahead > MAX_AHEAD).then(|| {
            format!(
                "the alert is dated {} ahead of remediate's clock (more than {}): it cannot be told from a replay, so it is not acted on",
                humantime::format_duration(Duration::from_secs(ahead.as_secs())),
                humantime::format_duration(MAX_AHEAD)
            )
        });
    }
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
/// The decisions of an alert still to take, its arrival time, partition and offset.
type Pending = (Vec<Decision>, Option<i64>, i32, i64);

/// Alerts taken in one batch at most.
const BATCH: usize = 64;

/// How long a batch's actions (or a round of pending ones) may go on trying in a row before
/// the rest waits for a later round: the consumer must poll again well inside librdkafka's
/// max.poll.interval.ms (5 minutes by default).
const ACT_BUDGET: Duration = Duration::from_secs(90);

/// Ended action ids remembered from the followed actions topic at most.
const MAX_SETTLED: usize = 1_000_000;

/// Forgets answered actions older than `max_age` (and an hour's margin): an alert that old is
/// refused as stale whatever is remembered, so the set stays as large as the actions of one
/// `max_alert_age`, not of the actions topic's whole retention. Zero `max_age`: nothing is
/// forgotten.
fn prune_answered(answered: &mut HashMap<String, i64>, max_age: Duration) {
    if max_age.is_zero() {
        return;
    }
    let keep = i64::try_from((max_age + Duration::from_secs(3600)).as_millis()).unwrap_or(i64::MAX);
    let since = now_ms().saturating_sub(keep);
    answered.retain(|_, at| *at >= since);
}

/// Drops what this instance kept about partitions it no longer owns: their alerts are taken
/// up from the committed offset by their new owner.
fn forget_revoked(
    context: &kafka::KafkaContext,
    seen: &mut HashMap<i32, i64>,
    pending: &mut Vec<Waiting>,
) {
    for (_, partition) in context.take_revoked() {
        seen.remove(&partition);
        pending.retain(|w| w.partition != partition);
    }
}

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
    record.detail = in_short(&format!("alert rejected, not acted on: {why}"), 1_024);
    // What a forger wrote is named, not repeated: an id of half a megabyte, as the key and
    // in the value, makes a record the broker refuses — and an alert remediate could never
    // get past.
    record.alert_id = in_short(&alert.id, ECHOED);
    record.policy_id = in_short(&alert.policy_id, ECHOED);
    let target = &mut record.target;
    target.kind = in_short(&target.kind, ECHOED);
    target.id = in_short(&target.id, ECHOED);
    target.account_id = target.account_id.as_deref().map(|a| in_short(a, ECHOED));
    target.grantee = target.grantee.as_deref().map(|g| in_short(g, ECHOED));
    record
}

/// The most of each text of a forged alert a rejection record repeats.
const ECHOED: usize = 256;

/// `text`, or when longer than `most` bytes its start and what it was: its length and a hash
/// (the same text always gives the same short form).
fn in_short(text: &str, most: usize) -> String {
    if text.len() <= most {
        return text.to_string();
    }
    let mut cut = most / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… [{} bytes, sha256 {}]",
        &text[..cut],
        text.len(),
        stable_id([text])
    )
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
    answered: HashMap<String, i64>,
    /// Actions that began (a `started` or retryable `failed` record) with no end on record.
    unfinished: HashMap<String, Unfinished>,
    /// Actions taken (their `started` or `applied` records) inside the longest rate-limit
    /// window: (kind, budget account, record id, time in ms).
    uses: Vec<(ActionKind, String, String, i64)>,
    /// Records ignored as not signed by remediate.
    unverified: u64,
}

/// An action a record shows was taken, for the budgets: (kind, account, id, time in ms).
fn use_of(record: &ActionRecord) -> Option<(ActionKind, String, String, i64)> {
    if record.undo_of.is_some()
        || !matches!(
            record.outcome,
            ActionOutcome::Started | ActionOutcome::Applied
        )
    {
        return None;
    }
    let action = RequestedAction {
        kind: record.kind,
        target: record.target.clone(),
    };
    Some((
        record.kind,
        budget_account(&action),
        record.id.clone(),
        record.time.timestamp_millis(),
    ))
}

/// An action begun and not ended, as the actions topic shows it.
#[derive(Clone)]
struct Unfinished {
    /// The prior state from its earliest `started` record, if it got that far.
    prior: Option<serde_json::Value>,
    /// Its first try (epoch ms): `retry.give_up_after` counts from there, across restarts.
    first: i64,
}

/// Whether `record` answers its alert's action for good: a rejected (forged) copy does not
/// answer the genuine alert, a `started` record is only the beginning of an action, and a
/// retryable failure will be tried again.
fn answers(record: &ActionRecord) -> bool {
    record.undo_of.is_none()
        && !record.retryable
        && !matches!(
            record.outcome,
            ActionOutcome::Rejected | ActionOutcome::Started
        )
}

/// Reads the actions topic back (see [`ReadBack`]).
fn answered_alerts(cfg: &RemediateConfig) -> Result<ReadBack, Error> {
    let mut back = ReadBack::default();
    let longest = cfg
        .remediate
        .rate_limits
        .values()
        .map(|l| l.per)
        .max()
        .unwrap_or_default();
    let since = now_ms() - i64::try_from(longest.as_millis()).unwrap_or(i64::MAX / 2);
    let verifier = cfg.signing.verifier();
    let mut unverified = 0u64;
    let read = kafka::read_all(
        &cfg.kafka,
        &cfg.kafka.topics.actions,
        "trailguard-remediate",
        |read| {
            if let Some(record) = verified_record(&verifier, read, &mut unverified) {
                if let Some(used) = use_of(&record).filter(|u| u.3 >= since) {
                    back.uses.push(used);
                }
                if answers(&record) {
                    back.answered
                        .insert(record.id, record.time.timestamp_millis());
                } else if let Some(of) = record.undo_of {
                    // An undone action is answered, even one that only got as far as
                    // `started`: taking its alert up again would redo what was undone.
                    back.answered.insert(of, record.time.timestamp_millis());
                } else if record.outcome != ActionOutcome::Rejected {
                    // Started, or failed and to be tried again.
                    let time = record.time.timestamp_millis();
                    let entry = back.unfinished.entry(record.id).or_insert(Unfinished {
                        prior: None,
                        first: time,
                    });
                    entry.first = entry.first.min(time);
                    if record.outcome == ActionOutcome::Started && entry.prior.is_none() {
                        entry.prior = record.undo;
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
    unfinished.retain(|id, _| !answered.contains_key(id));
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
    let sent = kafka::send_until_durable(
        producer,
        topic,
        record.alert_id.as_bytes(),
        &payload,
        headers,
        shutdown,
    );
    // Refused for good (logged with the broker's reason): not recorded, so nothing is changed.
    sent.await == kafka::Sent::Durable
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

/// What remediate keeps between batches about the alerts it took: which actions are answered,
/// which an earlier attempt began, which wait, and how far each partition was read.
#[derive(Default)]
struct Ledger {
    /// Answered action ids, with when (ms); pruned past max_alert_age (see `prune_answered`).
    answered: HashMap<String, i64>,
    /// Actions not finished yet (retrying, or waiting for a rate limit).
    pending: Vec<Waiting>,
    /// Per partition, the offset after the last alert taken: what is stored for commit never
    /// passes a waiting one.
    seen: HashMap<i32, i64>,
    /// Actions an earlier attempt began and did not finish.
    unfinished: HashMap<String, Unfinished>,
}

impl Ledger {
    /// Notes actions answered now.
    fn answer(&mut self, ids: impl IntoIterator<Item = String>) {
        let now = now_ms();
        for id in ids {
            self.unfinished.remove(&id);
            self.answered.insert(id, now);
        }
    }

    /// Takes in what the actions topic says other instances (or earlier runs) answered, began
    /// and used.
    fn read_back(
        &mut self,
        back: ReadBack,
        cfg: &RemediateConfig,
        actor: &Actor,
        metrics: &Metrics,
    ) {
        self.answered.extend(back.answered);
        prune_answered(&mut self.answered, cfg.remediate.max_alert_age);
        for (id, begun) in back.unfinished {
            if !self.answered.contains_key(&id) {
                self.unfinished.entry(id).or_insert(begun);
            }
        }
        metrics.unverified.inc_by(back.unverified);
        note_uses(actor, cfg, back.uses);
    }
}

/// What one remediate process acts with: its settings, AWS clients and budgets, the producer
/// of action records, its metrics and its shutdown.
struct Remediator {
    cfg: RemediateConfig,
    actor: Actor,
    producer: kafka::Producer,
    metrics: Metrics,
    shutdown: CancellationToken,
    verifier: trailguard_common::sign::Verifier,
}

impl Remediator {
    /// Publishes `record` until durable; an error when it cannot be (refused for good, or
    /// shutdown first): nothing it records may be assumed done.
    async fn record(&self, record: &ActionRecord, what: &str) -> Result<(), Error> {
        if publish(&self.producer, &self.cfg, record, &self.shutdown).await {
            Ok(())
        } else {
            Err(Error::Stopped(format!(
                "{what} for alert {} not published",
                record.alert_id
            )))
        }
    }

    /// Runs the pending actions that are due (of partitions still `owned`), notes those that
    /// finished.
    async fn run_due(&self, ledger: &mut Ledger, owned: &HashSet<i32>) -> Result<(), Error> {
        let finished = run_due(
            &self.actor,
            &self.cfg,
            &self.producer,
            &self.shutdown,
            &self.metrics,
            &mut ledger.pending,
            owned,
        )
        .await?;
        ledger.answer(finished);
        Ok(())
    }

    /// Sorts a batch: forged or altered alerts are refused (a rejection record, within the
    /// budget); alerts of partitions revoked meanwhile are left to their new owner; unreadable
    /// records are counted and ignored; each authentic alert is planned, and the decisions not
    /// answered or waiting already are returned to act on.
    async fn triage(
        &self,
        batch: &[Incoming],
        ledger: &Ledger,
        owned: &HashSet<i32>,
        rejections: &mut RejectionBudget,
    ) -> Result<Vec<(Alert, Pending)>, Error> {
        let metrics = &self.metrics;
        // A repeat of an alert whose action is pending does not start it a second time.
        let waiting: HashSet<String> = ledger
            .pending
            .iter()
            .map(|w| record_id(&w.alert, &w.decision.action))
            .collect();
        // Each alert to act on, with the decisions not yet recorded and its arrival time.
        let mut work: Vec<(Alert, Pending)> = Vec::new();
        let mut in_batch: HashSet<String> = HashSet::new();
        for incoming in batch {
            let (partition, offset) = (incoming.partition, incoming.offset);
            let alert = match &incoming.alert {
                Some(Ok(alert)) if alert.schema_version <= ALERT_SCHEMA_VERSION => alert,
                other => {
                    // Not an alert this version can read: never act on it; count and log it.
                    let why = match other {
                        Some(Err(e)) => e.clone(),
                        Some(Ok(a)) => format!("unsupported schema_version {}", a.schema_version),
                        None => "empty message".into(),
                    };
                    metrics.alerts.with_label_values(&["undecodable"]).inc();
                    tracing::warn!(partition, offset, %why, "ignored a record on the alerts topic that is not a readable alert");
                    continue;
                }
            };
            let verdict = match &incoming.raw {
                Some(raw) => self.verifier.verify_json(raw),
                None => self.verifier.verify(alert),
            };
            if let Err(why) = verdict {
                metrics.alerts.with_label_values(&["rejected"]).inc();
                metrics.rejected.with_label_values(&[why.as_str()]).inc();
                tracing::warn!(alert_id = %in_short(&alert.id, ECHOED), policy = %in_short(&alert.policy_id, ECHOED), partition, offset, reason = %in_short(&why.to_string(), 1_024), "alert rejected: not authentic; nothing done");
                // One record per alert, however many actions it asks for, and only so many a
                // minute: a flood of forgeries must not stall the loop or grow the actions
                // topic without bound.
                let budget = rejections.take(chrono::Utc::now().timestamp());
                for action in alert.actions.iter().take(usize::from(budget)) {
                    let record = rejection_record(alert, action, &why);
                    if !publish(&self.producer, &self.cfg, &record, &self.shutdown).await {
                        if self.shutdown.is_cancelled() {
                            return Err(Error::Stopped(format!(
                                "rejection record for alert {} not published",
                                record.alert_id
                            )));
                        }
                        // Refused for good: the forgery is counted and logged; stopping here
                        // would stop on it again at every restart.
                        tracing::error!(alert_id = %record.alert_id, partition, offset, "rejection record refused by the broker; the forged alert is skipped without one");
                        break;
                    }
                    metrics
                        .actions
                        .with_label_values(&[record.kind.as_str(), record.outcome.as_str()])
                        .inc();
                }
                continue;
            }
            if !owned.contains(&incoming.partition) {
                // Revoked while the batch was gathered: its new owner answers it.
                tracing::info!(alert_id = %alert.id, partition, "partition revoked; left to its new owner");
                continue;
            }
            let open = self.open_decisions(alert, &ledger.answered, &waiting).await;
            if !in_batch.insert(alert.id.clone()) || open.is_empty() {
                metrics.alerts.with_label_values(&["duplicate"]).inc();
                tracing::info!(alert_id = %alert.id, "alert already answered; skipped");
            } else {
                work.push((alert.clone(), (open, incoming.arrived, partition, offset)));
            }
        }
        Ok(work)
    }

    /// The decisions for an authentic `alert` that are neither answered nor waiting (an alert
    /// half answered before a restart is not taken again); all refused when it is too old.
    async fn open_decisions(
        &self,
        alert: &Alert,
        answered: &HashMap<String, i64>,
        waiting: &HashSet<String>,
    ) -> Vec<Decision> {
        let cfg = &self.cfg;
        let needs_aws = alert.actions.iter().any(|a| a.kind != ActionKind::Notify);
        let protection = if needs_aws {
            self.actor.protection(&cfg.aws).await
        } else {
            self.actor.protection.get()
        };
        let unknown = Protection::default();
        // Too old: every action refused with the reason (and so answered).
        let stale = staleness(alert, cfg.remediate.max_alert_age, chrono::Utc::now());
        plan(alert, &cfg.remediate, protection.unwrap_or(&unknown))
            .into_iter()
            .filter(|d| {
                let id = record_id(alert, &d.action);
                !answered.contains_key(&id) && !waiting.contains(&id)
            })
            .map(|mut d| {
                if let Some(why) = &stale {
                    d.refusal = Some(why.clone());
                }
                d
            })
            .collect()
    }

    /// Acts on `work`: alerts touching the same target in order, the others concurrently,
    /// each decision recorded before the next; notes what was answered and what waits.
    async fn act(&self, work: Vec<(Alert, Pending)>, ledger: &mut Ledger) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + ACT_BUDGET;
        let room = self
            .cfg
            .remediate
            .retry
            .max_pending
            .saturating_sub(ledger.pending.len());
        let unfinished = &ledger.unfinished;
        let runs = futures::future::join_all(
            group_by_target(work)
                .into_iter()
                .map(|group| self.act_in_order(group, unfinished, room, deadline)),
        )
        .await;
        for run in runs {
            let (ids, waits) = run?;
            ledger.answer(ids);
            ledger.pending.extend(waits);
        }
        Ok(())
    }

    /// Acts on one target's alerts in order; returns the action ids answered and the actions
    /// left waiting (at most `room`).
    async fn act_in_order(
        &self,
        group: Vec<(Alert, Pending)>,
        unfinished: &HashMap<String, Unfinished>,
        room: usize,
        deadline: std::time::Instant,
    ) -> Result<(Vec<String>, Vec<Waiting>), Error> {
        let (actor, cfg, producer, shutdown, metrics) = (
            &self.actor,
            &self.cfg,
            &self.producer,
            &self.shutdown,
            &self.metrics,
        );
        let mut done = Vec::new();
        let mut waits = Vec::new();
        for (alert, (decisions, arrived, partition, offset)) in group {
            for decision in decisions {
                let id = record_id(&alert, &decision.action);
                let earlier = unfinished.get(&id).and_then(|u| u.prior.clone());
                let first = unfinished.get(&id).map_or_else(now_ms, |u| u.first);
                let tried = attempt(
                    actor, cfg, &alert, &decision, producer, shutdown, metrics, earlier, 0,
                    deadline,
                )
                .await;
                let at = Place {
                    partition,
                    offset,
                    arrived,
                    first,
                };
                let (record, wait) = settle(cfg, tried, &alert, &decision, at, room > waits.len());
                if let Some(record) = record {
                    self.record(&record, "action record").await?;
                    note_published(metrics, &alert, &record);
                    if answers(&record) {
                        done.push(record.id);
                    }
                }
                waits.extend(wait);
            }
            metrics.alerts.with_label_values(&["handled"]).inc();
            if let Some(ms) = arrived {
                metrics
                    .latency
                    .observe((now_ms() - ms).max(0) as f64 / 1000.0);
            }
        }
        Ok((done, waits))
    }
}

/// Runs remediate until `shutdown`; `health` hears when this instance owns no partitions of a
/// stalled group.
pub async fn run(
    cfg: RemediateConfig,
    metrics: Metrics,
    health: Health,
    tasks: &Tasks,
) -> Result<(), Error> {
    let shutdown = tasks.shutdown().clone();
    kafka::ensure_topics(&cfg.kafka, &[TopicRole::Alerts, TopicRole::Actions]).await?;
    check_retention(&cfg).await?;
    // For SNS channels, and for `notify_user` (people's own topics).
    let users = &cfg.notify.users;
    let sns = if cfg
        .notify
        .channels
        .iter()
        .any(|c| c.kind == crate::notify::ChannelKind::Sns)
        || !users.directory.is_empty()
        || !users.tag_key.is_empty()
    {
        let sdk = cfg.aws.sdk_config().await;
        let config = trailguard_common::sdk_config!(aws_sdk_sns, cfg.aws, &sdk, "sns");
        Some(aws_sdk_sns::Client::from_conf(config.build()))
    } else {
        None
    };
    // For e-mail to people.
    let ses = if users.email_from.is_empty() {
        None
    } else {
        let sdk = cfg.aws.sdk_config().await;
        let config = trailguard_common::sdk_config!(aws_sdk_ses, cfg.aws, &sdk, "ses");
        Some(aws_sdk_ses::Client::from_conf(config.build()))
    };
    let actor = Actor {
        clients: Clients::new(cfg.aws.clone()),
        protection: tokio::sync::OnceCell::new(),
        notifier: Notifier::new(cfg.notify.clone(), sns).with_ses(ses),
        limiter: std::sync::Arc::new(std::sync::Mutex::new(RateLimiter::default())),
        settled: std::sync::Arc::new(std::sync::Mutex::new(HashSet::new())),
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
    // The budgets count what every instance does: follow the others' action records.
    follow_actions(&cfg, actor.limiter.clone(), actor.settled.clone(), tasks);
    // Notes assignments: what other instances answered on new partitions must be read back
    // before acting on their alerts.
    let context = kafka::KafkaContext::new(&cfg.kafka)
        .with_lag(metrics.consumer_lag.clone())
        .tracking_revoked();
    let consumer = kafka::consumer(
        &cfg.kafka,
        &cfg.remediate.group_id,
        "trailguard-remediate",
        context.clone(),
    )?;
    let alerts_topic = cfg.kafka.topics.alerts.clone();
    consumer.subscribe(&[&alerts_topic])?;
    kafka::watch_group(
        &cfg.kafka,
        &cfg.remediate.group_id,
        &[&alerts_topic],
        context.clone(),
        health,
        shutdown.clone(),
    );
    tracing::info!(topic = %alerts_topic, default_mode = cfg.remediate.default_mode.as_str(), "remediate running");
    let mut rejections = RejectionBudget::new(cfg.remediate.max_rejection_records_per_minute);
    let me = Remediator {
        verifier: cfg.signing.verifier(),
        cfg,
        actor,
        producer,
        metrics,
        shutdown,
    };
    let mut ledger = Ledger::default();
    let mut pruned_at = std::time::Instant::now();

    loop {
        // A batch: the first alert waited for, then whatever else is already there.
        let first = tokio::select! {
            _ = me.shutdown.cancelled() => break,
            // `recv` is cancel-safe: nothing is lost when the wait is cut short.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if context.take_rejoin() {
                    kafka::rejoin(&consumer, &[&alerts_topic])?;
                }
                forget_revoked(&context, &mut ledger.seen, &mut ledger.pending);
                if !ledger.pending.is_empty() {
                    // Unknown assignment: leave the pending actions as they are.
                    let Ok(list) = consumer.assignment() else {
                        continue;
                    };
                    let owned: HashSet<i32> =
                        list.elements().iter().map(|e| e.partition()).collect();
                    me.run_due(&mut ledger, &owned).await?;
                    store_offsets(&consumer, &alerts_topic, &ledger.seen, &ledger.pending)?;
                    me.metrics.pending.set(ledger.pending.len() as i64);
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
            let back = tokio::task::block_in_place(|| answered_alerts(&me.cfg))?;
            ledger.read_back(back, &me.cfg, &me.actor, &me.metrics);
        }
        forget_revoked(&context, &mut ledger.seen, &mut ledger.pending);
        let owned: HashSet<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => batch.iter().map(|i| i.partition).collect(),
        };
        let work = me.triage(&batch, &ledger, &owned, &mut rejections).await?;
        let acted = !work.is_empty();
        me.act(work, &mut ledger).await?;
        for incoming in &batch {
            let e = ledger.seen.entry(incoming.partition).or_insert(0);
            *e = (*e).max(incoming.offset + 1);
        }
        // Pending actions that are due run between batches too, not only when the topic is quiet.
        if ledger.pending.iter().any(|w| w.due <= now_ms()) {
            me.run_due(&mut ledger, &owned).await?;
        }
        store_offsets(&consumer, &alerts_topic, &ledger.seen, &ledger.pending)?;
        me.metrics.pending.set(ledger.pending.len() as i64);
        if pruned_at.elapsed() > Duration::from_secs(60) {
            prune_answered(&mut ledger.answered, me.cfg.remediate.max_alert_age);
            pruned_at = std::time::Instant::now();
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
    kafka::flush(&me.producer, me.cfg.remediate.drain_timeout)?;
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
            fill(&mut record, r.outcome, r.detail, r.steps, None, false);
        }
        ActionKind::RequireSignIn | ActionKind::SuspendUser => {
            // The principal's own account, as the action itself used.
            let who = iam::Identity::parse(&original.target.id).map_err(Error::Undo)?;
            let (_, client) = clients
                .get(Some(who.account()))
                .await
                .map_err(undo_refused)?;
            let r = iam::undo(&client, &who, &data).await;
            fill(&mut record, r.outcome, r.detail, r.steps, None, false);
        }
        ActionKind::UnshareSnapshot | ActionKind::UnshareImage => {
            let shared = crate::share::Shared::parse(original.kind, &original.target)
                .map_err(Error::Undo)?;
            let api = clients.share_api(&shared).await.map_err(undo_refused)?;
            let r = crate::share::undo(&api, &shared, &data).await;
            fill(&mut record, r.outcome, r.detail, r.steps, None, false);
        }
        ActionKind::Notify | ActionKind::NotifyUser => {
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
        a.time = now + chrono::Duration::minutes(20);
        assert_eq!(staleness(&a, day, now), None, "a clock ahead is not stale");
        for ahead in [
            chrono::Duration::hours(2),
            chrono::Duration::days(365 * 170),
        ] {
            a.time = now + ahead;
            let why = staleness(&a, day, now).unwrap_or_default();
            assert!(why.contains("ahead of remediate's clock"), "{ahead}: {why}");
        }
        a.time = now;
        a.last_time = Some(now + chrono::Duration::days(2));
        assert!(
            staleness(&a, day, now).is_some(),
            "a repeat from the future"
        );
        assert_eq!(staleness(&a, Duration::ZERO, now), None, "zero: no limit");
    }

    #[test]
    fn answered_actions_are_forgotten_only_past_the_alert_age_limit() {
        let now = now_ms();
        let hour = 3_600_000;
        let mut answered: HashMap<String, i64> = [
            ("fresh".to_string(), now - hour),
            ("day-old".to_string(), now - 24 * hour - hour / 2),
            ("old".to_string(), now - 26 * hour),
        ]
        .into();
        let mut unlimited = answered.clone();
        prune_answered(&mut answered, Duration::from_secs(24 * 3600));
        let mut left: Vec<&String> = answered.keys().collect();
        left.sort();
        assert_eq!(left, ["day-old", "fresh"]);
        prune_answered(&mut unlimited, Duration::ZERO);
        assert_eq!(unlimited.len(), 3);
    }

    #[test]
    fn a_rejection_record_names_long_forged_texts_in_short() -> Result<(), serde_json::Error> {
        let mut forged = alert(&"é".repeat(300_000), &[(ActionKind::SuspendUser, "t")]);
        forged.policy_id = "p".repeat(100_000);
        forged.actions[0].target.id = "arn:".repeat(50_000);
        forged.actions[0].target.grantee = Some("g".repeat(50_000));
        let why = trailguard_common::sign::Rejection::UnknownKey("k".repeat(200_000));
        let record = rejection_record(&forged, &forged.actions[0], &why);
        assert!(serde_json::to_vec(&record)?.len() < 4_096);
        assert!(
            record.alert_id.starts_with("éé") && record.alert_id.contains("600000 bytes"),
            "{}",
            record.alert_id
        );
        // The same text, the same short form; another text, another.
        assert_eq!(record.alert_id, in_short(&forged.id, ECHOED));
        assert_ne!(record.alert_id, in_short(&"é".repeat(300_001), ECHOED));
        let short = alert("a1", &[(ActionKind::SuspendUser, "t")]);
        assert_eq!(
            rejection_record(&short, &short.actions[0], &why).alert_id,
            "a1"
        );
        Ok(())
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
