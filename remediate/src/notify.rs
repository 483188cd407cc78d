//! Notify: tell the security team (or route a message to the user) about an alert — a generic
//! JSON webhook, a Slack-compatible webhook, or an SNS topic. Each delivery is retried with
//! exponential backoff on connection errors, 5xx and 429; every failure ends in the action
//! record (`failed`, with the last error), never silently dropped.
//!
//! A `notify` target names a channel; `default` means every channel marked `default`. The user
//! target (`kind = "user"`) goes to the same channels with the principal as `recipient`, so the
//! receiving system can route it. `notify_user` reaches the person an alert is about by e-mail
//! (SES) or on an SNS topic of their own ([`UsersConfig`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use trailguard_common::contract::{ActionOutcome, ActionStep, Target};
use trailguard_common::{Alert, Error};

/// Notification channels and delivery settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The channels.
    pub channels: Vec<ChannelConfig>,
    /// Attempts per delivery (the first included).
    pub attempts: u32,
    /// Wait before the first retry; doubles each time (at most 30 s).
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Timeout of one HTTP attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Where `notify_user` reaches people.
    pub users: UsersConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            channels: Vec::new(),
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            users: UsersConfig::default(),
        }
    }
}

/// Where `notify_user` reaches the person an alert is about: an e-mail address (sent through
/// SES from `email_from`) or an SNS topic of their own (they subscribe their e-mail or phone to
/// it), found in `directory` or in a tag of their IAM user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// Person → e-mail address or SNS topic ARN. Keys are actor ids
    /// (`person:dana@example.com`, `user:111111111111/bob`), principal ARNs or bare IAM user
    /// names, tried in that order (case-insensitive).
    pub directory: std::collections::BTreeMap<String, String>,
    /// The IAM user tag holding the user's address, read (iam:ListUserTags) when the
    /// directory has no entry; empty: never read. A tag may name a person's topic
    /// (`trailguard-user-*`) or an e-mail address in `email_domains`.
    pub tag_key: String,
    /// The SES identity e-mails are sent from (verified in SES); needed for any e-mail
    /// address. `deploy/iam/remediate.json` allows sending as `trailguard@…` only.
    pub email_from: String,
    /// The domains an e-mail address read from a tag may be in (whoever may tag a user could
    /// otherwise send that user's alerts anywhere). Empty: tags may not hold e-mail addresses.
    pub email_domains: Vec<String>,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            directory: Default::default(),
            tag_key: "trailguard-notify-topic".into(),
            email_from: String::new(),
            email_domains: Vec::new(),
        }
    }
}

/// Whether `address` is one plain e-mail address: `local@domain.tld`, the local part of
/// letters, digits and `.+-_` only, the domain of letters, digits, `-` and dots. Narrower
/// than RFC 5322 on purpose: no quoting, comments, encoded words or lists a mail system
/// might read as another recipient.
pub fn is_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_'));
    let domain_ok = domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    local_ok && domain_ok
}

/// The name every person's own topic found through a tag begins with.
pub const USER_TOPIC_PREFIX: &str = "trailguard-user-";

/// Whether `arn` is an SNS topic ARN.
fn is_topic_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" && !parts[5].is_empty()
}

/// What a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// POST the alert as JSON.
    Webhook,
    /// POST a Slack-compatible message (`text` and `blocks`).
    Slack,
    /// Publish to an SNS topic.
    Sns,
}

/// One channel.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Name a `notify` target can use.
    pub name: String,
    /// Webhook, Slack or SNS.
    pub kind: ChannelKind,
    /// Webhook URL (for `webhook` and `slack`). Prefer `url_env`: URLs are secrets.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the webhook URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// SNS topic ARN (for `sns`).
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// Part of the `default` target.
    #[serde(default = "yes")]
    pub default: bool,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_env", &self.url_env)
            .field("topic_arn", &self.topic_arn)
            .field("default", &self.default)
            .finish()
    }
}

