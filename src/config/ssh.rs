//! Nodes reached over SSH: where each one is (`[user@]host[:port]`), and the environment's
//! `ssh = { … }` defaults for all of them.

use std::fmt;
use std::path::PathBuf;

/// How the fleet reaches one node: the system's OpenSSH client, with these settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    /// Unset: the local user's name, as `ssh` itself would choose.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// Unset: the keys `ssh` finds itself (agent, `~/.ssh/id_*`).
    pub identity_file: Option<PathBuf>,
    /// Unset: `~/.ssh/known_hosts`. Either way a host must be listed there with its key.
    pub known_hosts: Option<PathBuf>,
    /// Trust a host's key the first time it is seen (and record it); never a changed one.
    pub accept_new_host_keys: bool,
    pub connect_timeout_seconds: u64,
}

pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u64 = 10;

/// No host yet, and ssh's own choices for the rest: what a node without the
/// environment's `ssh = { … }` starts from.
impl Default for Ssh {
    fn default() -> Ssh {
        Ssh {
            user: None,
            host: String::new(),
            port: None,
            identity_file: None,
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout_seconds: DEFAULT_CONNECT_TIMEOUT_SECONDS,
        }
    }
}

impl fmt::Display for Ssh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// A node's `ssh = "[user@]host[:port]"` (an IPv6 address in brackets, `[::1]:2222`).
/// What is accepted can only be read by `ssh` as a destination: no leading `-` (an
/// option), no spaces, quotes or `%` (a token `ssh` would expand).
pub fn parse_address(s: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: '[' without ']'"))?;
        if !host.contains(':') {
            return Err(format!("{s:?}: brackets are for IPv6 addresses"));
        }
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{s:?}: expected ':PORT' after ']'"))?,
                ),
            ),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if let Some(user) = user {
        check_user(user).map_err(|e| format!("{s:?}: {e}"))?;
    }
    let host_ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Err(format!(
            "{s:?}: {host:?} is not a host name or address (letters, digits, '.', '-', '_', \
             ':' in IPv6; not starting with '-')"
        ));
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s:?}: {p:?} is not a port (1-65535)")),
        })
        .transpose()?;
    Ok((user.map(str::to_string), host.to_string(), port))
}

/// A login name `ssh -l` takes as it is: POSIX portable user names.
pub fn check_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{user:?} is not a user name (letters, digits, '.', '-', '_'; not starting with '-')"
        ))
    }
}

/// A file `ssh` is given by path: it expands `%` tokens and `~` there, and splits `-o`
/// values at spaces and quotes, so those are refused rather than misread.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('~')
        || path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | '"' | '\'' | '\\'))
    {
        return Err(format!(
            "{path:?}: ssh would read '~', '%', spaces, quotes or backslashes in it as syntax"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_user_and_port() {
        let p = |s| parse_address(s).unwrap();
        assert_eq!(p("web1"), (None, "web1".into(), None));
        assert_eq!(
            p("deploy@10.0.0.5:22"),
            (Some("deploy".into()), "10.0.0.5".into(), Some(22))
        );
        assert_eq!(p("[::1]:2222"), (None, "::1".into(), Some(2222)));
        assert_eq!(p("d@[fe80::1]"), (Some("d".into()), "fe80::1".into(), None));
    }

    #[test]
    fn addresses_ssh_could_misread_are_refused() {
        for bad in [
            "",
            "-oProxyCommand=x",
            "a b",
            "host:0",
            "host:70000",
            "host:",
            "-u@host",
            "u@",
            "ho%st",
            "[host]:22",
            "[::1",
            "[::1]22",
            "h'ost",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn displays_as_it_was_written() {
        let ssh = |user: Option<&str>, host: &str, port| Ssh {
            user: user.map(str::to_string),
            host: host.into(),
            port,
            ..Ssh::default()
        };
        assert_eq!(
            ssh(Some("deploy"), "10.0.0.5", Some(22)).to_string(),
            "deploy@10.0.0.5:22"
        );
        assert_eq!(ssh(None, "::1", Some(2222)).to_string(), "[::1]:2222");
        assert_eq!(ssh(None, "web1", None).to_string(), "web1");
    }

    #[test]
    fn paths_with_ssh_syntax_are_refused() {
        assert!(check_path("/etc/shipit/known_hosts").is_ok());
        assert!(check_path("keys/deploy_ed25519").is_ok());
        for bad in ["~/.ssh/id", "/a b", "/k%h", "/a\"b", ""] {
            assert!(check_path(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
