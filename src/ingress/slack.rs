//! `POST /hooks/slack`: the `/deploy` slash command.
//!
//! Slack shows a non-200 answer as a generic failure, so everything past the signature
//! check is answered 200 with an ephemeral message saying what happened or what was wrong.

use chrono::{DateTime, Utc};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use super::{approve, interactive, verify_hmac_sha256, Ingress, Reply};
use crate::config::{App, Environment, SlackWorkspace};
use crate::deploy::history::rollback_target;
use crate::deploy::job::{DeployJob, JobId, Source};
use crate::deploy::ports::{LockInfo, Unlocked};
use crate::deploy::overview::{history, EnvStatus};
use crate::deploy::report::{history_line, job_notes, lock_line, NOTHING_LIVE};
use crate::deploy::status::JobStatus;
use crate::deploy::version::Version;

/// Slack's advice: refuse requests more than five minutes from now (replays).
pub const MAX_SKEW_SECONDS: i64 = 300;

pub const USAGE: &str = "\
Usage:
  /deploy APP VERSION [ENV]     deploy a version (e.g. /deploy hello 1.4.2)
  /deploy APP VERSION [ENV] --force   even if its tag is not merged or its checks not green
  /deploy APP VERSION [ENV] --dry-run   show what it would do (gate, lock, nodes, commands)
  /deploy APP VERSION [ENV] --override REASON   outside the deploy windows or in a freeze
                                (freeze_overriders only; kept in history)
  /deploy rollback APP [ENV]    put the previous version back (--dry-run: show it)
  /deploy status [APP]          what is live, and what is locked
  /deploy history APP [ENV]     the last deploys
  /deploy show JOB              a job's story: why it ended so, what ran on each node
  /deploy cancel JOB            a queued or waiting job: it never runs
  /deploy approve JOB           approve a deploy that waits for approval (approvers only)
  /deploy reject JOB [REASON]   reject it: it never runs
  /deploy lock APP [ENV] REASON stop deploys until unlocked
  /deploy unlock APP [ENV]      remove a lock taken with /deploy lock
  /deploy abort APP [ENV]       stop the running deploy, putting back what it restarted
  /deploy help
A version is FAULTY once rolled back from after it served (it failed its restart, health
check, bake or a check of its own figures on a node, or a rollback replaced it): rollbacks and automatic deploys skip
it; deploying it by name goes ahead, and lifts the mark once it succeeds.";

/// The form Slack posts; see api.slack.com/interactivity/slash-commands.
#[derive(Debug, Deserialize)]
pub struct SlashCommand {
    pub command: String,
    #[serde(default)]
    pub text: String,
    pub user_id: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub channel_id: String,
    #[serde(default)]
    pub channel_name: String,
    #[serde(default)]
    pub trigger_id: String,
    pub response_url: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub enterprise_id: Option<String>,
    #[serde(default)]
    pub api_app_id: Option<String>,
}

/// `--force` and `--dry-run`, wherever they appear in the command's text.
#[derive(Debug, Clone, Copy)]
struct Flags {
    force: bool,
    dry_run: bool,
}

/// How a deploy was asked for: its flags, and the reason of `--override REASON`.
#[derive(Debug, Clone, Copy)]
struct Asked<'a> {
    flags: Flags,
    overriding: Option<&'a str>,
}

