//! Datadog: an event per deploy; when asked for (`dora = true`), a DORA deployment when a
//! version goes live and the app+env's DORA figures, as shipit computes them, as metrics
//! after each of its jobs ends.

use serde_json::{json, Value};

use super::render::*;
use super::*;

impl Round<'_> {
    /// An event for every deploy that ran (succeeded or failed), and a DORA deployment
    /// when a version goes live, if asked for.
    pub(super) async fn datadog(&self, memo: &NotifyState) {
        let Some(DatadogTarget {
            api_key,
            api_url,
            service,
            dora,
        }) = &self.app.notify.datadog
        else {
            return;
        };
        let Some(outcome) = finished(self.notices) else {
            return;
        };
        if matches!(outcome, Outcome::Skipped { .. } | Outcome::Cancelled { .. }) {
            return;
        }
        let job = &self.deploy.job;
        let (headline, _) = status_line(self.deploy);
        let event = json!({
            "title": format!("{} {} {}: {headline}", job.app, job.version, job.env),
            "text": format!("{} on {} ({}); job {}", change(self.deploy), job.env, trigger(&job.source), job.id),
            "tags": [format!("service:{service}"), format!("env:{}", job.env), format!("version:{}", job.version), format!("shipit_job:{}", job.id)],
            "alert_type": if matches!(outcome, Outcome::Succeeded { .. }) { "success" } else { "error" },
            "aggregation_key": job.id.as_str(),
            "source_type_name": "shipit",
            "date_happened": self.now.timestamp(),
        });
        let result = async {
            let key = self.secret(api_key).await?;
            let post = |path: &str, body: &Value| {
                let url = format!("{api_url}{path}");
                let body = body.clone();
                let key = key.clone();
                async move {
                    self.send(|| {
                        self.notifier
                            .http
                            .post(&url)
                            .header("DD-API-KEY", &key)
                            .json(&body)
                    })
                    .await
                }
            };
            post("/api/v1/events", &event).await?;
            if *dora && matches!(outcome, Outcome::Succeeded { .. }) {
                let nanos = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap_or_default();
                let mut attributes = json!({
                    "service": service, "env": job.env, "version": job.version.as_str(),
                    "started_at": nanos(memo.started_at.unwrap_or(self.now)), "finished_at": nanos(self.now),
                });
                if let (Some(sha), Some(repo)) = (commit(&job.source), &self.app.repo) {
                    attributes["git"] = json!({"commit_sha": sha, "repository_url": format!("https://github.com/{repo}")});
                }
                post(
                    "/api/v2/dora/deployment",
                    &json!({"data": {"attributes": attributes}}),
                )
                .await?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = result.await {
            self.warn("datadog", &e);
        }
    }

    // --- GitHub Deployments ----------------------------------------------------------------
}

/// The figures as gauges `shipit.dora.*` (Datadog's metric intake, v2: type 3 is a gauge),
/// tagged with the service, environment and window; a figure with nothing to measure yet
/// (no lead time without a tag's commit time, say) is left out rather than sent as zero.
pub(super) async fn figures(notifier: &Notifier, app: &App, f: &Figures, now: DateTime<Utc>) {
    let Some(DatadogTarget {
        api_key,
        api_url,
        service,
        dora: true,
    }) = &app.notify.datadog
    else {
        return;
    };
    let tags = json!([
        format!("service:{service}"),
        format!("env:{}", f.env),
        format!("window_days:{}", f.days)
    ]);
    let gauge = |metric: &str, value: f64| {
        json!({
            "metric": format!("shipit.dora.{metric}"),
            "type": 3,
            "points": [{"timestamp": now.timestamp(), "value": value}],
            "tags": tags,
        })
    };
    let mut series = vec![gauge("deploys_per_day", f.deploys_per_day)];
    if let Some(s) = f.lead_time_seconds {
        series.push(gauge("lead_time_seconds", s as f64));
    }
    if let Some(r) = f.change_failure_rate {
        series.push(gauge("change_failure_rate", r));
    }
    if let Some(s) = f.time_to_restore_seconds {
        series.push(gauge("time_to_restore_seconds", s as f64));
    }
    let body = json!({ "series": series });
    let deadline = tokio::time::Instant::now() + NOTIFY_BUDGET;
    let result = async {
        let key = notifier
            .secrets
            .resolve(api_key)
            .await
            .map_err(|e| e.to_string())?;
        let url = format!("{api_url}/api/v2/series");
        send_until(deadline, || {
            notifier
                .http
                .post(&url)
                .header("DD-API-KEY", &key)
                .json(&body)
        })
        .await
    };
    if let Err(error) = result.await {
        tracing::warn!(app = %f.app, env = %f.env, %error, "sending the DORA figures to Datadog failed");
    }
}
