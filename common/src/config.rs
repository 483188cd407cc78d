//! Configuration shared by every service, and the layered loader.
//!
//! Layers, later wins: built-in defaults → TOML file (`--config`) → environment
//! (`TRAILGUARD_<SECTION>__<KEY>`, double underscore between levels, e.g.
//! `TRAILGUARD_KAFKA__PARTITIONS=12`) → command-line flags. Unknown keys are errors, and every
//! error names the key and where its value came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Kafka connection, topics and client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]` (flag `--brokers`, env `TRAILGUARD_BROKERS`).
    pub brokers: String,
    /// Topic names.
    pub topics: Topics,
    /// Create missing topics through the admin API at start-up.
    pub create_topics: bool,
    /// Partitions of topics created at start-up. Partitions bound how many instances of the
    /// consuming service can share the work.
    pub partitions: i32,
    /// Replication factor of topics created at start-up (3 on a production cluster).
    pub replication_factor: i32,
    /// Topic settings that replace or add to the defaults of each topic created at start-up,
    /// by topic (the keys of `kafka.topics`): `[kafka.topic_config.alerts]
    /// "retention.ms" = "7776000000"`. The defaults are in [`TopicRole::settings`] (and
    /// docs/kafka.md): a cleanup policy and retention fitting each topic's role, and
    /// `min.insync.replicas` of 2 from a replication factor of 3.
    #[serde(deserialize_with = "scalar_map_map")]
    pub topic_config: BTreeMap<String, BTreeMap<String, String>>,
    /// Any librdkafka setting, passed through as is: `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanisms" = "SCRAM-SHA-512"`, `"ssl.ca.location"`, ... From the environment,
    /// `TRAILGUARD_KAFKA__CLIENT__SECURITY_PROTOCOL` sets `security.protocol` (underscores
    /// become dots).
    #[serde(deserialize_with = "scalar_map")]
    pub client: BTreeMap<String, String>,
    /// Amazon MSK IAM access control (SASL/OAUTHBEARER with tokens signed by the AWS
    /// credentials of the default chain: IRSA, instance profile, environment, profile).
    pub msk_iam: MskIamConfig,
}

/// Amazon MSK IAM authentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MskIamConfig {
    /// Authenticate to MSK with IAM (brokers on port 9098). Sets `security.protocol =
    /// SASL_SSL` and `sasl.mechanism = OAUTHBEARER` unless `kafka.client` says otherwise.
    pub enabled: bool,
    /// Region of the cluster; default the environment's (`AWS_REGION`, the profile).
    pub region: Option<String>,
}

/// [`scalar_map`] one level down: settings by topic.
fn scalar_map_map<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    struct Settings(#[serde(deserialize_with = "scalar_map")] BTreeMap<String, String>);
    let map = BTreeMap::<String, Settings>::deserialize(de)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A map of settings whose values may be written as strings, numbers or booleans
/// (`"linger.ms" = 5` and `TRAILGUARD_KAFKA__CLIENT__LINGER_MS=5` both work).
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(de)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Text(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Float(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: Topics::default(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            topic_config: BTreeMap::new(),
            client: BTreeMap::new(),
            msk_iam: MskIamConfig::default(),
        }
    }
}

impl KafkaConfig {
    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.brokers.trim().is_empty() {
            return Err(Error::config(
                "kafka.brokers",
                "must name at least one HOST:PORT",
            ));
        }
        for broker in self.brokers.split(',') {
            let ok = broker
                .trim()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::config(
                    "kafka.brokers",
                    format!("`{broker}` is not HOST:PORT"),
                ));
            }
        }
        if self.partitions < 1 {
            return Err(Error::config("kafka.partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(Error::config(
                "kafka.replication_factor",
                "must be at least 1",
            ));
        }
        for (topic, settings) in &self.topic_config {
            if TopicRole::from_key(topic).is_none() {
                return Err(Error::config(
                    &format!("kafka.topic_config.{topic}"),
                    format!(
                        "is not a topic; one of {}",
                        TopicRole::ALL.map(TopicRole::key).join(", ")
                    ),
                ));
            }
            for (key, value) in settings {
                if key.is_empty() || value.is_empty() {
                    return Err(Error::config(
                        &format!("kafka.topic_config.{topic}"),
                        "settings must have a name and a value",
                    ));
                }
            }
        }
        for (key, _) in self.client_settings() {
            let lower = key.to_ascii_lowercase();
            if let Some((_, why)) = RESERVED_CLIENT_SETTINGS.iter().find(|(k, _)| *k == lower) {
                return Err(Error::config(
                    &format!("kafka.client.{lower}"),
                    format!("is set by Trailguard and cannot be changed: {why}"),
                ));
            }
        }
        if self.msk_iam.enabled {
            let mechanism = self
                .client_settings()
                .find(|(k, _)| k == "sasl.mechanism" || k == "sasl.mechanisms")
                .map(|(_, v)| v.to_string());
            if let Some(other) = mechanism.filter(|m| !m.eq_ignore_ascii_case("OAUTHBEARER")) {
                return Err(Error::config(
                    "kafka.client.sasl.mechanism",
                    format!("is {other}, but kafka.msk_iam.enabled needs OAUTHBEARER"),
                ));
            }
        }
        self.topics.validate()
    }

    /// The settings of `role`'s topic when a service creates it: the role's defaults for this
    /// replication factor, then `topic_config`'s for the topic.
    pub fn topic_settings(&self, role: TopicRole) -> BTreeMap<String, String> {
        let mut settings: BTreeMap<String, String> = role
            .settings(self.replication_factor)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if let Some(extra) = self.topic_config.get(role.key()) {
            settings.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        settings
    }

    /// librdkafka settings from `client`, keys normalized (`security_protocol` → `security.protocol`).
    pub fn client_settings(&self) -> impl Iterator<Item = (String, &str)> {
        self.client.iter().map(|(k, v)| {
            let key = if k.contains('.') {
                k.clone()
            } else {
                k.replace('_', ".")
            };
            (key, v.as_str())
        })
    }
}

