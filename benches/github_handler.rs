//! The GitHub webhook handler (verify + parse + build job) on the ~8 KB sample tag push,
//! beside the floor: HMAC-SHA256 of the same bytes plus a full JSON parse of them.
//! The queue here discards jobs: this measures the handler, not the queue behind it.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use shipit::config::Config;
use shipit::deploy::job::DeployJob;
use shipit::deploy::ports::{Enqueued, JobQueue, PortError};
use shipit::ingress::{sign_hex, Ingress};
use shipit::local::store::Store;

struct Discard;

#[async_trait]
impl JobQueue for Discard {
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError> {
        Ok(vec![Enqueued::Queued; jobs.len()])
    }
}

fn bench(c: &mut Criterion) {
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("events/github-tag-push.json").unwrap())
            .unwrap();
    let body = event["body"].as_str().unwrap().as_bytes().to_vec();
    let secret = "sample-github-secret";
    let mut headers = HeaderMap::new();
    headers.insert("x-github-event", HeaderValue::from_static("push"));
    headers.insert(
        "x-github-delivery",
        HeaderValue::from_static("3f6e1a80-c8a1-11f0-8a5f-2f1e0b7c9d01"),
    );
    let sig = format!("sha256={}", sign_hex(secret.as_bytes(), &[&body]));
    headers.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    std::env::set_var("SHIPIT_GITHUB_SECRET", secret);
    std::env::set_var("SHIPIT_SLACK_SIGNING_SECRET", "unused");
    let config = Config::load(Path::new("examples/local/shipit.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Store::open(&dir.path().join("bench.db")).unwrap());
    let ingress = rt
        .block_on(Ingress::new(
            Arc::new(config),
            Arc::new(Discard),
            ledger,
            &shipit::config::secrets::Secrets::new(None),
            &shipit::ingress::Hook::ALL,
        ))
        .unwrap();
    let check = rt.block_on(ingress.github(&headers, &body, Utc::now()));
    assert_eq!(check.status, 202, "{check:?}");

    let mut g = c.benchmark_group(format!("github_webhook_{}B", body.len()));
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("handler: verify + parse + build job", |b| {
        b.iter(|| rt.block_on(ingress.github(&headers, &body, Utc::now())))
    });
    g.bench_function("floor: hmac + json parse", |b| {
        b.iter(|| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&body);
            let tag = mac.finalize().into_bytes();
            let parsed: serde::de::IgnoredAny = serde_json::from_slice(&body).unwrap();
            (tag, parsed)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
