//! How a deploy rolls out: canary, bake, error budget, timeouts. Read from the config
//! (`[apps.X.rollout]`) and carried by every deploy as a value of its own.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Restart the first node alone and check it before touching the others.
    #[serde(default = "yes")]
    pub canary: bool,
    /// Seconds to watch the canary before going on.
    #[serde(default)]
    pub bake_seconds: u64,
    /// Installs that may fail before the deploy stops (0: any failure stops it).
    #[serde(default)]
    pub max_errors: u32,
    /// How many nodes install at once (0: all).
    #[serde(default)]
    pub install_concurrency: u32,
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Seconds one command may run on one node before it counts as failed.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    /// Seconds a restarted node has to pass its health check before it counts as unhealthy.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_seconds: u64,
    /// Longest pause between two health checks of one node (they start 100 ms apart).
    #[serde(default = "default_health_interval")]
    pub health_interval_seconds: u64,
    /// How long a deploy waits for a lock someone else holds before giving up.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_seconds: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            canary: true,
            bake_seconds: 0,
            max_errors: 0,
            install_concurrency: 0,
            auto_rollback: true,
            command_timeout_seconds: default_command_timeout(),
            health_timeout_seconds: default_health_timeout(),
            health_interval_seconds: default_health_interval(),
            lock_wait_seconds: default_lock_wait(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_command_timeout() -> u64 {
    600
}

fn default_health_timeout() -> u64 {
    30
}

fn default_health_interval() -> u64 {
    2
}

fn default_lock_wait() -> u64 {
    3600
}
