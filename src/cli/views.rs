//! What the `shipit` commands print: typed views of jobs, status, history and drift,
//! as tables for people (and as JSON, with `--json`, for scripts).

use chrono::{DateTime, Utc};

use crate::deploy::dora::{dora_phrases, Figures};
use crate::deploy::engine::{NodeState, Notice};
pub use crate::deploy::overview::{ActiveJob, EnvStatus, HistoryRow, Live};
use crate::deploy::report::{faulty_phrase, job_notes, lock_phrase, node_phrase, NOTHING_LIVE};
use crate::deploy::status::describe;
use crate::deploy::story::Story;
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

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(header, rows));
}

/// `rows` under `header`, each column as wide as its widest cell (the last one is not
/// padded), a line each.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match i == last {
                true => c.to_string(),
                false => format!("{c:<w$}", w = widths[i]),
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

const WHEN: &str = "%Y-%m-%d %H:%M:%S";

pub fn print_status(status: &[EnvStatus]) {
    let rows: Vec<Vec<String>> = status
        .iter()
        .map(|s| {
            let jobs: Vec<String> = s
                .jobs
                .iter()
                .map(|j| match &j.held {
                    Some(why) => format!("{} {} (waiting: {why})", j.status, j.version),
                    None => format!("{} {}", j.status, j.version),
                })
                .collect();
            let lock = s.lock.as_ref().map(lock_phrase).unwrap_or_default();
            let faulty = if s.faulty.is_empty() {
                String::new()
            } else {
                let versions: Vec<String> = s.faulty.iter().map(|v| v.to_string()).collect();
                format!("faulty: {}", versions.join(", "))
            };
            let nodes: Vec<String> = s
                .nodes
                .iter()
                .map(|n| {
                    let v = n.version.as_ref().map_or("-", |v| v.as_str());
                    format!("{}={v}", n.node)
                })
                .collect();
            vec![
                format!("{}/{}", s.app, s.env),
                s.live
                    .as_ref()
                    .map_or("-".into(), |l| l.version.to_string()),
                s.live
                    .as_ref()
                    .map_or("-".into(), |l| l.since.format(WHEN).to_string()),
                nodes.join(" "),
                [jobs.join(", "), lock, faulty]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            ]
        })
        .collect();
    print_table(
        &[
            "APP/ENV",
            "LIVE",
            "SINCE",
            "NODES (LAST SEEN)",
            "JOBS / LOCK",
        ],
        &rows,
    );
}

/// The jobs, oldest first, with why each one that ended did not succeed.
pub fn print_jobs(jobs: &[QueuedJob]) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|q| {
            let j = &q.job;
            vec![
                j.id.to_string(),
                q.status.to_string(),
                j.group(),
                j.version.to_string(),
                j.requested_by.clone(),
                q.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "JOB",
            "STATUS",
            "APP/ENV",
            "VERSION",
            "REQUESTED BY",
            "REASON",
        ],
        &rows,
    );
}

pub fn print_history(entries: &[HistoryRow]) -> anyhow::Result<()> {
    if entries.is_empty() {
        println!("{NOTHING_LIVE}");
        return Ok(());
    }
    let mut rows = vec![];
    for row in entries {
        let (e, j) = (&row.entry, &row.entry.job);
        let mut source = serde_json::to_value(&j.source)?["kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if j.forced_by.is_some() {
            source.push_str(", forced");
        }
        if let Some(o) = &j.overridden {
            source.push_str(&format!(", outside the calendar (override: {})", o.reason));
        }
        if !j.approved_by.is_empty() {
            source.push_str(&format!(", approved by {}", j.approved_by.join(", ")));
        }
        if let Some(mark) = &row.faulty {
            source.push_str(&format!(" — {}", faulty_phrase(mark)));
        }
        if let Some(lifted) = &e.cleared {
            source.push_str(&format!(" — lifted the FAULTY mark ({})", lifted.why()));
        }
        rows.push(vec![
            e.recorded_at.format(WHEN).to_string(),
            j.version.to_string(),
            j.id.to_string(),
            j.requested_by.clone(),
            source,
        ]);
    }
    print_table(&["WHEN (UTC)", "VERSION", "JOB", "BY", "SOURCE"], &rows);
    Ok(())
}

