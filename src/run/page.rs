//! The page: where every app+env stands, the deploys running (node by node), the jobs
//! with why each ended as it did, and each job's story with its timeline (`/jobs/ID`).
//! Server-rendered, the same from `shipit serve` and from the AWS page function; its
//! style and its one script are in the binary, and it loads nothing from anywhere else.
//! Live: the script fetches the page's main part again and swaps it in, when `/events`
//! (server-sent events, `shipit serve`) says something changed, or every few seconds
//! where there are no events (a Lambda function answers one request at a time).

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::deploy::dora::{dora_phrases, Figures, WINDOW_DAYS};
use crate::deploy::engine::{Deploy, NodeState};
use crate::deploy::job::DeployJob;
use crate::deploy::overview::EnvStatus;
use crate::deploy::report::{lock_phrase, node_phrase};
use crate::deploy::status::JobStatus;
use crate::deploy::story::{Stage, Step, StepResult, Story};

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");
/// The header the script sends to get only the page's main part.
pub const FRAGMENT: &str = "x-shipit-fragment";
const JOBS_SHOWN: usize = 50;

/// A deploy running now, as its last saved state has it.
pub struct Running {
    pub job: DeployJob,
    pub deploy: Option<Deploy>,
}

/// One job in the page's list.
pub struct JobRow {
    pub job: DeployJob,
    pub status: JobStatus,
    pub reason: Option<String>,
    pub queued_at: DateTime<Utc>,
}

/// How the page keeps itself up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Listens to `/events`.
    Events,
    /// Fetches itself again every this many seconds.
    Poll(u32),
    /// Stays as it is (a job that ended).
    Still,
}

/// The page around `main`, or only `main` when the script asks for it (`fragment`).
pub fn document(title: &str, main: Markup, fragment: bool, live: Live) -> String {
    if fragment {
        return main.into_string();
    }
    let (poll, script) = match live {
        Live::Events => (None, true),
        Live::Poll(s) => (Some(s), true),
        Live::Still => (None, false),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — shipit" }
                style { (PreEscaped(STYLE)) }
            }
            body data-poll=[poll] {
                header { a href="/" { "shipit" } span.live id="live" { "live" } }
                main id="main" { (main) }
                @if script { script { (PreEscaped(SCRIPT)) } }
            }
        }
    }
    .into_string()
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn status_class(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Succeeded => "ok",
        JobStatus::Queued | JobStatus::Running => "busy",
        JobStatus::Skipped | JobStatus::Cancelled => "quiet",
        JobStatus::Failed | JobStatus::RollbackFailed | JobStatus::Aborted => "bad",
    }
}