impl NotifyConfig {
    /// Checks the channels; errors name the key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.attempts == 0 {
            return Err(Error::config("notify.attempts", "must be at least 1"));
        }
        for (person, address) in &self.users.directory {
            let key = format!("notify.users.directory.{person}");
            if is_email(address) {
                if self.users.email_from.is_empty() {
                    return Err(Error::config(
                        "notify.users.email_from",
                        format!("needed to e-mail {address} ({key})"),
                    ));
                }
            } else if !is_topic_arn(address) {
                return Err(Error::config(
                    &key,
                    "must be an e-mail address or an SNS topic ARN",
                ));
            }
        }
        if !self.users.email_from.is_empty() && !is_email(&self.users.email_from) {
            return Err(Error::config(
                "notify.users.email_from",
                "must be an e-mail address (a verified SES identity)",
            ));
        }
        if !self.users.email_domains.is_empty() && self.users.email_from.is_empty() {
            return Err(Error::config(
                "notify.users.email_from",
                "needed when notify.users.email_domains allows e-mail addresses in tags",
            ));
        }
        for (i, domain) in self.users.email_domains.iter().enumerate() {
            if domain.is_empty() || domain.contains('@') || !domain.contains('.') {
                return Err(Error::config(
                    &format!("notify.users.email_domains[{i}]"),
                    "must be a domain name (example.com)",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            let key = |field: &str| format!("notify.channels[{i}].{field}");
            if c.name.trim().is_empty() || c.name == "default" {
                return Err(Error::config(
                    &key("name"),
                    "must be a name other than `default`",
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(Error::config(
                    &key("name"),
                    format!("`{}` is used twice", c.name),
                ));
            }
            match c.kind {
                ChannelKind::Webhook | ChannelKind::Slack => {
                    let url = c
                        .resolved_url()
                        .map_err(|m| Error::config(&key("url_env"), m))?;
                    let Some(url) = url else {
                        return Err(Error::config(
                            &key("url"),
                            "a webhook channel needs `url` or `url_env`",
                        ));
                    };
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(Error::config(&key("url"), "must be an http(s) URL"));
                    }
                }
                ChannelKind::Sns => {
                    if !c
                        .topic_arn
                        .as_deref()
                        .is_some_and(|a| a.starts_with("arn:"))
                    {
                        return Err(Error::config(
                            &key("topic_arn"),
                            "an sns channel needs a topic ARN",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl ChannelConfig {
    fn resolved_url(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.url_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set"));
        }
        Ok(self.url.clone())
    }
}

/// The generic JSON payload: the alert in brief, and who it is for.
/// A transport error without the URL: a webhook or Slack URL is the credential, and reqwest's
/// `Display` appends it (`… for url (…)`). The causes (connection refused, DNS, timeout) are
/// kept; anything of the URL that a cause might still carry is cut out.
fn transport_error(err: reqwest::Error, url: &str) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let mut secrets = vec![url.to_string()];
    if let Ok(parsed) = reqwest::Url::parse(url) {
        secrets.push(parsed.path().to_string());
        if let Some(query) = parsed.query() {
            secrets.push(query.to_string());
        }
        if let Some(host) = parsed.host_str() {
            secrets.push(host.to_string());
        }
    }
    for secret in secrets.iter().filter(|s| s.len() > 1) {
        text = text.replace(secret.as_str(), "<redacted>");
    }
    text
}

/// The message a person gets about an alert on them.
pub fn user_message(alert: &Alert) -> String {
    format!(
        "Trailguard noticed activity on your AWS identity that your security team wants you to know about.\n\n\
         {}: {}\n\nWhen: {}\nSeverity: {}\nReference: alert {}\n\n\
         If this was you, no action is needed. If it was not, tell your security team now.",
        alert.policy_name,
        alert.evidence.summary,
        alert.time.format("%Y-%m-%d %H:%M UTC"),
        alert.severity.as_str(),
        alert.id
    )
}

pub fn webhook_payload(alert: &Alert, target: &Target) -> Value {
    json!({
        "type": "trailguard.alert",
        "recipient": {"kind": target.kind, "id": target.id},
        "alert_id": alert.id,
        "policy_id": alert.policy_id,
        "policy_name": alert.policy_name,
        "severity": alert.severity.as_str(),
        "time": alert.time,
        "occurrences": alert.occurrences,
        "principal": alert.principal.as_ref().map(|p| p.display()),
        "entity": {"kind": alert.entity.kind, "id": alert.entity.id},
        "account_id": alert.account_id,
        "region": alert.region,
        "summary": alert.evidence.summary,
        "activity_ids": alert.evidence.activity_ids,
        "mitre": alert.mitre.iter().map(|m| &m.technique_id).collect::<Vec<_>>(),
    })
}

/// A Slack-compatible message: severity, principal, policy and the evidence summary; no links.
pub fn slack_payload(alert: &Alert) -> Value {
    let who = alert
        .principal
        .as_ref()
        .map(|p| p.display())
        .unwrap_or_else(|| "unknown principal".into());
    let sev = alert.severity.as_str().to_uppercase();
    let text = format!("[{sev}] {}: {}", alert.policy_name, alert.evidence.summary);
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Severity*\n{sev}")}),
        json!({"type": "mrkdwn", "text": format!("*Policy*\n{}", alert.policy_name)}),
        json!({"type": "mrkdwn", "text": format!("*Principal*\n{who}")}),
        json!({"type": "mrkdwn", "text": format!("*{}*\n{}", alert.entity.kind, alert.entity.id)}),
    ];
    if alert.occurrences > 1 {
        fields.push(
            json!({"type": "mrkdwn", "text": format!("*Occurrences*\n{}", alert.occurrences)}),
        );
    }
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*\n{}", alert.policy_name, alert.evidence.summary)}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("alert {} · {}", alert.id, alert.time.format("%Y-%m-%d %H:%M:%S UTC"))}]}
        ]
    })
}

/// What a notification did.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyResult {
    /// Applied, dry-run, skipped or failed.
    pub outcome: ActionOutcome,
    /// A sentence for the action record.
    pub detail: String,
    /// One step per channel.
    pub steps: Vec<ActionStep>,
}

/// Sends notifications.
#[derive(Clone)]
pub struct Notifier {
    cfg: NotifyConfig,
    http: reqwest::Client,
    sns: Option<aws_sdk_sns::Client>,
    ses: Option<aws_sdk_ses::Client>,
}

enum Attempt {
    Done(Option<String>),
    Retry(String),
    Fatal(String),
}

impl Notifier {
    /// A notifier; `sns` is needed only when an SNS channel is configured.
    pub fn new(cfg: NotifyConfig, sns: Option<aws_sdk_sns::Client>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("trailguard-remediate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Notifier {
            cfg,
            http,
            sns,
            ses: None,
        }
    }

    /// Sends e-mail to people through `ses`.
    pub fn with_ses(mut self, ses: Option<aws_sdk_ses::Client>) -> Self {
        self.ses = ses;
        self
    }

    fn channels_for(&self, target: &Target) -> Vec<&ChannelConfig> {
        self.cfg
            .channels
            .iter()
            .filter(|c| {
                if target.id == "default" || target.kind == "user" {
                    c.default
                } else {
                    c.name == target.id
                }
            })
            .collect()
    }

    /// Where people are reached.
    pub fn users(&self) -> &UsersConfig {
        &self.cfg.users
    }

    /// The person's topic from the directory: (topic ARN, how it was found).
    pub fn directory_topic(&self, alert: &Alert, target: &Target) -> Option<(String, String)> {
        let actor = alert.actor.as_ref().map(|a| a.id.as_str());
        // A bare name only for an IAM user: a role session's name is whatever its caller chose.
        let name = target
            .id
            .contains(":user/")
            .then(|| target.id.rsplit('/').next())
            .flatten();
        [actor, Some(target.id.as_str()), name]
            .into_iter()
            .flatten()
            .filter(|k| !k.is_empty())
            .find_map(|key| {
                self.cfg
                    .users
                    .directory
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(k, topic)| (topic.clone(), format!("the directory entry `{k}`")))
            })
    }

    /// Tells the person `target` names about `alert` on their own SNS `topic` (from the
    /// directory or a tag: topic ARN, how it was found); skipped, saying so, when they have
    /// none. The message is theirs: what happened in words, no internal ids but the alert's.
    pub async fn notify_user(
        &self,
        alert: &Alert,
        target: &Target,
        topic: Option<(String, String)>,
        dry_run: bool,
    ) -> NotifyResult {
        let Some((topic, how)) = topic else {
            return NotifyResult {
                outcome: ActionOutcome::Skipped,
                detail: format!(
                    "no address for {} (notify.users.directory, tag `{}`)",
                    target.id, self.cfg.users.tag_key
                ),
                steps: Vec::new(),
            };
        };
        let tagged = !how.starts_with("the directory");
        if is_email(&topic) {
            return self
                .email_user(alert, target, &topic, &how, tagged, dry_run)
                .await;
        }
        if !is_topic_arn(&topic) {
            return NotifyResult {
                outcome: ActionOutcome::Failed,
                detail: format!(
                    "{how} is neither an e-mail address nor an SNS topic ARN: {topic:?}"
                ),
                steps: Vec::new(),
            };
        }
        // A tag is set by whoever may tag the user: it may only name a person's topic
        // (`trailguard-user-*`), never the team's channels or anything else.
        if tagged
            && !topic
                .rsplit(':')
                .next()
                .is_some_and(|n| n.starts_with(USER_TOPIC_PREFIX))
        {
            return NotifyResult {
                outcome: ActionOutcome::Failed,
                detail: format!("{how} names {topic}, not a person's topic ({USER_TOPIC_PREFIX}*)"),
                steps: Vec::new(),
            };
        }
        if dry_run {
            return NotifyResult {
                outcome: ActionOutcome::DryRun,
                detail: format!("would notify {} on {topic} ({how})", target.id),
                steps: vec![ActionStep {
                    call: "sns:Publish".into(),
                    description: format!("would publish to {topic}"),
                    request_id: None,
                }],
            };
        }
        let Some(client) = &self.sns else {
            return NotifyResult {
                outcome: ActionOutcome::Failed,
                detail: "no SNS client".into(),
                steps: Vec::new(),
            };
        };
        let subject: String = format!("Trailguard: {}", alert.policy_name)
            .chars()
            .take(100)
            .collect();
        let message = user_message(alert);
        match client
            .publish()
            .topic_arn(&topic)
            .subject(subject)
            .message(message)
            .send()
            .await
        {
            Ok(out) => NotifyResult {
                outcome: ActionOutcome::Applied,
                detail: format!("notified {} on {topic} ({how})", target.id),
                steps: vec![ActionStep {
                    call: "sns:Publish".into(),
                    description: format!("published to {topic}"),
                    request_id: out.message_id().map(str::to_string),
                }],
            },
            Err(err) => NotifyResult {
                outcome: ActionOutcome::Failed,
                detail: trailguard_common::aws::CallError::of("sns:Publish", &err).to_string(),
                steps: Vec::new(),
            },
        }
    }

    /// E-mails `address` (from the directory or a tag, as `how` says) about `alert` through
    /// SES. An address from a tag must be in `email_domains`.
    async fn email_user(
        &self,
        alert: &Alert,
        target: &Target,
        address: &str,
        how: &str,
        tagged: bool,
        dry_run: bool,
    ) -> NotifyResult {
        let failed = |detail: String| NotifyResult {
            outcome: ActionOutcome::Failed,
            detail,
            steps: Vec::new(),
        };
        let domain = address.rsplit('@').next().unwrap_or_default();
        if tagged
            && !self
                .cfg
                .users
                .email_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
        {
            return failed(format!(
                "{how} names {address}, outside notify.users.email_domains"
            ));
        }
        let from = &self.cfg.users.email_from;
        if from.is_empty() {
            return failed(format!(
                "{how} names {address}, and notify.users.email_from is not set"
            ));
        }
        if dry_run {
            return NotifyResult {
                outcome: ActionOutcome::DryRun,
                detail: format!("would e-mail {} at {address} ({how})", target.id),
                steps: vec![ActionStep {
                    call: "ses:SendEmail".into(),
                    description: format!("would e-mail {address} from {from}"),
                    request_id: None,
                }],
            };
        }
        let Some(client) = &self.ses else {
            return failed("no SES client".into());
        };
        use aws_sdk_ses::types::{Body, Content, Destination, Message};
        let text = |data: String| Content::builder().data(data).charset("UTF-8").build();
        // One line, as SES and mail readers expect of a subject.
        let subject: String = format!("Trailguard: {}", alert.policy_name)
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        let (subject, body) = match (text(subject), text(user_message(alert))) {
            (Ok(subject), Ok(body)) => (subject, body),
            (Err(e), _) | (_, Err(e)) => return failed(format!("building the e-mail: {e}")),
        };
        let message = Message::builder()
            .subject(subject)
            .body(Body::builder().text(body).build())
            .build();
        match client
            .send_email()
            .source(from)
            .destination(Destination::builder().to_addresses(address).build())
            .message(message)
            .send()
            .await
        {
            Ok(out) => NotifyResult {
                outcome: ActionOutcome::Applied,
                detail: format!("e-mailed {} at {address} ({how})", target.id),
                steps: vec![ActionStep {
                    call: "ses:SendEmail".into(),
                    description: format!("e-mailed {address} from {from}"),
                    request_id: Some(out.message_id().to_string()),
                }],
            },
            Err(err) => {
                failed(trailguard_common::aws::CallError::of("ses:SendEmail", &err).to_string())
            }
        }
    }

    /// Notifies about `alert` per `target`. With `dry_run`, describes what would be sent.
    pub async fn notify(&self, alert: &Alert, target: &Target, dry_run: bool) -> NotifyResult {
        let channels = self.channels_for(target);
        if channels.is_empty() {
            return NotifyResult {
                outcome: ActionOutcome::Skipped,
                detail: format!("no notification channel for target `{}`", target.id),
                steps: Vec::new(),
            };
        }
        let mut steps = Vec::new();
        let mut failures = Vec::new();
        for channel in channels {
            let call = match channel.kind {
                ChannelKind::Webhook => "http:POST webhook",
                ChannelKind::Slack => "http:POST slack",
                ChannelKind::Sns => "sns:Publish",
            };
            if dry_run {
                steps.push(ActionStep {
                    call: call.into(),
                    description: format!("would notify channel {}", channel.name),
                    request_id: None,
                });
                continue;
            }
            match self.deliver(channel, alert, target).await {
                Ok((request_id, attempts)) => steps.push(ActionStep {
                    call: call.into(),
                    description: format!(
                        "notified channel {}{}",
                        channel.name,
                        if attempts > 1 {
                            format!(" (attempt {attempts})")
                        } else {
                            String::new()
                        }
                    ),
                    request_id,
                }),
                Err(why) => failures.push(format!("{}: {why}", channel.name)),
            }
        }
        if dry_run {
            return NotifyResult {
                outcome: ActionOutcome::DryRun,
                detail: format!("would notify {} channel(s)", steps.len()),
                steps,
            };
        }
        if failures.is_empty() {
            NotifyResult {
                outcome: ActionOutcome::Applied,
                detail: format!("notified {} channel(s)", steps.len()),
                steps,
            }
        } else {
            NotifyResult {
                outcome: ActionOutcome::Failed,
                detail: format!(
                    "notified {} channel(s); failed: {}",
                    steps.len(),
                    failures.join("; ")
                ),
                steps,
            }
        }
    }

    async fn deliver(
        &self,
        channel: &ChannelConfig,
        alert: &Alert,
        target: &Target,
    ) -> Result<(Option<String>, u32), String> {
        let mut wait = self.cfg.backoff;
        let mut last = String::new();
        for attempt in 1..=self.cfg.attempts {
            let result = match channel.kind {
                ChannelKind::Webhook => self.post(channel, &webhook_payload(alert, target)).await,
                ChannelKind::Slack => self.post(channel, &slack_payload(alert)).await,
                ChannelKind::Sns => self.publish_sns(channel, alert, target).await,
            };
            match result {
                Attempt::Done(id) => return Ok((id, attempt)),
                Attempt::Fatal(why) => return Err(why),
                Attempt::Retry(why) => {
                    tracing::warn!(channel = %channel.name, attempt, error = %why, "notification failed; retrying");
                    last = why;
                }
            }
            if attempt < self.cfg.attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
        Err(format!("after {} attempts: {last}", self.cfg.attempts))
    }

    async fn post(&self, channel: &ChannelConfig, body: &Value) -> Attempt {
        let url = match channel.resolved_url() {
            Ok(Some(url)) => url,
            Ok(None) => return Attempt::Fatal("no URL".into()),
            Err(e) => return Attempt::Fatal(e),
        };
        match self.http.post(&url).json(body).send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Done(None)
                } else if status.is_server_error() || status.as_u16() == 429 {
                    Attempt::Retry(format!("HTTP {status}"))
                } else {
                    Attempt::Fatal(format!("HTTP {status}"))
                }
            }
            // Connection refused, reset, timeout: worth another try.
            Err(err) => Attempt::Retry(transport_error(err, &url)),
        }
    }

    async fn publish_sns(
        &self,
        channel: &ChannelConfig,
        alert: &Alert,
        target: &Target,
    ) -> Attempt {
        let Some(client) = &self.sns else {
            return Attempt::Fatal("no SNS client".into());
        };
        let Some(arn) = &channel.topic_arn else {
            return Attempt::Fatal("no topic ARN".into());
        };
        let subject: String = format!(
            "[{}] {}",
            alert.severity.as_str().to_uppercase(),
            alert.policy_name
        )
        .chars()
        .take(100)
        .collect();
        match client
            .publish()
            .topic_arn(arn)
            .subject(subject)
            .message(webhook_payload(alert, target).to_string())
            .send()
            .await
        {
            Ok(out) => Attempt::Done(out.message_id().map(str::to_string)),
            // The SDK has already retried transient errors.
            Err(err) => Attempt::Fatal(
                trailguard_common::aws::CallError::of("sns:Publish", &err).to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        serde_json::from_str(include_str!("../../tests/tests/alert.json"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_directory_finds_a_person_by_actor_arn_or_name() {
        let mut cfg = NotifyConfig::default();
        cfg.users.directory.insert(
            "Person:Dana@Example.com".into(),
            "arn:aws:sns:us-east-1:111111111111:trailguard-dana".into(),
        );
        cfg.users.directory.insert(
            "bob".into(),
            "arn:aws:sns:us-east-1:111111111111:trailguard-bob".into(),
        );
        assert!(cfg.validate().is_ok());
        let notifier = Notifier::new(cfg.clone(), None);
        let mut a = alert();
        a.actor = Some(trailguard_common::contract::Actor {
            kind: trailguard_common::contract::ActorKind::Person,
            id: "person:dana@example.com".into(),
            name: "dana@example.com".into(),
            basis: "sso-session".into(),
        });
        let target = |id: &str| Target {
            kind: "principal".into(),
            id: id.into(),
            account_id: Some("111111111111".into()),
            grantee: None,
        };
        let dana = target(
            "arn:aws:sts::111111111111:assumed-role/AWSReservedSSO_Admin_1/dana@example.com",
        );
        assert_eq!(
            notifier.directory_topic(&a, &dana).map(|t| t.0).as_deref(),
            Some("arn:aws:sns:us-east-1:111111111111:trailguard-dana")
        );
        a.actor = None;
        let bob = target("arn:aws:iam::111111111111:user/bob");
        assert!(notifier.directory_topic(&a, &bob).is_some(), "by user name");
        let session = target("arn:aws:sts::111111111111:assumed-role/Attacker/bob");
        assert!(
            notifier.directory_topic(&a, &session).is_none(),
            "a session name is the caller's choice"
        );
        assert!(notifier
            .directory_topic(&a, &target("arn:aws:iam::111111111111:user/carol"))
            .is_none());
        cfg.users
            .directory
            .insert("eve".into(), "https://evil.example/hook".into());
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("notify.users.directory.eve"), "{err}");
    }

    #[tokio::test]
    async fn no_address_is_skipped_and_a_bad_tag_fails() {
        let notifier = Notifier::new(NotifyConfig::default(), None);
        let target = Target {
            kind: "principal".into(),
            id: "arn:aws:iam::111111111111:user/carol".into(),
            account_id: None,
            grantee: None,
        };
        let r = notifier.notify_user(&alert(), &target, None, false).await;
        assert_eq!(r.outcome, ActionOutcome::Skipped);
        let tagged = Some((
            "https://evil.example".to_string(),
            "the user's tag".to_string(),
        ));
        let r = notifier.notify_user(&alert(), &target, tagged, false).await;
        assert_eq!(r.outcome, ActionOutcome::Failed, "{}", r.detail);
        let team = Some((
            "arn:aws:sns:us-east-1:111111111111:trailguard-alerts".to_string(),
            "the user's tag".to_string(),
        ));
        let r = notifier.notify_user(&alert(), &target, team, true).await;
        assert_eq!(
            r.outcome,
            ActionOutcome::Failed,
            "a tag never names the team's topic: {}",
            r.detail
        );
        let message = user_message(&alert());
        assert!(message.contains(&alert().evidence.summary) && message.contains("security team"));
    }

    #[test]
    fn e_mail_addresses_and_their_settings() {
        for good in ["dana@example.com", "first.last+tag@mail.example.co.uk"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "dana",
            "@example.com",
            "dana@example",
            "dana@.example.com",
            "a@b.com, c@d.com",
            "Dana <dana@example.com>",
            "=?utf-8?q?x?=@example.com",
            "a%b@example.com",
            "a@b@example.com",
            "arn:aws:sns:us-east-1:111111111111:trailguard-user-dana",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        let mut cfg = NotifyConfig::default();
        cfg.users
            .directory
            .insert("person:dana@example.com".into(), "dana@example.com".into());
        let err = |cfg: &NotifyConfig| {
            cfg.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            err(&cfg).contains("notify.users.email_from"),
            "{}",
            err(&cfg)
        );
        cfg.users.email_from = "trailguard@example.com".into();
        assert!(cfg.validate().is_ok(), "{}", err(&cfg));
        cfg.users.email_domains = vec!["@example.com".into()];
        assert!(err(&cfg).contains("notify.users.email_domains[0]"));
    }

    #[tokio::test]
    async fn an_e_mail_address_from_a_tag_must_be_in_an_allowed_domain() {
        let mut cfg = NotifyConfig::default();
        cfg.users.email_from = "trailguard@example.com".into();
        cfg.users.email_domains = vec!["Example.com".into()];
        let notifier = Notifier::new(cfg, None);
        let target = Target {
            kind: "principal".into(),
            id: "arn:aws:iam::111111111111:user/frank".into(),
            account_id: None,
            grantee: None,
        };
        let by = |address: &str, how: &str| Some((address.to_string(), how.to_string()));
        let r = notifier
            .notify_user(
                &alert(),
                &target,
                by("frank@example.com", "the user's tag"),
                true,
            )
            .await;
        assert_eq!(r.outcome, ActionOutcome::DryRun, "{}", r.detail);
        assert_eq!(r.steps[0].call, "ses:SendEmail");
        let r = notifier
            .notify_user(
                &alert(),
                &target,
                by("frank@evil.example", "the user's tag"),
                true,
            )
            .await;
        assert_eq!(r.outcome, ActionOutcome::Failed, "{}", r.detail);
        assert!(r.detail.contains("email_domains"), "{}", r.detail);
        // The directory is the operators' own: any domain.
        let r = notifier
            .notify_user(
                &alert(),
                &target,
                by("frank@home.example", "the directory entry `frank`"),
                true,
            )
            .await;
        assert_eq!(r.outcome, ActionOutcome::DryRun, "{}", r.detail);
        // Without an SES client nothing is sent, and the record says so.
        let r = notifier
            .notify_user(
                &alert(),
                &target,
                by("frank@example.com", "the user's tag"),
                false,
            )
            .await;
        assert_eq!(r.outcome, ActionOutcome::Failed);
    }

    #[test]
    fn slack_message_has_severity_policy_principal_and_summary_and_no_links() {
        let msg = slack_payload(&alert());
        let text = msg.to_string();
        assert!(msg["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[HIGH] CloudTrail configuration change"));
        assert!(text.contains("root called StopLogging"));
        assert!(!text.contains("http"), "link-free: {text}");
    }

    fn err_of(r: Result<(), Error>) -> String {
        match r {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn channels_validate_naming_the_key() {
        let cfg = NotifyConfig {
            channels: vec![ChannelConfig {
                name: "team".into(),
                kind: ChannelKind::Slack,
                url: None,
                url_env: None,
                topic_arn: None,
                default: true,
            }],
            ..NotifyConfig::default()
        };
        let err = err_of(cfg.validate());
        assert!(err.contains("notify.channels[0].url"), "{err}");
        let mut sns = cfg.clone();
        sns.channels[0].kind = ChannelKind::Sns;
        assert!(err_of(sns.validate()).contains("topic_arn"));
        let mut env = cfg.clone();
        env.channels[0].url_env = Some("TRAILGUARD_TEST_SURELY_UNSET_URL".into());
        assert!(err_of(env.validate()).contains("TRAILGUARD_TEST_SURELY_UNSET_URL"));
        let mut ok = cfg;
        ok.channels[0].url = Some("https://hooks.example.com/x".into());
        assert!(ok.validate().is_ok());
        assert!(!format!("{ok:?}").contains("hooks.example.com"));
    }
}
