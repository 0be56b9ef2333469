//! How a deploy rolls out: canary, bake, error budget, timeouts. Read from the config
//! (`[apps.X.rollout]`) and carried by every deploy as a value of its own.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::command::CommandKind;

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
    /// Seconds one command may run on one node before it counts as failed (a restart
    /// has its health timeout on top: the node waits for its service to pass).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    /// Seconds a restarted node has to pass its health check before it counts as unhealthy
    /// (the node itself checks, within the restart command).
    #[serde(default = "default_health_timeout")]
    pub health_timeout_seconds: u64,
    /// Longest pause between two health checks of one node (the first retry is 25 ms after
    /// a failed check, each later one twice as late).
    #[serde(default = "default_health_interval")]
    pub health_interval_seconds: u64,
    /// How long a deploy waits for a lock someone else holds before giving up.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_seconds: u64,
    /// How many nodes restart together, batch after batch (`[1, 5, "20%"]`); the last
    /// entry repeats. Empty: one at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<Share>,
    /// Restarted nodes that may fail (their restart or health check) before the deploy
    /// stops and rolls back; the ones that failed are named and left as they are.
    #[serde(default, skip_serializing_if = "Share::is_none")]
    pub max_failed: Share,
    /// Seconds the app's `pre_restart` and `post_restart` hooks may each run (set only
    /// where the app has the hook: 60 unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_restart_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_restart_timeout_seconds: Option<u64>,
    /// Seconds the app's checks are read after the last node, before the deploy counts
    /// as done (the post-deploy watch; 0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub watch_seconds: u64,
    /// How often checks are read while the canary bakes, after a batch and while
    /// watching.
    #[serde(default = "default_check_interval")]
    pub check_interval_seconds: u64,
    /// How long a check without data is read again, after its stage's time, before its
    /// `no_data` applies.
    #[serde(default = "default_check_wait")]
    pub check_wait_seconds: u64,
}

/// How long a drain hook may run unless its app says (`shipit check` fills it in).
pub const DEFAULT_HOOK_SECONDS: u64 = 60;

impl Rollout {
    /// How many nodes the `number`th batch (from 0) restarts, out of `total`: at least one.
    pub fn batch_size(&self, number: usize, total: usize) -> usize {
        self.batches
            .get(number)
            .or(self.batches.last())
            .map_or(1, |s| s.of(total).max(1))
    }

    /// How long a command of `kind` may run on a node: a restart waits for its service to
    /// pass the health check too, and runs the app's drain hooks around it.
    pub fn command_seconds(&self, kind: CommandKind) -> u64 {
        match kind {
            CommandKind::Restart => {
                // A hook past its time gets TERM, then KILL 5 s later.
                // Saturating: `shipit check` adds them up before it bounds each.
                let hook =
                    |t: Option<u64>| t.map_or(0, |t| t.saturating_add(HOOK_KILL_GRACE_SECONDS));
                self.command_timeout_seconds
                    .saturating_add(self.health_timeout_seconds)
                    .saturating_add(hook(self.pre_restart_timeout_seconds))
                    .saturating_add(hook(self.post_restart_timeout_seconds))
            }
            _ => self.command_timeout_seconds,
        }
    }

    /// The longest any command may run: what a lock's lease must outlast.
    pub fn longest_command_seconds(&self) -> u64 {
        self.command_seconds(CommandKind::Restart)
    }

    /// How many of `total` restarted nodes may fail before the deploy stops.
    pub fn failure_budget(&self, total: usize) -> usize {
        self.max_failed.of(total)
    }
}

/// How long a drain hook has to end after it is told to at its timeout, before it is
/// killed (`timeout -k` in `App::script`).
pub const HOOK_KILL_GRACE_SECONDS: u64 = 5;

/// A number of nodes (`5`), or a share of an environment's nodes (`"20%"`, rounded down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Share {
    Nodes(u32),
    Percent(u32),
    #[default]
    None,
}

impl Share {
    pub fn of(self, total: usize) -> usize {
        match self {
            Share::Nodes(n) => n as usize,
            Share::Percent(p) => total.saturating_mul(p as usize) / 100,
            Share::None => 0,
        }
    }

    fn is_none(&self) -> bool {
        *self == Share::None
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Nodes(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
            Share::None => write!(f, "0"),
        }
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Share::Nodes(n) => s.serialize_u32(*n),
            Share::None => s.serialize_u32(0),
            Share::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Nodes(u32),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected a number of nodes (5) or a share of them (\"20%\", 0 to 100)",
            )
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Nodes(0) => Ok(Share::None),
            Raw::Nodes(n) => Ok(Share::Nodes(n)),
            Raw::Text(t) => match t.trim().strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
                Some(Ok(0)) => Ok(Share::None),
                Some(Ok(p)) if p <= 100 => Ok(Share::Percent(p)),
                _ => Err(bad()),
            },
        }
    }
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
            batches: vec![],
            max_failed: Share::None,
            pre_restart_timeout_seconds: None,
            post_restart_timeout_seconds: None,
            watch_seconds: 0,
            check_interval_seconds: default_check_interval(),
            check_wait_seconds: default_check_wait(),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_check_interval() -> u64 {
    10
}

fn default_check_wait() -> u64 {
    60
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
