//! librdkafka's own logs, through `tracing` without the flood: a broker that is down is reported
//! every 50 ms by librdkafka; here a message (numbers aside) is logged at most once a minute
//! (the operations that fail still return errors naming the brokers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

const REPEAT_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct KafkaLogs {
    logged: Mutex<HashMap<String, Instant>>,
}

impl KafkaLogs {
    /// Whether `message` was not logged within the last minute (and remembers it).
    fn is_due(&self, message: &str) -> bool {
        let key: String = message.chars().filter(|c| !c.is_ascii_digit()).collect();
        let mut logged = self.logged.lock().expect("not poisoned");
        let now = Instant::now();
        logged.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        logged.insert(key, now).is_none()
    }
}

impl ClientContext for KafkaLogs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) && self.is_due(message) {
            tracing::warn!(target: "librdkafka", facility, "{message}");
        } else {
            tracing::debug!(target: "librdkafka", facility, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let message = format!("{error}: {reason}");
        if self.is_due(&message) {
            tracing::warn!(target: "librdkafka", "{message}");
        }
    }
}
