//! The page in a real browser: Debian's headless Chromium, driven through chromedriver
//! (WebDriver), against `shipit serve` deploying to real nodes.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::example::{free_port, Example};
use crate::safety::Serve;

struct Chromedriver(Child);

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium that resolves no name but this machine's: a page that loaded
/// anything from elsewhere would fail to.
async fn browser() -> (Chromedriver, Client) {
    let port = free_port();
    let driver = Chromedriver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/test installs Debian's chromium-driver)"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ] }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connected = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match connected {
            Ok(client) => return (driver, client),
            Err(e) => assert!(Instant::now() < deadline, "no WebDriver session: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `script` (a function body) in the page.
async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap()
}

/// Everything the page loaded, by URL: each must be this server's.
async fn only_from(client: &Client, base: &str) {
    let loaded = js(
        client,
        "return performance.getEntriesByType('resource').map(e => e.name);",
    )
    .await;
    for url in loaded.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(base), "the page loaded {url}");
    }
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Waits until `script` answers true, for up to two minutes.
async fn until(client: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while js(client, script).await != json!(true) {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page follows a deploy node by node without a reload, then shows its outcome; a
/// failed deploy's page shows why and its timeline. Screenshots are kept under the target
/// directory (`tmp/`).
#[tokio::test(flavor = "multi_thread")]
async fn the_page_follows_a_deploy_node_by_node_in_a_real_browser() {
    let ex = Example::new(3);
    // The canary bakes a moment: the others wait, and the page shows them waiting.
    let config = std::fs::read_to_string(ex.config_path()).unwrap().replacen(
        "[apps.hello.rollout]\n",
        "[apps.hello.rollout]\nbake_seconds = 3\n",
        1,
    );
    std::fs::write(ex.config_path(), config).unwrap();
    let serve = Serve::start(&ex);
    serve.health_becomes(200).await;
    let base = format!("http://127.0.0.1:{}", serve.1);
    let (_driver, client) = browser().await;
    client.goto(&format!("{base}/")).await.unwrap();
    // Kept only while the page is never loaded again.
    js(&client, "window.shipitKept = 42; return true;").await;
    until(
        &client,
        "listening to /events",
        "return document.getElementById('live').className === 'live on';",
    )
    .await;

    let (code, out) = ex.shipit(&["deploy", "hello", "1.0.0"]);
    assert_eq!(code, 0, "{out}");
    // Every state of the nodes the page showed, until the job's row says it succeeded.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let nodes = js(
            &client,
            "return Array.from(document.querySelectorAll('ol.nodes li')).map(li => li.textContent).join(' | ');",
        )
        .await;
        let nodes = nodes.as_str().unwrap().to_string();
        if !nodes.is_empty() {
            seen.insert(nodes);
        }
        let done = js(
            &client,
            "return Array.from(document.querySelectorAll('main table tr')).some(tr => tr.textContent.includes('1.0.0') && tr.textContent.includes('succeeded'));",
        )
        .await;
        if done == json!(true) {
            break;
        }
        if Instant::now() >= deadline {
            let main = js(&client, "return document.getElementById('main').innerText + ' // ' + document.getElementById('live').className;").await;
            panic!(
                "the page never showed it succeed: {seen:?}\n{main}\n{:?}",
                ex.shipit(&["jobs"])
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter()
            .any(|s| s.contains("node1 healthy") && s.contains("node3 installed")),
        "node1 was never shown healthy while node3 waited: {seen:#?}"
    );
    assert_eq!(
        js(&client, "return window.shipitKept;").await,
        json!(42),
        "the page was loaded again"
    );
    // The DORA figures count the deploy.
    until(
        &client,
        "the DORA figures",
        "return document.getElementById('dora').innerText.includes('1 (0.03 a day)');",
    )
    .await;
    let live = client.find(Locator::Css(".card .version")).await.unwrap();
    assert_eq!(live.text().await.unwrap(), "1.0.0");
    only_from(&client, &base).await;
    screenshot(&client, "page-deployed.png").await;

    // A broken build: its row says why, and its page shows the failed restart.
    let (code, out) = ex.shipit(&["deploy", "hello", "1.2.0"]);
    assert_eq!(code, 0, "{out}");
    until(
        &client,
        "the failed deploy's row",
        "return Array.from(document.querySelectorAll('main table tr')).some(tr => tr.textContent.includes('1.2.0') && tr.textContent.includes('failed its health check'));",
    )
    .await;
    let dora = client
        .find(Locator::Id("dora"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(dora.contains("50 % (1 of 2)"), "{dora}");
    let link = client
        .find(Locator::XPath("//main//table//a[text()='1.2.0']"))
        .await
        .unwrap();
    link.click().await.unwrap();
    let reason = client
        .wait()
        .for_element(Locator::Id("reason"))
        .await
        .unwrap();
    assert!(
        reason
            .text()
            .await
            .unwrap()
            .contains("node1 failed its health check"),
        "{}",
        reason.text().await.unwrap()
    );
    let bars = client
        .find_all(Locator::Css("svg.timeline rect.bar"))
        .await
        .unwrap();
    assert!(bars.len() >= 4, "{} bars", bars.len());
    let failed = client
        .find_all(Locator::Css("svg.timeline rect.bar.restart.bad"))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "the canary's failed restart");
    only_from(&client, &base).await;
    screenshot(&client, "page-failed-deploy.png").await;
    client.close().await.unwrap();
}
