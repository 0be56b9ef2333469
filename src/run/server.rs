//! `shipit serve`: the same ingress handlers behind HTTP, plus the package directory
//! watcher, on one machine.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::drive::worker::WorkerHealth;

use crate::ingress::github::MAX_BODY;
use crate::ingress::{Ingress, Reply};
use crate::local::store::Store;

#[derive(Clone)]
struct AppState {
    ingress: Arc<Ingress>,
    store: Store,
    worker: watch::Receiver<WorkerHealth>,
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

async fn jobs(State(s): State<AppState>) -> Response {
    match s.store.jobs(None).await {
        Ok(jobs) => Json(json!({ "jobs": jobs })).into_response(),
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

pub fn router(
    ingress: Arc<Ingress>,
    store: Store,
    worker: watch::Receiver<WorkerHealth>,
) -> Router {
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/slack", post(slack))
        .route("/healthz", get(healthz))
        .route("/api/deploys", get(jobs))
        // One byte over GitHub's cap reaches the handler, which answers 413 with a reason.
        .layer(DefaultBodyLimit::max(MAX_BODY + 1))
        .with_state(AppState {
            ingress,
            store,
            worker,
        })
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    ingress: Arc<Ingress>,
    store: Store,
    listener: TcpListener,
    worker: watch::Receiver<WorkerHealth>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let watcher = tokio::spawn(super::packages::watch(ingress.clone(), store.clone()));
    let result = axum::serve(listener, router(ingress, store, worker))
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();
    result
}
