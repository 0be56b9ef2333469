//! The promises of #15 on real nodes, tried as a user would: through the `shipit` binary
//! and `shipit serve`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shipit::deploy::engine::{Notice, Outcome};
use shipit::deploy::job::JobId;

use crate::example::{free_port, Example};

/// `shipit serve` on this example, watching `uploads/` for new packages.
struct Serve(Child);

impl Serve {
    fn start(ex: &Example) -> Serve {
        let uploads = ex.dir.path().join("uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        let config = std::fs::read_to_string(ex.config_path()).unwrap().replacen(
            "[server]\n",
            &format!(
                "[server]\npackage_dir = \"uploads\"\nlisten = \"127.0.0.1:{}\"\n",
                free_port()
            ),
            1,
        );
        std::fs::write(ex.config_path(), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shipit"))
            .arg("--config")
            .arg(ex.config_path())
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Serve(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(ex: &Example, args: &[&str]) -> serde_json::Value {
    let (code, out) = ex.shipit(args);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_second_rollback_never_brings_back_the_version_rolled_back_from() {
    let ex = Example::new(2);
    for v in ["1.0.0", "1.1.0"] {
        let (code, out) = ex.shipit(&["deploy", "hello", v, "--wait"]);
        assert_eq!(code, 0, "{out}");
    }
    let (code, out) = ex.shipit(&["rollback", "hello", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(ex.served(), ["1.0.0", "1.0.0"]);

    // Before: this deployed 1.1.0 again, the version just rolled back from.
    let (code, out) = ex.shipit(&["rollback", "hello", "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("every earlier version on record is marked faulty (1.1.0)"),
        "{out}"
    );
    assert_eq!(ex.served(), ["1.0.0", "1.0.0"]);
    assert_eq!(ex.starts("node1", "1.1.0"), 1);

    let (_, out) = ex.shipit(&["history", "hello"]);
    let line = out.lines().find(|l| l.contains(" 1.1.0 ")).unwrap();
    assert!(line.contains("FAULTY: rolled back to 1.0.0 by"), "{out}");
    let history = json(&ex, &["history", "hello", "--json"]);
    assert_eq!(history[0]["faulty"], serde_json::Value::Null);
    assert_eq!(history[1]["faulty"]["version"], "1.1.0");
    let status = json(&ex, &["status", "--json"]);
    assert_eq!(status[0]["faulty"], serde_json::json!(["1.1.0"]));

    // Asked for by name, it goes out, and says what it was marked.
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("deploying 1.1.0, marked faulty: rolled back to 1.0.0"),
        "{out}"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_upload_never_moves_production_back() {
    let ex = Example::new(2);
    let _serve = Serve::start(&ex);
    // The watcher's first look only takes note of what is there: wait for it.
    let uploads = ex.config().server.package_dir.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ex
        .store()
        .has_seen_dir(&uploads.display().to_string())
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "serve never looked at {uploads:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0", "--wait"]);
    assert_eq!(code, 0, "{out}");

    // Before: the watcher queued 1.0.0 and production went back to it.
    let wheel = "hello_app-1.0.0-py3-none-any.whl";
    std::fs::copy(
        ex.dir.path().join("wheelhouse").join(wheel),
        ex.dir.path().join("uploads").join(wheel),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let upload = loop {
        let jobs = json(&ex, &["jobs", "--json"]);
        let upload = jobs.as_array().unwrap().iter().find(|j| {
            j["job"]["source"]["kind"] == "upload"
                && !["queued", "running"].contains(&j["status"].as_str().unwrap())
        });
        if let Some(u) = upload {
            break u.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the upload was not handled: {jobs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(upload["status"], "skipped", "{upload}");
    let id: JobId = serde_json::from_value(upload["job"]["id"].clone()).unwrap();
    let notices = ex.store().notices(&id, 0).await.unwrap();
    assert!(
        notices.iter().any(
            |(_, n)| matches!(n, Notice::Finished { outcome: Outcome::Skipped { reason } }
            if reason == "1.0.0 is older than live 1.1.0; deploy it by hand to go back")
        ),
        "{notices:?}"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
    assert_eq!(ex.starts("node1", "1.0.0"), 0);
    let history = json(&ex, &["history", "hello", "--json"]);
    assert_eq!(history[0]["job"]["version"], "1.1.0");
}

/// `shipit ARGS` as user `user`, not waited for.
fn spawn_as(ex: &Example, user: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shipit"))
        .arg("--config")
        .arg(ex.config_path())
        .args(args)
        .env("RUST_LOG", "warn")
        .env("USER", user)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_stops_a_running_deploy_and_unlock_cannot_touch_its_lock() {
    let ex = Example::new(3);
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    // The canary bakes for 5 s: the window in which the abort arrives.
    let config = std::fs::read_to_string(ex.config_path()).unwrap().replacen(
        "[apps.hello.rollout]\n",
        "[apps.hello.rollout]\nbake_seconds = 5\n",
        1,
    );
    std::fs::write(ex.config_path(), config).unwrap();
    let deploying = spawn_as(&ex, "ann", &["deploy", "hello", "1.1.0", "--wait"]);

    let store = ex.store();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let running = store
            .jobs(None)
            .await
            .unwrap()
            .into_iter()
            .find(|q| q.job.version.as_str() == "1.1.0" && q.status.as_str() == "running");
        if let Some(q) = running {
            let notices = store.notices(&q.job.id, 0).await.unwrap();
            if notices
                .iter()
                .any(|(_, n)| matches!(n, Notice::Healthy { node } if node == "node1"))
            {
                break q.job.id;
            }
        }
        assert!(Instant::now() < deadline, "the canary never got healthy");
        std::thread::sleep(Duration::from_millis(50));
    };

    // Before: unlock deleted the running deploy's lock.
    let (code, out) = finish(spawn_as(&ex, "bob", &["unlock", "hello"]));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("hello/production is being deployed by job {job}"))
            && out.contains("To stop that deploy: shipit abort hello"),
        "{out}"
    );
    let (code, out) = finish(spawn_as(&ex, "bob", &["abort", "hello"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("aborting job {job}")), "{out}");

    let (code, out) = finish(deploying);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("abort asked by bob"), "{out}");
    assert!(
        out.contains("ABORTED by bob; the nodes it restarted were put back"),
        "{out}"
    );
    assert!(out.ends_with("hello/production 1.1.0: aborted\n"), "{out}");
    assert_eq!(ex.served(), ["1.0.0", "1.0.0", "1.0.0"]);
    assert_eq!(
        ex.starts("node2", "1.1.0"),
        0,
        "restarted a node after the abort"
    );
    assert_eq!(ex.starts("node1", "1.0.0"), 2, "node1 was not put back");

    let status = json(&ex, &["status", "--json"]);
    assert_eq!(status[0]["lock"], serde_json::Value::Null, "{status}");
    assert_eq!(status[0]["live"]["version"], "1.0.0");
    assert_eq!(
        status[0]["faulty"],
        serde_json::json!([]),
        "an abort is no verdict"
    );
    let outcome = store.notices(&job, 0).await.unwrap();
    assert!(
        matches!(outcome.last(), Some((_, Notice::Finished { outcome: Outcome::Aborted { by, rolled_back: true, .. } })) if by == "bob"),
        "{outcome:?}"
    );

    // A lock taken by a person is the one unlock removes.
    let (code, out) = finish(spawn_as(&ex, "bob", &["lock", "hello", "db", "migration"]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = finish(spawn_as(&ex, "bob", &["unlock", "hello"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("was locked by bob: db migration"), "{out}");
}
