//! The `ingest` command line: each source's subcommand and flags, and the configuration
//! overlay they make (applied over defaults, the file and the environment).

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::service::SummaryFormat;

/// What to read: a source, or the inventory.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Publish CloudTrail log files ({"Records": [...]}), .json.gz, NDJSON, directory trees
    /// (files named *.json, *.json.gz, *.jsonl, *.ndjson, *.gz) or stdin (`-` or no path).
    /// Exits 0 once every record is durably published (or dead-lettered).
    Files {
        /// Files or directories; `-` or nothing reads stdin.
        paths: Vec<String>,
        /// Summary format printed on stdout at the end.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address while running.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// No progress display (it shows only when stderr is a terminal).
        #[arg(long)]
        no_progress: bool,
    },
    /// Publish events from CloudTrail's LookupEvents API, per region: a backfill on the first
    /// run (`lookup.backfill`, 7 days), then polls from the checkpoint minus an overlap window,
    /// at most 2 requests per second per region.
    Lookup {
        #[command(flatten)]
        args: LookupArgs,
        /// Summary format printed on stdout after each poll.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address (default: `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Publish the trail log files named by notifications on an SQS queue (S3 event
    /// notifications, CloudTrail's SNS notifications, EventBridge), deleting each message only
    /// once all its records are durable. Many instances can share one queue.
    Sqs {
        #[command(flatten)]
        args: SqsArgs,
        /// Summary format printed on stdout at the end.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address (default: `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Take the posture inventory: every bucket of every account (ListBuckets, GetBucketAcl,
    /// GetBucketPolicy, GetBucketPolicyStatus, GetPublicAccessBlock, and the account's
    /// public-access block), one `BucketSnapshot` activity per bucket, so buckets that were
    /// public before Trailguard started are caught too; and each account's trails (ListTrails,
    /// GetTrail, GetTrailStatus, GetEventSelectors), one `TrailSnapshot` activity per account,
    /// so an account CloudTrail does not record is caught. Accounts: `aws.accounts` /
    /// `aws.organization_accounts` with `aws.role_arn_template`, else the credentials' own.
    Inventory {
        /// Account to read through the assumed role (repeatable; adds to `aws.accounts`).
        #[arg(long = "account")]
        accounts: Vec<String>,
        /// Role to assume in each account, `{account}` standing for its id.
        #[arg(long)]
        role_arn_template: Option<String>,
        /// AWS endpoint override (a local AWS-API server); implies path-style addressing.
        #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
        aws_endpoint: Option<String>,
        /// Summary format printed on stdout at the end.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
    },
    /// Publish trail log files from an S3 bucket (account and organization layouts), resuming
    /// each (account, region) from its checkpoint. Polls every `s3.poll_interval` unless `--once`.
    S3 {
        #[command(flatten)]
        args: S3Args,
        /// Summary format printed on stdout after each listing.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address (default: `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
}

/// Flags of the command of the same name.
#[derive(clap::Args, Debug)]
pub struct S3Args {
    /// Bucket the trail writes to.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Key prefix the trail was configured with (before `AWSLogs/`), ending in `/`.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only this account (repeatable).
    #[arg(long = "account")]
    pub accounts: Vec<String>,
    /// Only this region (repeatable).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Skip days before this one (YYYY-MM-DD) on a stream's first listing.
    #[arg(long)]
    pub start_date: Option<String>,
    /// List once, publish what is new, and exit (for backfills and cron); otherwise poll.
    #[arg(long)]
    pub once: bool,
    /// AWS endpoint override (a local AWS-API server); implies path-style addressing.
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
}

/// Flags of the command of the same name.
#[derive(clap::Args, Debug)]
pub struct LookupArgs {
    /// Region to read (repeatable).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Poll once (the backfill on a first run) and exit; otherwise poll until stopped.
    #[arg(long)]
    pub once: bool,
    /// AWS endpoint override (a local server).
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
}

/// Flags of the command of the same name.
#[derive(clap::Args, Debug)]
pub struct SqsArgs {
    /// URL of the queue that receives the trail's S3 or SNS notifications.
    #[arg(long)]
    pub queue_url: Option<String>,
    /// Handle what is in the queue now and exit; otherwise run until stopped.
    #[arg(long)]
    pub once: bool,
    /// AWS endpoint override (a local AWS-API server); implies path-style S3 addressing.
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
}

impl Command {
    /// Adds what this command's flags set to the configuration overlay `flags`.
    pub fn overlay(&self, flags: &mut Value) {
        match self {
            Command::Files {
                admin_listen: Some(addr),
                ..
            }
            | Command::S3 {
                admin_listen: Some(addr),
                ..
            }
            | Command::Sqs {
                admin_listen: Some(addr),
                ..
            }
            | Command::Lookup {
                admin_listen: Some(addr),
                ..
            } => {
                flags["admin"] = json!({ "listen": addr.to_string() });
            }
            _ => {}
        }
        if let Command::Inventory {
            accounts,
            role_arn_template,
            aws_endpoint,
            ..
        } = self
        {
            let mut aws = json!({});
            if !accounts.is_empty() {
                aws["accounts"] = json!(accounts);
            }
            if let Some(template) = role_arn_template {
                aws["role_arn_template"] = json!(template);
            }
            if let Some(endpoint) = aws_endpoint {
                aws["endpoint_url"] = json!(endpoint);
                aws["force_path_style"] = json!(true);
            }
            flags["aws"] = aws;
        }
        if let Command::Lookup { args, .. } = self {
            if !args.regions.is_empty() {
                flags["lookup"] = json!({ "regions": args.regions });
            }
            if let Some(endpoint) = &args.aws_endpoint {
                flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
            }
        }
        if let Command::Sqs { args, .. } = self {
            if let Some(url) = &args.queue_url {
                flags["sqs"] = json!({ "queue_url": url });
            }
            if let Some(endpoint) = &args.aws_endpoint {
                flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
            }
        }
        if let Command::S3 { args, .. } = self {
            let mut s3 = json!({});
            if let Some(bucket) = &args.bucket {
                s3["bucket"] = json!(bucket);
            }
            if let Some(prefix) = &args.prefix {
                s3["prefix"] = json!(prefix);
            }
            if !args.accounts.is_empty() {
                s3["accounts"] = json!(args.accounts);
            }
            if !args.regions.is_empty() {
                s3["regions"] = json!(args.regions);
            }
            if let Some(date) = &args.start_date {
                s3["start_date"] = json!(date);
            }
            flags["s3"] = s3;
            if let Some(endpoint) = &args.aws_endpoint {
                flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
            }
        }
    }
}
