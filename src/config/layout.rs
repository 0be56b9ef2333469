//! How a node keeps an app's versions (`layout` of an environment), and the shell that
//! shipit wraps around the operator's commands for the `releases` layout: a fresh
//! virtualenv per version under `releases/`, a `current` symlink flipped atomically at
//! restart, and old releases pruned.
//!
//! The operator's templates serve both layouts through `{venv}`: `venv` in place;
//! `releases/VERSION/venv` while installing a release; `current/venv` for the rest.

use crate::config::template::sh_quote;
use crate::deploy::command::CommandKind;
use crate::deploy::version::Version;

pub const DEFAULT_KEEP_RELEASES: u32 = 5;

/// The marker a release gets once its install finished: only then may `current` point
/// at it, and a later install of the same version has nothing to do.
const BUILT: &str = ".shipit-built";
/// What `current` pointed at before the last flip that changed it: never pruned.
const PREVIOUS: &str = "releases/.shipit-previous";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One virtualenv, `venv`, upgraded in place (`pip install -U`): the seed's way.
    #[default]
    InPlace,
    /// `releases/VERSION/venv` side by side; `keep` built releases stay on each node.
    Releases { keep: u32 },
}

impl Layout {
    /// `{venv}` for a command of `kind` on `version`.
    pub fn venv(self, kind: CommandKind, version: &Version) -> String {
        match (self, kind) {
            (Layout::InPlace, _) => "venv".into(),
            (Layout::Releases { .. }, CommandKind::Install) => format!("{}/venv", release(version)),
            (Layout::Releases { .. }, _) => "current/venv".into(),
        }
    }

    /// `script` (the operator's command, rendered) as this layout runs it; `python` makes
    /// a release's virtualenv.
    pub fn wrap(self, kind: CommandKind, version: &Version, python: &str, script: &str) -> String {
        let Layout::Releases { keep } = self else {
            return script.to_string();
        };
        // Versions are PEP 440 (letters, digits, `.+!-_`); quoted all the same.
        let release = sh_quote(&release(version));
        let python = sh_quote(python);
        match kind {
            // A release already built is not built again: a rollback to it installs
            // nothing. One that failed half-way has no marker, and is built afresh.
            CommandKind::Install => format!(
                "shipit_release={release}\n\
                 if [ -e \"$shipit_release/{BUILT}\" ]; then \
                 echo \"shipit: $shipit_release is already built: nothing to install\"; exit 0; fi\n\
                 if [ \"$(readlink current 2>/dev/null)\" = \"$shipit_release\" ]; then \
                 echo \"shipit: refused: $shipit_release is live but not marked built\" >&2; exit 1; fi\n\
                 rm -rf \"$shipit_release\" && mkdir -p \"$shipit_release\" && \
                 {python} -m venv \"$shipit_release/venv\" || exit $?\n\
                 (\n{script}\n) || exit $?\n\
                 touch \"$shipit_release/{BUILT}\""
            ),
            // The flip is a rename over `current`, so it is never missing or half-made;
            // then the operator's restart, then the oldest releases go.
            CommandKind::Restart => format!(
                "shipit_release={release}\n\
                 if [ ! -e \"$shipit_release/{BUILT}\" ]; then \
                 echo \"shipit: $shipit_release is not built\" >&2; exit 1; fi\n\
                 shipit_before=$(readlink current 2>/dev/null)\n\
                 if [ -n \"$shipit_before\" ] && [ \"$shipit_before\" != \"$shipit_release\" ]; then \
                 printf '%s\\n' \"$shipit_before\" > {PREVIOUS}; fi\n\
                 ln -sfn \"$shipit_release\" .shipit-current && \
                 {python} -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' .shipit-current current \
                 || exit $?\n\
                 (\n{script}\n) || exit $?\n\
                 {}",
                prune(keep)
            ),
            CommandKind::Health | CommandKind::Version | CommandKind::Check => script.to_string(),
        }
    }

    /// The version command when the app has none: what `current` points at.
    pub fn version_command(self) -> Option<&'static str> {
        match self {
            Layout::InPlace => None,
            Layout::Releases { .. } => Some("basename \"$(readlink current)\""),
        }
    }
}

fn release(version: &Version) -> String {
    format!("releases/{version}")
}