/// librdkafka settings Trailguard sets itself, which `kafka.client` may not change: each holds
/// up a delivery guarantee, or decides which cluster and group a service joins.
pub const RESERVED_CLIENT_SETTINGS: &[(&str, &str)] = &[
    (
        "enable.idempotence",
        "a retried send must never duplicate or reorder records",
    ),
    (
        "acks",
        "a record counts as sent only once every in-sync replica has it",
    ),
    (
        "request.required.acks",
        "a record counts as sent only once every in-sync replica has it",
    ),
    (
        "enable.auto.offset.store",
        "an offset is committed only after what its record produced is durable",
    ),
    (
        "isolation.level",
        "reading back a topic must reach the end the broker reports",
    ),
    (
        "enable.partition.eof",
        "reading back a topic must know where it ends",
    ),
    (
        "auto.offset.reset",
        "a new group starts at the earliest record, never skipping what is already there",
    ),
    (
        "group.id",
        "each service's group comes from its own group_id setting",
    ),
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("metadata.broker.list", "set kafka.brokers instead"),
    (
        "transactional.id",
        "Trailguard's producers are idempotent, not transactional",
    ),
];

/// What a topic is for, which decides how it is kept. Each service creates the topics of its
/// roles at start-up (unless `kafka.create_topics = false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// `kafka.topics.activities`.
    Activities,
    /// `kafka.topics.dlq`.
    Dlq,
    /// `kafka.topics.alerts`.
    Alerts,
    /// `kafka.topics.alerts_ocsf`.
    AlertsOcsf,
    /// `kafka.topics.actions`.
    Actions,
    /// `kafka.topics.checkpoints`.
    Checkpoints,
    /// `kafka.topics.detect_state`.
    DetectState,
    /// `kafka.topics.detect_facts`.
    DetectFacts,
    /// `kafka.topics.detect_signin_failures`.
    DetectSigninFailures,
    /// `kafka.topics.detect_correlations`.
    DetectCorrelations,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl TopicRole {
    /// Every role.
    pub const ALL: [TopicRole; 10] = [
        TopicRole::Activities,
        TopicRole::Dlq,
        TopicRole::Alerts,
        TopicRole::AlertsOcsf,
        TopicRole::Actions,
        TopicRole::Checkpoints,
        TopicRole::DetectState,
        TopicRole::DetectFacts,
        TopicRole::DetectSigninFailures,
        TopicRole::DetectCorrelations,
    ];

    /// The role's key in `kafka.topics` and `kafka.topic_config`.
    pub fn key(self) -> &'static str {
        match self {
            TopicRole::Activities => "activities",
            TopicRole::Dlq => "dlq",
            TopicRole::Alerts => "alerts",
            TopicRole::AlertsOcsf => "alerts_ocsf",
            TopicRole::Actions => "actions",
            TopicRole::Checkpoints => "checkpoints",
            TopicRole::DetectState => "detect_state",
            TopicRole::DetectFacts => "detect_facts",
            TopicRole::DetectSigninFailures => "detect_signin_failures",
            TopicRole::DetectCorrelations => "detect_correlations",
        }
    }

    /// The role of a `kafka.topics` key.
    pub fn from_key(key: &str) -> Option<TopicRole> {
        TopicRole::ALL.into_iter().find(|role| role.key() == key)
    }

    /// Whether the topic keeps the latest record per key (state, not a stream).
    pub fn compacted(self) -> bool {
        matches!(
            self,
            TopicRole::Checkpoints | TopicRole::DetectState | TopicRole::DetectFacts
        )
    }

    /// The topic's settings when created with `replication_factor` replicas:
    /// - compacted topics (checkpoints, detector state, facts) keep the latest record per key
    ///   for ever; nothing else reads them, so nothing expires;
    /// - activities, the sign-in failures and the correlation matches are kept 7 days: long
    ///   enough to rebuild detector state and to replay a week of traffic after an outage or
    ///   into a new policy;
    /// - dead letters and alerts 30 days: time to notice, fix and re-drive;
    /// - action records, the audit trail of remediation, 365 days;
    /// - `min.insync.replicas` 2 when there are 3 or more replicas (an acknowledged record
    ///   survives the loss of a broker), else 1 (a smaller cluster still takes writes).
    pub fn settings(self, replication_factor: i32) -> Vec<(&'static str, String)> {
        let min_insync = if replication_factor >= 3 { 2 } else { 1 };
        let mut settings = vec![("min.insync.replicas", min_insync.to_string())];
        if self.compacted() {
            settings.push(("cleanup.policy", "compact".into()));
        } else {
            let days = match self {
                TopicRole::Activities
                | TopicRole::DetectSigninFailures
                | TopicRole::DetectCorrelations => 7,
                TopicRole::Dlq | TopicRole::Alerts | TopicRole::AlertsOcsf => 30,
                _ => 365,
            };
            settings.push(("cleanup.policy", "delete".into()));
            settings.push(("retention.ms", (days * DAY_MS).to_string()));
        }
        settings
    }

    /// The topic's name in `topics` (empty for the OCSF alerts when they are off).
    pub fn topic(self, topics: &Topics) -> &str {
        match self {
            TopicRole::Activities => &topics.activities,
            TopicRole::Dlq => &topics.dlq,
            TopicRole::Alerts => &topics.alerts,
            TopicRole::AlertsOcsf => &topics.alerts_ocsf,
            TopicRole::Actions => &topics.actions,
            TopicRole::Checkpoints => &topics.checkpoints,
            TopicRole::DetectState => &topics.detect_state,
            TopicRole::DetectFacts => &topics.detect_facts,
            TopicRole::DetectSigninFailures => &topics.detect_signin_failures,
            TopicRole::DetectCorrelations => &topics.detect_correlations,
        }
    }
}

