//! What the `shipit` commands print: typed views of jobs, status, history and drift,
//! as tables for people (and as JSON, with `--json`, for scripts).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::deploy::engine::{NodeState, Notice};
use crate::deploy::history::{Faulty, HistoryEntry};
use crate::deploy::job::JobId;
use crate::deploy::ports::LockInfo;
use crate::deploy::report::{faulty_phrase, lock_phrase, node_phrase, NOTHING_LIVE};
use crate::deploy::status::{describe, JobStatus};
use crate::deploy::version::Version;
use crate::local::store::jobs::QueuedJob;

/// What `shipit sync --check` reports of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVersion {
    pub node: String,
    /// `None`: nothing installed, or the version command failed (`detail` says).
    pub installed: Option<Version>,
    pub detail: String,
}

/// One app+env in `shipit status`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvStatus {
    pub app: String,
    pub env: String,
    pub live: Option<Live>,
    pub lock: Option<LockInfo>,
    /// Versions rolled back from, newest mark first: no rollback or automatic job sends
    /// them out again.
    pub faulty: Vec<Version>,
    /// Queued and running jobs, oldest first.
    pub jobs: Vec<ActiveJob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub version: Version,
    pub job: JobId,
    pub since: DateTime<Utc>,
    pub by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveJob {
    pub job: JobId,
    pub version: Version,
    pub status: JobStatus,
}

pub fn print_status(status: &[EnvStatus]) {
    println!(
        "{:<24} {:<12} {:<22} JOBS / LOCK",
        "APP/ENV", "LIVE", "SINCE"
    );
    for s in status {
        let jobs: Vec<String> = s
            .jobs
            .iter()
            .map(|j| format!("{} {}", j.status, j.version))
            .collect();
        let lock = s.lock.as_ref().map(lock_phrase).unwrap_or_default();
        let faulty = if s.faulty.is_empty() {
            String::new()
        } else {
            let versions: Vec<String> = s.faulty.iter().map(|v| v.to_string()).collect();
            format!("faulty: {}", versions.join(", "))
        };
        println!(
            "{:<24} {:<12} {:<22} {}",
            format!("{}/{}", s.app, s.env),
            s.live
                .as_ref()
                .map_or("-".into(), |l| l.version.to_string()),
            s.live.as_ref().map_or("-".into(), |l| l
                .since
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()),
            [jobs.join(", "), lock, faulty]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

pub fn print_jobs(jobs: &[QueuedJob]) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    println!(
        "{:<22} {:<8} {:<22} {:<12} REQUESTED BY",
        "JOB", "STATUS", "APP/ENV", "VERSION"
    );
    for q in jobs {
        let j = &q.job;
        println!(
            "{:<22} {:<8} {:<22} {:<12} {}",
            j.id,
            q.status.as_str(),
            j.group(),
            j.version,
            j.requested_by
        );
    }
}

/// One line of `shipit history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// Set when this version was rolled back from since.
    pub faulty: Option<Faulty>,
}

pub fn print_history(entries: &[HistoryRow]) -> anyhow::Result<()> {
    if entries.is_empty() {
        println!("{NOTHING_LIVE}");
        return Ok(());
    }
    println!(
        "{:<20} {:<12} {:<22} {:<22} SOURCE",
        "WHEN (UTC)", "VERSION", "JOB", "BY"
    );
    for row in entries {
        let (e, j) = (&row.entry, &row.entry.job);
        let mut source = serde_json::to_value(&j.source)?["kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if j.forced_by.is_some() {
            source.push_str(", forced");
        }
        if let Some(mark) = &row.faulty {
            source.push_str(&format!(" — {}", faulty_phrase(mark)));
        }
        if let Some(lifted) = &e.cleared {
            source.push_str(&format!(" — lifted the FAULTY mark ({})", lifted.reason));
        }
        println!(
            "{:<20} {:<12} {:<22} {:<22} {source}",
            e.recorded_at.format("%Y-%m-%d %H:%M:%S"),
            j.version,
            j.id,
            j.requested_by
        );
    }
    Ok(())
}

/// Each node's installed version against the live one; how many differ.
pub fn print_drift(app: &str, live: &Version, nodes: &[NodeVersion]) -> usize {
    println!("{:<16} {:<14} LIVE {live}", "NODE", "INSTALLED");
    let mut drifted = 0;
    for n in nodes {
        let installed = n
            .installed
            .as_ref()
            .map_or("-".to_string(), |v| v.to_string());
        let (in_sync, note) = match &n.installed {
            Some(v) if v.same_as(live) => (true, "ok".to_string()),
            Some(_) => (false, "differs".to_string()),
            None => (false, format!("not installed: {}", n.detail)),
        };
        drifted += usize::from(!in_sync);
        println!("{:<16} {installed:<14} {note}", n.node);
    }
    if drifted > 0 {
        println!("{drifted} node(s) differ from {live}; `shipit sync {app}` brings them to it");
    }
    drifted
}

/// A deploy's progress on a terminal: one line per node, redrawn in place.
#[derive(Default)]
pub struct LiveView {
    title: String,
    nodes: Vec<(String, String)>,
    last: String,
    drawn: usize,
}

impl LiveView {
    pub fn new(title: String) -> LiveView {
        LiveView {
            title,
            ..LiveView::default()
        }
    }

    fn set(&mut self, node: &str, state: String) {
        match self.nodes.iter_mut().find(|(n, _)| n == node) {
            Some(entry) => entry.1 = state,
            None => self.nodes.push((node.to_string(), state)),
        }
    }

    /// Takes in a notice and returns the text that redraws the view (ANSI cursor moves).
    pub fn update(&mut self, notice: &Notice) -> String {
        match notice {
            Notice::Installed { node } => self.set(node, node_phrase(NodeState::Installed).into()),
            Notice::InstallFailed { node, detail } => {
                let phrase = node_phrase(NodeState::InstallFailed);
                self.set(node, format!("{phrase}: {detail}"))
            }
            Notice::Restarted { node } => self.set(node, "restarted".into()),
            Notice::Healthy { node } => self.set(node, node_phrase(NodeState::Healthy).into()),
            Notice::Unhealthy { node, detail } => {
                let phrase = node_phrase(NodeState::Unhealthy);
                self.set(node, format!("{phrase}: {detail}"))
            }
            Notice::RollingBack { nodes, .. } => {
                for n in nodes {
                    self.set(n, "rolling back".into());
                }
            }
            Notice::Drifted {
                node, installed, ..
            } => {
                let was = installed
                    .as_ref()
                    .map_or("nothing".into(), |v| v.to_string());
                self.set(node, format!("has {was}, syncing"))
            }
            _ => {}
        }
        self.last = describe(notice);
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        let mut lines = vec![self.title.clone()];
        lines.extend(self.nodes.iter().map(|(n, s)| format!("  {n:<16} {s}")));
        lines.push(format!("  {}", self.last));
        for l in &lines {
            out.push_str(&format!("\x1b[2K{l}\n"));
        }
        self.drawn = lines.len();
        out
    }
}
