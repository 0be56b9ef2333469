//! A node's shell command, rendered in one place for every fleet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::template::Template;
use super::{App, Environment};
use crate::deploy::command::{
    Command, CommandKind, HOOK_FAILED, LATE, REFUSED, REFUSED_EXIT, UNHEALTHY,
};
use crate::deploy::rollout::{Rollout, HOOK_KILL_GRACE_SECONDS};

/// The first health check after a restart that fails is retried this soon (see
/// `until_healthy`).
pub const HEALTH_FIRST_RETRY_MILLIS: u64 = 25;

/// Where a command runs: the node's name, its app directory, and its own placeholders.
pub struct Site<'a> {
    pub node: &'a str,
    pub dir: Option<&'a str>,
    pub vars: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// A sync asked for the installed version of an app that has no `version` command.
    #[error("apps.{0}.version is not set")]
    NoVersionCommand(String),
    #[error("rendering the {kind:?} command: {reason}")]
    Render { kind: CommandKind, reason: String },
}

impl App {
    /// The shell script for `cmd` at `site`, every value shell-quoted (see `template`);
    /// `None` where the app has no such command (no health check: healthy). A command
    /// sent under a lock starts with its fence (see `fenced`).
    pub fn script(
        &self,
        env: &Environment,
        cmd: &Command,
        site: &Site,
    ) -> Result<Option<String>, ScriptError> {
        let (kind, version) = (cmd.kind, &cmd.version);
        let layout_version;
        let template = match kind {
            CommandKind::Check => {
                let name = cmd.check.as_deref().unwrap_or_default();
                match self.check_named(env, name).map(|c| &c.source) {
                    Some(super::CheckSource::Node { command }) => command,
                    _ => {
                        return Err(ScriptError::Render {
                            kind,
                            reason: format!("no node check named {name:?}"),
                        })
                    }
                }
            }
            CommandKind::Install => &self.install,
            CommandKind::Restart => &self.restart,
            CommandKind::Health => match &self.health {
                Some(h) => h,
                None => return Ok(None),
            },
            CommandKind::Version => match (&self.version, env.layout.version_command()) {
                (Some(v), _) => v,
                (None, Some(text)) => {
                    layout_version = Template::parse(text).map_err(|e| ScriptError::Render {
                        kind,
                        reason: e.to_string(),
                    })?;
                    &layout_version
                }
                (None, None) => return Err(ScriptError::NoVersionCommand(self.name.clone())),
            },
        };
        let render = |kind: CommandKind, template: &Template| {
            let package = self.package.to_string();
            let venv = env.layout.venv(kind, version);
            template
                .render(|name| match name {
                    "app" => Some(self.name.as_str()),
                    "env" => Some(env.name.as_str()),
                    "package" => Some(package.as_str()),
                    "version" => Some(version.as_str()),
                    "node" => Some(site.node),
                    "dir" => site.dir,
                    "venv" => Some(venv.as_str()),
                    "index" => self.index.as_ref().map(|i| i.url.as_str()),
                    other => site.vars.get(other).map(String::as_str),
                })
                .map_err(|e| ScriptError::Render {
                    kind,
                    reason: e.to_string(),
                })
        };
        let python = site.vars.get("python").map_or("python3", String::as_str);
        let mut script = env
            .layout
            .wrap(kind, version, python, &render(kind, template)?);
        if let (CommandKind::Restart, Some(health)) = (kind, &self.health) {
            let check = render(CommandKind::Health, health)?;
            script = until_healthy(&script, &check, &self.rollout);
        }
        if kind == CommandKind::Restart {
            let hook = |template: &Option<Template>, seconds: Option<u64>| {
                template
                    .as_ref()
                    .map(|t| {
                        let seconds =
                            seconds.unwrap_or(crate::deploy::rollout::DEFAULT_HOOK_SECONDS);
                        render(kind, t).map(|s| (s, seconds))
                    })
                    .transpose()
            };
            let r = &self.rollout;
            let pre = hook(&self.pre_restart, r.pre_restart_timeout_seconds)?;
            let post = hook(&self.post_restart, r.post_restart_timeout_seconds)?;
            if pre.is_some() || post.is_some() {
                script = with_hooks(&script, pre, post);
            }
        }
        // No key: a plan shown to a reader, who wants the app's command, not its guard.
        if matches!(kind, CommandKind::Install | CommandKind::Restart) && !cmd.key.is_empty() {
            script = once(
                &self.name,
                &env.name,
                site,
                &cmd.key,
                cmd.not_after,
                &script,
            );
        }
        Ok(Some(match cmd.fence {
            0 => script,
            fence => fenced(&self.name, &env.name, site, fence, &script),
        }))
    }
}

