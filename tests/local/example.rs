//! A local example on real nodes: virtualenvs, wheels built on the spot, and service
//! processes serving HTTP on their own ports.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::helpers::pip_app_toml;
use shipit::config::Config;
use shipit::local::store::Store;

pub struct Example {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<(String, u16)>,
}

pub fn free_port() -> u16 {
    // Never the same port twice in this process: a port handed out and not yet bound
    // (a node's service starts later) would otherwise come back free to another test.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

impl Example {
    /// `n` nodes with their own virtualenvs; wheels 1.0.0, 1.1.0 and a broken 1.2.0.
    pub fn new(n: usize) -> Example {
        Example::with_wheels(n, &["1.0.0", "1.1.0", "1.2.0:broken"])
    }

    pub fn with_wheels(n: usize, versions: &[&str]) -> Example {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<(String, u16)> =
            (1..=n).map(|i| (format!("node{i}"), free_port())).collect();
        let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
        shipit::cli::demo::set_up_nodes(dir.path(), &names, versions).unwrap();
        let ex = Example { dir, nodes };
        ex.write_config();
        ex
    }

    pub fn write_config(&self) {
        std::fs::write(self.config_path(), pip_app_toml(&self.nodes, 10)).unwrap();
    }

    /// A new node with an empty virtualenv, added to the config.
    pub fn add_node(&mut self, name: &str) {
        let dir = self.dir.path().join("nodes").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let venv = Command::new("python3")
            .args(["-m", "venv", "venv"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(venv.success());
        self.nodes.push((name.to_string(), free_port()));
        self.write_config();
    }

    /// Installs `version` on `node` by hand, behind shipit's back.
    pub fn pip_install(&self, node: &str, version: &str) {
        let out = Command::new("venv/bin/pip")
            .args([
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                "../../wheelhouse",
            ])
            .arg(format!("hello-app=={version}"))
            .current_dir(self.dir.path().join("nodes").join(node))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    pub fn shipit(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("shipit.toml")
    }

    /// Adds `lines` to the production environment's table of the config.
    pub fn production_with(&self, lines: &str) {
        let header = "[apps.hello.environments.production]\n";
        let config = std::fs::read_to_string(self.config_path()).unwrap();
        assert!(config.contains(header), "{config}");
        let config = config.replacen(header, &format!("{header}{lines}"), 1);
        std::fs::write(self.config_path(), config).unwrap();
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::new(Config::load(&self.config_path()).unwrap())
    }

    pub fn store(&self) -> Store {
        Store::open(&self.config().server.state).unwrap()
    }

    pub fn served(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(_, port)| {
                let out = Command::new("python3")
                    .args(["-c", &format!("import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/version', timeout=5).read().decode().strip())")])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect()
    }

    /// How often `node` started serving `version` (each restart prints one line).
    pub fn starts(&self, node: &str, version: &str) -> usize {
        let log =
            std::fs::read_to_string(self.dir.path().join("nodes").join(node).join("service.log"))
                .unwrap_or_default();
        log.lines()
            .filter(|l| *l == format!("hello-app {version} serving on {}", self.port(node)))
            .count()
    }

    pub fn port(&self, node: &str) -> u16 {
        self.nodes.iter().find(|(n, _)| n == node).unwrap().1
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        for (name, _) in &self.nodes {
            // In place, or the live release of `layout = "releases"`.
            for python in ["venv/bin/python", "current/venv/bin/python"] {
                let _ = Command::new(python)
                    .args(["-m", "hello_app.ctl", "stop", "0"])
                    .current_dir(self.dir.path().join("nodes").join(name))
                    .output();
            }
        }
    }
}
