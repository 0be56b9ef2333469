//! `shipit serve`: the same ingress handlers behind HTTP, plus the package directory
//! watcher, on one machine.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::deploy::ports::Stories;
use crate::deploy::status::JobStatus;
use crate::drive::worker::WorkerHealth;
use subtle::ConstantTimeEq;

use crate::ingress::github::MAX_BODY;
use crate::ingress::{Ingress, Reply};
use crate::local::store::Store;
use super::page;
use std::convert::Infallible;
use std::time::Duration;
use futures_util::Stream;

#[derive(Clone)]
struct AppState {
    ingress: Arc<Ingress>,
    store: Store,
    worker: watch::Receiver<WorkerHealth>,
    reads: Reads,
    /// True once the server is shutting down: the page's event streams end then, or the
    /// graceful shutdown would wait for them for ever.
    closing: watch::Receiver<bool>,
}

/// Who may read shipit's state over HTTP: whoever presents the token (bearer), if one is
/// set; otherwise only this machine, when the listener is loopback; otherwise nobody.
#[derive(Clone)]
pub struct Reads {
    pub token: Option<String>,
    pub loopback: bool,
}

impl Reads {
    fn check(&self, headers: &HeaderMap) -> Result<(), Reply> {
        match &self.token {
            Some(token) => {
                let given = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                    Ok(())
                } else {
                    Err(Reply::error(
                        401,
                        "send server.api_token as Authorization: Bearer …",
                    ))
                }
            }
            None if self.loopback => Ok(()),
            None => Err(Reply::error(
                403,
                "shipit listens beyond loopback and server.api_token is not set: reads are refused",
            )),
        }
    }
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}

async fn github(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(s.ingress.github(&headers, &body, Utc::now()).await)
}

async fn slack(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(s.ingress.slack(&headers, &body, Utc::now()).await)
}

async fn jobs(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(reply) = s.reads.check(&headers) {
        return respond(reply);
    }
    match s.store.jobs(None).await {
        Ok(mut jobs) => {
            // Slack's reply address lets whoever holds it post as shipit: it stays inside.
            for q in &mut jobs {
                q.job.source.forget_reply_address();
            }
            Json(json!({ "jobs": jobs })).into_response()
        }
        Err(e) => respond(Reply::error(503, format!("store unavailable: {e}"))),
    }
}

