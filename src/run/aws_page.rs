//! The page on AWS: the `page` function behind the stack's HTTP API, where the HTTP API's
//! JWT authorizer lets only a valid token through (the stack creates neither the function
//! nor its routes unless its issuer and audience are set). The same page as `shipit
//! serve`'s (`run::page`), read from what the AWS runtime keeps: what is live, the locks
//! and faulty marks from Parameter Store, the jobs waiting from their queue tickets, the
//! newest jobs, each job's story and the running deploys' nodes from their Step
//! Functions executions. It polls instead of listening to events. Its DORA figures come
//! from the live history (the last 100 versions Parameter Store keeps of each app+env's
//! live entry) and the executions that failed in the window.

use std::sync::Arc;

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use chrono::{DateTime, Utc};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};

use super::page::{self, JobRow, Live, Running};
use crate::aws::turn::SsmTurn;
use crate::config::{Config, Environment};
use crate::deploy::dora::Figures;
use crate::deploy::job::JobId;
use crate::deploy::overview::{ActiveJob, EnvStatus};
use crate::deploy::ports::{Ledger, PortError, Stories};
use crate::deploy::status::JobStatus;
use crate::drive::execution::{dora, ExecutionStories};
use crate::ingress::Reply;

/// How often the page fetches itself again.
const POLL_SECONDS: u32 = 10;
/// The newest jobs the page lists (a DescribeExecution each).
const JOBS_LISTED: i32 = 25;

pub struct AwsPage {
    config: Arc<Config>,
    ledger: Arc<dyn Ledger>,
    turn: SsmTurn,
    executions: Arc<ExecutionStories>,
}

impl AwsPage {
    pub fn new(
        config: Arc<Config>,
        ledger: Arc<dyn Ledger>,
        turn: SsmTurn,
        executions: Arc<ExecutionStories>,
    ) -> AwsPage {
        AwsPage {
            config,
            ledger,
            turn,
            executions,
        }
    }

    /// `GET /`, `GET /jobs/ID` and `GET /api/jobs/ID` (the story as JSON); 404 for any
    /// other path, 405 for any other method.
    pub async fn answer(
        &self,
        req: &ApiGatewayV2httpRequest,
        now: DateTime<Utc>,
    ) -> ApiGatewayV2httpResponse {
        if req.request_context.http.method != http::Method::GET {
            return text(405, "only GET is answered here");
        }
        let path = req.raw_path.as_deref().unwrap_or("/");
        let fragment = req.headers.contains_key(page::FRAGMENT);
        // A job that ended does not change: its page stops asking.
        let html = |title: &str, main, live: bool| {
            let live = match live {
                true => Live::Poll(POLL_SECONDS),
                false => Live::Still,
            };
            respond(200, "text/html; charset=utf-8", page::document(title, main, fragment, live))
        };
        if path == "/" {
            return match self.dashboard(now).await {
                Ok(main) => html("deploys", main, true),
                Err(e) => text(503, &format!("AWS unavailable: {e}")),
            };
        }
        let (api, id) = match (path.strip_prefix("/api/jobs/"), path.strip_prefix("/jobs/")) {
            (Some(id), _) => (true, id),
            (None, Some(id)) => (false, id),
            (None, None) => return text(404, &format!("no page at {path:?}")),
        };
        let Some(job) = JobId::parse(id) else {
            return text(404, &format!("no job {id:?}"));
        };
        match self.executions.story(&job).await {
            Ok(Some(story)) if api => respond(
                200,
                "application/json",
                serde_json::to_string(&story).unwrap_or_default(),
            ),
            Ok(Some(story)) => html(
                &format!("{} {}", story.job.app, story.job.version),
                page::job(&story),
                story.status.is_pending(),
            ),
            Ok(None) => text(404, &format!("no job {job}")),
            Err(e) => text(503, &format!("AWS unavailable: {e}")),
        }
    }

    async fn dashboard(&self, now: DateTime<Utc>) -> Result<maud::Markup, PortError> {
        let (mut envs, mut running) = (vec![], vec![]);
        for app in self.config.apps.values() {
            for env in app.environments.keys() {
                let mut status = EnvStatus::read(&*self.ledger, &app.name, env, now).await?;
                let holder = status.lock.as_ref().and_then(|l| l.job.clone());
                let waiting = self.turn.waiting(&app.name, env).await?;
                // The deploy holding the lock, node by node, as its last step left it.
                if let Some(job) = waiting.iter().find(|j| holder.as_ref() == Some(&j.id)) {
                    running.push(Running {
                        job: job.clone(),
                        deploy: self.executions.last_state(&job.id).await?,
                    });
                }
                let env_config = app.environments.get(env);
                for j in waiting {
                    let holds = holder.as_ref() == Some(&j.id);
                    // What a job waits for (its approval, its promotion's time), as its
                    // last step said; one look at its execution each.
                    let saved = match (holds, env_config) {
                        (false, Some(_)) => self.executions.last_state(&j.id).await?,
                        _ => None,
                    };
                    let why = |e: &Environment| e.waiting_why(&j, holder.as_ref(), saved.as_ref(), now);
                    status.jobs.push(ActiveJob {
                        status: match holds {
                            true => JobStatus::Running,
                            false => JobStatus::Queued,
                        },
                        held: env_config.and_then(why),
                        job: j.id,
                        version: j.version,
                    });
                }
                envs.push(status);
            }
        }
        // Oldest first, as the page takes them.
        let jobs: Vec<JobRow> = self
            .executions
            .recent(JOBS_LISTED)
            .await?
            .into_iter()
            .rev()
            .map(|s| JobRow {
                job: s.job,
                status: s.status,
                reason: s.reason,
                queued_at: s.queued_at,
            })
            .collect();
        // The figures are worth less than the rest: without them, the page still shows.
        let dora = self.dora(now).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot compute the DORA figures");
            vec![]
        });
        Ok(page::dashboard(&envs, &running, &jobs, &dora))
    }

    /// Each app+env's DORA figures over the last `dora::WINDOW_DAYS`.
    async fn dora(&self, now: DateTime<Utc>) -> Result<Vec<Figures>, PortError> {
        let failed = self.executions.failed_lately(now).await?;
        let mut out = vec![];
        for app in self.config.apps.values() {
            for env in app.environments.keys() {
                out.push(dora(&*self.ledger, &app.name, env, &failed, now).await?);
            }
        }
        Ok(out)
    }
}

fn respond(status: u16, content_type: &'static str, body: String) -> ApiGatewayV2httpResponse {
    let mut resp = ApiGatewayV2httpResponse::default();
    resp.status_code = i64::from(status);
    resp.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // What stands now, for this reader: no cache keeps it, whole page or main part.
    resp.headers
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.body = Some(Body::Text(body));
    resp
}

/// A refusal, worded as the ingress functions word theirs (`Reply::error`).
fn text(status: u16, why: &str) -> ApiGatewayV2httpResponse {
    let reply = Reply::error(status, why);
    respond(status, "application/json", reply.body.to_string())
}
