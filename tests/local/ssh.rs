//! Nodes over SSH, for real: one OpenSSH server per node on a loopback port, each with its
//! own host key, reached by the system's `ssh` with a key of the test's own. The nodes'
//! directories are on this machine (the servers are), so what they serve is checked as
//! in the other end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::e2e::{deploy, deploy_killed_after_healthy, finish, steps};
use crate::example::{free_port, Example};
use crate::helpers::pip_app_toml;
use shipit::deploy::engine::Notice;
use shipit::deploy::status::JobStatus;

const SSHD: &str = "/usr/sbin/sshd";

/// An OpenSSH server on a loopback port, until dropped.
struct Sshd {
    port: u16,
    /// Its public host key, as a known_hosts line wants it (`ssh-ed25519 AAAA…`).
    host_key: String,
    log: PathBuf,
    child: Child,
}

impl Sshd {
    /// A server in `dir` that lets in whoever holds a key listed in `authorized_keys`.
    fn start(dir: &Path, authorized_keys: &Path) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        let key = keygen(&dir.join("host_key"));
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPermitRootLogin prohibit-password\nPidFile none\n",
                dir.join("host_key").display(),
                authorized_keys.display(),
            ),
        )
        .unwrap();
        // Where a server started as root looks for its privilege separation chroot.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SSHD} (scripts/test installs it): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            port,
            host_key: key,
            log,
            child,
        }
    }

    /// How many logins it let in so far.
    fn logins(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Accepted publickey"))
            .count()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key pair at `path`; returns the public half (`ssh-ed25519 AAAA…`).
fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `Example`'s nodes, each behind its own server; `address` says how the config reaches
/// each one (a port of another server, a port nothing answers on) and `known` what its
/// known_hosts line says about it.
struct OverSsh {
    ex: Example,
    servers: Vec<Sshd>,
}

impl OverSsh {
    fn new(n: usize) -> OverSsh {
        let ex = Example::new(n);
        let keys = ex.dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let client = keygen(&keys.join("deploy"));
        std::fs::write(keys.join("authorized_keys"), format!("{client}\n")).unwrap();
        let servers = (1..=n)
            .map(|i| {
                Sshd::start(
                    &ex.dir.path().join(format!("sshd{i}")),
                    &keys.join("authorized_keys"),
                )
            })
            .collect();
        let s = OverSsh { ex, servers };
        s.write(|_, sshd| (sshd.port, sshd.host_key.clone()), &[]);
        s
    }

    /// Writes the config: node i at `reach(i, server i)` = (port, host key known for it),
    /// with `(from, to)` replaced in `pip_app_toml`.
    fn write(&self, reach: impl Fn(usize, &Sshd) -> (u16, String), edits: &[(&str, &str)]) {
        let mut toml = pip_app_toml(&self.ex.nodes, 10);
        for (from, to) in edits {
            toml = toml.replace(from, to);
        }
        let mut known = String::new();
        for (i, ((name, _), sshd)) in self.ex.nodes.iter().zip(&self.servers).enumerate() {
            let (port, key) = reach(i, sshd);
            known.push_str(&format!("[127.0.0.1]:{port} {key}\n"));
            let dir = self.ex.dir.path().join("nodes").join(name);
            toml = toml.replace(
                &format!("dir = \"nodes/{name}\""),
                &format!("ssh = \"127.0.0.1:{port}\", dir = \"{}\"", dir.display()),
            );
        }
        std::fs::write(self.ex.dir.path().join("keys/known_hosts"), known).unwrap();
        let toml = toml.replace(
            "[apps.hello.environments.production]",
            &format!(
                "[apps.hello.environments.production]\nssh = {{ user = \"{}\", \
                     identity_file = \"keys/deploy\", known_hosts = \"keys/known_hosts\" }}",
                whoami()
            ),
        );
        std::fs::write(self.ex.config_path(), toml).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_ssh_restarts_in_order_over_one_connection_per_node_and_rolls_back_the_restarted() {
    let s = OverSsh::new(3);
    let ex = &s.ex;
    let (_, status, notices) = deploy(ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    assert_eq!(
        &steps(&notices)[3..],
        [
            "node1 restarted",
            "node1 healthy",
            "node2 restarted",
            "node2 healthy",
            "node3 restarted",
            "node3 healthy"
        ]
    );
    assert_eq!(ex.served(), ["1.0.0", "1.0.0", "1.0.0"]);
    // Install, restart and health checks went over one connection per node.
    let logins: Vec<usize> = s.servers.iter().map(Sshd::logins).collect();
    assert_eq!(logins, [1, 1, 1]);

    // node2 fails its health check on 1.1.0: exactly node1 and node2 go back.
    s.write(
        |_, sshd| (sshd.port, sshd.host_key.clone()),
        &[(
            "health = \"",
            "health = \"test {node}:{version} != node2:1.1.0 && ",
        )],
    );
    let (_, status, notices) = deploy(ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(
        &steps(&notices)[3..],
        [
            "node1 restarted",
            "node1 healthy",
            "node2 restarted",
            "node2 unhealthy",
            "rollback to 1.0.0",
            "node1 healthy",
            "node2 healthy"
        ]
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::RollingBack { nodes, .. }
        if nodes == &["node1", "node2"])));
    assert_eq!(ex.served(), ["1.0.0", "1.0.0", "1.0.0"]);
    assert_eq!(ex.starts("node3", "1.1.0"), 0);
    for (node, starts) in [("node1", 2), ("node2", 2), ("node3", 1)] {
        assert_eq!(ex.starts(node, "1.0.0"), starts, "{node}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_changed_host_key_fails_one_with_no_answer_is_gone_and_nothing_restarts() {
    let s = OverSsh::new(3);
    // node2's server shows a key other than the one known for it; node3's address is a
    // port that takes connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let other = keygen(&s.ex.dir.path().join("keys/other"));
    s.write(
        |i, sshd| match i {
            1 => (sshd.port, other.clone()),
            2 => (silent_port, sshd.host_key.clone()),
            _ => (sshd.port, sshd.host_key.clone()),
        },
        &[(
            "health_interval_seconds = 1",
            "health_interval_seconds = 1\ncommand_timeout_seconds = 5",
        )],
    );
    let started = Instant::now();
    let (_, status, notices) = deploy(&s.ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Failed);
    let failed: Vec<(&str, &str)> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::InstallFailed { node, detail } => Some((node.as_str(), detail.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{notices:?}");
    assert_eq!(failed[0].0, "node2");
    assert!(
        failed[0].1.contains("Host key verification failed"),
        "{failed:?}"
    );
    // A server that never answers is not there: gone, no verdict on the version.
    let gone: Vec<(&str, &str)> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::Gone { node, detail } => Some((node.as_str(), detail.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(gone.len(), 1, "{notices:?}");
    assert_eq!(gone[0].0, "node3");
    assert!(gone[0].1.contains("timed out"), "{gone:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the silent node held the deploy for {:?}",
        started.elapsed()
    );
    assert!(!steps(&notices).iter().any(|s| s.ends_with("restarted")));
    assert_eq!(s.ex.starts("node1", "1.0.0"), 0);
    assert_eq!(s.servers[1].logins(), 0, "a changed host key was trusted");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_ssh_a_replayed_command_key_runs_once() {
    use shipit::deploy::command::{Command as FleetCommand, CommandKind, NodeResult};
    let s = OverSsh::new(1);
    let ex = &s.ex;
    assert_eq!(deploy(ex, "1.0.0").await.1, JobStatus::Succeeded);
    let config = ex.config();
    let app = config.app("hello").unwrap();
    let env = &app.environments["production"];
    let fleet = shipit::local::fleet::LocalFleet::new(ex.store(), config.clone());
    let command = |key: &str, kind| FleetCommand {
        key: key.into(),
        kind,
        version: shipit::deploy::version::Version::parse("1.0.0").unwrap(),
        nodes: vec!["node1".into()],
        concurrency: 0,
        fence: 0,
        not_after: None,
        check: None,
    };
    let before = ex.starts("node1", "1.0.0");
    for _ in 0..3 {
        let results = fleet
            .run_on(
                app,
                env,
                &command("replayed:restart:node1", CommandKind::Restart),
            )
            .await
            .unwrap();
        assert_eq!(results, [("node1".to_string(), NodeResult::Succeeded)]);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let health = fleet
            .run_on(
                app,
                env,
                &command(&format!("check-{n}"), CommandKind::Health),
            )
            .await
            .unwrap();
        if health[0].1 == NodeResult::Succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node1 did not come back: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ex.starts("node1", "1.0.0"),
        before + 1,
        "one key, one restart"
    );
    // What the node reports is its own output, not ssh's.
    let version = fleet
        .run_on(app, env, &command("version", CommandKind::Version))
        .await
        .unwrap();
    assert!(
        matches!(&version[0].1, NodeResult::Reported { output } if output.contains("Version: 1.0.0")),
        "{version:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_ssh_a_killed_worker_resumes_without_restarting_a_finished_node_again() {
    let s = OverSsh::new(3);
    let ex = &s.ex;
    assert_eq!(deploy(ex, "1.0.0").await.1, JobStatus::Succeeded);
    // Killed with node2's restart likely in flight: its `ssh` lives on, and is waited for.
    let job = deploy_killed_after_healthy(ex, "1.1.0", "node1").await;
    let (_, status, notices) = finish(ex, &job).await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    assert_eq!(ex.starts("node1", "1.1.0"), 1, "node1 restarted again");
    for node in ["node2", "node3"] {
        assert!(ex.starts(node, "1.1.0") >= 1);
    }
}

#[test]
fn the_ssh_example_checks_and_reaches_each_server_as_written() {
    let path = Path::new("examples/ssh/shipit.toml");
    let config = shipit::config::Config::load(path).unwrap();
    let shipit::config::Nodes::Listed(nodes) =
        &config.apps["hello"].environments["production"].nodes
    else {
        panic!("listed nodes expected");
    };
    let reached: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} {}", n.ssh.as_ref().unwrap(), n.dir.display()))
        .collect();
    assert_eq!(
        reached,
        [
            "deploy@10.0.0.5 /srv/hello",
            "deploy@10.0.0.6 /srv/hello",
            "ops@10.0.0.7:2222 /srv/hello"
        ]
    );
    let ssh = nodes[0].ssh.as_ref().unwrap();
    assert_eq!(
        ssh.known_hosts.as_deref(),
        Some(Path::new("examples/ssh/keys/known_hosts"))
    );
    assert!(!ssh.accept_new_host_keys);
}
