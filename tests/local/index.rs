//! Following a package index: a real one (pypiserver, uploads by twine) feeding deploys to
//! real nodes that install from it, and broken answers from a stand-in.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use chrono::Utc;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::example::{free_port, Example};
use crate::helpers::LocalApp;
use shipit::config::secrets::Secrets;
use shipit::config::Config;
use shipit::deploy::status::JobStatus;
use shipit::run::packages::IndexLook;

/// The venv `scripts/test` installs pypiserver and twine into.
fn test_venv() -> std::path::PathBuf {
    std::env::var_os("SHIPIT_TEST_VENV")
        .expect("SHIPIT_TEST_VENV is not set: run the tests with scripts/test, which installs pypiserver and twine")
        .into()
}

/// pypiserver on a free loopback port, serving `packages`; stopped on drop.
struct PypiServer {
    child: Child,
    url: String,
}

impl PypiServer {
    fn start(packages: &Path) -> PypiServer {
        std::fs::create_dir_all(packages).unwrap();
        let port = free_port();
        let mut child = Command::new(test_venv().join("bin/pypi-server"))
            .args(["run", "-i", "127.0.0.1", "-p", &port.to_string()])
            // Uploads without a password, and no fallback to pypi.org for unknown names.
            .args(["-a", ".", "-P", ".", "--disable-fallback"])
            .arg(packages)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PypiServer { child, url };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("pypiserver did not start on {url}");
    }

    fn upload(&self, wheel: &Path) {
        let out = Command::new(test_venv().join("bin/twine"))
            .args(["upload", "--non-interactive", "--disable-progress-bar"])
            .args([
                "--repository-url",
                &format!("{}/", self.url),
                "-u",
                "x",
                "-p",
                "x",
            ])
            .arg(wheel)
            .output()
            .unwrap();
        assert!(out.status.success(), "twine upload: {out:?}");
    }
}

impl Drop for PypiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn look<'a>(http: &'a reqwest::Client, secrets: &'a Secrets, config: &'a Config) -> IndexLook<'a> {
    let app = &config.apps["hello"];
    IndexLook {
        http,
        secrets,
        index: app.index.as_ref().unwrap(),
        package: "hello-app",
    }
}

/// twine uploads to a real pypiserver; the release there before shipit first looked is
/// history, the next one deploys, and the nodes install it from that index.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_uploaded_to_the_index_deploys_and_nodes_install_it_from_there() {
    let ex = Example::with_wheels(2, &["1.0.0", "1.1.0"]);
    let index = PypiServer::start(&ex.dir.path().join("index"));
    let wheel = |v: &str| {
        ex.dir
            .path()
            .join(format!("wheelhouse/hello_app-{v}-py3-none-any.whl"))
    };
    index.upload(&wheel("1.0.0"));
    let toml = crate::helpers::pip_app_toml(&ex.nodes, 10)
        .replace(
            "--no-index --find-links ../../wheelhouse",
            "--index-url {index}",
        )
        .replace(
            "package = \"hello-app\"\n",
            &format!(
                "package = \"hello-app\"\nindex = {{ url = \"{}/simple/\", poll_seconds = 1 }}\n",
                index.url
            ),
        );
    std::fs::write(ex.config_path(), toml).unwrap();
    let config = ex.config();
    let (ingress, store) = shipit::run::local::ingress((*config).clone())
        .await
        .unwrap();
    let (http, secrets) = (reqwest::Client::new(), Secrets::new(None));
    let look = look(&http, &secrets, &config);

    assert!(look
        .poll(&ingress, &store, Utc::now())
        .await
        .unwrap()
        .is_empty());
    assert!(
        store.jobs(None).await.unwrap().is_empty(),
        "1.0.0 is history"
    );

    index.upload(&wheel("1.1.0"));
    let outcomes = look.poll(&ingress, &store, Utc::now()).await.unwrap();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert!(look
        .poll(&ingress, &store, Utc::now())
        .await
        .unwrap()
        .is_empty());
    let jobs = store.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 1, "queued once");
    let job = &jobs[0].job;
    assert_eq!(job.version.as_str(), "1.1.0");

    let status = shipit::cli::wait(config.clone(), &store, &job.id, |_, _| {})
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
}

const PAGE: &str = "/simple/hello-app/";

