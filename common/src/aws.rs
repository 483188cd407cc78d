//! AWS access shared by the services: settings and client construction. Every client takes an
//! endpoint override (a local AWS-API server such as moto) and, for S3, path-style addressing.

use aws_config::BehaviorVersion;
use serde::{Deserialize, Serialize};

use crate::Error;

/// How to reach AWS. Credentials come from the standard chain (environment, profile, IRSA,
/// instance role).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region for API calls; default from the environment/profile.
    pub region: Option<String>,
    /// Endpoint override for every service (a local AWS-API server such as moto).
    pub endpoint_url: Option<String>,
    /// Path-style S3 addressing (needed by local servers).
    pub force_path_style: bool,
    /// Accounts to read through an assumed role (needs `role_arn_template`). Empty, and
    /// without `organization_accounts`, means the credentials' own account only.
    pub accounts: Vec<String>,
    /// Also read every ACTIVE account of the AWS Organization (organizations:ListAccounts;
    /// the credentials must be the management account's or a delegated administrator's).
    pub organization_accounts: bool,
    /// Role to assume in each account, with `{account}` standing for the account id, e.g.
    /// `arn:aws:iam::{account}:role/TrailguardReader`.
    pub role_arn_template: Option<String>,
    /// External id the roles require, if any.
    pub external_id: Option<String>,
    /// Session name of the assumed roles (shows in the accounts' own CloudTrail);
    /// default `trailguard`.
    pub session_name: Option<String>,
    /// Endpoint overrides per service, over `endpoint_url` (e.g. a local S3 server beside real
    /// SQS): any of [`ENDPOINT_SERVICES`].
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// Longest wait for the first byte of an AWS response. Without one, a call on a connection
    /// that has gone silent (a dropped NAT mapping, a partition that drops packets) waits for
    /// ever; with it, the attempt fails and is retried. Longer than an SQS long poll (`ingest
    /// sqs` checks it against `sqs.wait_time`); bodies streamed after the first byte are
    /// guarded by the SDK's stalled-stream protection instead.
    #[serde(with = "humantime_serde")]
    pub read_timeout: std::time::Duration,
}

/// The default [`AwsConfig::read_timeout`].
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: None,
            endpoint_url: None,
            force_path_style: false,
            accounts: Vec::new(),
            organization_accounts: false,
            role_arn_template: None,
            external_id: None,
            session_name: None,
            endpoints: std::collections::BTreeMap::new(),
            read_timeout: READ_TIMEOUT,
        }
    }
}

/// The services whose endpoint `aws.endpoints` can override: every client Trailguard makes.
pub const ENDPOINT_SERVICES: &[&str] = &[
    "account",
    "cloudtrail",
    "ec2",
    "iam",
    "organizations",
    "rds",
    "s3",
    "s3control",
    "ses",
    "sns",
    "sqs",
    "sts",
];

/// One account to read: its id (none for the credentials' own account) and the SDK
/// configuration whose credentials act in it.
#[derive(Debug, Clone)]
pub struct Account {
    /// The account id; `None` for the credentials' own account.
    pub id: Option<String>,
    /// Configuration with the account's credentials.
    pub sdk: aws_config::SdkConfig,
}

impl Account {
    /// The account id, or `self` for the credentials' own account (labels, checkpoint keys).
    pub fn label(&self) -> &str {
        self.id.as_deref().unwrap_or("self")
    }
}

