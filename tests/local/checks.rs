//! Metric checks against a real Prometheus (Debian's `prometheus`, started here on
//! loopback) scraping the real example services every second, under this test's own
//! load: a version whose service answers 5 % errors fails its check on the canary and is
//! rolled back; good versions pass; a check with no data follows its `no_data`. Also the
//! canary analysis, Datadog monitors through a stand-in, and node checks on real nodes.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::e2e::deploy;
use crate::example::{free_port, Example};
use shipit::deploy::engine::Notice;
use shipit::deploy::status::JobStatus;

/// A Prometheus of its own, scraping `targets` every second; stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: hello\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let prometheus = Prometheus {
            child,
            url,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("prometheus did not get ready within 60 s");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests to every node's /hello, one after another per node, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
}

impl Load {
    fn start(ports: &[u16]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        for &port in ports {
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                let url = format!("http://127.0.0.1:{port}/hello");
                while !stop.load(Ordering::Relaxed) {
                    // Restarts refuse a few: the service counts only what it answers.
                    if http.get(&url).send().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
            });
        }
        Load { stop }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The error ratio of the version deployed, in the last 5 s (one sample a second).
const ERRORS: &str = r#"sum(rate(hello_requests_total{version={version},code="500"}[5s])) / sum(rate(hello_requests_total{version={version}}[5s]))"#;

fn check(name: &str, url: &str, query: &str, no_data: &str) -> String {
    format!(
        "[[apps.hello.checks]]\nname = \"{name}\"\nprometheus = \"{url}\"\nquery = '{query}'\ncondition = \"< 0.01\"\nno_data = \"{no_data}\"\n"
    )
}

/// The config with `checks`, read every second; a 6 s bake on the canary and a 3 s watch
/// after the last node.
fn with_checks(ex: &Example, checks: &[String]) {
    ex.write_config();
    let path = ex.config_path();
    let config = std::fs::read_to_string(&path).unwrap();
    let config = config.replacen(
        "[apps.hello.rollout]\n",
        "[apps.hello.rollout]\nbake_seconds = 6\nwatch_seconds = 3\ncheck_interval_seconds = 1\ncheck_wait_seconds = 6\n",
        1,
    );
    std::fs::write(&path, format!("{config}\n{}", checks.join("\n"))).unwrap();
}

fn check_notices(notices: &[Notice]) -> Vec<String> {
    notices
        .iter()
        .filter(|n| matches!(n, Notice::CheckFailed { .. } | Notice::ChecksPassed { .. }))
        .map(shipit::deploy::status::describe)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_checks_roll_back_a_version_that_serves_errors_and_follow_no_data() {
    let ex = Example::with_wheels(3, &["1.0.0", "1.1.0", "1.3.0:errors=5", "1.4.0", "1.5.0"]);
    let ports: Vec<u16> = ex.nodes.iter().map(|(_, p)| *p).collect();
    let prometheus = Prometheus::start(&ports).await;
    let _load = Load::start(&ports);
    let errors = check("errors", &prometheus.url, ERRORS, "fail");
    with_checks(&ex, std::slice::from_ref(&errors));

    let (_, status, notices) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    let (_, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    let read = check_notices(&notices);
    // The canary's bake, after the second node, and the watch after the last.
    assert_eq!(read.len(), 3, "{read:#?}");
    assert!(
        read.iter()
            .all(|r| r.starts_with("checks passed ") && r.contains("errors: 0 (needs < 0.01)")),
        "{read:#?}"
    );

    // 5 % errors: the canary's check fails, it is put back, 1.3.0 is marked faulty and
    // the other nodes never ran it.
    let (failed, status, notices) = deploy(&ex, "1.3.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:#?}");
    let read = check_notices(&notices);
    assert_eq!(read.len(), 1, "{read:#?}");
    assert!(
        read[0].starts_with("check errors FAILED on the canary: 0.0")
            && read[0].ends_with("(needs < 0.01)"),
        "{read:#?}"
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::MarkedFaulty { version, .. } if version.as_str() == "1.3.0")));
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    assert_eq!(ex.starts("node2", "1.3.0"), 0);
    // `show` says which check failed, with its value and threshold.
    let (code, shown) = ex.shipit(&["show", &failed.to_string()]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("check errors failed on the canary: 0.0")
            && shown.contains("(needs < 0.01)"),
        "{shown}"
    );

    // A check with no data passes over it when told to, saying so...
    let absent = r#"sum(rate(hello_not_exported_total{version={version}}[5s]))"#;
    with_checks(
        &ex,
        &[
            errors.clone(),
            check("absent", &prometheus.url, absent, "pass"),
        ],
    );
    let (_, status, notices) = deploy(&ex, "1.4.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    let read = check_notices(&notices);
    assert!(
        read.iter()
            .all(|r| r.contains("absent: no data, passed over (the query returned no series)")),
        "{read:#?}"
    );
    assert_eq!(ex.served(), ["1.4.0", "1.4.0", "1.4.0"]);

    // ...and rolls back when it must fail, once its data wait is over, marking nothing.
    with_checks(
        &ex,
        &[errors, check("absent", &prometheus.url, absent, "fail")],
    );
    let (code, out) = ex.shipit(&["deploy", "hello", "1.5.0", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Checks: errors (Prometheus, < 0.01, no data: fail), absent (Prometheus, < 0.01, no data: fail); read every 1 s through the canary's 6 s bake, after each batch but the last, for 3 s after the last node, each waited for up to 6 s without data"),
        "{out}"
    );
    let (_, status, notices) = deploy(&ex, "1.5.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:#?}");
    let read = check_notices(&notices);
    assert_eq!(
        read,
        ["check absent FAILED on the canary: no data 12 s after the restart: the query returned no series"],
        "{notices:#?}"
    );
    assert!(!notices
        .iter()
        .any(|n| matches!(n, Notice::MarkedFaulty { .. })));
    assert_eq!(ex.served(), ["1.4.0", "1.4.0", "1.4.0"]);
}

/// Compares the canary with the nodes still on the old version, over their own metrics.
fn versus_check() -> String {
    "[[apps.hello.checks]]\nname = \"versus\"\nanalysis = \"http://{node_host}:{port}/metrics\"\nrequests = \"hello_requests_total\"\nlatency = \"hello_request_seconds\"\nmin_requests = 150\n".into()
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_analysis_rolls_back_more_errors_or_latency_than_the_baseline_s_and_passes_a_good_version(
) {
    let ex = Example::with_wheels(3, &["1.0.0", "1.1.0", "1.3.0:errors=3", "1.6.0:latency=40"]);
    let ports: Vec<u16> = ex.nodes.iter().map(|(_, p)| *p).collect();
    let _load = Load::start(&ports);
    with_checks(&ex, &[versus_check()]);
    let (_, status, notices) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");

    for (version, seen) in [
        ("1.3.0", "on node1 (1.3.0) vs 0.0 % "),
        ("1.6.0", " of requests slower than 0.0"),
    ] {
        let (_, status, notices) = deploy(&ex, version).await;
        assert_eq!(status, JobStatus::Failed, "{version}: {notices:#?}");
        let read = check_notices(&notices);
        assert_eq!(read.len(), 1, "{version}: {read:#?}");
        assert!(
            read[0].starts_with("check versus FAILED on the canary: ") && read[0].contains(seen),
            "{version}: {read:#?}"
        );
        assert!(read[0].contains("on 2 baseline nodes (1.0.0)"), "{read:#?}");
        assert_eq!(ex.served(), ["1.0.0", "1.0.0", "1.0.0"], "{version}");
        assert_eq!(ex.starts("node2", version), 0, "{version}");
    }

    let (_, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    let read = check_notices(&notices);
    // The canary against two nodes, then two against one; the last batch has no baseline.
    assert_eq!(read.len(), 2, "{read:#?}");
    assert!(
        read[0].starts_with("checks passed on the canary: versus: error ratio 0.0 % "),
        "{read:#?}"
    );
    assert!(read[1].contains("on node1, node2 (1.1.0) vs "), "{read:#?}");
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
}

/// Datadog monitors through a local stand-in for Datadog's API that checks the path, both
/// keys and the tags asked for: one alerting rolls the deploy back, marking nothing (a
/// monitor is no verdict on the version); by tags, none alerting passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_datadog_monitor_alerting_rolls_back_without_marking_the_version() {
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let datadog = MockServer::start().await;
    let monitor = |state: &str| {
        Mock::given(method("GET"))
            .and(path("/api/v1/monitor/111"))
            .and(header("DD-API-KEY", "key-1"))
            .and(header("DD-APPLICATION-KEY", "app-2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"id": 111, "name": "hello 5xx", "overall_state": state}),
            ))
    };
    let ex = Example::with_wheels(2, &["1.0.0", "1.1.0", "1.4.0"]);
    let notify = format!(
        "[apps.hello.notify.datadog]\napi_key = \"key-1\"\nsite = \"{}\"\n",
        datadog.uri()
    );
    let by_id = "[[apps.hello.checks]]\nname = \"monitors\"\ndatadog_monitors = [111]\napp_key = \"app-2\"\n";
    with_checks(&ex, &[notify.clone(), by_id.to_string()]);
    monitor("OK").mount(&datadog).await;
    let (_, status, notices) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    assert!(check_notices(&notices)
        .iter()
        .all(|r| r.contains("monitors: Datadog monitors: 1 OK (none Alert)")));

    datadog.reset().await;
    monitor("Alert").mount(&datadog).await;
    let (_, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:#?}");
    assert_eq!(
        check_notices(&notices),
        ["check monitors FAILED on the canary: Datadog monitor 111 (hello 5xx) is Alert"]
    );
    assert!(!notices
        .iter()
        .any(|n| matches!(n, Notice::MarkedFaulty { .. })));
    assert_eq!(ex.served(), ["1.0.0", "1.0.0"]);

    datadog.reset().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/monitor"))
        .and(query_param("monitor_tags", "service:hello,env:production"))
        .and(header("DD-API-KEY", "key-1"))
        .and(header("DD-APPLICATION-KEY", "app-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"id": 7, "name": "a", "overall_state": "OK"},
            {"id": 8, "name": "b", "overall_state": "Warn"},
        ])))
        .mount(&datadog)
        .await;
    let by_tags = "[[apps.hello.checks]]\nname = \"monitors\"\ndatadog_tags = [\"service:{app}\", \"env:{env}\"]\napp_key = \"app-2\"\n";
    with_checks(&ex, &[notify, by_tags.to_string()]);
    let (_, status, notices) = deploy(&ex, "1.4.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    assert!(check_notices(&notices)
        .iter()
        .all(|r| r.contains("monitors: Datadog monitors: 1 OK, 1 Warn (none Alert)")));
}

/// What a node check sees on its node alone: the service's own count of 500s, from its
/// local port.
const NODE_ERRORS_PY: &str = r#"import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
errors = sum(int(float(l.split()[-1])) for l in text.splitlines() if 'code="500"' in l)
if errors:
    sys.exit(f"{errors} requests answered 500 here")
"#;

/// A node check (`check = "…"`) runs on each node the deploy restarted, in its directory,
/// through the local fleet: a version whose service answers errors fails it on the
/// canary, is rolled back and marked (it read the version's own nodes); a good version
/// passes it on every node.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_check_fails_on_the_canary_for_a_version_that_serves_errors() {
    let ex = Example::with_wheels(2, &["1.0.0", "1.1.0", "1.3.0:errors=5"]);
    let ports: Vec<u16> = ex.nodes.iter().map(|(_, p)| *p).collect();
    for (node, _) in &ex.nodes {
        let dir = ex.dir.path().join("nodes").join(node);
        std::fs::write(dir.join("errors_seen.py"), NODE_ERRORS_PY).unwrap();
    }
    let _load = Load::start(&ports);
    let check = "[[apps.hello.checks]]\nname = \"served\"\ncheck = \"venv/bin/python errors_seen.py {port}\"\n";
    with_checks(&ex, &[check.to_string()]);
    let (_, status, notices) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");

    let (_, status, notices) = deploy(&ex, "1.3.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:#?}");
    let read = check_notices(&notices);
    assert!(
        read.iter().any(|r| r
            .starts_with("check served FAILED on the canary: failed on node1 (exit 1: ")
            && r.contains("requests answered 500 here)")),
        "{read:#?}"
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::MarkedFaulty { version, .. } if version.as_str() == "1.3.0")));
    assert_eq!(ex.served(), ["1.0.0", "1.0.0"]);
    assert_eq!(ex.starts("node2", "1.3.0"), 0);

    let (_, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:#?}");
    let read = check_notices(&notices);
    assert!(
        read.last()
            .is_some_and(|r| r.contains("served: exit 0 on 2 nodes")),
        "{read:#?}"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
}