/// Every app+env, the deploys running, the DORA figures (where the runtime computes
/// them) and the jobs, oldest first in `jobs` (the newest are shown first).
pub fn dashboard(
    envs: &[EnvStatus],
    running: &[Running],
    jobs: &[JobRow],
    dora: &[Figures],
) -> Markup {
    html! {
        section {
            h2 { "Environments" }
            div.cards {
                @for e in envs {
                    div.card {
                        h3 { (e.app) "/" (e.env) }
                        p.version { @match &e.live {
                            Some(l) => { (l.version.as_str()) },
                            None => { "nothing deployed yet" },
                        } }
                        @if let Some(l) = &e.live {
                            p.small { "since " (when(l.since)) " by " (l.by) }
                        }
                        @if !e.nodes.is_empty() {
                            ol.nodes {
                                @for n in &e.nodes {
                                    li title="the version it was last seen serving" {
                                        span.node { (n.node) } " "
                                        (n.version.as_ref().map_or("–", |v| v.as_str()))
                                    }
                                }
                            }
                        }
                        @if let Some(lock) = &e.lock { p.warn { (lock_phrase(lock)) } }
                        @if !e.faulty.is_empty() {
                            p.bad { "faulty: "
                                (e.faulty.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")) }
                        }
                        @for j in &e.jobs {
                            p { span class=(status_class(j.status)) { (j.status) } " "
                                a href={ "/jobs/" (j.job) } { (j.version.as_str()) }
                                @if let Some(why) = &j.held { " — waiting: " (why) } }
                        }
                    }
                }
            }
        }
        @if !running.is_empty() {
            section {
                h2 { "Deploying now" }
                @for r in running { (progress(r)) }
            }
        }
        @if !dora.is_empty() { section id="dora" {
            h2 { "The last " (WINDOW_DAYS) " days" }
            table {
                tr { th { "app/env" } th { "deploys" } th { "lead time" }
                     th { "change failure rate" } th { "time to restore" } }
                @for f in dora {
                    @let p = dora_phrases(f);
                    tr {
                        td { (f.app) "/" (f.env) }
                        td { (p.frequency) }
                        td { (p.lead_time) }
                        td { (p.failure_rate) }
                        td { (p.restore) }
                    }
                }
            }
        } }
        section {
            h2 { "Jobs" }
            @if jobs.is_empty() { p { "no jobs yet" } } @else {
                table {
                    tr { th { "queued" } th { "app/env" } th { "version" } th { "status" }
                         th { "asked by" } th { "why" } }
                    @for q in jobs.iter().rev().take(JOBS_SHOWN) {
                        tr {
                            td { (when(q.queued_at)) }
                            td { (q.job.group()) }
                            td { a href={ "/jobs/" (q.job.id) } { (q.job.version.as_str()) } }
                            td { span class=(status_class(q.status)) { (q.status) } }
                            td { (q.job.requested_by) }
                            td.reason { (q.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// A running deploy: each node and where it stands.
fn progress(r: &Running) -> Markup {
    let j = &r.job;
    html! {
        div.card.running {
            h3 { a href={ "/jobs/" (j.id) } { (j.app) "/" (j.env) " " (j.version.as_str()) } }
            @match &r.deploy {
                None => p { "starting" },
                Some(d) => {
                    ol.nodes {
                        @for n in &d.nodes {
                            li class=(node_class(n.state)) {
                                span.node { (n.name) } " " (node_phrase(n.state))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn node_class(state: NodeState) -> &'static str {
    match state {
        NodeState::Pending => "quiet",
        NodeState::Installed => "busy",
        NodeState::Healthy | NodeState::Reverted => "ok",
        NodeState::InstallFailed | NodeState::Unhealthy | NodeState::Gone => "bad",
    }
}

/// A job's story: how it ended and why, who asked, when, its timeline and what it said.
pub fn job(story: &Story) -> Markup {
    let j = &story.job;
    html! {
        section {
            h2 { (j.app) "/" (j.env) " " (j.version.as_str()) " "
                 span class=(status_class(story.status)) { (story.status) } }
            @if let Some(reason) = &story.reason { p.reason id="reason" { (reason) } }
            p.small { "job " (j.id) " — asked by " (j.requested_by) }
            p.small {
                "queued " (when(story.queued_at))
                @if let Some(t) = story.started_at { " — started " (when(t)) }
                @if let Some(t) = story.ended_at { " — ended " (when(t)) }
            }
        }
        @if !story.steps.is_empty() {
            section {
                h2 { "Timeline" }
                (timeline(&story.steps))
                table {
                    tr { th { "node" } th { "step" } th { "started" } th { "took" } th { "result" }
                         th { "exit" } th { "output" } }
                    @for s in &story.steps {
                        tr {
                            td { (s.node) }
                            td { (s.stage.as_str()) }
                            td { (s.started_at.map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default()) }
                            td { (s.took()) }
                            td { span class=(result_class(s.result)) { (format!("{:?}", s.result).to_lowercase()) } }
                            td { (s.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                            td { pre { (s.output) } }
                        }
                    }
                }
            }
        }
        @if !story.events.is_empty() {
            section {
                h2 { "What it said" }
                ul.events { @for e in &story.events { li { span.small { (when(e.at)) } " " (e.text) } } }
            }
        }
    }
}

fn result_class(r: StepResult) -> &'static str {
    match r {
        StepResult::Ok => "ok",
        StepResult::Running => "busy",
        StepResult::Failed | StepResult::Gone => "bad",
    }
}

/// Nodes down, time across: a bar per step, from its start to its end (or to the last
/// moment seen, while it runs).
fn timeline(steps: &[Step]) -> Markup {
    let mut nodes: Vec<&str> = vec![];
    for s in steps {
        if !nodes.contains(&s.node.as_str()) {
            nodes.push(&s.node);
        }
    }
    let times = steps
        .iter()
        .flat_map(|s| [s.started_at, s.ended_at])
        .flatten();
    let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
        return html! {};
    };
    let span = (last - first).num_milliseconds().max(1) as f64;
    let (left, width, row) = (110.0, 600.0, 22.0);
    let x = |t: DateTime<Utc>| left + width * (t - first).num_milliseconds() as f64 / span;
    let height = row * nodes.len() as f64 + 24.0;
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (left + width + 10.0) " " (height) }
            role="img" aria-label="each node's steps over time" {
            @for (i, n) in nodes.iter().enumerate() {
                text x="0" y=(row * i as f64 + 15.0) { (n) }
            }
            @for s in steps {
                @let i = nodes.iter().position(|n| *n == s.node).unwrap_or(0);
                @let start = s.started_at.unwrap_or(first);
                @let end = s.ended_at.unwrap_or(last);
                rect class={ "bar " (stage_class(s.stage)) " " (result_class(s.result)) }
                    x=(format!("{:.1}", x(start))) y=(row * i as f64 + 3.0)
                    width=(format!("{:.1}", (x(end) - x(start)).max(2.0))) height=(row - 6.0) {
                    title { (s.node) " " (s.stage.as_str()) ": " (s.took()) }
                }
            }
            text x=(left) y=(height - 4.0) { (first.format("%H:%M:%S")) }
            text x=(left + width) y=(height - 4.0) text-anchor="end" {
                "+" (format!("{:.1}", span / 1000.0)) " s"
            }
        }
    }
}

fn stage_class(s: Stage) -> &'static str {
    match s {
        Stage::Probe => "probe",
        Stage::Install | Stage::RollbackInstall => "install",
        Stage::Restart | Stage::RollbackRestart => "restart",
        Stage::Bake => "bake",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Chromium test sees what a browser loaded; this is what the page could load at
    /// all beyond its links (which the serve test checks): its style and script name no
    /// other origin, font, stylesheet or module.
    #[test]
    fn the_page_s_style_and_script_name_nothing_from_elsewhere() {
        for (name, text) in [("page.css", STYLE), ("page.js", SCRIPT)] {
            for word in ["://", "url(", "@import", "import(", "src", "href"] {
                assert!(!text.contains(word), "{name} says {word:?}");
            }
        }
        for call in ["fetch(", "EventSource("] {
            for (at, _) in SCRIPT.match_indices(call) {
                let arg = SCRIPT[at + call.len()..].trim_start();
                assert!(
                    arg.starts_with("location.pathname") || arg.starts_with("\"/"),
                    "{call}{arg:.40}"
                );
            }
        }
    }

    #[test]
    fn the_page_listens_polls_or_stays_and_its_main_part_comes_alone_when_asked() {
        let main = || html! { p { "hello <b>" } };
        let events = document("t", main(), false, Live::Events);
        assert!(
            events.contains("<script>") && events.contains("<body>"),
            "{events}"
        );
        assert!(events.contains("hello &lt;b&gt;"), "escaped: {events}");
        let poll = document("t", main(), false, Live::Poll(10));
        assert!(poll.contains(r#"<body data-poll="10">"#) && poll.contains("<script>"));
        let still = document("t", main(), false, Live::Still);
        assert!(
            !still.contains("<script>") && still.contains("<body>"),
            "{still}"
        );
        assert_eq!(
            document("t", main(), true, Live::Events),
            "<p>hello &lt;b&gt;</p>"
        );
    }
}