/// Topic names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Normalized activities, keyed by principal.
    pub activities: String,
    /// Inputs that could not be processed, with the reason in headers.
    pub dlq: String,
    /// Alerts, keyed by entity.
    pub alerts: String,
    /// Action records (the audit trail of remediation), keyed by alert id.
    pub actions: String,
    /// Where each ingest source left off (compacted), keyed by source.
    pub checkpoints: String,
    /// detect's per-principal baselines (compacted changelog; partition N holds the state of
    /// the activities topic's partition N), keyed by principal.
    pub detect_state: String,
    /// detect's organization-wide facts (compacted; read whole by every instance), keyed by
    /// fact.
    pub detect_facts: String,
    /// Failed console sign-ins again, keyed by source IP, so one instance counts all of an
    /// address's failures (a password spray) whatever partitions its targets' activities are on.
    pub detect_signin_failures: String,
    /// Activities that matched a rule of a Sigma correlation, keyed by correlation and group,
    /// so one instance counts a group's matches whatever partitions its activities are on.
    pub detect_correlations: String,
    /// Alerts again as OCSF Detection Findings (class 2004), keyed by entity; empty: off.
    pub alerts_ocsf: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            activities: "trailguard.activities".into(),
            dlq: "trailguard.activities.dlq".into(),
            alerts: "trailguard.alerts".into(),
            actions: "trailguard.actions".into(),
            checkpoints: "trailguard.ingest.checkpoints".into(),
            detect_state: "trailguard.detect.state".into(),
            detect_facts: "trailguard.detect.facts".into(),
            detect_signin_failures: "trailguard.detect.signin-failures".into(),
            detect_correlations: "trailguard.detect.correlations".into(),
            alerts_ocsf: String::new(),
        }
    }
}