/// `restart` (with its health checks) between the app's drain hooks: `pre_restart` just
/// before it, whose failure fails the restart before anything restarted, and
/// `post_restart` once the node passed its checks. Each runs under `timeout` (TERM at its
/// time, KILL 5 s later), in a shell of its own so that its `exit` ends only it; a failed
/// hook says which, last, so that the deploy can tell it from the version failing.
fn with_hooks(restart: &str, pre: Option<(String, u64)>, post: Option<(String, u64)>) -> String {
    let hook = |name: &str, (script, seconds): (String, u64)| {
        // A rendered template quotes its values already; NUL is all quoting refuses.
        let quoted = shlex::try_quote(&script).map_or_else(|_| "false".into(), |q| q.into_owned());
        format!(
            "timeout -k {HOOK_KILL_GRACE_SECONDS} {seconds} sh -c {quoted} || {{ shipit_status=$?; \
             if [ \"$shipit_status\" -eq 124 ] || [ \"$shipit_status\" -eq 137 ]; then \
             echo \"{HOOK_FAILED} {name} timed out after {seconds} s\" >&2; \
             else echo \"{HOOK_FAILED} {name} exited $shipit_status\" >&2; fi; \
             exit \"$shipit_status\"; }}\n"
        )
    };
    format!(
        "{}(\n{restart}\n) || exit $?\n{}",
        pre.map_or(String::new(), |p| hook("pre_restart", p)),
        post.map_or(String::new(), |p| hook("post_restart", p)),
    )
}

/// `restart`, then `check` until it passes: the first retry 25 ms after a failed check,
/// each later one twice as late up to `health_interval_seconds`, for up to
/// `health_timeout_seconds` (and less than a second more: `date +%s` is what every
/// node's shell can read). Services are usually back within a fraction of a second, and
/// nodes restart one after another, so each wait counts once per node. Waiting here, not
/// in the deploy, makes a restart and its checks one command: one delivery, and on AWS
/// one send and its polls instead of one per check. A node that stays unhealthy prints
/// its last check's output, then `UNHEALTHY` and how many checks it made, and exits
/// with the check's status. Both run in subshells, so an `exit` in them ends only them.
fn until_healthy(restart: &str, check: &str, rollout: &Rollout) -> String {
    let timeout = rollout.health_timeout_seconds;
    let most = rollout.health_interval_seconds * 1000;
    format!(
        "(\n{restart}\n) || exit $?\n\
         shipit_checks=1\n\
         shipit_wait={HEALTH_FIRST_RETRY_MILLIS}\n\
         shipit_end=$(($(date +%s) + {timeout} + 1))\n\
         until shipit_out=$( (\n{check}\n) 2>&1 ); do\n\
         shipit_status=$?\n\
         if [ \"$(date +%s)\" -ge \"$shipit_end\" ]; then \
         printf '%s\\n' \"$shipit_out\" >&2; \
         echo \"{UNHEALTHY} $shipit_checks checks in {timeout} s\" >&2; \
         exit \"$shipit_status\"; fi\n\
         shipit_ms=$((shipit_wait % 1000 + 1000))\n\
         sleep \"$((shipit_wait / 1000)).${{shipit_ms#1}}\"\n\
         shipit_wait=$((shipit_wait * 2))\n\
         if [ \"$shipit_wait\" -gt {most} ]; then shipit_wait={most}; fi\n\
         shipit_checks=$((shipit_checks + 1))\n\
         done"
    )
}

/// How long a node keeps the record of a command it ran (see `once`).
const RUNS_KEPT_DAYS: u32 = 14;