impl AwsConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), Error> {
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(900))
            .contains(&self.read_timeout)
        {
            return Err(Error::config(
                "aws.read_timeout",
                "must be between 1s and 15m",
            ));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::config(
                    "aws.endpoint_url",
                    "must start with http:// or https://",
                ));
            }
        }
        for (service, url) in &self.endpoints {
            if !ENDPOINT_SERVICES.contains(&service.as_str()) {
                return Err(Error::config(
                    &format!("aws.endpoints.{service}"),
                    format!(
                        "per-service endpoints exist for {}",
                        ENDPOINT_SERVICES.join(", ")
                    ),
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::config(
                    &format!("aws.endpoints.{service}"),
                    "must start with http:// or https://",
                ));
            }
        }
        if let Some(bad) = self.accounts.iter().find(|a| !is_account_id(a)) {
            return Err(Error::config(
                "aws.accounts",
                format!("`{bad}` is not a 12-digit account id"),
            ));
        }
        match &self.role_arn_template {
            Some(t) if !(t.starts_with("arn:") && t.contains("{account}")) => Err(Error::config(
                "aws.role_arn_template",
                "must be a role ARN containing `{account}`, e.g. arn:aws:iam::{account}:role/TrailguardReader",
            )),
            None if !self.accounts.is_empty() || self.organization_accounts => Err(Error::config(
                "aws.role_arn_template",
                "is required when aws.accounts or aws.organization_accounts is set",
            )),
            _ => Ok(()),
        }
    }

    /// The role ARN for `account` (pure).
    pub fn role_arn(&self, account: &str) -> Option<String> {
        self.role_arn_template
            .as_ref()
            .map(|t| t.replace("{account}", account))
    }

    /// The accounts to read: the configured ones and, when asked, the organization's active
    /// ones, each with credentials from assuming the role there; or the credentials' own
    /// account alone. Roles are assumed lazily: a role that cannot be assumed shows as an
    /// error on that account's first call, not here.
    pub async fn accounts(&self) -> Result<Vec<Account>, Error> {
        let base = self.sdk_config().await;
        if self.role_arn_template.is_none() {
            return Ok(vec![Account {
                id: None,
                sdk: base,
            }]);
        }
        let mut ids = self.accounts.clone();
        if self.organization_accounts {
            let client = aws_sdk_organizations::Client::from_conf(
                crate::sdk_config!(aws_sdk_organizations, self, &base, "organizations").build(),
            );
            let mut pages = client.list_accounts().into_paginator().send();
            while let Some(page) = pages.next().await {
                let page =
                    page.map_err(|e| Error::Aws(CallError::of("organizations:ListAccounts", &e)))?;
                for account in page.accounts() {
                    let active = account.status().map(|s| s.as_str()) == Some("ACTIVE")
                        || account.state().map(|s| s.as_str()) == Some("ACTIVE");
                    if let Some(id) = account.id().filter(|_| active) {
                        ids.push(id.to_string());
                    }
                }
            }
        }
        ids.sort();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(arn) = self.role_arn(&id) else {
                continue;
            };
            let sdk = self.assuming(&base, arn).await;
            out.push(Account { id: Some(id), sdk });
        }
        Ok(out)
    }

    /// `base` acting as the role `arn` (assumed lazily, cached and refreshed by the provider).
    async fn assuming(&self, base: &aws_config::SdkConfig, arn: String) -> aws_config::SdkConfig {
        let mut builder = aws_config::sts::AssumeRoleProvider::builder(arn)
            .session_name(self.session_name.as_deref().unwrap_or("trailguard"))
            .configure(base);
        if let Some(external) = &self.external_id {
            builder = builder.external_id(external);
        }
        let provider = builder.build().await;
        base.to_builder()
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(provider))
            .build()
    }

    /// The SDK configuration that acts in `account` through the role assumed there, when a
    /// `role_arn_template` is set and `aws.accounts` (when not empty) lists the account. `None`
    /// otherwise: the caller must never fall back to the base credentials, which act in their
    /// own account (where IAM names resolve to someone else).
    pub async fn sdk_config_in(&self, account: &str) -> Option<aws_config::SdkConfig> {
        if !is_account_id(account)
            || (!self.accounts.is_empty() && !self.accounts.iter().any(|a| a == account))
        {
            return None;
        }
        let arn = self.role_arn(account)?;
        let base = self.sdk_config().await;
        Some(self.assuming(&base, arn).await)
    }

    /// The shared SDK configuration (region, endpoint, credential chain).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                // The SDK's default, kept: a connection not made in 3.1 s is retried.
                .connect_timeout(std::time::Duration::from_millis(3100))
                .read_timeout(self.read_timeout)
                .build(),
        );
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader.load().await
    }
}

/// What an AWS SDK error says: `CODE: message`, or the error itself when the service gave no
/// code (a connection failure, a timeout).
fn describe<E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug>(err: &E) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => format!("{err:?}"),
    }
}

/// Error codes AWS services answer with when trying again later may succeed: throttling,
/// timeouts, a service briefly unavailable, a concurrent change. Codes, not message text.
pub const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ServiceFailure",
    "ConcurrentModification",
    "ConcurrentModificationException",
    "OperationAborted",
    "IDPCommunicationError",
];

/// A failed AWS call, or a failure on the way to one: which call (service and operation), the
/// service's error code, what it said, and whether trying again later may succeed (by the code,
/// the HTTP status or the kind of failure — a timeout, a connection error — never by matching
/// the text). Displayed as `service:Operation: CODE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// `service:Operation` (`iam:PutUserPolicy`), or what failed on the way to a call.
    pub call: String,
    /// The service's error code, when it answered with one.
    pub code: Option<String>,
    /// `CODE: message` as the service said it, or the client's error; with any notes.
    pub message: String,
    /// Trying again later may succeed.
    pub retryable: bool,
}