/// `history --all`: every job of an app+env that ended, newest first, with its status
/// and why.
pub fn print_ended(jobs: &[QueuedJob]) {
    if jobs.is_empty() {
        println!("no job has ended yet");
        return;
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|q| {
            vec![
                q.ended_at
                    .map_or("-".into(), |t| t.format(WHEN).to_string()),
                q.job.version.to_string(),
                q.job.id.to_string(),
                q.status.to_string(),
                q.job.requested_by.clone(),
                q.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["ENDED (UTC)", "VERSION", "JOB", "STATUS", "BY", "REASON"],
        &rows,
    );
}

/// `shipit stats`: a line per app+env.
pub fn print_dora(figures: &[Figures]) {
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let d = dora_phrases(f);
            vec![
                format!("{}/{}", f.app, f.env),
                d.frequency,
                d.lead_time,
                d.failure_rate,
                d.restore,
            ]
        })
        .collect();
    let days = figures.first().map_or(30, |f| f.days);
    println!("over the last {days} days");
    print_table(
        &[
            "APP/ENV",
            "DEPLOYS",
            "LEAD TIME",
            "CHANGE FAILURE RATE",
            "TIME TO RESTORE",
        ],
        &rows,
    );
}

/// `shipit show`: a job's story.
pub fn print_story(story: &Story) {
    let j = &story.job;
    println!("job {} — {} {} to {}", j.id, j.app, j.version, j.env);
    println!("status: {}", story.status);
    if let Some(reason) = &story.reason {
        println!("reason: {reason}");
    }
    println!("asked by: {}{}", j.requested_by, job_notes(j));
    let at = |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.format(WHEN).to_string());
    println!(
        "queued: {}   started: {}   ended: {}",
        story.queued_at.format(WHEN),
        at(story.started_at),
        at(story.ended_at)
    );
    if !story.steps.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = story
            .steps
            .iter()
            .map(|s| {
                let took = match s.took() {
                    t if t.is_empty() => "-".into(),
                    t => t,
                };
                vec![
                    s.node.clone(),
                    s.stage.as_str().into(),
                    s.started_at
                        .map_or("-".into(), |t| t.format("%H:%M:%S").to_string()),
                    took,
                    format!("{:?}", s.result).to_lowercase(),
                    s.exit_code.map_or("-".into(), |c| c.to_string()),
                    s.output.lines().last().unwrap_or_default().to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "NODE",
                "STEP",
                "STARTED",
                "TOOK",
                "RESULT",
                "EXIT",
                "OUTPUT (LAST LINE)",
            ],
            &rows,
        );
    }
    if !story.events.is_empty() {
        println!();
        for e in &story.events {
            println!("{}  {}", e.at.format(WHEN), e.text);
        }
    }
}

/// Each node's installed version against the live one; how many differ.
pub fn print_drift(app: &str, live: &Version, nodes: &[NodeVersion]) -> usize {
    let mut drifted = 0;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
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
            vec![n.node.clone(), installed, note]
        })
        .collect();
    print!(
        "{}",
        table(&["NODE", "INSTALLED", &format!("LIVE {live}")], &rows)
    );
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

    /// Takes in a notice, with how long the step it ends took (or empty), and returns the
    /// text that redraws the view (ANSI cursor moves).
    pub fn update(&mut self, notice: &Notice, took: &str) -> String {
        let took = match took {
            "" => String::new(),
            t => format!(" ({t})"),
        };
        match notice {
            Notice::Installed { node } => {
                self.set(node, format!("{}{took}", node_phrase(NodeState::Installed)))
            }
            Notice::InstallFailed { node, detail } => {
                let phrase = node_phrase(NodeState::InstallFailed);
                self.set(node, format!("{phrase}{took}: {detail}"))
            }
            Notice::Restarted { node } => self.set(node, "restarted".into()),
            Notice::Healthy { node } => {
                self.set(node, format!("{}{took}", node_phrase(NodeState::Healthy)))
            }
            Notice::Unhealthy { node, detail } => {
                let phrase = node_phrase(NodeState::Unhealthy);
                self.set(node, format!("{phrase}{took}: {detail}"))
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

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn every_column_is_as_wide_as_its_widest_cell() {
        let rows = vec![
            vec!["a1".to_string(), "rollback_failed".into(), "é".into()],
            vec!["a22".to_string(), "succeeded".into(), "x y".into()],
        ];
        let text = table(&["JOB", "STATUS", "WHY"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "JOB  STATUS           WHY",
                "a1   rollback_failed  é",
                "a22  succeeded        x y",
            ]
        );
    }
}