/// Where, in a node's directory, `once` keeps its records.
const RUNS: &str = ".shipit/runs";

/// The end of a run's output (stdout and stderr, as they came) that a node answers with:
/// SSM keeps the first 24,000 characters of a command's output, and what failed is last.
const RUNS_OUTPUT_TAIL: usize = 20_000;

/// The record of command `key` in a node's directory (see `once`): its `pid` file holds
/// the first run's pid, boot id and start time.
pub fn run_record(key: &str) -> String {
    format!("{RUNS}/{}", run_id(key))
}

/// Keys hold job ids and step names; their hash is a plain file name.
fn run_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))[..24].to_string()
}

/// `script`, run at most once on this node for command `key`, however often it is sent
/// (a send retried after its answer was lost, a lookup that missed it in an eventually
/// consistent listing, a replayed step). The first send makes the key's directory under
/// `.shipit/runs` in the node directory (`mkdir` is atomic), records its process (pid,
/// boot id, start time), and keeps the exit code and output; a later send waits for the
/// first to end and answers what it answered. A first run that died without an end (a
/// reboot, a kill; or before it wrote its pid, a minute ago) is run again. Records older
/// than two weeks are pruned. A node where the record cannot be made fails the command
/// rather than run it unguarded.
pub fn once(
    app: &str,
    env: &str,
    site: &Site,
    key: &str,
    not_after: Option<DateTime<Utc>>,
    script: &str,
) -> String {
    let runs = match site.dir {
        Some(_) => format!("./{RUNS}"),
        None => format!("/var/tmp/shipit-{app}-{env}/runs"),
    };
    let runs = shlex::try_quote(&runs).map_or_else(|_| "/dev/null".into(), |q| q.into_owned());
    let id = run_id(key);
    // Checked once the key is this send's to run, so that a late copy of a command that
    // ran answers what it did; the record is dropped, so a timely send may still run it.
    let deadline = not_after.map_or(String::new(), |t| {
        format!(
            "if [ \"$(date +%s)\" -gt {secs} ]; then rm -rf \"$shipit_run\"; \
             echo \"{LATE} this command had to start by {at}; it reached this node at $(date -u +%Y-%m-%dT%H:%M:%SZ) \
             (held up on its way, or this node's clock is off)\" >&2; exit {REFUSED_EXIT}; fi\n",
            secs = t.timestamp(),
            at = t.format("%Y-%m-%dT%H:%M:%SZ"),
        )
    });
    format!(
        "shipit_runs={runs}\n\
         shipit_run=\"$shipit_runs/{id}\"\n\
         mkdir -p \"$shipit_runs\" || {{ echo \"shipit: cannot keep a record of this command in $shipit_runs\" >&2; exit 1; }}\n\
         find \"$shipit_runs\" -mindepth 1 -maxdepth 1 -mtime +{RUNS_KEPT_DAYS} -exec rm -rf {{}} + 2>/dev/null\n\
         shipit_boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)\n\
         shipit_boot=${{shipit_boot:--}}\n\
         shipit_began() {{ shipit_b=$(awk '{{print $22}}' \"/proc/$1/stat\" 2>/dev/null); echo \"${{shipit_b:--}}\"; }}\n\
         shipit_dead() {{\n\
         shipit_pid=; shipit_was=; shipit_at=\n\
         read -r shipit_pid shipit_was shipit_at 2>/dev/null < \"$shipit_run/pid\"\n\
         if [ -z \"$shipit_pid\" ]; then [ -n \"$(find \"$shipit_run\" -maxdepth 0 -mmin +1 2>/dev/null)\" ]; return; fi\n\
         [ \"$shipit_was\" != \"$shipit_boot\" ] || ! kill -0 \"$shipit_pid\" 2>/dev/null || [ \"$(awk '{{print $3}}' \"/proc/$shipit_pid/stat\" 2>/dev/null)\" = Z ] || [ \"$(shipit_began \"$shipit_pid\")\" != \"$shipit_at\" ]\n\
         }}\n\
         while ! mkdir \"$shipit_run\" 2>/dev/null; do\n\
         if [ -f \"$shipit_run/exit\" ]; then tail -c {RUNS_OUTPUT_TAIL} \"$shipit_run/out\" 2>/dev/null; exit \"$(cat \"$shipit_run/exit\")\"; fi\n\
         if [ ! -d \"$shipit_run\" ]; then mkdir \"$shipit_run\" && break; echo \"shipit: cannot keep a record of this command in $shipit_runs\" >&2; exit 1; fi\n\
         if shipit_dead && mkdir \"$shipit_run.reap\" 2>/dev/null; then\n\
         if [ ! -f \"$shipit_run/exit\" ] && shipit_dead; then rm -rf \"$shipit_run\"; fi\n\
         rmdir \"$shipit_run.reap\"; continue; fi\n\
         if [ -n \"$(find \"$shipit_run.reap\" -maxdepth 0 -mmin +1 2>/dev/null)\" ]; then rmdir \"$shipit_run.reap\" 2>/dev/null; fi\n\
         sleep 1\n\
         done\n\
         {deadline}\
         echo \"$$ $shipit_boot $(shipit_began $$)\" > \"$shipit_run/pid\" || {{ rm -rf \"$shipit_run\"; echo \"shipit: cannot keep a record of this command in $shipit_runs\" >&2; exit 1; }}\n\
         ( {script}\n\
         ) > \"$shipit_run/out\" 2>&1\n\
         shipit_code=$?\n\
         echo \"$shipit_code\" > \"$shipit_run/exit.new\" && mv \"$shipit_run/exit.new\" \"$shipit_run/exit\"\n\
         tail -c {RUNS_OUTPUT_TAIL} \"$shipit_run/out\"\n\
         exit \"$shipit_code\""
    )
}