impl Topics {
    fn validate(&self) -> Result<(), Error> {
        for (key, name) in [
            ("kafka.topics.activities", &self.activities),
            ("kafka.topics.dlq", &self.dlq),
            ("kafka.topics.alerts", &self.alerts),
            ("kafka.topics.detect_state", &self.detect_state),
            ("kafka.topics.detect_facts", &self.detect_facts),
            (
                "kafka.topics.detect_signin_failures",
                &self.detect_signin_failures,
            ),
            (
                "kafka.topics.detect_correlations",
                &self.detect_correlations,
            ),
            ("kafka.topics.actions", &self.actions),
            ("kafka.topics.checkpoints", &self.checkpoints),
            ("kafka.topics.alerts_ocsf", &self.alerts_ocsf),
        ] {
            if key == "kafka.topics.alerts_ocsf" && name.is_empty() {
                continue;
            }
            let valid = !name.is_empty()
                && name.len() <= 249
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(Error::config(
                    key,
                    format!("`{name}` is not a valid topic name (1-249 of [a-zA-Z0-9._-])"),
                ));
            }
        }
        Ok(())
    }
}

/// The admin HTTP endpoint: `/metrics` and `/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on; port 0 picks a free port (logged at start-up).
    pub listen: SocketAddr,
}

impl AdminConfig {
    /// Default admin endpoint for a service.
    pub fn on_port(port: u16) -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig::on_port(0)
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (pretty in a terminal, JSON otherwise), `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,trailguard_detect=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Every top-level configuration section of every Trailguard service.
pub const ALL_SECTIONS: &[&str] = &[
    "kafka",
    "admin",
    "log",
    "publish",
    "detect",
    "policies",
    "aws",
    "remediate",
    "files",
    "s3",
    "sqs",
    "lookup",
    "inventory",
    "geo",
    "intel",
    "signing",
    "notify",
];

const CLIENT_PREFIX: &str = "kafka__client__";

/// librdkafka settings from `TRAILGUARD_KAFKA__CLIENT__*`, taken as the exact text of the
/// variable (a password like `0123` must not become the number 123).
fn client_settings_from_env() -> serde_json::Value {
    let client: serde_json::Map<String, serde_json::Value> = std::env::vars()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("TRAILGUARD_")?.to_ascii_lowercase();
            let setting = key.strip_prefix(CLIENT_PREFIX)?.to_string();
            Some((setting, serde_json::Value::String(value)))
        })
        .collect();
    if client.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "kafka": { "client": client } })
    }
}

/// Signing keys from `TRAILGUARD_SIGNING__KEY` and `TRAILGUARD_SIGNING__KEYS__<ID>`, taken as
/// the exact text of the variable (a key of digits must stay a string). Only for services that
/// have a `signing` section.
fn signing_keys_from_env(own: &[String]) -> serde_json::Value {
    if !own.iter().any(|s| s == "signing") {
        return serde_json::json!({});
    }
    let mut signing = serde_json::Map::new();
    let mut keys = serde_json::Map::new();
    for (name, value) in std::env::vars() {
        let Some(key) = name.strip_prefix("TRAILGUARD_") else {
            continue;
        };
        let lower = key.to_ascii_lowercase();
        if lower == "signing__key" {
            signing.insert("key".into(), serde_json::Value::String(value));
        } else if let Some(id) = lower.strip_prefix("signing__keys__") {
            keys.insert(id.to_string(), serde_json::Value::String(value));
        }
    }
    if !keys.is_empty() {
        signing.insert("keys".into(), serde_json::Value::Object(keys));
    }
    if signing.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "signing": signing })
    }
}

/// Sections of a service's configuration the shared loader does not know (it must know them
/// all, so the environment of another service never trips it and a typo always does). Each
/// service's tests assert this is empty.
pub fn unknown_sections(defaults: &impl Serialize) -> Vec<String> {
    sections(defaults)
        .into_iter()
        .filter(|s| !ALL_SECTIONS.contains(&s.as_str()))
        .collect()
}

/// A configuration as JSON with every secret replaced by `"<redacted>"`, for `--check-config`:
/// values of keys named `key`, `keys`, `url` (webhook URLs carry their tokens) or containing
/// `secret`, `password`, `passwd`, `token`, `pem`, `credential`, `private` or `external_id`;
/// under `kafka.client` (librdkafka settings) also every key naming a key, OAuth, JAAS or
/// Kerberos setting (`ssl.key.pem`, `ssl.keystore.password`, `sasl.oauthbearer.config`,
/// `sasl.kerberos.keytab`…), in dotted or env (`ssl_key_pem`) form.
pub fn redacted(cfg: &impl Serialize) -> serde_json::Value {
    fn secret(name: &str, in_client: bool) -> bool {
        let name = name.to_ascii_lowercase().replace('_', ".");
        matches!(name.as_str(), "key" | "keys" | "url")
            || [
                "secret",
                "password",
                "passwd",
                "token",
                "pem",
                "credential",
                "private",
                "external.id",
            ]
            .iter()
            .any(|s| name.contains(s))
            || (in_client
                && ["key", "oauth", "jaas", "kerberos"]
                    .iter()
                    .any(|s| name.contains(s)))
    }
    fn walk(value: &mut serde_json::Value, in_client: bool) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, v) in map.iter_mut() {
                    if secret(name, in_client) && !v.is_null() {
                        *v = serde_json::Value::from("<redacted>");
                    } else {
                        walk(v, in_client || name == "client");
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, in_client)),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(cfg).unwrap_or_default();
    walk(&mut value, false);
    value
}

/// Prints [`redacted`] `cfg` on stdout (a closed pipe, as with `| head`, is not an error).
pub fn print_redacted(cfg: &impl Serialize) -> std::io::Result<()> {
    use std::io::Write;
    let text = format!("{:#}\n", redacted(cfg));
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The top-level sections of a configuration structure.
pub fn sections(defaults: &impl Serialize) -> Vec<String> {
    match serde_json::to_value(defaults) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Loads a service's configuration: `defaults` → `file` → `TRAILGUARD_*__*` env → `overrides`
/// (the flags, as a partial structure with only the keys the user set).
pub fn load<T>(defaults: &T, file: Option<&Path>, overrides: &impl Serialize) -> Result<T, Error>
where
    T: Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(Error::config(
                "--config",
                format!("{} does not exist or is not a file", path.display()),
            ));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only variables with a `__` are configuration keys, so TRAILGUARD_BROKERS (a flag's env)
    // and the scripts' own TRAILGUARD_* variables never collide with them. One environment is
    // often shared by all three services: sections of another service are left to it, and a
    // section no service has is an error (a typo would otherwise go unnoticed).
    let own = sections(defaults);
    let own_sections = own.clone();
    for (name, _) in std::env::vars() {
        let Some(key) = name
            .strip_prefix("TRAILGUARD_")
            .filter(|k| k.contains("__"))
        else {
            continue;
        };
        let section = key
            .split("__")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !ALL_SECTIONS.contains(&section.as_str()) {
            return Err(Error::config(
                &section,
                format!("unknown configuration section in environment variable {name}"),
            ));
        }
    }
    figment = figment
        .merge(
            Env::prefixed("TRAILGUARD_")
                .filter(move |key| {
                    let key = key.as_str().to_ascii_lowercase();
                    !key.starts_with(CLIENT_PREFIX)
                        && key != "signing__key"
                        && !key.starts_with("signing__keys__")
                        && key
                            .split_once("__")
                            .is_some_and(|(section, _)| own.iter().any(|s| s == section))
                })
                .split("__"),
        )
        .merge(Serialized::defaults(client_settings_from_env()))
        .merge(Serialized::defaults(signing_keys_from_env(&own_sections)))
        .merge(Serialized::defaults(overrides));
    figment.extract().map_err(|err| Error::Config {
        key: err
            .path
            .iter()
            .filter(|p| p.as_str() != "default")
            .cloned()
            .collect::<Vec<_>>()
            .join("."),
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        kafka: KafkaConfig,
        log: LogConfig,
    }

    #[test]
    fn client_settings_cannot_weaken_delivery() {
        // Written as users would: dotted in TOML, underscored from the environment, upper case.
        for (written, named) in [
            ("enable.idempotence", "kafka.client.enable.idempotence"),
            ("acks", "kafka.client.acks"),
            (
                "request_required_acks",
                "kafka.client.request.required.acks",
            ),
            (
                "enable_auto_offset_store",
                "kafka.client.enable.auto.offset.store",
            ),
            ("isolation.level", "kafka.client.isolation.level"),
            ("auto.offset.reset", "kafka.client.auto.offset.reset"),
            ("ENABLE.PARTITION.EOF", "kafka.client.enable.partition.eof"),
            ("group.id", "kafka.client.group.id"),
            ("bootstrap.servers", "kafka.client.bootstrap.servers"),
            ("transactional.id", "kafka.client.transactional.id"),
        ] {
            let mut cfg = KafkaConfig::default();
            cfg.client.insert(written.into(), "x".into());
            match cfg.validate() {
                Err(Error::Config { key, .. }) => assert_eq!(key, named, "{written}"),
                other => panic!("{written}: {other:?}"),
            }
        }
        // Tuning stays the user's.
        let mut cfg = KafkaConfig::default();
        for key in [
            "linger.ms",
            "compression_type",
            "session.timeout.ms",
            "security.protocol",
        ] {
            cfg.client.insert(key.into(), "1".into());
        }
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn layers_file_then_flags() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::config("test", e.to_string()))?;
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"a:1\"\npartitions = 3\n[kafka.client]\n\"security.protocol\" = \"SSL\"\n",
        )
        .map_err(|e| Error::config("test", e.to_string()))?;
        let flags = json!({"kafka": {"brokers": "b:2", "client": {"linger.ms": 5, "enable.idempotence": true}}});
        let cfg: Demo = load(&Demo::default(), Some(&path), &flags)?;
        assert_eq!(
            cfg.kafka.client.get("linger.ms").map(String::as_str),
            Some("5")
        );
        assert_eq!(
            cfg.kafka
                .client
                .get("enable.idempotence")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(cfg.kafka.brokers, "b:2");
        assert_eq!(cfg.kafka.partitions, 3);
        assert_eq!(
            cfg.kafka
                .client
                .get("security.protocol")
                .map(String::as_str),
            Some("SSL")
        );
        Ok(())
    }

    #[test]
    fn unknown_key_is_named() {
        let flags = json!({"kafka": {"brokerz": "b:2"}});
        let err = load(&Demo::default(), None, &flags)
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("brokerz"), "{err}");
    }

    #[test]
    fn bad_brokers_named() {
        let cfg = KafkaConfig {
            brokers: "localhost".into(),
            ..KafkaConfig::default()
        };
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("kafka.brokers"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_any_form() {
        #[derive(Serialize)]
        struct WithAws {
            kafka: KafkaConfig,
            aws: crate::aws::AwsConfig,
        }
        let mut cfg = WithAws {
            kafka: KafkaConfig::default(),
            aws: crate::aws::AwsConfig {
                external_id: Some("org-external-id".into()),
                endpoint_url: Some("http://127.0.0.1:5000".into()),
                ..Default::default()
            },
        };
        for (k, v) in [
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("ssl_key_pem", "-----BEGIN PRIVATE KEY----- env"),
            ("ssl.key.password", "pw"),
            ("ssl.keystore.password", "pw2"),
            ("sasl.oauthbearer.config", "clientSecret=abc"),
            ("sasl.oauthbearer.client.secret", "abc2"),
            ("sasl.password", "scram"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
        ] {
            cfg.kafka.client.insert(k.into(), v.into());
        }
        let text = redacted(&cfg).to_string();
        for secret in [
            "BEGIN PRIVATE",
            "pw",
            "clientSecret",
            "abc2",
            "scram",
            "org-external-id",
        ] {
            assert!(!text.contains(secret), "{secret} printed: {text}");
        }
        for kept in ["SASL_SSL", "SCRAM-SHA-512", "http://127.0.0.1:5000"] {
            assert!(text.contains(kept), "{kept} hidden: {text}");
        }
    }

    #[test]
    fn client_keys_accept_env_style() {
        let mut cfg = KafkaConfig::default();
        cfg.client.insert("security_protocol".into(), "SSL".into());
        let settings: Vec<_> = cfg.client_settings().collect();
        assert_eq!(settings, vec![("security.protocol".to_string(), "SSL")]);
    }
}
