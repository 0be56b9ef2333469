//! A function's cold start, beside a hello-world function's, each started against a
//! stand-in Lambda Runtime API on loopback, printed (not asserted) as ratios from one run:
//! - init: exec until the function first asks the Runtime API for an event (`/next`);
//! - first answer: exec until it posts the answer to its first event;
//! - peak RSS after that answer (VmHWM), and the binary's size.
//!
//! `github-webhook` starts with a config file (literal secret: no AWS call at init) and
//! answers a signed GitHub ping. Both are release builds; build them first:
//!   cargo build --release -p github-webhook && cargo build --release --example hello_lambda
//!   cargo bench --bench cold_start

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;

const RUNS: usize = 15;
const SECRET: &str = "cold-start-secret";

/// What the stand-in Runtime API saw of one run.
#[derive(Default)]
struct Seen {
    first_next: Option<Instant>,
    answered: Option<Instant>,
    error: Option<String>,
    served: bool,
}

struct Api {
    seen: Mutex<Seen>,
    event: Vec<u8>,
    done: Notify,
}

async fn next(State(api): State<Arc<Api>>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let first = {
        let mut seen = api.seen.lock().unwrap();
        seen.first_next.get_or_insert_with(Instant::now);
        !std::mem::replace(&mut seen.served, true)
    };
    if !first {
        // A function asks again after answering: it waits here until it is stopped.
        std::future::pending::<()>().await;
    }
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", "req-1".parse().unwrap());
    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
    headers.insert("lambda-runtime-deadline-ms", deadline.into());
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:f"
            .parse()
            .unwrap(),
    );
    (StatusCode::OK, headers, api.event.clone())
}

async fn response(State(api): State<Arc<Api>>, UrlPath(_id): UrlPath<String>) -> StatusCode {
    api.seen.lock().unwrap().answered = Some(Instant::now());
    api.done.notify_one();
    StatusCode::ACCEPTED
}

async fn error(State(api): State<Arc<Api>>, body: String) -> StatusCode {
    api.seen.lock().unwrap().error = Some(body);
    api.done.notify_one();
    StatusCode::ACCEPTED
}

struct Run {
    init: Duration,
    answer: Duration,
    rss_kb: u64,
}

async fn run_once(binary: &Path, env: &BTreeMap<String, String>, event: &[u8]) -> Run {
    let api = Arc::new(Api {
        seen: Mutex::new(Seen::default()),
        event: event.to_vec(),
        done: Notify::new(),
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(error))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .envs(env)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it first; see this file)", binary.display()));
    tokio::time::timeout(Duration::from_secs(30), api.done.notified())
        .await
        .expect("no answer within 30 s");
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    child.kill().unwrap();
    child.wait().unwrap();
    server.abort();
    let seen = api.seen.lock().unwrap();
    if let Some(e) = &seen.error {
        panic!("{} failed: {e}", binary.display());
    }
    Run {
        init: seen.first_next.unwrap() - started,
        answer: seen.answered.unwrap() - started,
        rss_kb,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Whether an ELF file still has its symbol table. The release profile strips it; the
/// bench profile builds into the same `target/release` without stripping, so a `cargo
/// bench` overwrites a release build there and would be timed in its place.
fn has_symbols(binary: &Path) -> bool {
    let elf = std::fs::read(binary)
        .unwrap_or_else(|e| panic!("{}: {e} (build it first; see this file)", binary.display()));
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    // ELF64 little-endian: the section headers, and the one holding their names.
    let (headers, size, names) = (u64_at(0x28), u16_at(0x3A), u16_at(0x3E));
    let names = headers + names * size;
    let (start, len) = (u64_at(names + 0x18), u64_at(names + 0x20));
    elf[start..start + len]
        .split(|&b| b == 0)
        .any(|name| name == b".symtab")
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shipit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[github]
webhook_secret = "{SECRET}"
[apps.hello]
package = "hello-app"
repo = "acme/hello"
install = "true"
restart = "true"
[apps.hello.environments.production]
ssm_tags = {{ "shipit:app" = "hello", "shipit:env" = "production" }}
"#
        ),
    )
    .unwrap();
    let lambda_env = |name: &str| -> BTreeMap<String, String> {
        [
            ("AWS_LAMBDA_FUNCTION_NAME", name),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let mut webhook_env = lambda_env("github-webhook");
    webhook_env.insert("SHIPIT_CONFIG".into(), config.display().to_string());
    webhook_env.insert(
        "SHIPIT_QUEUE_URL".into(),
        "http://127.0.0.1:9/000000000000/deploys.fifo".into(),
    );
    // A signed ping: answered from the config alone.
    let body = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let signature = shipit::ingress::sign_hex(SECRET.as_bytes(), &[body.as_bytes()]);
    let ping = serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /hooks/github",
        "rawPath": "/hooks/github",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "x-github-event": "ping",
            "x-github-delivery": "d-1",
            "x-hub-signature-256": format!("sha256={signature}"),
        },
        "requestContext": {"http": {"method": "POST", "path": "/hooks/github"}},
        "body": body,
        "isBase64Encoded": false,
    })
    .to_string();
    let release = target_dir().join("release");
    let subjects = [
        (
            "hello world",
            release.join("examples/hello_lambda"),
            lambda_env("hello"),
            br#"{"hello":"world"}"#.to_vec(),
        ),
        (
            "github-webhook",
            release.join("github-webhook"),
            webhook_env,
            ping.into_bytes(),
        ),
    ];
    for (_, binary, _, _) in &subjects {
        assert!(
            !has_symbols(binary),
            "{} is not stripped: not a release build (a `cargo bench` may have overwritten \
             it); build both again as this file says",
            binary.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runs: Vec<Vec<Run>> = vec![vec![], vec![]];
    rt.block_on(async {
        // Alternated, so that both meet the same noise.
        for _ in 0..RUNS {
            for (i, (_, binary, env, event)) in subjects.iter().enumerate() {
                runs[i].push(run_once(binary, env, event).await);
            }
        }
    });
    let figures: Vec<(Duration, Duration, u64, u64)> = runs
        .into_iter()
        .zip(&subjects)
        .map(|(r, (_, binary, _, _))| {
            let rss = r.iter().map(|r| r.rss_kb).max().unwrap_or(0);
            let init = median(r.iter().map(|r| r.init).collect());
            let answer = median(r.into_iter().map(|r| r.answer).collect());
            let size = std::fs::metadata(binary).map(|m| m.len()).unwrap_or(0);
            (init, answer, rss, size)
        })
        .collect();
    println!("cold start, median of {RUNS} runs each, alternated (x86-64 release builds):");
    for ((name, ..), (init, answer, rss, size)) in subjects.iter().zip(&figures) {
        println!(
            "  {name:>14}: init {:>6.2} ms, first answer {:>6.2} ms, peak RSS {:>5.1} MB, binary {:>5.1} MB",
            init.as_secs_f64() * 1e3,
            answer.as_secs_f64() * 1e3,
            *rss as f64 / 1024.0,
            *size as f64 / 1e6,
        );
    }
    let (hello, webhook) = (&figures[0], &figures[1]);
    println!(
        "  github-webhook ÷ hello world: init {:.2}, first answer {:.2}, RSS {:.2}, size {:.2}",
        webhook.0.as_secs_f64() / hello.0.as_secs_f64(),
        webhook.1.as_secs_f64() / hello.1.as_secs_f64(),
        webhook.2 as f64 / hello.2 as f64,
        webhook.3 as f64 / hello.3 as f64,
    );
}