fn say(text: impl Into<String>) -> Reply {
    Reply::new(
        200,
        json!({ "response_type": "ephemeral", "text": text.into() }),
    )
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Verifies `X-Slack-Signature` (v0) and the timestamp window.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Result<(), Reply> {
    let ts = header(headers, "x-slack-request-timestamp")
        .ok_or_else(|| Reply::error(401, "missing X-Slack-Request-Timestamp header"))?;
    let ts_num: i64 = ts
        .parse()
        .map_err(|_| Reply::error(401, "X-Slack-Request-Timestamp is not a Unix time"))?;
    // Checked: the header is anyone's number, and i64::MIN - now overflows.
    let skew = now.timestamp().checked_sub(ts_num).map(i64::unsigned_abs);
    if skew.is_none_or(|s| s > MAX_SKEW_SECONDS as u64) {
        return Err(Reply::error(
            401,
            format!("stale request: timestamp is more than {MAX_SKEW_SECONDS} s from now"),
        ));
    }
    let sig = header(headers, "x-slack-signature")
        .ok_or_else(|| Reply::error(401, "missing X-Slack-Signature header"))?;
    let valid = sig.strip_prefix("v0=").is_some_and(|hex| {
        verify_hmac_sha256(secret.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body], hex)
    });
    if valid {
        Ok(())
    } else {
        Err(Reply::error(
            401,
            "X-Slack-Signature does not match the request",
        ))
    }
}

impl SlashCommand {
    fn source(&self) -> Source {
        Source::Chat {
            user_id: self.user_id.clone(),
            user_name: self.user_name.clone(),
            channel_id: self.channel_id.clone(),
            channel_name: self.channel_name.clone(),
            trigger_id: self.trigger_id.clone(),
            response_url: self.response_url.clone(),
        }
    }

    fn who(&self) -> String {
        crate::deploy::job::chat_person(&self.user_id, &self.user_name)
    }

    /// Whether this user is one of `ids` (Slack user ids, or `*`). By id only: a name
    /// is whatever the sender's workspace says it is.
    fn is_one_of(&self, ids: &[String]) -> bool {
        ids.iter().any(|d| d == "*" || *d == self.user_id)
    }

    fn may_deploy(&self, env: &Environment) -> bool {
        self.is_one_of(&env.chat_deployers)
    }

    fn may_lock(&self, env: &Environment) -> bool {
        self.is_one_of(&env.chat_lockers)
    }

    /// Why this command does not come from the pinned workspace (and app), if it does not.
    fn foreign(&self, pin: &SlackWorkspace) -> Option<String> {
        pin.unpinned(&self.team_id, &self.enterprise_id, &self.api_app_id)
    }
}