/// Keeps the live release, the one before it, and the newest others (by when they were
/// built) up to `keep` in all; removes the rest.
fn prune(keep: u32) -> String {
    format!(
        "shipit_previous=$(cat {PREVIOUS} 2>/dev/null)\n\
         shipit_kept=1\n\
         if [ -n \"$shipit_previous\" ] && [ -e \"$shipit_previous/{BUILT}\" ]; then shipit_kept=2; fi\n\
         for shipit_built in $(ls -1t releases/*/{BUILT} 2>/dev/null); do\n\
         shipit_r=${{shipit_built%/{BUILT}}}\n\
         if [ \"$shipit_r\" = \"$shipit_release\" ] || [ \"$shipit_r\" = \"$shipit_previous\" ]; then continue; fi\n\
         if [ \"$shipit_kept\" -lt {keep} ]; then shipit_kept=$((shipit_kept + 1)); \
         else rm -rf \"$shipit_r\" && echo \"shipit: pruned $shipit_r\"; fi\n\
         done\n\
         true"
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// A stand-in for python3 that makes an empty "virtualenv" quickly; the real one
    /// runs in the end-to-end tests.
    const FAKE_PYTHON: &str =
        "#!/bin/sh\nif [ \"$1\" = -m ]; then mkdir -p \"$3/bin\"; else exec python3 \"$@\"; fi\n";

    fn run(
        dir: &Path,
        layout: Layout,
        kind: CommandKind,
        version: &str,
        script: &str,
    ) -> (bool, String) {
        let python = dir.join("fakepy");
        if !python.exists() {
            std::fs::write(&python, FAKE_PYTHON).unwrap();
            Command::new("chmod")
                .arg("+x")
                .arg(&python)
                .status()
                .unwrap();
        }
        let v = Version::parse(version).unwrap();
        let text = layout.wrap(kind, &v, python.to_str().unwrap(), script);
        let out = Command::new("sh")
            .arg("-c")
            .arg(text)
            .current_dir(dir)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    }

    fn current(dir: &Path) -> String {
        std::fs::read_link(dir.join("current"))
            .unwrap()
            .display()
            .to_string()
    }

    fn releases(dir: &Path) -> Vec<String> {
        let mut r: Vec<String> = std::fs::read_dir(dir.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        r.sort();
        r
    }

    const RELEASES: Layout = Layout::Releases { keep: 2 };

    fn deploy(dir: &Path, layout: Layout, version: &str) {
        let log = "echo installed >> installs.log";
        assert!(run(dir, layout, CommandKind::Install, version, log).0);
        assert!(
            run(
                dir,
                layout,
                CommandKind::Restart,
                version,
                "echo restarted >> restarts.log"
            )
            .0
        );
    }

    #[test]
    fn a_built_release_is_not_built_again_and_restart_flips_current() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        deploy(d, RELEASES, "1.0.0");
        deploy(d, RELEASES, "1.1.0");
        assert_eq!(current(d), "releases/1.1.0");
        // Back to 1.0.0: its install does nothing, its restart flips back.
        let (ok, said) = run(
            d,
            RELEASES,
            CommandKind::Install,
            "1.0.0",
            "echo installed >> installs.log",
        );
        assert!(
            ok && said.contains("releases/1.0.0 is already built: nothing to install"),
            "{said}"
        );
        assert!(run(d, RELEASES, CommandKind::Restart, "1.0.0", "true").0);
        assert_eq!(current(d), "releases/1.0.0");
        let installs = std::fs::read_to_string(d.join("installs.log")).unwrap();
        assert_eq!(installs.lines().count(), 2, "one install per release");
        assert_eq!(
            Layout::InPlace.wrap(
                CommandKind::Install,
                &Version::parse("1").unwrap(),
                "p",
                "x"
            ),
            "x"
        );
    }

    #[test]
    fn a_failed_install_leaves_current_alone_and_is_built_afresh_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        deploy(d, RELEASES, "1.0.0");
        let (ok, _) = run(
            d,
            RELEASES,
            CommandKind::Install,
            "1.1.0",
            "touch half; exit 3",
        );
        assert!(!ok);
        assert_eq!(current(d), "releases/1.0.0");
        let (ok, said) = run(d, RELEASES, CommandKind::Restart, "1.1.0", "true");
        assert!(
            !ok && said.contains("releases/1.1.0 is not built"),
            "{said}"
        );
        assert_eq!(
            current(d),
            "releases/1.0.0",
            "an unbuilt release is never made live"
        );
        let (ok, said) = run(d, RELEASES, CommandKind::Install, "1.1.0", "true");
        assert!(ok && !said.contains("already built"), "{said}");
        assert!(d.join("releases/1.1.0/.shipit-built").exists());
    }

    #[test]
    fn pruning_keeps_the_live_release_and_the_one_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            deploy(d, RELEASES, v);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(releases(d), ["1.1.0", "1.2.0"]);
        // Back to 1.1.0: 1.2.0 is now the one before the live one, and stays. Once 1.3.0
        // is live, the one before it is 1.1.0, and 1.2.0 goes.
        assert!(run(d, RELEASES, CommandKind::Restart, "1.1.0", "true").0);
        assert!(run(d, RELEASES, CommandKind::Install, "1.3.0", "true").0);
        assert_eq!(
            releases(d),
            ["1.1.0", "1.2.0", "1.3.0"],
            "pruning happens on restart"
        );
        assert!(run(d, RELEASES, CommandKind::Restart, "1.3.0", "true").0);
        assert_eq!(releases(d), ["1.1.0", "1.3.0"]);

        let keep3 = Layout::Releases { keep: 3 };
        for v in ["1.4.0", "1.5.0"] {
            std::thread::sleep(std::time::Duration::from_millis(20));
            deploy(d, keep3, v);
        }
        assert_eq!(releases(d), ["1.3.0", "1.4.0", "1.5.0"]);
    }

    #[test]
    fn the_live_release_is_never_rebuilt_over() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        deploy(d, RELEASES, "1.0.0");
        std::fs::remove_file(d.join("releases/1.0.0/.shipit-built")).unwrap();
        let (ok, said) = run(d, RELEASES, CommandKind::Install, "1.0.0", "true");
        assert!(
            !ok && said.contains("is live but not marked built"),
            "{said}"
        );
        assert!(d.join("releases/1.0.0/venv").exists());
    }
}
