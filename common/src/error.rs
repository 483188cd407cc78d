//! The shared crate's error type.

/// Errors of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration; `key` names the setting.
    #[error("invalid configuration `{key}`: {message}")]
    Config {
        /// The dotted key, e.g. `kafka.brokers`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Kafka error with what we were doing.
    #[error("{context}: {source}")]
    Context {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: Box<Error>,
    },
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// An AWS call failed.
    #[error("aws: {0}")]
    Aws(#[from] crate::aws::CallError),
    /// I/O (binding the admin port, ...).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A configuration error naming `key`.
    pub fn config(key: &str, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The Kafka client error inside, if this is one.
    pub fn kafka(&self) -> Option<&rdkafka::error::KafkaError> {
        match self {
            Error::Kafka(err) => Some(err),
            Error::Context { source, .. } => source.kafka(),
            _ => None,
        }
    }

    /// Wraps the error with what we were doing.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}
