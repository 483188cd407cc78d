//! The flags every binary takes, and the configuration overlay they make (applied last, over
//! defaults, the file and `TRAILGUARD_*` environment: see [`crate::config::load`]).

use std::path::PathBuf;

use serde_json::{json, Value};

/// `--brokers`, `--config`, `--log-format`, `--check-config`: flattened into each binary's
/// command line, valid before or after its subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonFlags {
    /// Kafka bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "TRAILGUARD_BROKERS", global = true)]
    pub brokers: Option<String>,
    /// TOML configuration file (every key: docs/configuration.md).
    #[arg(long, env = "TRAILGUARD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format: auto (pretty on a terminal, JSON otherwise), pretty or json.
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    /// Load and validate the configuration (file, `TRAILGUARD_*` environment, flags), print it
    /// with secrets redacted, and exit without connecting to anything.
    #[arg(long, global = true)]
    pub check_config: bool,
}

impl CommonFlags {
    /// The configuration these flags set (`kafka.brokers`, `log.format`), to which a binary
    /// adds its own (e.g. with [`set`]).
    pub fn overlay(&self) -> Value {
        let mut flags = json!({});
        if let Some(brokers) = &self.brokers {
            set(&mut flags, "kafka", "brokers", json!(brokers));
        }
        if let Some(format) = &self.log_format {
            set(&mut flags, "log", "format", json!(format));
        }
        flags
    }
}

/// Sets `section.key` in an overlay, keeping the section's other keys.
pub fn set(overlay: &mut Value, section: &str, key: &str, value: Value) {
    if !overlay[section].is_object() {
        overlay[section] = json!({});
    }
    overlay[section][key] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_overlay_and_sections_merge() {
        let flags = CommonFlags {
            brokers: Some("b:1".into()),
            log_format: Some("json".into()),
            ..Default::default()
        };
        let mut overlay = flags.overlay();
        set(&mut overlay, "kafka", "partitions", json!(3));
        assert_eq!(
            overlay,
            json!({"kafka": {"brokers": "b:1", "partitions": 3}, "log": {"format": "json"}})
        );
        assert_eq!(CommonFlags::default().overlay(), json!({}));
    }
}