/// `script`, run only if this node has not taken a command under a newer lock generation
/// of app+env: the node is the last to know that a deploy lost its lock (its lease lapsed
/// while it was stalled, and another deploy took over), so it refuses the stale holder
/// (exit 75) instead of trusting it. The generation is kept in the node's app directory,
/// where every runtime runs the command (by a path relative to it: a directory the config
/// names relative to shipit's own would be looked for inside itself), or under /var/tmp
/// when it has none. A generation that cannot be written fails the command: a fence that
/// silently does not hold is no fence.
pub fn fenced(app: &str, env: &str, site: &Site, fence: u64, script: &str) -> String {
    let file = match site.dir {
        Some(_) => format!("./.shipit-fence-{env}"),
        None => format!("/var/tmp/shipit-{app}-{env}.fence"),
    };
    // App, env and directory come from the config, never from outside; quoted anyway.
    let file = shlex::try_quote(&file).map_or_else(|_| "/dev/null".into(), |q| q.into_owned());
    // The shell reads the generation itself: `$(cat …)` forked twice before every command,
    // on the restart path that runs one node at a time.
    format!(
        "shipit_fence={file}\n\
         shipit_seen=0\n\
         {{ read -r shipit_seen < \"$shipit_fence\"; }} 2>/dev/null\n\
         if [ \"$shipit_seen\" -gt {fence} ] 2>/dev/null; then \
         echo \"{REFUSED} this node took commands under lock generation $shipit_seen, \
         newer than this deploy's {fence} (it lost its lock)\" >&2; exit {REFUSED_EXIT}; fi\n\
         echo {fence} 2>/dev/null > \"$shipit_fence\" ||          {{ echo \"shipit: cannot record lock generation {fence} in $shipit_fence\" >&2; exit 1; }}\n\
         {script}"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::process::Command;

    use super::*;

    fn run(dir: &std::path::Path, fence: u64) -> (Option<i32>, String) {
        let vars = BTreeMap::new();
        let d = dir.display().to_string();
        let site = Site {
            node: "n1",
            dir: Some(&d),
            vars: &vars,
        };
        sh_in(
            dir,
            &fenced("hello", "production", &site, fence, "echo ran"),
        )
    }

    /// Runs `script` with `sh` in `dir`: (exit code, stdout then stderr).
    fn sh_in(dir: &std::path::Path, script: &str) -> (Option<i32>, String) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn a_node_refuses_commands_from_a_lock_generation_older_than_one_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(run(dir.path(), 3), (Some(0), "ran\n".into()));
        assert_eq!(run(dir.path(), 3).0, Some(0), "the same holder again");
        assert_eq!(run(dir.path(), 4).0, Some(0), "a newer holder");
        let (code, out) = run(dir.path(), 3);
        assert_eq!(code, Some(75));
        assert!(
            out.contains("took commands under lock generation 4, newer than this deploy's 3"),
            "{out}"
        );
        assert!(!out.contains("ran"));
        // Written by hand without a newline, or unreadable as a number.
        std::fs::write(dir.path().join(".shipit-fence-production"), "9").unwrap();
        assert_eq!(run(dir.path(), 8).0, Some(75));
        std::fs::write(dir.path().join(".shipit-fence-production"), "junk\n").unwrap();
        assert_eq!(run(dir.path(), 8), (Some(0), "ran\n".into()));
    }

    /// Runs `once(key, script)` in `dir`: (exit code, output).
    fn run_once(dir: &std::path::Path, key: &str, script: &str) -> (Option<i32>, String) {
        run_once_by(dir, key, None, script)
    }

    /// The same, for a command that must start by `not_after`.
    fn run_once_by(
        dir: &std::path::Path,
        key: &str,
        not_after: Option<chrono::DateTime<chrono::Utc>>,
        script: &str,
    ) -> (Option<i32>, String) {
        let vars = BTreeMap::new();
        let site = Site {
            node: "n1",
            dir: Some("n1"),
            vars: &vars,
        };
        sh_in(
            dir,
            &once("hello", "production", &site, key, not_after, script),
        )
    }

    #[test]
    fn a_command_that_reaches_its_node_too_late_does_not_start_unless_its_key_ran_there() {
        use crate::deploy::command::NodeResult;
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let past = now - chrono::Duration::seconds(5);
        let script = "echo ran >> count; echo ok";
        let (code, out) = run_once_by(dir.path(), "j1:install", Some(past), script);
        assert_eq!(code, Some(REFUSED_EXIT), "{out}");
        assert!(
            out.starts_with(LATE) && out.contains("had to start by"),
            "{out}"
        );
        assert!(!dir.path().join("count").exists(), "it ran");
        let late = NodeResult::Failed {
            exit_code: code,
            output: out,
        };
        assert!(late.is_late() && !late.is_refused());
        // Its record is not kept: a send in time runs it, and a late copy of it then
        // answers what it did instead of refusing.
        let soon = now + chrono::Duration::seconds(120);
        assert_eq!(
            run_once_by(dir.path(), "j1:install", Some(soon), script),
            (Some(0), "ok\n".into())
        );
        assert_eq!(
            run_once_by(dir.path(), "j1:install", Some(past), script),
            (Some(0), "ok\n".into())
        );
        let runs = std::fs::read_to_string(dir.path().join("count")).unwrap();
        assert_eq!(runs.lines().count(), 1);
    }

    #[test]
    fn a_key_runs_once_on_a_node_and_a_second_send_answers_what_the_first_did() {
        let dir = tempfile::tempdir().unwrap();
        let count = || {
            std::fs::read_to_string(dir.path().join("count"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        let script = "echo ran >> count; echo 'it said so'; exit 3";
        assert_eq!(
            run_once(dir.path(), "j1:install", script),
            (Some(3), "it said so\n".into())
        );
        assert_eq!(
            run_once(dir.path(), "j1:install", script),
            (Some(3), "it said so\n".into())
        );
        assert_eq!(count(), 1, "the second send ran it again");
        // Another key runs.
        assert_eq!(run_once(dir.path(), "j1:restart:n1", script).0, Some(3));
        assert_eq!(count(), 2);

        // Sent again while the first still runs: waits for it and answers its result.
        let slow = "sleep 1; echo ran >> count; echo done";
        let first = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || run_once(&dir, "j2:restart:n1", slow))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = run_once(dir.path(), "j2:restart:n1", slow);
        assert_eq!(first.join().unwrap(), (Some(0), "done\n".into()));
        assert_eq!(second, (Some(0), "done\n".into()));
        assert_eq!(count(), 3);

        // A first run that died without an end (its process is gone) is run again.
        let runs = dir.path().join(".shipit/runs");
        let before: Vec<_> = std::fs::read_dir(&runs).unwrap().collect();
        let gone = Command::new("true").spawn().unwrap();
        let pid = gone.id();
        let _ = { gone }.wait();
        let key = "j3:install";
        let record = dir.path().join(run_record(key));
        std::fs::create_dir(&record).unwrap();
        std::fs::write(record.join("pid"), format!("{pid} x 1\n")).unwrap();
        assert_eq!(
            run_once(dir.path(), key, "echo ran >> count"),
            (Some(0), String::new())
        );
        assert_eq!(count(), 4);
        assert_eq!(std::fs::read_dir(&runs).unwrap().count(), before.len() + 1);
        // One that died before it wrote its pid, over a minute ago: run again too.
        let record = dir.path().join(run_record("j5:install"));
        std::fs::create_dir(&record).unwrap();
        let touched = Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(&record)
            .status()
            .unwrap();
        assert!(touched.success());
        assert_eq!(
            run_once(dir.path(), "j5:install", "echo ran >> count").0,
            Some(0)
        );
        assert_eq!(count(), 5);
        // A record that cannot be made (here a file is in its way): no endless wait.
        std::fs::write(dir.path().join(run_record("j6:install")), "").unwrap();
        let (code, out) = run_once(dir.path(), "j6:install", "echo ran >> count");
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("cannot keep a record"), "{out}");
        assert_eq!(count(), 5);

        // Where no record can be kept, nothing runs.
        let bad = tempfile::tempdir().unwrap();
        std::fs::write(
            bad.path().join(".shipit"),
            "a file where the directory goes",
        )
        .unwrap();
        let (code, out) = run_once(bad.path(), "j4:install", "echo ran");
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("cannot keep a record of this command"),
            "{out}"
        );
    }

    #[test]
    fn the_fence_is_kept_where_the_command_runs_and_a_fence_that_cannot_be_kept_fails() {
        // A node directory named relative to shipit's working directory: the command
        // runs inside it, so the generation goes there, not into `n1/n1`.
        let base = tempfile::tempdir().unwrap();
        let node = base.path().join("n1");
        std::fs::create_dir(&node).unwrap();
        let vars = BTreeMap::new();
        let site = Site {
            node: "n1",
            dir: Some("n1"),
            vars: &vars,
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(fenced("hello", "production", &site, 5, "echo ran"))
            .current_dir(&node)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let kept = std::fs::read_to_string(node.join(".shipit-fence-production")).unwrap();
        assert_eq!(kept.trim(), "5");

        // Unwritable (here a directory stands where the file goes): the command fails
        // closed instead of running unfenced.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".shipit-fence-production")).unwrap();
        let (code, out) = run(dir.path(), 3);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("cannot record lock generation 3"), "{out}");
        assert!(!out.contains("ran"), "{out}");
    }

    /// Runs `until_healthy` under sh in `dir` with a 1 s timeout: (exit code, stdout,
    /// stderr).
    fn wait(dir: &std::path::Path, restart: &str, check: &str) -> (Option<i32>, String, String) {
        let rollout = Rollout {
            health_timeout_seconds: 1,
            health_interval_seconds: 1,
            ..Rollout::default()
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(until_healthy(restart, check, &rollout))
            .current_dir(dir)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }

    #[test]
    fn a_restart_waits_on_the_node_until_its_service_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        // Passes at the third check; each check notes the wait that follows it if it fails.
        let check = "echo $shipit_wait >> checks; [ $(wc -l < checks) -ge 3 ] || exit 7";
        let (code, _, err) = wait(dir.path(), "echo restarted > restart", check);
        assert_eq!(code, Some(0), "{err}");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("restart"), "restarted\n");
        assert_eq!(read("checks"), "25\n50\n100\n", "backs off from 25 ms");
    }

    #[test]
    fn a_service_that_never_passes_gets_the_whole_timeout_then_the_node_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let check = "echo $shipit_wait >> checks; echo 'HTTP 502 from /health'; exit 7";
        let (code, _, err) = wait(dir.path(), "true", check);
        assert_eq!(code, Some(7), "the check's own status: {err}");
        let checks: Vec<u64> = std::fs::read_to_string(dir.path().join("checks"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        // 25 + 50 + 100 + 200 + 400 ms of waits fit in the second it must keep checking.
        assert!(checks.len() >= 6, "{checks:?}");
        assert!(
            checks.windows(2).all(|w| w[1] == (w[0] * 2).min(1000)),
            "{checks:?}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines[lines.len() - 2..],
            [
                "HTTP 502 from /health".to_string(),
                format!("{UNHEALTHY} {} checks in 1 s", checks.len())
            ]
        );
    }

    #[test]
    fn a_failed_restart_is_not_health_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, err) = wait(
            dir.path(),
            "echo 'no such service' >&2; exit 3",
            "touch checked",
        );
        assert_eq!((code, err.as_str()), (Some(3), "no such service\n"));
        assert!(!dir.path().join("checked").exists());
    }

    #[test]
    fn an_exit_in_the_restart_or_the_check_ends_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, err) = wait(dir.path(), "exit 0", "touch checked; exit 0");
        assert_eq!(code, Some(0), "{err}");
        assert!(
            dir.path().join("checked").exists(),
            "checked after the restart's exit 0"
        );
    }
    /// Runs `with_hooks` around a restart that logs, health-checked by `check`: (exit
    /// code, stderr, the log).
    fn hooked(
        dir: &std::path::Path,
        pre: Option<(&str, u64)>,
        check: &str,
        post: Option<(&str, u64)>,
    ) -> (Option<i32>, String, String) {
        let rollout = Rollout {
            health_timeout_seconds: 1,
            health_interval_seconds: 1,
            ..Rollout::default()
        };
        let restart = until_healthy("echo restart >> log", check, &rollout);
        let own = |h: Option<(&str, u64)>| h.map(|(s, t)| (s.to_string(), t));
        let out = Command::new("sh")
            .arg("-c")
            .arg(with_hooks(&restart, own(pre), own(post)))
            .current_dir(dir)
            .output()
            .unwrap();
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), err, log)
    }

    #[test]
    fn drain_hooks_run_around_the_restart_and_a_failed_one_says_which() {
        // Each in a shell of its own: its exit ends only it.
        let pre = Some(("echo pre >> log; exit 0", 5));
        let post = Some(("echo post >> log", 5));
        let dir = tempfile::tempdir().unwrap();
        let (code, err, log) = hooked(dir.path(), pre, "true", post);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(log, "pre\nrestart\npost\n");

        // A pre_restart that fails: nothing restarts, and the last line says so.
        let dir = tempfile::tempdir().unwrap();
        let failing = Some(("echo 'target group not found' >&2; exit 3", 5));
        let (code, err, log) = hooked(dir.path(), failing, "true", post);
        assert_eq!(code, Some(3));
        assert_eq!(log, "");
        assert_eq!(
            err.lines().collect::<Vec<_>>(),
            [
                "target group not found",
                &format!("{HOOK_FAILED} pre_restart exited 3")
            ]
        );

        // A node that stays unhealthy is not put back in: post_restart does not run.
        let dir = tempfile::tempdir().unwrap();
        let (code, err, log) = hooked(dir.path(), pre, "exit 4", post);
        assert_eq!(code, Some(4), "{err}");
        assert!(!log.contains("post"), "{log}");
        assert!(err.contains(UNHEALTHY), "{err}");

        // A hook past its time is stopped, and says so.
        let dir = tempfile::tempdir().unwrap();
        let (code, err, log) = hooked(dir.path(), pre, "true", Some(("sleep 30", 1)));
        assert_eq!(code, Some(124), "{err}");
        assert!(log.ends_with("restart\n"), "{log}");
        assert!(
            err.trim_end()
                .ends_with(&format!("{HOOK_FAILED} post_restart timed out after 1 s")),
            "{err}"
        );
    }
}