/// A PEP 691 page listing a wheel of each of `versions`.
fn json_page(versions: &[&str]) -> ResponseTemplate {
    let files: Vec<_> = versions
        .iter()
        .map(|v| {
            let f = format!("hello_app-{v}-py3-none-any.whl");
            serde_json::json!({ "filename": f, "url": format!("/files/{f}"), "hashes": {} })
        })
        .collect();
    let body =
        serde_json::json!({ "meta": {"api-version": "1.1"}, "name": "hello-app", "files": files });
    ResponseTemplate::new(200).set_body_raw(body.to_string(), "application/vnd.pypi.simple.v1+json")
}

/// A stand-in index that gives `answers` in turn, one each, and then `last` for good;
/// and an app that follows it, with its ingress and store.
async fn stand_in(
    answers: Vec<ResponseTemplate>,
    last: ResponseTemplate,
    dir: &Path,
) -> (
    MockServer,
    std::sync::Arc<Config>,
    shipit::ingress::Ingress,
    shipit::local::store::Store,
) {
    let server = MockServer::start().await;
    for answer in answers {
        Mock::given(method("GET"))
            .and(path(PAGE))
            .respond_with(answer)
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path(PAGE))
        .respond_with(last)
        .mount(&server)
        .await;
    let (config, _) = LocalApp {
        app: format!(
            "index = {{ url = \"{}/simple\", poll_seconds = 1 }}",
            server.uri()
        ),
        ..LocalApp::default()
    }
    .open(dir);
    let (ingress, store) = shipit::run::local::ingress((*config).clone())
        .await
        .unwrap();
    (server, config, ingress, store)
}

/// An index that answers an error, a page that is not a simple API page, HTML where JSON
/// was said, or nothing in time: each look fails with the reason and changes nothing (not
/// even the first look's note of what is history), and the next good answer is read.
#[tokio::test]
async fn broken_index_answers_are_retried_and_queue_nothing_twice() {
    let answers = vec![
        ResponseTemplate::new(500).set_body_string("upstream down"),
        ResponseTemplate::new(200).set_body_raw(
            "<html><body>Sign in to Artifactory</body></html>",
            "text/html",
        ),
        ResponseTemplate::new(200).set_body_raw(
            "<html><body>hello_app-9.9.9.tar.gz</body></html>",
            "application/vnd.pypi.simple.v1+json",
        ),
        json_page(&["1.0.0"]).set_delay(Duration::from_secs(3)),
        json_page(&["1.0.0"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (server, config, ingress, store) =
        stand_in(answers, json_page(&["1.0.0", "1.1.0"]), dir.path()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let secrets = Secrets::new(None);
    let look = look(&http, &secrets, &config);
    let source = format!("{}{PAGE}", server.uri());
    for why in [
        "HTTP 500",
        "not a simple API page",
        "JSON is not",
        "timed out",
    ] {
        let err = look.poll(&ingress, &store, Utc::now()).await.unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
        assert!(
            !store.has_seen_dir(&source).await.unwrap(),
            "a bad answer became history"
        );
    }
    assert!(look
        .poll(&ingress, &store, Utc::now())
        .await
        .unwrap()
        .is_empty());
    assert!(store.has_seen_dir(&source).await.unwrap());
    let queued = look.poll(&ingress, &store, Utc::now()).await.unwrap();
    assert_eq!(queued.len(), 1);
    for _ in 0..2 {
        assert!(look
            .poll(&ingress, &store, Utc::now())
            .await
            .unwrap()
            .is_empty());
    }
    let jobs = store.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job.version.as_str(), "1.1.0");
}

/// `serve` follows the index by itself: failed looks are logged and retried, serve keeps
/// answering, and the release that appears deploys once.
#[tokio::test(flavor = "multi_thread")]
async fn serve_keeps_following_an_index_through_its_failures() {
    let answers = vec![
        ResponseTemplate::new(503),
        ResponseTemplate::new(503),
        json_page(&["1.0.0"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (_server, _, ingress, store) =
        stand_in(answers, json_page(&["1.0.0", "1.1.0"]), dir.path()).await;
    let served = crate::helpers::Served::start(ingress, store.clone()).await;
    let mut jobs = vec![];
    for _ in 0..100 {
        jobs = store.jobs(None).await.unwrap();
        if !jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(jobs.len(), 1, "the new release was never queued");
    assert_eq!(jobs[0].job.version.as_str(), "1.1.0");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.jobs(None).await.unwrap().len(), 1, "queued twice");
    reqwest::get(format!("{}/healthz", served.base))
        .await
        .expect("serve still answers");
    served.stop().await;
}
