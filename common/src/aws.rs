//! AWS access shared by the services: settings and client construction. Every client takes an
//! endpoint override (a local AWS-API server such as moto) and, for S3, path-style addressing.

use aws_config::BehaviorVersion;
use serde::{Deserialize, Serialize};

use crate::Error;

/// How to reach AWS. Credentials come from the standard chain (environment, profile, IRSA,
/// instance role).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region for API calls; default from the environment/profile.
    pub region: Option<String>,
    /// Endpoint override for every service (a local AWS-API server such as moto).
    pub endpoint_url: Option<String>,
    /// Path-style S3 addressing (needed by local servers).
    pub force_path_style: bool,
}

impl AwsConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::config(
                    "aws.endpoint_url",
                    "must start with http:// or https://",
                ));
            }
        }
        Ok(())
    }

    /// The shared SDK configuration (region, endpoint, credential chain).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader.load().await
    }
}

/// A one-line description of an AWS SDK error: `CODE: message`, or the error itself when the
/// service gave no code (a connection failure, a timeout).
pub fn error_text<E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug>(err: &E) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => format!("{err:?}"),
    }
}

/// An S3 client for these settings.
pub async fn s3_client(aws: &AwsConfig) -> aws_sdk_s3::Client {
    let shared = aws.sdk_config().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(aws.force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