impl CallError {
    /// Describes the SDK error of `call` (`iam:PutUserPolicy`).
    pub fn of<E>(
        call: &str,
        err: &aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> CallError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_s3::error::ProvideErrorMetadata as _;
        use aws_smithy_runtime_api::client::result::SdkError;
        let code = err.code().map(str::to_string);
        let retryable = match err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                status >= 500
                    || status == 429
                    || code
                        .as_deref()
                        .is_some_and(|c| RETRYABLE_CODES.contains(&c))
            }
            // Never reached the service or no answer: a timeout, a refused or broken connection,
            // credentials (an assumed role) that could not be had just now, an unreadable answer.
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            // The request could not even be built: the same request fails again.
            _ => false,
        };
        CallError {
            call: call.to_string(),
            code,
            message: describe(err),
            retryable,
        }
    }

    /// A failure of `call` that trying again cannot mend.
    pub fn permanent(call: &str, message: impl Into<String>) -> CallError {
        CallError {
            call: call.to_string(),
            code: None,
            message: message.into(),
            retryable: false,
        }
    }

    /// The service: `iam` of `iam:PutUserPolicy`.
    pub fn service(&self) -> &str {
        self.call.split_once(':').map_or("", |(service, _)| service)
    }

    /// The operation: `PutUserPolicy` of `iam:PutUserPolicy`.
    pub fn operation(&self) -> &str {
        self.call
            .split_once(':')
            .map_or(self.call.as_str(), |(_, operation)| operation)
    }

    /// The same failure, with `note` added to what it says.
    pub fn noting(mut self, note: &str) -> CallError {
        self.message.push_str(note);
        self
    }

    /// Whether the service answered with `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.message)
    }
}

impl std::error::Error for CallError {}

pub use crate::contract::is_account_id;

/// The configuration builder of an SDK client, the one way every AWS client is made: `sdk`'s
/// credentials and region, every call counted and timed ([`crate::aws_calls::CallRecorder`]),
/// and the endpoint of `aws.endpoints[key]` when one is set (a local server in tests). The
/// caller adds what is particular to it (a region, path-style addressing, retries) and builds:
///
/// ```ignore
/// let iam = aws_sdk_iam::Client::from_conf(sdk_config!(aws_sdk_iam, aws, &sdk, "iam").build());
/// ```
///
/// A macro, not a function: each SDK crate has its own builder type and no trait they share.
#[macro_export]
macro_rules! sdk_config {
    ($service:ident, $aws:expr, $sdk:expr, $key:expr) => {{
        let builder =
            $service::config::Builder::from($sdk).interceptor($crate::aws_calls::CallRecorder);
        match $aws.endpoints.get($key) {
            Some(url) => builder.endpoint_url(url),
            None => builder,
        }
    }};
}

/// An S3 client for these settings.
pub async fn s3_client(aws: &AwsConfig) -> aws_sdk_s3::Client {
    let shared = aws.sdk_config().await;
    s3_client_for(aws, &shared, None)
}

/// An SQS client for these settings.
pub async fn sqs_client(aws: &AwsConfig) -> aws_sdk_sqs::Client {
    let shared = aws.sdk_config().await;
    aws_sdk_sqs::Client::from_conf(crate::sdk_config!(aws_sdk_sqs, aws, &shared, "sqs").build())
}