/// The page (see `page`); the same access rule as the API.
async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(reply) = s.reads.check(&headers) {
        return respond(reply);
    }
    let read = async {
        let jobs = s.store.jobs(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let envs = super::overview::status(&s.ingress.config, &s.store, &jobs).await?;
        let mut running = vec![];
        for q in jobs.iter().filter(|q| q.status == JobStatus::Running) {
            let deploy = s
                .store
                .load_deploy(&q.job.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            running.push(page::Running {
                job: q.job.clone(),
                deploy,
            });
        }
        let dora = super::overview::dora(
            &s.ingress.config,
            &s.store,
            &jobs,
            crate::deploy::dora::WINDOW_DAYS,
            Utc::now(),
        )
        .await?;
        anyhow::Ok((envs, running, jobs, dora))
    };
    match read.await {
        Ok((envs, running, jobs, dora)) => {
            let rows: Vec<page::JobRow> = jobs
                .iter()
                .map(|q| page::JobRow {
                    job: q.job.clone(),
                    status: q.status,
                    reason: q.reason.clone(),
                    queued_at: q.queued_at,
                })
                .collect();
            let main = page::dashboard(&envs, &running, &rows, &dora);
            html_page("deploys", main, &headers)
        }
        Err(e) => respond(Reply::error(503, format!("store unavailable: {e}"))),
    }
}

/// The page around `main`, or `main` alone when its script asks.
fn html_page(title: &str, main: maud::Markup, headers: &HeaderMap) -> Response {
    let fragment = headers.contains_key(page::FRAGMENT);
    Html(page::document(title, main, fragment, page::Live::Events)).into_response()
}

async fn job_page(s: State<AppState>, headers: HeaderMap, id: Path<String>) -> Response {
    with_story(s, &headers, id, |story| {
        let title = format!("{} {}", story.job.app, story.job.version);
        html_page(&title, page::job(story), &headers)
    })
    .await
}

async fn events(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(reply) = s.reads.check(&headers) {
        return respond(reply);
    }
    store_events(s.store.clone(), s.closing.clone()).into_response()
}


/// One job's story, as `shipit show ID --json` prints it; the same access rule.
async fn job_story(s: State<AppState>, headers: HeaderMap, id: Path<String>) -> Response {
    with_story(s, &headers, id, |story| Json(story).into_response()).await
}

/// `show` of the story of job `id` (the whole id: a prefix is for people at a terminal),
/// to whoever may read it.
async fn with_story(
    State(s): State<AppState>,
    headers: &HeaderMap,
    Path(id): Path<String>,
    show: impl FnOnce(&crate::deploy::story::Story) -> Response,
) -> Response {
    if let Err(reply) = s.reads.check(headers) {
        return respond(reply);
    }
    let story = async {
        let found = s.store.jobs_starting(&id).await?;
        match found.into_iter().find(|q| q.job.id.as_str() == id) {
            Some(q) => s.store.story(&q.job.id).await,
            None => Ok(None),
        }
    };
    match story.await {
        Ok(Some(story)) => show(&story),
        Ok(None) => respond(Reply::error(404, format!("no job {id:?}"))),
        Err(e) => respond(Reply::error(503, format!("store unavailable: {e}"))),
    }
}

/// 200 while jobs that are accepted get run; 503 with the reason while the worker cannot
/// run them (its store fails, say), so that a load balancer or a person looking knows.
async fn healthz(State(s): State<AppState>) -> Response {
    let health = s.worker.borrow().clone();
    match health {
        WorkerHealth::Down(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason })),
        )
            .into_response(),
        h => {
            let worker = match h {
                WorkerHealth::Starting => "starting",
                WorkerHealth::Waiting => "waiting: another shipit process runs the jobs",
                _ => "running",
            };
            Json(json!({ "status": "ok", "worker": worker })).into_response()
        }
    }
}

fn router(
    ingress: Arc<Ingress>,
    store: Store,
    worker: watch::Receiver<WorkerHealth>,
    reads: Reads,
    closing: watch::Receiver<bool>,
) -> Router {
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/slack", post(slack))
        .route("/healthz", get(healthz))
        .route("/api/deploys", get(jobs))
        .route("/api/jobs/{id}", get(job_story))
        .route("/", get(dashboard))
        .route("/jobs/{id}", get(job_page))
        .route("/events", get(events))
        // One byte over GitHub's cap reaches the handler, which answers 413 with a reason.
        .layer(DefaultBodyLimit::max(MAX_BODY + 1))
        .with_state(AppState {
            ingress,
            store,
            worker,
            reads,
            closing,
        })
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    ingress: Arc<Ingress>,
    store: Store,
    listener: TcpListener,
    worker: watch::Receiver<WorkerHealth>,
    api_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reads = Reads {
        token: api_token,
        loopback: listener.local_addr()?.ip().is_loopback(),
    };
    let watcher = tokio::spawn(super::packages::watch(ingress.clone(), store.clone()));
    let secrets = Arc::new(super::local::secrets(&ingress.config).await);
    let indexes = tokio::spawn(super::packages::follow_indexes(
        ingress.clone(),
        store.clone(),
        secrets,
    ));
    let (close, closing) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = close.send(true);
    };
    let result = axum::serve(listener, router(ingress, store, worker, reads, closing))
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();
    indexes.abort();
    result
}

/// `/events`: `changed` whenever the store's mark moves (looked at every second), and a
/// comment now and then so that proxies keep the connection open; it ends when the
/// server starts shutting down (`closing`).
fn store_events(
    store: Store,
    closing: watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start = (store, closing, None);
    let stream = futures_util::stream::unfold(start, |(store, mut closing, last)| async move {
        loop {
            if *closing.borrow() {
                return None;
            }
            let now = store.changes().await.ok();
            if now.is_some() && now != last {
                // With data: a browser drops an event whose data is empty.
                let event = Event::default().event("changed").data("changed");
                return Some((Ok(event), (store, closing, now)));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                // Gone without a word: the server is gone too.
                r = closing.changed() => if r.is_err() { return None; },
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