impl Ingress {
    pub async fn slack(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Reply {
        let Some(secret) = &self.slack_secret else {
            return Reply::error(
                503,
                "no slack.signing_secret is configured; refusing unsigned commands",
            );
        };
        if let Err(reply) = verify(secret, headers, body, now) {
            return reply;
        }
        // The app's one Request URL takes its buttons' clicks too, signed the same way.
        if let Ok(form) = serde_urlencoded::from_bytes::<interactive::Form>(body) {
            return self.interaction(form, now).await;
        }
        let cmd: SlashCommand = match serde_urlencoded::from_bytes(body) {
            Ok(c) => c,
            Err(e) => return Reply::error(400, format!("malformed slash command form: {e}")),
        };
        // Signed by this app, but the app may be installed in other workspaces too.
        if let Some(why) = cmd.foreign(&self.config.slack_workspace) {
            tracing::warn!(user_id = %cmd.user_id, %why, "slash command from another workspace refused");
            return say(
                "This command comes from a workspace shipit does not serve; nothing was done.",
            );
        }
        // shipit posts the result there later, with nobody watching: only where Slack
        // would send it.
        let prefix = &self.config.slack_response_url_prefix;
        if let Some(url) = cmd.response_url.as_deref() {
            if !url.starts_with(prefix.as_str()) {
                return say(format!(
                    "This command's response_url is not under {prefix} \
                     (slack.response_url_prefix in shipit's config); nothing was done."
                ));
            }
        }
        let mut words: Vec<&str> = cmd.text.split_whitespace().collect();
        // Everything after --override is its reason, flags' words included.
        let overriding = words
            .iter()
            .position(|w| *w == "--override")
            .map(|i| words.drain(i..).skip(1).collect::<Vec<_>>().join(" "));
        let flags = Flags {
            force: words.contains(&"--force"),
            dry_run: words.contains(&"--dry-run"),
        };
        words.retain(|w| *w != "--force" && *w != "--dry-run");
        let other = |also_rollback: bool| {
            matches!(
                words.first(),
                Some(
                    &("help" | "status" | "history" | "show" | "cancel" | "lock" | "unlock"
                        | "abort" | "approve" | "reject")
                )
            ) || (!also_rollback && words.first() == Some(&"rollback"))
        };
        if flags.force && other(false) {
            return say(format!(
                "--force goes only with /deploy APP VERSION; nothing was done.\n{USAGE}"
            ));
        }
        if overriding.is_some() && other(false) {
            return say(format!(
                "--override goes only with /deploy APP VERSION; nothing was done.\n{USAGE}"
            ));
        }
        if flags.dry_run && other(true) {
            return say(format!(
                "--dry-run goes only with /deploy APP VERSION and /deploy rollback APP; nothing was done.\n{USAGE}"
            ));
        }
        match words.as_slice() {
            [] | ["help", ..] => say(USAGE),
            ["status"] => self.status(None, now).await,
            ["status", app] => self.status(Some(app), now).await,
            ["history", rest @ ..] => match self.target(rest, 0) {
                Ok((app, env, _)) => self.history_text(app, env).await,
                Err(e) => say(e),
            },
            ["show", id] => self.show(&cmd, id).await,
            ["cancel", id] => self.chat_cancel(&cmd, id, now).await,
            ["approve", id] => self.chat_word(&cmd, id, true, None, now).await,
            ["reject", id, reason @ ..] => {
                let reason = reason.join(" ");
                self.chat_word(&cmd, id, false, Some(&reason), now).await
            }
            ["show" | "cancel" | "approve" | "reject", ..] => {
                say(format!("Which job? Give its id.\n{USAGE}"))
            }
            ["rollback", rest @ ..] => match self.target(rest, 0) {
                Ok((app, env, _)) => self.chat_rollback(&cmd, app, env, flags.dry_run, now).await,
                Err(e) => say(e),
            },
            ["lock", rest @ ..] => match self.target(rest, 1) {
                Ok((app, env, reason)) => {
                    self.chat_lock(&cmd, app, env, &reason.join(" "), now).await
                }
                Err(e) => say(e),
            },
            ["unlock", rest @ ..] => match self.target(rest, 0) {
                Ok((app, env, _)) => self.chat_unlock(&cmd, app, env, now).await,
                Err(e) => say(e),
            },
            ["abort", rest @ ..] => match self.target(rest, 0) {
                Ok((app, env, _)) => self.chat_abort(&cmd, app, env, now).await,
                Err(e) => say(e),
            },
            ["deploy", app, version, env @ ..] | [app, version, env @ ..] if env.len() <= 1 => {
                let env = env.first().copied();
                let asked = Asked {
                    flags,
                    overriding: overriding.as_deref(),
                };
                self.chat_deploy(&cmd, app, version, env, asked, now).await
            }
            _ => say(format!("I did not understand {:?}.\n{USAGE}", cmd.text)),
        }
    }

    /// Resolves `APP [ENV] REST…`: ENV is taken only if the app has it; `min_rest` words
    /// must remain (a lock needs a reason).
    fn target<'c, 'w>(
        &'c self,
        words: &[&'w str],
        min_rest: usize,
    ) -> Result<(&'c App, &'c Environment, Vec<&'w str>), String> {
        let Some((app_name, rest)) = words.split_first() else {
            return Err(format!("Which app?\n{USAGE}"));
        };
        let app = self.app(app_name)?;
        let (env, rest) = match rest.split_first() {
            Some((e, r)) if app.environments.contains_key(*e) => (*e, r),
            _ => (app.default_env.as_str(), rest),
        };
        if rest.len() < min_rest {
            return Err(format!(
                "A reason is needed: /deploy lock {} [ENV] REASON…",
                app.name
            ));
        }
        if let (0, Some(extra)) = (min_rest, rest.first()) {
            return Err(format!(
                "{extra:?} is not an environment of {} ({}).",
                app.name,
                envs(app)
            ));
        }
        let env = app
            .environments
            .get(env)
            .ok_or_else(|| format!("{} has no environment {env:?}.", app.name))?;
        Ok((app, env, rest.to_vec()))
    }

    fn app(&self, name: &str) -> Result<&App, String> {
        self.config.app(name).ok_or_else(|| {
            format!(
                "Unknown app {name:?}. Known apps: {}.",
                self.config
                    .apps
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// Refuses with a message unless the user may deploy there and nobody holds a manual lock.
    async fn deploy_gate(
        &self,
        cmd: &SlashCommand,
        app: &App,
        env: &Environment,
        now: DateTime<Utc>,
    ) -> Result<(), Reply> {
        if !cmd.may_deploy(env) {
            return Err(say(format!(
                "{} may not deploy {} to {} from chat; ask an admin to add you to chat_deployers.",
                cmd.who(),
                app.name,
                env.name
            )));
        }
        match self.ledger.lock_state(&app.name, &env.name, now).await {
            Ok(Some(l)) if l.job.is_none() => Err(say(format!(
                "{}. Nothing was queued; `/deploy unlock {} {}` lifts it.",
                lock_line(&app.name, &env.name, &l),
                app.name,
                env.name
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(say(format!(
                "Cannot read the lock of {}/{} ({e}); nothing was queued, try again.",
                app.name, env.name
            ))),
        }
    }

    async fn chat_deploy(
        &self,
        cmd: &SlashCommand,
        app: &str,
        version: &str,
        env: Option<&str>,
        asked: Asked<'_>,
        now: DateTime<Utc>,
    ) -> Reply {
        let Flags { force, dry_run } = asked.flags;
        let app = match self.app(app) {
            Ok(a) => a,
            Err(e) => return say(e),
        };
        let env_name = env.unwrap_or(&app.default_env);
        let Some(env) = app.environments.get(env_name) else {
            return say(format!(
                "{} has no environment {env_name:?} ({}).",
                app.name,
                envs(app)
            ));
        };
        let version = match Version::parse(version) {
            Ok(v) => v,
            Err(e) => {
                return say(format!(
                    "{e}. Nothing was queued. Example: /deploy {} 1.4.2",
                    app.name
                ))
            }
        };
        if let Err(r) = self.deploy_gate(cmd, app, env, now).await {
            return r;
        }
        if force && !cmd.is_one_of(&env.chat_forcers) {
            return say(format!(
                "{} may not use --force on {}/{}; nothing was queued. Ask someone in chat_forcers, or deploy a version whose checks pass.",
                cmd.who(),
                app.name,
                env.name
            ));
        }
        let job = DeployJob::new(
            &app.name,
            &env.name,
            app.package.clone(),
            version,
            cmd.source(),
            now,
        );
        let job = if force { job.forced() } else { job };
        let job = match asked.overriding {
            Some(reason) => job.overriding(reason),
            None => job,
        };
        if dry_run {
            return self.chat_plan(job, now).await;
        }
        if let Err(refused) = env.admit(&job, now) {
            return say(format!("{refused}. Nothing was queued."));
        }
        if let Some(refused) = self.change_calendar_refuses(env, &job, now).await {
            return say(format!("{refused}. Nothing was queued."));
        }
        self.chat_enqueue(job, "").await
    }

    /// Why `job` is refused now by its environment's SSM Change Calendar, as its deploy
    /// would be when it starts. A read that fails for a while, or takes more than a
    /// second (Slack wants its answer within 3 s), refuses nothing: the deploy reads it
    /// again before it takes the lock.
    async fn change_calendar_refuses(
        &self,
        env: &Environment,
        job: &DeployJob,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let (Some(name), Some(calendars)) = (&env.change_calendar, &self.calendars) else {
            return None;
        };
        if env.exempt(job) {
            return None;
        }
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            calendars.state(name, now),
        );
        let state = match read.await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                tracing::warn!(calendar = %name, error = %e, "cannot read the change calendar; the deploy reads it when it starts");
                return None;
            }
            Err(_) => {
                tracing::warn!(calendar = %name, "the change calendar took over a second; the deploy reads it when it starts");
                return None;
            }
        };
        let closed = crate::deploy::calendar::change_calendar_closed(name, state, now)?;
        Some(crate::deploy::calendar::refusal(job, &closed))
    }

    /// What the job would do, for the asker only; nothing is queued.
    async fn chat_plan(&self, job: DeployJob, now: DateTime<Utc>) -> Reply {
        let asks = super::plan::Asks {
            ledger: self.ledger.as_ref(),
            gate: self.gate.as_deref(),
            fleet: self.fleet.as_deref(),
        };
        match super::plan::plan(&self.config, asks, &job, now).await {
            Ok(plan) => say(plan.lines().join("\n")),
            Err(e) => say(format!(
                "Cannot tell what deploying {} {} would do ({e}); nothing was queued.",
                job.app, job.version
            )),
        }
    }

    async fn chat_enqueue(&self, job: DeployJob, what: &str) -> Reply {
        let forced = job_notes(&job);
        let text = format!(
            "Queued {what}{} {} to {} (job {}){forced}. Progress will be posted here.",
            job.app, job.version, job.env, job.id
        );
        match self.enqueue(vec![job]).await {
            Ok(_) => say(text),
            Err(r) => say(format!("Nothing was queued: {}", r.reason())),
        }
    }

    async fn chat_rollback(
        &self,
        cmd: &SlashCommand,
        app: &App,
        env: &Environment,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Reply {
        if let Err(r) = self.deploy_gate(cmd, app, env, now).await {
            return r;
        }
        let history = match self.ledger.history(&app.name, &env.name, 50).await {
            Ok(h) => h,
            Err(e) => {
                return say(format!(
                    "Cannot read the history of {}/{} ({e}); nothing was queued.",
                    app.name, env.name
                ))
            }
        };
        let faulty = match self.ledger.faulty(&app.name, &env.name).await {
            Ok(f) => f,
            Err(e) => {
                return say(format!(
                    "Cannot read the faulty versions of {}/{} ({e}); nothing was queued.",
                    app.name, env.name
                ))
            }
        };
        let (live, previous) = match rollback_target(&history, &faulty) {
            Ok(t) => t,
            Err(why) => {
                return say(format!(
                    "Nothing to roll back to on {}/{}: {why}.",
                    app.name, env.name
                ))
            }
        };
        let job = previous.rollback(Some(&live.id), cmd.source(), now);
        if dry_run {
            return self.chat_plan(job, now).await;
        }
        self.chat_enqueue(job, &format!("rollback from {} to ", live.version))
            .await
    }

    async fn chat_lock(
        &self,
        cmd: &SlashCommand,
        app: &App,
        env: &Environment,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Reply {
        if let Err(r) = lockers_only(cmd, app, env, "lock") {
            return r;
        }
        let lock = LockInfo::by_person(cmd.who(), reason, now);
        match self.ledger.try_lock(&app.name, &env.name, &lock, now).await {
            Ok(Ok(_)) => say(format!(
                "Locked {}/{}: {reason}. Deploys wait until `/deploy unlock {} {}`.",
                app.name, env.name, app.name, env.name
            )),
            Ok(Err(held)) => say(format!(
                "Already held: {}.",
                lock_line(&app.name, &env.name, &held)
            )),
            Err(e) => say(format!("Could not lock {}/{}: {e}", app.name, env.name)),
        }
    }

    async fn chat_unlock(
        &self,
        cmd: &SlashCommand,
        app: &App,
        env: &Environment,
        now: DateTime<Utc>,
    ) -> Reply {
        if let Err(r) = lockers_only(cmd, app, env, "unlock") {
            return r;
        }
        match self.ledger.unlock(&app.name, &env.name, now).await {
            Ok(Unlocked::Released(l)) => say(format!(
                "Unlocked {}/{} (was: {}).",
                app.name,
                env.name,
                lock_line(&app.name, &env.name, &l)
            )),
            Ok(Unlocked::NotLocked) => say(format!("{}/{} was not locked.", app.name, env.name)),
            Ok(Unlocked::Deploying(l)) => say(format!(
                "{}; unlock removes only a lock taken with /deploy lock. To stop that deploy: /deploy abort {} {}",
                lock_line(&app.name, &env.name, &l),
                app.name,
                env.name
            )),
            Err(e) => say(format!("Could not unlock {}/{}: {e}", app.name, env.name)),
        }
    }

    async fn chat_abort(
        &self,
        cmd: &SlashCommand,
        app: &App,
        env: &Environment,
        now: DateTime<Utc>,
    ) -> Reply {
        if let Err(r) = lockers_only(cmd, app, env, "abort deploys of") {
            return r;
        }
        match self
            .ledger
            .request_abort(&app.name, &env.name, &cmd.who(), now)
            .await
        {
            Ok(Some(l)) => say(format!(
                "Aborting the deploy of {}/{} (job {}): it stops after the command in flight and puts back the nodes it restarted.",
                app.name,
                env.name,
                l.job.map_or("?".to_string(), |j| j.to_string())
            )),
            Ok(None) => say(format!("No deploy of {}/{} is running.", app.name, env.name)),
            Err(e) => say(format!("Could not abort on {}/{}: {e}", app.name, env.name)),
        }
    }

    async fn status(&self, app: Option<&str>, now: DateTime<Utc>) -> Reply {
        let apps: Vec<&App> = match app {
            Some(name) => match self.app(name) {
                Ok(a) => vec![a],
                Err(e) => return say(e),
            },
            None => self.config.apps.values().collect(),
        };
        let mut lines = vec![];
        for app in apps {
            for env in app.environments.values() {
                lines.push(
                    match EnvStatus::read(&*self.ledger, &app.name, &env.name, now).await {
                        Ok(status) => status.line(),
                        Err(e) => format!("{}/{}: unavailable: {e}", app.name, env.name),
                    },
                );
            }
        }
        say(lines.join("\n"))
    }

    /// A job's story, for whoever asked for it or may deploy there (it holds what its
    /// commands printed).
    async fn show(&self, cmd: &SlashCommand, id: &str) -> Reply {
        let job = match job_id(id) {
            Ok(job) => job,
            Err(r) => return r,
        };
        let Some(stories) = &self.stories else {
            return say("Job stories are not kept where this shipit runs.");
        };
        match stories.story(&job).await {
            Ok(Some(story)) => match self.may_touch(cmd, &story.job, "read the story of") {
                Ok(()) => say(story.chat_text()),
                Err(r) => r,
            },
            Ok(None) => say(format!("No job {job} is known (or it is no longer kept).")),
            Err(e) => say(format!("The story of job {job} is unavailable: {e}")),
        }
    }

    /// Refuses, saying what, unless `cmd` comes from who asked for `job` or from someone
    /// who may deploy where it goes.
    fn may_touch(&self, cmd: &SlashCommand, job: &DeployJob, what: &str) -> Result<(), Reply> {
        let asked = matches!(&job.source, Source::Chat { user_id, .. } if *user_id == cmd.user_id);
        let may = match self.config.target(job) {
            Ok((_, env)) => asked || cmd.may_deploy(env),
            Err(_) => asked,
        };
        match may {
            true => Ok(()),
            false => Err(say(format!(
                "{} may not {what} job {}: only who asked for it and who may deploy {}/{} can.",
                cmd.who(),
                job.id,
                job.app,
                job.env
            ))),
        }
    }

    /// Takes a queued job off the queue, for whoever asked for it or may deploy there.
    async fn chat_cancel(&self, cmd: &SlashCommand, id: &str, now: DateTime<Utc>) -> Reply {
        let job = match job_id(id) {
            Ok(job) => job,
            Err(r) => return r,
        };
        let (Some(stories), Some(cancel)) = (&self.stories, &self.cancel) else {
            return say(
                "Taking a queued job off the queue is not available here; \
                 once it runs, /deploy abort APP ENV stops it.",
            );
        };
        let queued = match stories.story(&job).await {
            Ok(Some(story)) => story.job,
            Ok(None) => return say(format!("No job {job} is known (or it is no longer kept).")),
            Err(e) => return say(format!("Could not read job {job}: {e}; nothing was done.")),
        };
        if let Err(r) = self.may_touch(cmd, &queued, "cancel") {
            return r;
        }
        let what = format!("{} {} to {}", queued.app, queued.version, queued.env);
        match cancel.cancel(&queued, &cmd.who(), now).await {
            Ok(None) => say(format!("Cancelled job {job} ({what}): it will not run.")),
            Ok(Some(JobStatus::Running)) => say(format!(
                "Job {job} ({what}) is running: /deploy abort {} {} stops it and puts back what it restarted.",
                queued.app, queued.env
            )),
            Ok(Some(status)) => say(format!("Job {job} ({what}) is not queued: it is {status}.")),
            // The runtime's error says what, if anything, was done.
            Err(e) => say(format!("Could not cancel job {job}: {e}.")),
        }
    }

    /// An approver's word on a job waiting for approval (see `approve::give`).
    async fn chat_word(
        &self,
        cmd: &SlashCommand,
        id: &str,
        approved: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Reply {
        let job = match job_id(id) {
            Ok(job) => job,
            Err(r) => return r,
        };
        let Some(stories) = &self.stories else {
            return say("Approvals are not available where this shipit runs.");
        };
        let (config, ledger) = (&self.config, &*self.ledger);
        let word = approve::Word {
            job: &job,
            by: &cmd.user_id,
            approved,
            reason,
        };
        match approve::give(config, ledger, &**stories, word, now).await {
            Ok(said) | Err(said) => say(said),
        }
    }

    async fn history_text(&self, app: &App, env: &Environment) -> Reply {
        match history(&*self.ledger, &app.name, &env.name, 10).await {
            Ok(h) if h.is_empty() => {
                say(format!("{}/{}: {NOTHING_LIVE}.", app.name, env.name))
            }
            Ok(h) => {
                let mut lines = vec![format!(
                    "Last deploys of {}/{} (newest first):",
                    app.name, env.name
                )];
                lines.extend(
                    h.iter()
                        .map(|r| format!("• {}", history_line(&r.entry, r.faulty.as_ref()))),
                );
                say(lines.join("\n"))
            }
            Err(e) => say(format!(
                "History of {}/{} is unavailable: {e}",
                app.name, env.name
            )),
        }
    }
}

/// A job id typed in chat, or why it is none.
fn job_id(id: &str) -> Result<JobId, Reply> {
    JobId::parse(id).ok_or_else(|| {
        say(format!(
            "{id:?} is not a job id (20 hex digits, as /deploy history shows them)."
        ))
    })
}

/// Refuses, saying what, unless the user may lock, unlock and abort there.
fn lockers_only(cmd: &SlashCommand, app: &App, env: &Environment, what: &str) -> Result<(), Reply> {
    if cmd.may_lock(env) {
        Ok(())
    } else {
        Err(say(format!(
            "{} may not {what} {}/{}.",
            cmd.who(),
            app.name,
            env.name
        )))
    }
}

fn envs(app: &App) -> String {
    app.environments
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn headers(ts: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-slack-request-timestamp", ts.parse().unwrap());
        h.insert("x-slack-signature", "v0=00".parse().unwrap());
        h
    }

    #[test]
    fn a_timestamp_at_the_ends_of_i64_is_stale_not_a_panic() {
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        for ts in [i64::MIN.to_string(), i64::MAX.to_string()] {
            let reply = verify("secret", &headers(&ts), b"", now).unwrap_err();
            assert_eq!(reply.status, 401);
            assert!(
                reply.body.to_string().contains("stale request"),
                "{reply:?}"
            );
        }
    }
}
