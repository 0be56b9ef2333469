//! Running a node's command over SSH with the system's OpenSSH client.
//!
//! Why the `ssh` binary rather than a library: it reads the user's `~/.ssh/config`
//! (ProxyJump, agents, certificates) as operators expect, and each command is a local
//! process in its own process group, so the fleet's crash recovery (wait for the
//! interrupted command's process, then decide) works as it does for local nodes. One
//! connection per node is opened by the first command and shared by the later ones
//! (ControlMaster), so a deploy's install, restart and health checks pay the handshake
//! once: 0.07 s a command instead of 0.24 s, measured on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command as Process;

use crate::config::ssh::Ssh;
use crate::config::template::sh_quote;

/// How long an idle shared connection stays open: longer than the waits between the
/// steps of a deploy (health intervals, bake), short enough to let go of nodes soon after.
const PERSIST_SECONDS: u64 = 300;

/// Unix socket paths are limited to 108 bytes (104 on some systems); `%C` is 40.
const MAX_CONTROL_DIR: usize = 60;

/// Where shared connections' sockets live: beside the store, private to this user. None
/// (every command connects on its own) when that path would be too long for a socket or
/// cannot be made private.
pub fn control_dir(state: &Path) -> Option<PathBuf> {
    let dir = state.parent().unwrap_or(Path::new(".")).join("ssh");
    let dir = std::path::absolute(&dir).ok()?;
    // ssh reads `-o ControlPath=…` as config text: spaces, quotes and `%` would not mean
    // what they say.
    let text = dir.to_str().unwrap_or("%");
    if text.len() > MAX_CONTROL_DIR || crate::config::ssh::check_path(text).is_err() {
        tracing::info!(dir = %dir.display(), "no SSH control sockets there (too long, or characters ssh reads as syntax); each command connects on its own");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        let private = std::fs::metadata(&dir)
            .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o077 == 0);
        if made.is_err() || !private {
            tracing::warn!(dir = %dir.display(), "cannot keep SSH control sockets private there; each command connects on its own");
            return None;
        }
    }
    Some(dir)
}

/// `ssh … HOST 'sh -c …'`: runs `script` with `dir` as its working directory on the node,
/// bounded there by `timeout` too (where the node has `timeout(1)`), so a command shipit
/// gave up on does not run on.
pub fn command(
    ssh: &Ssh,
    control: Option<&Path>,
    dir: &Path,
    script: &str,
    timeout: Duration,
) -> Process {
    let mut c = Process::new("ssh");
    let host_keys = if ssh.accept_new_host_keys {
        "accept-new"
    } else {
        "yes"
    };
    c.args(["-T", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("StrictHostKeyChecking={host_keys}"))
        .arg("-o")
        .arg(format!("ConnectTimeout={}", ssh.connect_timeout_seconds))
        // A node that goes silent mid-command is noticed within 45 s.
        .args([
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
        ]);
    if let Some(known_hosts) = &ssh.known_hosts {
        c.arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()));
    }
    if let Some(identity) = &ssh.identity_file {
        c.args(["-o", "IdentitiesOnly=yes", "-i"]).arg(identity);
    }
    if let Some(control) = control {
        c.args(["-o", "ControlMaster=auto"])
            .arg("-o")
            .arg(format!("ControlPath={}/%C", control.display()))
            .arg("-o")
            .arg(format!("ControlPersist={PERSIST_SECONDS}"));
    }
    if let Some(port) = ssh.port {
        c.arg("-p").arg(port.to_string());
    }
    if let Some(user) = &ssh.user {
        c.arg("-l").arg(user);
    }
    c.arg("--").arg(&ssh.host).arg(remote(dir, script, timeout));
    c
}

/// The line the node's login shell runs. Everything in it is quoted for `sh`, which then
/// runs the script as the local fleet would: in the node's directory.
fn remote(dir: &Path, script: &str, timeout: Duration) -> String {
    let s = sh_quote(script);
    let inner = format!(
        "cd {dir} || exit; if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {secs} sh -c {s}; fi; exec sh -c {s}",
        dir = sh_quote(&dir.display().to_string()),
        secs = timeout.as_secs().max(1),
    );
    format!("sh -c {}", sh_quote(&inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_line_runs_the_script_in_the_directory_through_one_quoted_sh() {
        let line = remote(
            Path::new("/srv/it's here"),
            "echo 'a b' && kill -HUP $(cat pid)",
            Duration::from_secs(30),
        );
        // What the node's login shell does with it: one word after `sh -c`.
        let words = shlex::split(&line).unwrap();
        assert_eq!(words[..2], ["sh", "-c"]);
        assert_eq!(words.len(), 3);
        let inner = shlex::split(&words[2]).unwrap();
        assert_eq!(inner[..2], ["cd", "/srv/it's here"]);
        assert!(inner.contains(&"echo 'a b' && kill -HUP $(cat pid)".to_string()));
        assert!(words[2].contains("timeout -k 5 30 sh -c"));
        // A script that cannot be quoted stays as it is, and ssh cannot be started with it:
        // never an empty script that succeeds.
        let line = remote(Path::new("/srv"), "a\0b", Duration::from_secs(1));
        assert!(line.contains('\0'), "{line:?}");
    }

    #[test]
    fn control_sockets_go_only_where_ssh_reads_the_path_as_written() {
        let base = tempfile::tempdir().unwrap();
        let ok = base.path().join("state/shipit.db");
        let dir = control_dir(&ok).expect("a short plain path");
        assert!(dir.ends_with("state/ssh") && dir.is_dir());
        assert_eq!(control_dir(&base.path().join("my state/shipit.db")), None);
        let long = base
            .path()
            .join("a".repeat(MAX_CONTROL_DIR))
            .join("shipit.db");
        assert_eq!(control_dir(&long), None);
    }

    #[test]
    fn host_keys_are_checked_and_the_destination_cannot_be_an_option() {
        let ssh = Ssh {
            user: Some("deploy".into()),
            host: "10.0.0.5".into(),
            port: Some(2222),
            identity_file: Some("/k/id".into()),
            known_hosts: Some("/k/known_hosts".into()),
            accept_new_host_keys: false,
            connect_timeout_seconds: 7,
        };
        let c = command(
            &ssh,
            None,
            Path::new("/srv"),
            "true",
            Duration::from_secs(5),
        );
        let args: Vec<String> = std::process::Command::get_args(c.as_std())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/k/known_hosts",
            "ConnectTimeout=7",
            "IdentitiesOnly=yes -i /k/id",
            "-p 2222 -l deploy -- 10.0.0.5 sh -c",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        assert!(!joined.contains("ControlMaster"));
    }
}
