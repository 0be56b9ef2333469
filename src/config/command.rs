//! A node's shell command, rendered in one place for every fleet.

use std::collections::BTreeMap;

use super::template::Template;
use super::{App, Environment};
use crate::deploy::command::{Command, CommandKind};

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
        let package = self.package.to_string();
        let venv = env.layout.venv(kind, version);
        let script = template
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
            })?;
        let python = site.vars.get("python").map_or("python3", String::as_str);
        let script = env.layout.wrap(kind, version, python, &script);
        Ok(Some(match cmd.fence {
            0 => script,
            fence => fenced(&self.name, &env.name, site, fence, &script),
        }))
    }
}

/// `script`, run only if this node has not taken a command under a newer lock generation
/// of app+env: the node is the last to know that a deploy lost its lock (its lease lapsed
/// while it was stalled, and another deploy took over), so it refuses the stale holder
/// (exit 75) instead of trusting it. The generation is kept in the node's app directory,
/// or under /var/tmp when it has none.
pub fn fenced(app: &str, env: &str, site: &Site, fence: u64, script: &str) -> String {
    let file = match site.dir {
        Some(dir) => format!("{dir}/.shipit-fence-{env}"),
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
         echo \"shipit: refused: this node took commands under lock generation $shipit_seen, \
         newer than this deploy's {fence} (it lost its lock)\" >&2; exit 75; fi\n\
         echo {fence} > \"$shipit_fence\"\n\
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
        let out = Command::new("sh")
            .arg("-c")
            .arg(fenced("hello", "production", &site, fence, "echo ran"))
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
}