/// An S3 client acting with `sdk`'s credentials, in `region` when given.
pub fn s3_client_for(
    aws: &AwsConfig,
    sdk: &aws_config::SdkConfig,
    region: Option<&str>,
) -> aws_sdk_s3::Client {
    let mut config =
        crate::sdk_config!(aws_sdk_s3, aws, sdk, "s3").force_path_style(aws.force_path_style);
    if let Some(region) = region {
        config = config.region(aws_config::Region::new(region.to_string()));
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// An S3 interceptor that sends `x-amz-expected-bucket-owner` with every request: S3 then
/// refuses (403) any call on a bucket another account owns, so a client meant for one account
/// cannot act on a same-named bucket elsewhere (a bucket deleted and re-created by someone
/// else, or an alert naming the wrong account).
#[derive(Debug, Clone)]
pub struct ExpectedBucketOwner(pub String);

impl aws_smithy_runtime_api::client::interceptors::Intercept for ExpectedBucketOwner {
    fn name(&self) -> &'static str {
        "TrailguardExpectedBucketOwner"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let headers = context.request_mut().headers_mut();
        if !headers.contains_key("x-amz-expected-bucket-owner") {
            headers.insert("x-amz-expected-bucket-owner", self.0.clone());
        }
        Ok(())
    }
}

/// An S3 client acting with `sdk`'s credentials on buckets `owner` owns only (see
/// [`ExpectedBucketOwner`]).
pub fn s3_client_owned_by(
    aws: &AwsConfig,
    sdk: &aws_config::SdkConfig,
    owner: &str,
) -> aws_sdk_s3::Client {
    let config = crate::sdk_config!(aws_sdk_s3, aws, sdk, "s3")
        .force_path_style(aws.force_path_style)
        .interceptor(ExpectedBucketOwner(owner.to_string()));
    aws_sdk_s3::Client::from_conf(config.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client waits at most `aws.read_timeout` for a response's first byte (a silent
    /// connection fails and is retried instead of hanging); the setting is bounded.
    #[tokio::test]
    async fn clients_read_with_the_configured_timeout() {
        let cfg = AwsConfig {
            region: Some("us-east-1".into()),
            read_timeout: std::time::Duration::from_secs(7),
            ..AwsConfig::default()
        };
        let sdk = cfg.sdk_config().await;
        let timeouts = sdk.timeout_config();
        assert_eq!(
            timeouts.and_then(|t| t.read_timeout()),
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            timeouts.and_then(|t| t.connect_timeout()),
            Some(std::time::Duration::from_millis(3100))
        );
        assert_eq!(AwsConfig::default().read_timeout, READ_TIMEOUT);
        for (secs, ok) in [(0, false), (1, true), (60, true), (900, true), (901, false)] {
            let cfg = AwsConfig {
                read_timeout: std::time::Duration::from_secs(secs),
                ..AwsConfig::default()
            };
            let result = cfg.validate();
            assert_eq!(result.is_ok(), ok, "{secs}s");
            if let Err(e) = result {
                assert!(e.to_string().contains("aws.read_timeout"), "{e}");
            }
        }
    }

    /// A call error names its service and operation apart and reads as one line.
    #[test]
    fn call_errors_are_typed() {
        let throttled = CallError {
            call: "cloudtrail:LookupEvents".into(),
            code: Some("ThrottlingException".into()),
            message: "ThrottlingException: Rate exceeded".into(),
            retryable: true,
        };
        assert_eq!(throttled.service(), "cloudtrail");
        assert_eq!(throttled.operation(), "LookupEvents");
        assert!(throttled.is("ThrottlingException"));
        assert_eq!(
            throttled.to_string(),
            "cloudtrail:LookupEvents: ThrottlingException: Rate exceeded"
        );
        let denied = CallError::permanent("s3:GetObject", "AccessDenied").noting(" (s3://b/k)");
        assert_eq!(denied.to_string(), "s3:GetObject: AccessDenied (s3://b/k)");
        assert!(!denied.retryable);
        assert_eq!(CallError::permanent("reading", "x").service(), "");
    }

    /// Every client's endpoint can be overridden (remediate's IAM, STS and SNS clients read
    /// theirs, which validation used to refuse), and only those.
    #[test]
    fn every_client_endpoint_can_be_overridden() {
        for service in ENDPOINT_SERVICES {
            let mut aws = AwsConfig::default();
            aws.endpoints
                .insert(service.to_string(), "http://127.0.0.1:1".into());
            assert!(aws.validate().is_ok(), "{service}");
        }
        let mut aws = AwsConfig::default();
        aws.endpoints
            .insert("lambda".into(), "http://127.0.0.1:1".into());
        assert!(aws.validate().is_err());
    }

    #[test]
    fn accounts_need_a_role_template_with_the_account() {
        let mut cfg = AwsConfig {
            accounts: vec!["111122223333".into()],
            ..AwsConfig::default()
        };
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("aws.role_arn_template"), "{err}");
        cfg.role_arn_template = Some("arn:aws:iam::111122223333:role/Fixed".into());
        assert!(cfg.validate().is_err());
        cfg.role_arn_template = Some("arn:aws:iam::{account}:role/TrailguardReader".into());
        assert!(cfg.validate().is_ok());
        assert_eq!(
            cfg.role_arn("444455556666").as_deref(),
            Some("arn:aws:iam::444455556666:role/TrailguardReader")
        );
        cfg.accounts.push("12345".into());
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("aws.accounts") && err.contains("12345"),
            "{err}"
        );
    }
}
