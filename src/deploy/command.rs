//! What a fleet is asked to run on nodes, and what it answers per node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lock::DELIVERY_TIMEOUT_SECONDS;

use super::version::Version;

/// How much of a command's output a fleet keeps for the report (the last bytes).
pub const OUTPUT_TAIL: usize = 2000;

/// How a restart's output ends when its node restarted but did not pass the health check
/// in time, followed by "N checks in T s" (see `App::script`): what tells a failed health
/// check from a failed restart, one command for both.
pub const UNHEALTHY: &str = "shipit: unhealthy after";

/// How a node's refusal begins when it has taken commands under a newer lock generation
/// than the command carries (see `config::command::fenced`): the deploy lost its lock.
pub const REFUSED: &str = "shipit: refused:";
/// The exit code of that refusal (EX_TEMPFAIL).
pub const REFUSED_EXIT: i32 = 75;
/// How a restart's output ends when one of the app's drain hooks failed (see
/// `App::script`): "pre_restart exited 3" or "post_restart timed out after 60 s". No
/// verdict on the version: the hook is the load balancer's, not the app's.
pub const HOOK_FAILED: &str = "shipit: hook failed:";

/// How a node's refusal begins when a command reached it after the time it had to start
/// by (see `Command::not_after`); the same exit code.
pub const LATE: &str = "shipit: late:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Install,
    /// Restart, then check health until it passes or the health timeout is up: the node
    /// waits, not the deploy, so one command (one send, its polls) does both.
    Restart,
    /// One health check (a canary's after its bake).
    Health,
    /// Print the installed version (answered `NodeResult::Reported`).
    Version,
    /// One reading of a node check (`Command::check` names it): exit 0 passes.
    Check,
}

/// A command for the fleet: run `kind` for `version` on `nodes`, at most `concurrency` at
/// once (0: all). Asking again with the same key returns its status; it never runs twice
/// (an empty key only renders the command for a plan: nothing guards it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub key: String,
    pub kind: CommandKind,
    pub version: Version,
    pub nodes: Vec<String>,
    pub concurrency: u32,
    /// The generation of the lock the deploy holds: a node that saw a newer one refuses
    /// the command (see `App::script`).
    #[serde(default)]
    pub fence: u64,
    /// A node refuses to start the command after this (by its clock), unless the key ran
    /// there already: the fleet sets it as it sends, one delivery timeout on, so that a
    /// request held up on the way (SigV4 lets AWS take one up to five minutes after it
    /// was signed; a TCP connection may hold one longer) cannot start after the lease it
    /// was sent under has lapsed. Unset: no limit (a plan shown to a reader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// The node check a `CommandKind::Check` command reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl Command {
    /// This command as a fleet sends it at `now`: to start within the delivery timeout.
    pub fn sent_at(&self, now: DateTime<Utc>) -> Command {
        Command {
            not_after: Some(now + chrono::Duration::seconds(DELIVERY_TIMEOUT_SECONDS)),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeResult {
    Running,
    Succeeded,
    /// A `CommandKind::Version` command succeeded and printed this.
    Reported {
        output: String,
    },
    Failed {
        exit_code: Option<i32>,
        output: String,
    },
    /// The node is gone (terminated, deregistered, offline past the delivery timeout,
    /// unreachable): the command did not run there, or nobody can say how it ended. Not
    /// the version's fault.
    Gone {
        detail: String,
    },
}

impl NodeResult {
    /// The node refused the command: a newer lock holder has sent it commands.
    pub fn is_refused(&self) -> bool {
        matches!(self, NodeResult::Failed { exit_code: Some(REFUSED_EXIT), output } if output.contains(REFUSED))
    }

    /// The node refused the command for reaching it too late: it did not run there.
    pub fn is_late(&self) -> bool {
        matches!(self, NodeResult::Failed { exit_code: Some(REFUSED_EXIT), output } if output.contains(LATE))
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
