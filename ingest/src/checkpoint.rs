//! Where each source left off, kept in a compacted topic keyed by source, so a restarted or
//! rescheduled instance resumes there. A checkpoint is written only after everything before
//! it is durable, so a crash re-reads at most the input in progress (whose records keep their
//! ids, so downstream de-duplication absorbs the repeat).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use trailguard_common::config::{KafkaConfig, TopicRole};
use trailguard_common::kafka;

use crate::Error;

/// One checkpoint record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The source, e.g. `s3://bucket/AWSLogs/1/CloudTrail/us-east-1/`.
    pub source: String,
    /// Its position, e.g. the last key read.
    pub position: String,
    /// When it was written.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The checkpoints of this instance's sources.
pub struct Checkpoints {
    producer: trailguard_common::kafka::Producer,
    topic: String,
    positions: HashMap<String, String>,
}

impl Checkpoints {
    /// Creates the topic if needed and reads every checkpoint in it (the last one per source wins).
    pub async fn load(
        cfg: &KafkaConfig,
        producer: trailguard_common::kafka::Producer,
    ) -> Result<Self, Error> {
        let topic = cfg.topics.checkpoints.clone();
        kafka::ensure_topics(cfg, &[TopicRole::Checkpoints]).await?;
        let mut positions = HashMap::new();
        let cfg = cfg.clone();
        let reading = topic.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            kafka::read_all(&cfg, &reading, "trailguard-ingest-checkpoints", |read| {
                if let Some(Ok(c)) = read.payload.map(serde_json::from_slice::<Checkpoint>) {
                    found.push(c);
                }
            })
            .map(|_| found)
        })
        .await
        .map_err(|e| Error::Source(format!("reading checkpoints: {e}")))??;
        for checkpoint in read {
            positions.insert(checkpoint.source, checkpoint.position);
        }
        tracing::info!(topic = %topic, sources = positions.len(), "loaded checkpoints");
        Ok(Checkpoints {
            producer,
            topic,
            positions,
        })
    }

    /// The position of `source`, if it has one.
    pub fn get(&self, source: &str) -> Option<&str> {
        self.positions.get(source).map(String::as_str)
    }

    /// Records a new position for `source`, waiting until the broker has it.
    pub async fn save(&mut self, source: &str, position: &str) -> Result<(), Error> {
        let checkpoint = Checkpoint {
            source: source.to_string(),
            position: position.to_string(),
            updated_at: chrono::Utc::now(),
        };
        let payload = serde_json::to_vec(&checkpoint).map_err(|e| Error::Source(e.to_string()))?;
        kafka::send(
            &self.producer,
            &self.topic,
            source.as_bytes(),
            &payload,
            None,
        )
        .await?;
        self.positions
            .insert(checkpoint.source, checkpoint.position);
        Ok(())
    }
}
