//! The promises of #15 on real nodes, tried as a user would: through the `shipit` binary
//! and `shipit serve`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shipit::deploy::engine::{Notice, Outcome};
use shipit::deploy::job::JobId;

use crate::example::{free_port, Example};

/// `shipit serve` on this example, watching `uploads/` for new packages.
pub struct Serve(Child, pub u16);

impl Serve {
    pub fn start(ex: &Example) -> Serve {
        let uploads = ex.dir.path().join("uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        let base = std::fs::read_to_string(ex.config_path()).unwrap();
        // A port free when asked may be taken before serve binds it (by a process of
        // another test): then serve exits, and is tried on another port.
        for _ in 0..5 {
            let port = free_port();
            let config = base.replacen(
                "[server]\n",
                &format!("[server]\npackage_dir = \"uploads\"\nlisten = \"127.0.0.1:{port}\"\n"),
                1,
            );
            std::fs::write(ex.config_path(), config).unwrap();
            let mut child = Self::spawn(ex);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(Self::log(ex)).unwrap_or_default();
                    assert!(log.contains("in use"), "serve exited ({status}): {log}");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Serve(child, port);
                }
                assert!(Instant::now() < deadline, "serve does not listen on {port}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("serve found no free port in 5 tries");
    }

    fn log(ex: &Example) -> std::path::PathBuf {
        ex.dir.path().join("serve.log")
    }

    fn spawn(ex: &Example) -> Child {
        let log = std::fs::File::create(Self::log(ex)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_shipit"))
            .arg("--config")
            .arg(ex.config_path())
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// `kill -9`, and start it again on the same store.
    fn kill_and_restart(&mut self, ex: &Example) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
        self.0 = Self::spawn(ex);
    }

    /// `/healthz`: its status code and body, once serve answers.
    async fn health(&self) -> (u16, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match reqwest::get(format!("http://127.0.0.1:{}/healthz", self.1)).await {
                Ok(r) => return (r.status().as_u16(), r.json().await.unwrap()),
                Err(e) => assert!(Instant::now() < deadline, "serve does not answer: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/healthz` answers `code` (200: with its worker running).
    pub async fn health_becomes(&self, code: u16) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (c, body) = self.health().await;
            if c == code && (c != 200 || body["worker"] == "running") {
                return body;
            }
            assert!(Instant::now() < deadline, "/healthz stayed {c}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for serve's watcher to have taken note of what `uploads/` holds (its first look
/// queues nothing).
async fn watching(ex: &Example) {
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
            "serve never looked at {uploads:?}: {}",
            std::fs::read_to_string(Serve::log(ex)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drops the wheel of `version` into `uploads/`, as a package upload.
fn drop_wheel(ex: &Example, version: &str) {
    let wheel = format!("hello_app-{version}-py3-none-any.whl");
    std::fs::copy(
        ex.dir.path().join("wheelhouse").join(&wheel),
        ex.dir.path().join("uploads").join(&wheel),
    )
    .unwrap();
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
        // Each node's step says how long it took.
        for node in ["node1", "node2"] {
            let took = |line: &str| {
                let (_, rest) = line.rsplit_once(" (")?;
                rest.strip_suffix(" s)")?.parse::<f64>().ok()
            };
            for what in ["installed", "healthy"] {
                let line = format!("{node}: {what} (");
                assert!(
                    out.lines().any(|l| l.contains(&line) && took(l).is_some()),
                    "no {line}… s) in {out}"
                );
            }
        }
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
    // It went well: the mark is lifted, and history says who lifted it.
    let status = json(&ex, &["status", "--json"]);
    assert_eq!(status[0]["faulty"], serde_json::json!([]), "{status}");
    let (_, out) = ex.shipit(&["history", "hello"]);
    let line = out.lines().nth(1).unwrap();
    assert!(
        line.contains(" 1.1.0 ")
            && line.contains("lifted the FAULTY mark (rolled back to 1.0.0 by"),
        "{out}"
    );
    let history = json(&ex, &["history", "hello", "--json"]);
    assert_eq!(history[0]["cleared"]["version"], "1.1.0", "{history}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_upload_never_moves_production_back() {
    let ex = Example::new(2);
    let _serve = Serve::start(&ex);
    watching(&ex).await;
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0", "--wait"]);
    assert_eq!(code, 0, "{out}");

    // Before: the watcher queued 1.0.0 and production went back to it.
    drop_wheel(&ex, "1.0.0");
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
    // Why it was skipped is said by every view of the job, not only its notices.
    let why = "1.0.0 is older than live 1.1.0; deploy it by hand to go back";
    assert_eq!(upload["reason"], why, "{upload}");
    assert_eq!(json(&ex, &["show", id.as_str(), "--json"])["reason"], why);
    let ended = json(&ex, &["history", "hello", "--all", "--json"]);
    assert_eq!(
        (
            &ended[0]["job"]["id"],
            &ended[0]["status"],
            &ended[0]["reason"]
        ),
        (
            &upload["job"]["id"],
            &serde_json::json!("skipped"),
            &serde_json::json!(why)
        ),
        "{ended}"
    );
    let (_, out) = ex.shipit(&["history", "hello", "--all"]);
    assert!(out.contains("skipped") && out.contains(why), "{out}");
}

/// A freeze on a real `serve`: a person's deploy in it is refused with its words unless a
/// freeze overrider overrides it (kept in history); an upload in it waits, saying until
/// when, and deploys when it ends, not before.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_inside_a_freeze_waits_and_deploys_when_it_ends() {
    let ex = Example::with_wheels(2, &["1.0.0", "1.1.0", "1.2.0", "1.3.0"]);
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let account = account();
    // Whole seconds, as the config says it.
    let until = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 40, 0).unwrap();
    ex.production_with(&format!(
        "time_zone = \"UTC\"\nfreezes = [{{ from = \"2026-01-01\", until = \"{}\", reason = \"test freeze\" }}]\nfreeze_overriders = [\"{account}\"]\n",
        until.format("%Y-%m-%dT%H:%M:%S")
    ));
    let _serve = Serve::start(&ex);
    watching(&ex).await;

    // A person's deploy: refused, nothing queued.
    let before = json(&ex, &["jobs", "--json"]).as_array().unwrap().len();
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("hello/production takes no deploys now: frozen (test freeze) until")
            && out.contains("--override REASON"),
        "{out}"
    );
    assert_eq!(
        json(&ex, &["jobs", "--json"]).as_array().unwrap().len(),
        before
    );

    // An upload: queued, and waits.
    drop_wheel(&ex, "1.2.0");
    let id = held(&ex, "1.2.0", "frozen (test freeze) until");
    told_to_wait(&ex, &id).await;
    // A newer upload stays queued behind it (not claimed: uploads go out in order, the
    // newest superseding the rest).
    drop_wheel(&ex, "1.3.0");
    let deadline = Instant::now() + Duration::from_secs(30);
    let newer = loop {
        let jobs = json(&ex, &["jobs", "--json"]);
        let newer = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"]["version"] == "1.3.0")
            .cloned();
        if let Some(j) = newer {
            break j;
        }
        assert!(Instant::now() < deadline, "1.3.0 was never queued: {jobs}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let newer: JobId = serde_json::from_value(newer["job"]["id"].clone()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let still = json(&ex, &["show", newer.as_str(), "--json"]);
    assert_eq!(still["status"], "queued", "{still}");

    // A freeze overrider's deploy goes out, and history says so; the waiting upload does
    // not hold it up.
    let (code, out) = ex.shipit(&[
        "deploy",
        "hello",
        "1.1.0",
        "--override",
        "hotfix INC-1",
        "--wait",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        chrono::Utc::now() < until,
        "the test was too slow to see the freeze"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
    let history = json(&ex, &["history", "hello", "--json"]);
    assert_eq!(
        history[0]["job"]["overridden"],
        serde_json::json!({"by": account, "reason": "hotfix INC-1"}),
        "{history}"
    );
    let (_, out) = ex.shipit(&["history", "hello"]);
    assert!(
        out.contains("outside the calendar (override: hotfix INC-1)"),
        "{out}"
    );

    // When the freeze ends, the newest upload goes out (only then), the older superseded.
    let older = ended(&ex, &id);
    assert_eq!(older["status"], "skipped", "{older}");
    assert_eq!(older["reason"], "superseded by 1.3.0, queued behind it");
    let story = ended(&ex, &newer);
    assert_eq!(story["status"], "succeeded", "{story}");
    assert_eq!(ex.served(), ["1.3.0", "1.3.0"]);
    assert_eq!(ex.starts("node1", "1.2.0"), 0);
    let first: chrono::DateTime<chrono::Utc> = story["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["started_at"].as_str()?.parse().ok())
        .min()
        .unwrap();
    assert!(
        first >= until,
        "started {first}, in the freeze (until {until})"
    );
    let notices = ex.store().notices(&id, 0).await.unwrap();
    assert!(
        notices
            .iter()
            .any(|(_, n)| matches!(n, Notice::WaitingForWindow { why } if why.starts_with("frozen (test freeze)"))),
        "{notices:?}"
    );
}

/// An upload the worker drives while it waits for its calendar is cancelled on one
/// machine too: it ends cancelled within seconds, long before the freeze ends, and never
/// reaches a node.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_waiting_for_its_calendar_can_be_cancelled() {
    let ex = Example::with_wheels(1, &["1.0.0", "1.2.0"]);
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let until = chrono::Utc::now() + chrono::Duration::minutes(10);
    ex.production_with(&format!(
        "time_zone = \"UTC\"\nfreezes = [{{ from = \"2026-01-01\", until = \"{}\", reason = \"long freeze\" }}]\n",
        until.format("%Y-%m-%dT%H:%M:%S")
    ));
    let _serve = Serve::start(&ex);
    watching(&ex).await;
    drop_wheel(&ex, "1.2.0");
    let id = held(&ex, "1.2.0", "frozen (long freeze) until");
    told_to_wait(&ex, &id).await;
    let (code, out) = ex.shipit(&["cancel", id.as_str()]);
    assert_eq!(code, 0, "{out}");
    let asked = Instant::now();
    let story = ended(&ex, &id);
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "ended only after {:?}",
        asked.elapsed()
    );
    assert_eq!(story["status"], "cancelled", "{story}");
    assert!(
        story["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cancelled")),
        "{story}"
    );
    assert!(chrono::Utc::now() < until);
    assert_eq!(ex.starts("node1", "1.2.0"), 0);
    assert_eq!(ex.served(), ["1.0.0"]);
}

/// Waits until the worker claimed job `id` and its calendar told it to wait (status says
/// "waits" of a queued one too).
async fn told_to_wait(ex: &Example, id: &JobId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ex
        .store()
        .notices(id, 0)
        .await
        .unwrap()
        .iter()
        .any(|(_, n)| matches!(n, Notice::WaitingForWindow { .. }))
    {
        assert!(Instant::now() < deadline, "the upload never waited");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The account running the tests: who `shipit` takes a CLI user to be where it matters.
fn account() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The job of `version` that `shipit status` says waits, for a reason starting `why`
/// (within 30 s).
fn held(ex: &Example, version: &str, why: &str) -> JobId {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = json(ex, &["status", "--json"]);
        let waiting = status[0]["jobs"].as_array().unwrap().iter().find(|j| {
            j["version"] == version && j["held"].as_str().is_some_and(|h| h.starts_with(why))
        });
        if let Some(j) = waiting {
            return serde_json::from_value(j["job"].clone()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{version} never waited ({why}): {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Job `id`'s story once it has ended (two minutes at most).
fn ended(ex: &Example, id: &JobId) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let story = json(ex, &["show", id.as_str(), "--json"]);
        if story["status"] != "running" && story["status"] != "queued" {
            return story;
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {story}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Approvals on a real `serve`: an upload waits for one (status says so), and deploys
/// once an approver approves it with `shipit approve`, history keeping who; a person may
/// not approve their own deploy, and takes it back with `shipit reject`.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_waits_for_approval_and_deploys_once_approved() {
    let ex = Example::with_wheels(2, &["1.0.0", "1.1.0", "1.2.0"]);
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let me = account();
    ex.production_with(&format!(
        "approvals = {{ approvers = [\"{me}\", \"U2\"] }}\n"
    ));
    let _serve = Serve::start(&ex);
    watching(&ex).await;

    drop_wheel(&ex, "1.1.0");
    let id = held(&ex, "1.1.0", "waits for approval (0 of 1)");
    assert_eq!(ex.served(), ["1.0.0", "1.0.0"]);

    let (code, out) = ex.shipit(&["approve", &id.as_str()[..8]]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("Approved job {id} (hello 1.1.0 to production)")),
        "{out}"
    );
    let (code, out) = ex.shipit(&["reject", id.as_str()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is approved already: it goes ahead"), "{out}");
    let story = ended(&ex, &id);
    assert_eq!(story["status"], "succeeded", "{story}");
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
    let history = json(&ex, &["history", "hello", "--json"]);
    assert_eq!(
        history[0]["job"]["approved_by"],
        serde_json::json!([me]),
        "{history}"
    );
    let (_, out) = ex.shipit(&["history", "hello"]);
    assert!(out.contains(&format!("approved by {me}")), "{out}");

    // A person's own deploy: the plan says who must approve it; they may not, and they
    // take it back.
    let (code, out) = ex.shipit(&["deploy", "hello", "1.2.0", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "Approvals: the deploy would wait for 1 of {me}, U2, not {me}"
        )),
        "{out}"
    );
    let (code, out) = ex.shipit(&["deploy", "hello", "1.2.0"]);
    assert_eq!(code, 0, "{out}");
    let jobs = json(&ex, &["jobs", "--json"]);
    let mine = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"]["version"] == "1.2.0")
        .unwrap();
    let mine: JobId = serde_json::from_value(mine["job"]["id"].clone()).unwrap();
    let (code, out) = ex.shipit(&["approve", mine.as_str()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{me} asked for this deploy and may not approve it"
        )),
        "{out}"
    );
    let (code, out) = ex.shipit(&["reject", mine.as_str(), "--reason", "changed my mind"]);
    assert_eq!(code, 0, "{out}");
    let story = ended(&ex, &mine);
    assert_eq!(story["status"], "skipped", "{story}");
    assert_eq!(
        story["reason"],
        format!("rejected by {me}: changed my mind")
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
    assert_eq!(ex.starts("node1", "1.2.0"), 0);
}

/// Promotion on a real `serve`: a version that went live on staging is queued for
/// production at once, due `after_seconds` later, and deploys there then, not before;
/// one rolled back on staging before its time is not promoted, saying why, and neither is
/// one whose staging checks read red at its time (a Datadog monitor, through a local
/// stand-in).
#[tokio::test(flavor = "multi_thread")]
async fn a_version_live_on_staging_is_promoted_to_production_after_its_time() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let datadog = MockServer::start().await;
    let monitor = |state: &str| {
        Mock::given(method("GET"))
            .and(path("/api/v1/monitor/5"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"id": 5, "name": "staging 5xx", "overall_state": state}),
            ))
    };
    monitor("OK").mount(&datadog).await;
    let ex = Example::with_wheels(3, &["1.0.0", "1.1.0", "1.2.0", "1.3.0"]);
    let production = &ex.nodes[..2];
    let staging = &ex.nodes[2];
    let config = format!(
        "{}\n[apps.hello.environments.staging]\nnodes = [{{ name = \"{n}\", dir = \"nodes/{n}\", vars = {{ port = \"{p}\" }} }}]\npromote = {{ to = \"production\", after_seconds = 15 }}\n[[apps.hello.environments.staging.checks]]\nname = \"monitors\"\ndatadog_monitors = [5]\napp_key = \"app\"\n[apps.hello.notify.datadog]\napi_key = \"key\"\nsite = \"{dd}\"\n",
        crate::helpers::pip_app_toml(production, 10)
            .replace(
                "[apps.hello]\n",
                "[apps.hello]\ndefault_env = \"production\"\nauto_deploy = []\n"
            )
            .replace(
                "[apps.hello.rollout]\n",
                "[apps.hello.rollout]\ncheck_interval_seconds = 1\n"
            ),
        n = staging.0,
        p = staging.1,
        dd = datadog.uri(),
    );
    std::fs::write(ex.config_path(), config).unwrap();
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let _serve = Serve::start(&ex);
    watching(&ex).await;

    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0", "--env", "staging", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "Promotion: to production 15 s after this deploy succeeds, if 1.1.0 is still live here"
        ),
        "{out}"
    );
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0", "--env", "staging", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let live_at = chrono::Utc::now();
    let promotion = |version: &str| {
        let jobs = json(&ex, &["jobs", "--json"]);
        let found =
            jobs.as_array().unwrap().iter().find(|j| {
                j["job"]["version"] == version && j["job"]["source"]["kind"] == "promotion"
            });
        let found = found.unwrap_or_else(|| panic!("no promotion of {version}: {jobs}"));
        let id: JobId = serde_json::from_value(found["job"]["id"].clone()).unwrap();
        (id, found["job"]["env"].clone())
    };
    let (id, env) = promotion("1.1.0");
    assert_eq!(env, "production");
    let story = ended(&ex, &id);
    assert_eq!(story["status"], "succeeded", "{story}");
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    let first: chrono::DateTime<chrono::Utc> = story["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["started_at"].as_str()?.parse().ok())
        .min()
        .unwrap();
    assert!(
        first >= live_at + chrono::Duration::seconds(14),
        "promoted at {first}, live on staging at {live_at}"
    );
    let history = json(&ex, &["history", "hello", "--json"]);
    assert_eq!(
        history[0]["job"]["source"]["from_env"], "staging",
        "{history}"
    );
    let (_, out) = ex.shipit(&["show", id.as_str()]);
    assert!(out.contains("promoted from staging at"), "{out}");

    // Rolled back on staging before its time: not promoted.
    let (code, out) = ex.shipit(&["deploy", "hello", "1.2.0", "--env", "staging", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = ex.shipit(&["rollback", "hello", "--env", "staging", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let (id, _) = promotion("1.2.0");
    let story = ended(&ex, &id);
    assert_eq!(story["status"], "skipped", "{story}");
    assert!(
        story["reason"]
            .as_str()
            .unwrap()
            .starts_with("not promoted: staging runs 1.1.0 now"),
        "{story}"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    assert_eq!(ex.starts("node1", "1.2.0"), 0);

    // Live on staging, its monitor passing; then it alerts before the promotion's time.
    let (code, out) = ex.shipit(&["deploy", "hello", "1.3.0", "--env", "staging", "--wait"]);
    assert_eq!(code, 0, "{out}");
    datadog.reset().await;
    monitor("Alert").mount(&datadog).await;
    let (id, _) = promotion("1.3.0");
    let story = ended(&ex, &id);
    assert_eq!(story["status"], "skipped", "{story}");
    assert_eq!(
        story["reason"],
        "not promoted: check monitors reads red on staging: Datadog monitor 5 (staging 5xx) is Alert",
        "{story}"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.3.0"]);
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
    // How it ended, once, and said of the job; the putting back, of the version put back.
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("hello/production 1.1.0: ABORTED by bob"),
        "{out}"
    );
    assert_eq!(out.matches("ABORTED by bob").count(), 1, "{out}");
    assert!(
        out.contains("hello/production rollback to 1.0.0: node1: healthy"),
        "{out}"
    );
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
    // Kept with the ended jobs, with who stopped it.
    let ended = json(&ex, &["history", "hello", "--all", "--json"]);
    let aborted = ended
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["job"]["id"] == job.as_str())
        .unwrap_or_else(|| panic!("no aborted job in {ended}"));
    assert_eq!(aborted["status"], "aborted", "{aborted}");
    assert!(
        aborted["reason"].as_str().unwrap().contains("bob"),
        "{aborted}"
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

/// Before: one undecodable job row, or a store error, ended the worker loop for good while
/// serve kept answering 202 and /healthz said ok.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_survives_an_unreadable_job_and_a_failing_store_and_healthz_says_so() {
    let ex = Example::new(1);
    let serve = Serve::start(&ex);
    serve.health_becomes(200).await;
    let db = rusqlite::Connection::open(ex.dir.path().join("state/shipit.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO jobs (id, grp, status, job, queued_at)
         VALUES ('0123456789abcdef0123', 'hello/production', 'queued', '{\"schema\": 99}', '2026-11-24T10:00:00Z')",
        [],
    )
    .unwrap();
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "the worker stopped at the unreadable job: {out}");
    let status: String = db
        .query_row(
            "SELECT status FROM jobs WHERE id = '0123456789abcdef0123'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "failed");
    let bad: JobId = serde_json::from_value(serde_json::json!("0123456789abcdef0123")).unwrap();
    let notices = ex.store().notices(&bad, 0).await.unwrap();
    assert!(
        matches!(notices.last(), Some((_, Notice::Finished { outcome: Outcome::Failed { reason, .. } }))
            if reason.contains("cannot read this job") && reason.contains("99")),
        "{notices:?}"
    );

    // The queue's table goes away: the worker cannot claim, and says so; it comes back.
    db.execute("ALTER TABLE jobs RENAME TO jobs_away", [])
        .unwrap();
    let down = serve.health_becomes(503).await;
    assert!(
        down["reason"]
            .as_str()
            .unwrap()
            .starts_with("cannot read the job queue"),
        "{down}"
    );
    db.execute("ALTER TABLE jobs_away RENAME TO jobs", [])
        .unwrap();
    serve.health_becomes(200).await;
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(ex.served(), ["1.1.0"]);
}

/// Before: `kill -9` of serve while a restart command ran, three times in one deploy,
/// restarted node1 four times (the interrupted command was run again, blind), and the
/// command's `sh` outlived the worker.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_serve_in_the_middle_of_restarts_restarts_no_node_twice() {
    let ex = Example::new(3);
    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0", "--wait"]);
    assert_eq!(code, 0, "{out}");
    // Restarts that take a while, so that the kills land inside them.
    let config = std::fs::read_to_string(ex.config_path()).unwrap().replacen(
        "restart = \"venv/bin/python -m hello_app.ctl restart {port}\"",
        "restart = \"sleep 1 && venv/bin/python -m hello_app.ctl restart {port} && sleep 1\"",
        1,
    );
    assert!(config.contains("sleep 1 &&"));
    std::fs::write(ex.config_path(), config).unwrap();
    let mut serve = Serve::start(&ex);
    serve.health_becomes(200).await;
    let (code, out) = ex.shipit(&["deploy", "hello", "1.1.0"]);
    assert_eq!(code, 0, "{out}");
    let job: JobId = serde_json::from_value(serde_json::json!(out
        .split("(job ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()))
    .unwrap();

    let db = rusqlite::Connection::open(ex.dir.path().join("state/shipit.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut killed: Vec<(String, String)> = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while killed.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "restarts never ran: killed in {killed:?}"
        );
        let running: Option<(String, String)> = db
            .query_row(
                "SELECT key, node FROM commands WHERE status = 'running' AND key LIKE '%:restart:%'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        match running {
            Some(r) if !killed.contains(&r) => {
                serve.kill_and_restart(&ex);
                killed.push(r);
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let store = ex.store();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let q = store.job(&job).await.unwrap().unwrap();
        if !q.status.is_pending() {
            break q.status;
        }
        assert!(Instant::now() < deadline, "the deploy never ended");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.as_str(), "succeeded");
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    for node in ["node1", "node2", "node3"] {
        assert_eq!(
            ex.starts(node, "1.1.0"),
            1,
            "{node} restarted more than once (killed during {killed:?})"
        );
    }
}
