//! A node's shell command, rendered in one place for every fleet.

use std::collections::BTreeMap;

use super::{App, Environment};
use crate::deploy::command::CommandKind;
use crate::deploy::version::Version;

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
    /// The shell command of `kind` for `version` at `site`, every value shell-quoted (see
    /// `template`); `None` where the app has no such command (no health check: healthy).
    pub fn script(
        &self,
        env: &Environment,
        kind: CommandKind,
        version: &Version,
        site: &Site,
    ) -> Result<Option<String>, ScriptError> {
        let template = match kind {
            CommandKind::Install => &self.install,
            CommandKind::Restart => &self.restart,
            CommandKind::Health => match &self.health {
                Some(h) => h,
                None => return Ok(None),
            },
            CommandKind::Version => match &self.version {
                Some(v) => v,
                None => return Err(ScriptError::NoVersionCommand(self.name.clone())),
            },
        };
        let package = self.package.to_string();
        template
            .render(|name| match name {
                "app" => Some(self.name.as_str()),
                "env" => Some(env.name.as_str()),
                "package" => Some(package.as_str()),
                "version" => Some(version.as_str()),
                "node" => Some(site.node),
                "dir" => site.dir,
                other => site.vars.get(other).map(String::as_str),
            })
            .map(Some)
            .map_err(|e| ScriptError::Render {
                kind,
                reason: e.to_string(),
            })
    }
}
