//! Who holds an app+env: a deploy, or a person from chat.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::JobId;

/// A hold on an app+env. Deploys take one with an expiry, so a crashed deploy cannot hold
/// it forever; people take one from chat (no job, no expiry) to stop deploys for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub job: Option<JobId>,
}

impl LockInfo {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}
