//! Reads a deploy's metric checks: Prometheus instant queries over its HTTP API, Datadog
//! monitors over theirs, CloudWatch alarms through the SDK, and the nodes' own Prometheus
//! text for a canary-versus-baseline analysis (which the engine judges).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;

use super::http::{excerpt, Client};
use crate::config::secrets::Secrets;
use crate::config::{CheckSource, Config, Nodes};
use crate::deploy::analysis::{NodeServed, Scrape, Served};
use crate::deploy::checks::{promql, Groups, Reading};
use crate::deploy::job::DeployJob;
use crate::deploy::ports::Checks;

/// How long one request may take: a deploy step reads its checks at once, and waits for
/// the slowest.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CheckReader {
    config: Arc<Config>,
    secrets: Arc<Secrets>,
    http: Client,
    /// Loaded at the first check that reads AWS (CloudWatch alarms, an analysis of SSM
    /// nodes): a config without one needs no AWS credentials.
    aws: tokio::sync::OnceCell<aws_config::SdkConfig>,
}

impl CheckReader {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> CheckReader {
        CheckReader {
            config,
            secrets,
            // Custom headers (Datadog's keys) would follow a redirect to another host.
            http: Client::without_redirects(READ_TIMEOUT),
            aws: tokio::sync::OnceCell::new(),
        }
    }

    /// A Prometheus check: its instant query, each sample held to `condition`.
    async fn query(
        &self,
        job: &DeployJob,
        url: &str,
        query: &str,
        condition: crate::deploy::checks::Condition,
        token: Option<&crate::config::secrets::Secret>,
    ) -> Reading {
        let query = promql(query, &job.version.to_string(), &job.app, &job.env);
        let mut request = self
            .http
            .get(format!("{url}/api/v1/query"))
            .query(&[("query", query.as_str())]);
        if let Some(token) = token {
            match self.secrets.resolve(token).await {
                Ok(t) => request = request.bearer_auth(t),
                Err(e) => return secret_missing("the Prometheus token", e),
            }
        }
        let answer = match request.send().await {
            Ok(r) => r,
            // Without the URL: reqwest's error names it, query and all.
            Err(e) => {
                return Reading::NoData {
                    detail: format!("Prometheus did not answer: {}", e.without_url()),
                }
            }
        };
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !status.is_success() || parsed.get("status").and_then(Value::as_str) != Some("success") {
            let why = parsed
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| excerpt(&body, 200), str::to_string);
            let detail = format!("Prometheus answered {}: {why}", status.as_u16());
            // A query or a token Prometheus refuses is the check's fault, and no wait
            // mends it; an overloaded or failing server may answer later.
            // 422 is Prometheus's "the query could not be executed" (data-dependent).
            let later = super::http::is_transient(status) || status.is_success() || status.as_u16() == 422;
            return match later {
                true => Reading::NoData { detail },
                false => Reading::Refused { detail },
            };
        }
        match samples(parsed.get("data").unwrap_or(&Value::Null)) {
            Ok(values) => condition.judge(&values),
            Err(why) => Reading::Refused {
                detail: format!("Prometheus's answer: {why}"),
            },
        }
    }
}

#[async_trait]
impl Checks for CheckReader {
    async fn read(
        &self,
        job: &DeployJob,
        names: &[String],
        groups: &Groups,
    ) -> Vec<(String, Reading)> {
        let checks = self.config.checks_for(job);
        // At once: each may take up to READ_TIMEOUT, and a step has a budget.
        let checks = &checks;
        let reads = names.iter().map(|name| async move {
            let reading = match checks.iter().find(|c| &c.name == name).map(|c| &c.source) {
                Some(CheckSource::Prometheus {
                    url,
                    query,
                    condition,
                    token,
                }) => {
                    self.query(job, url, query, *condition, token.as_ref())
                        .await
                }
                Some(CheckSource::Analysis {
                    metrics_url,
                    requests,
                    latency,
                    ..
                }) => {
                    let metrics = Metrics {
                        requests,
                        latency: latency.as_deref(),
                    };
                    self.scrape(job, metrics_url, metrics, groups).await
                }
                Some(CheckSource::Datadog {
                    monitors,
                    tags,
                    app_key,
                }) => self.monitors(job, monitors, tags, app_key).await,
                Some(CheckSource::CloudWatch { alarms }) => self.alarms(job, alarms).await,
                // The engine runs a node check through the fleet; never asked here.
                Some(CheckSource::Node { .. }) => Reading::Refused {
                    detail: format!("{name} is a node check, run on the nodes"),
                },
                // The config changed under a running deploy: nothing to read it by.
                None => Reading::NoData {
                    detail: format!("no check named {name} in the config now"),
                },
            };
            if let Reading::NoData { detail } | Reading::Refused { detail } = &reading {
                tracing::warn!(job_id = %job.id, check = %name, %detail, "check without data");
            }
            (name.clone(), reading)
        });
        futures_util::future::join_all(reads).await
    }
}

impl CheckReader {
    /// Datadog monitors by id, or those carrying every tag: one in `Alert` fails.
    async fn monitors(
        &self,
        job: &DeployJob,
        ids: &[u64],
        tags: &[String],
        app_key: &crate::config::secrets::Secret,
    ) -> Reading {
        let Some(dd) = self
            .config
            .app(&job.app)
            .and_then(|a| a.notify.datadog.as_ref())
        else {
            return Reading::Refused {
                detail: "the app has no notify.datadog to read monitors through".into(),
            };
        };
        let keys = (
            self.secrets.resolve(&dd.api_key).await,
            self.secrets.resolve(app_key).await,
        );
        let (api_key, app_key) = match keys {
            (Ok(api), Ok(app)) => (api, app),
            (Err(e), _) | (_, Err(e)) => return secret_missing("the Datadog keys", e),
        };
        let get = |url: String| {
            let request = self
                .http
                .get(url)
                .header("DD-API-KEY", &api_key)
                .header("DD-APPLICATION-KEY", &app_key);
            async move {
                let answer = request
                    .send()
                    .await
                    .map_err(|e| Reading::NoData {
                        detail: format!("Datadog did not answer: {}", e.without_url()),
                    })?;
                let status = answer.status();
                let body = answer.text().await.unwrap_or_default();
                if !status.is_success() {
                    let detail = format!("Datadog answered {}: {}", status.as_u16(), excerpt(&body, 200));
                    // A key or a monitor Datadog does not know is the check's fault.
                    return Err(match super::http::is_transient(status) {
                        true => Reading::NoData { detail },
                        false => Reading::Refused { detail },
                    });
                }
                serde_json::from_str::<Value>(&body).map_err(|e| Reading::NoData {
                    detail: format!("Datadog's answer is not JSON: {e}"),
                })
            }
        };
        let api = &dd.api_url;
        let answers: Vec<Result<Value, Reading>> = if ids.is_empty() {
            let tags: Vec<String> = tags
                .iter()
                .map(|t| t.replace("{app}", &job.app).replace("{env}", &job.env))
                .collect();
            let query = serde_urlencoded::to_string([("monitor_tags", tags.join(","))])
                .unwrap_or_default();
            match get(format!("{api}/api/v1/monitor?{query}")).await {
                Ok(Value::Array(list)) => list.into_iter().map(Ok).collect(),
                Ok(_) => vec![Err(Reading::NoData {
                    detail: "Datadog's answer is not a list of monitors".into(),
                })],
                Err(r) => vec![Err(r)],
            }
        } else {
            futures_util::future::join_all(
                ids.iter().map(|id| get(format!("{api}/api/v1/monitor/{id}"))),
            )
            .await
        };
        judge_monitors(answers, tags)
    }
}

impl CheckReader {
    async fn aws(&self) -> &aws_config::SdkConfig {
        self.aws.get_or_init(crate::aws::sdk_config).await
    }

    /// CloudWatch alarms by name, metric and composite alike: one in ALARM fails.
    async fn alarms(&self, job: &DeployJob, names: &[String]) -> Reading {
        use aws_sdk_cloudwatch::types::AlarmType;
        let names: Vec<String> = names
            .iter()
            .map(|n| n.replace("{app}", &job.app).replace("{env}", &job.env))
            .collect();
        let client = aws_sdk_cloudwatch::Client::new(self.aws().await);
        // Without AlarmTypes, DescribeAlarms leaves composite alarms out.
        let mut pages = client
            .describe_alarms()
            .set_alarm_names(Some(names.clone()))
            .alarm_types(AlarmType::MetricAlarm)
            .alarm_types(AlarmType::CompositeAlarm)
            .into_paginator()
            .send();
        let mut found = vec![];
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => return alarms_unread(e),
            };
            let metric = page
                .metric_alarms()
                .iter()
                .map(|a| (a.alarm_name(), a.state_value(), a.state_reason()));
            let composite = page
                .composite_alarms()
                .iter()
                .map(|a| (a.alarm_name(), a.state_value(), a.state_reason()));
            for (name, state, reason) in metric.chain(composite) {
                found.push(Alarm {
                    name: name.unwrap_or_default().to_string(),
                    state: state.map_or("", |s| s.as_str()).to_string(),
                    reason: reason.unwrap_or_default().to_string(),
                });
            }
        }
        judge_alarms(&names, &found)
    }
}

/// A DescribeAlarms that failed: throttled, timed out, unreachable or a credentials
/// provider that failed for now may pass; refused (no credentials configured, no
/// permission, a request CloudWatch will not take) stays refused.
fn alarms_unread(
    e: aws_sdk_cloudwatch::error::SdkError<
        aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsError,
    >,
) -> Reading {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_cloudwatch::error::SdkError;
    // A credentials error travels down a dispatch failure's sources.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut credentials = None;
    while let Some(c) = cause {
        if let Some(c) = c.downcast_ref::<CredentialsError>() {
            credentials = Some(matches!(
                c,
                CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_)
            ));
            break;
        }
        cause = c.source();
    }
    let refused = match (&e, credentials) {
        // None configured stays so; a provider failing (a timeout, STS) may pass.
        (_, Some(unconfigured)) => unconfigured,
        (SdkError::ConstructionFailure(_), None) => true,
        // Failing before it was sent (no region, no endpoint) is the setup's, and stays;
        // on the way, a connection's or a timeout's, may pass.
        (SdkError::DispatchFailure(d), None) => d.is_user() || (d.is_other() && d.as_other().is_none()),
        (_, None) => crate::aws::refused(&e),
    };
    let detail = format!(
        "CloudWatch DescribeAlarms failed: {}",
        aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
    );
    match refused {
        true => Reading::Refused { detail },
        false => Reading::NoData { detail },
    }
}

/// One alarm as DescribeAlarms answers it.
struct Alarm {
    name: String,
    state: String,
    reason: String,
}

/// One alarm in ALARM fails, with its reason; a name CloudWatch does not know is the
/// check's fault (as a Datadog monitor id is); all INSUFFICIENT_DATA is no data.
fn judge_alarms(names: &[String], found: &[Alarm]) -> Reading {
    if let Some(a) = found.iter().find(|a| a.state == "ALARM") {
        return Reading::Fail {
            detail: format!("CloudWatch alarm {} is ALARM: {}", a.name, excerpt(&a.reason, 200)),
        };
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !found.iter().any(|a| &a.name == *n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Reading::Refused {
            detail: format!(
                "CloudWatch has no alarm named {} (a composite alarm is answered only to a grant on every alarm)",
                crate::deploy::lists::names(&missing)
            ),
        };
    }
    if found.iter().all(|a| a.state == "INSUFFICIENT_DATA") {
        return Reading::NoData {
            detail: format!("{} CloudWatch alarm(s), all INSUFFICIENT_DATA", found.len()),
        };
    }
    let ok = found.iter().filter(|a| a.state == "OK").count();
    Reading::Pass {
        detail: format!(
            "CloudWatch alarms: {ok} OK, {} INSUFFICIENT_DATA (none ALARM)",
            found.len().saturating_sub(ok)
        ),
    }
}

/// A secret that cannot be read: a missing variable or SSM client stays missing, SSM's
/// own failure may pass.
fn secret_missing(what: &str, e: crate::config::secrets::SecretError) -> Reading {
    let detail = format!("cannot read {what}: {e}");
    match e {
        crate::config::secrets::SecretError::Ssm { .. } => Reading::NoData { detail },
        _ => Reading::Refused { detail },
    }
}

/// One monitor alerting fails; none found, or all without data, is no data.
fn judge_monitors(answers: Vec<Result<Value, Reading>>, tags: &[String]) -> Reading {
    let mut states = vec![];
    let mut failed = None;
    for answer in answers {
        match answer {
            Ok(m) => {
                let id = m.get("id").and_then(Value::as_u64).unwrap_or_default();
                let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
                let state = m
                    .get("overall_state")
                    .and_then(Value::as_str)
                    .unwrap_or("Unknown");
                states.push((id, name.to_string(), state.to_string()));
            }
            Err(r) => {
                failed.get_or_insert(r);
            }
        }
    }
    // One alerting is the verdict, whatever another's read said.
    if let Some((id, name, state)) = states.iter().find(|s| s.2 == "Alert") {
        return Reading::Fail {
            detail: format!("Datadog monitor {id} ({name}) is {state}"),
        };
    }
    if let Some(r) = failed {
        return r;
    }
    if states.is_empty() {
        return Reading::NoData {
            detail: format!("no Datadog monitor is tagged {}", tags.join(", ")),
        };
    }
    if states.iter().all(|s| s.2 == "No Data") {
        return Reading::NoData {
            detail: format!("{} Datadog monitor(s), all without data", states.len()),
        };
    }
    let mut counts: Vec<(String, usize)> = vec![];
    for (_, _, state) in &states {
        match counts.iter_mut().find(|(s, _)| s == state) {
            Some(c) => c.1 = c.1.saturating_add(1),
            None => counts.push((state.clone(), 1)),
        }
    }
    let said: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    Reading::Pass {
        detail: format!("Datadog monitors: {} (none Alert)", said.join(", ")),
    }
}

/// The metrics an analysis reads from each node's Prometheus text.
#[derive(Clone, Copy)]
struct Metrics<'a> {
    requests: &'a str,
    latency: Option<&'a str>,
}

/// How many nodes an analysis scrapes at once.
const SCRAPES_AT_ONCE: usize = 32;

impl CheckReader {
    /// Every node of both groups at once (as near the same moment as can be): each
    /// group's counters summed.
    async fn scrape(
        &self,
        job: &DeployJob,
        metrics_url: &crate::config::template::Template,
        metrics: Metrics<'_>,
        groups: &Groups,
    ) -> Reading {
        let Ok((_, env)) = self.config.target(job) else {
            return Reading::NoData {
                detail: "the app or environment left the config".into(),
            };
        };
        let all: Vec<(bool, String)> = groups
            .canary
            .iter()
            .map(|n| (true, n.clone()))
            .chain(groups.baseline.iter().map(|n| (false, n.clone())))
            .collect();
        // SSM nodes have no address in the config: their agents' are the only ones known.
        let addresses = match &env.nodes {
            Nodes::Ssm { tags, .. } => {
                let ssm = crate::aws::ssm_client(self.aws().await);
                match crate::aws::fleet::addresses(&ssm, tags).await {
                    Ok(found) => found,
                    Err(e) => {
                        return Reading::NoData {
                            detail: format!("the nodes' addresses could not be read: {e}"),
                        }
                    }
                }
            }
            Nodes::Listed(_) => Default::default(),
        };
        let url = |name: &str| -> Result<String, String> {
            let (host, vars) = match &env.nodes {
                Nodes::Listed(listed) => {
                    let node = listed
                        .iter()
                        .find(|n| n.name == name)
                        .ok_or_else(|| format!("{name} is not in the config now"))?;
                    let host = node.ssh.as_ref().map_or("127.0.0.1", |s| s.host.as_str());
                    (host, &node.vars)
                }
                Nodes::Ssm { vars, .. } => match addresses.get(name) {
                    Some(ip) => (ip.as_str(), vars),
                    None => return Err("SSM reports no address for it".into()),
                },
            };
            metrics_url
                .render_url(|var| match var {
                    "node" => Some(name),
                    "node_host" => Some(host),
                    v => vars.get(v).map(String::as_str),
                })
                .map_err(|e| format!("{name}'s metrics_url: {e}"))
        };
        // At most SCRAPES_AT_ONCE in flight, the next as soon as one ends: a node that
        // does not answer holds up only its own slot.
        let http: &reqwest::Client = &self.http;
        let reads = futures_util::stream::iter(all.into_iter().map(|(canary, name)| {
            let target = url(&name);
            async move {
                let served = match target {
                    Ok(target) => read_node(http, &target, metrics).await,
                    Err(e) => Err(e),
                };
                (canary, name, served)
            }
        }))
        .buffer_unordered(SCRAPES_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
        let mut scrape = Scrape::default();
        let mut problems = vec![];
        for (canary, node, served) in reads {
            match served {
                Ok(served) => scrape.nodes.push(NodeServed {
                    node,
                    canary,
                    served,
                }),
                Err(e) => {
                    problems.push(format!("{node}: {e}"));
                    scrape.unanswered.push(node);
                }
            }
        }
        scrape.nodes.sort_by(|a, b| a.node.cmp(&b.node));
        scrape.unanswered.sort();
        let answered = |canary: bool| scrape.nodes.iter().any(|n| n.canary == canary);
        if !answered(true) || !answered(false) {
            problems.sort();
            return Reading::NoData {
                detail: format!(
                    "no node of the {} answered: {}",
                    if answered(true) { "baseline" } else { "canary" },
                    crate::deploy::lists::names(&problems)
                ),
            };
        }
        Reading::Scraped {
            scrape: Box::new(scrape),
        }
    }
}

/// The most of a node's metrics text read (a node is not trusted to stop).
const METRICS_MAX_BYTES: usize = 4 << 20;

/// What one node says it served: its request counter (5xx `code`s as errors) and its
/// latency histogram, each summed over its series.
async fn read_node(http: &reqwest::Client, url: &str, metrics: Metrics<'_>) -> Result<Served, String> {
    let Metrics { requests, latency } = metrics;
    let mut answer = http
        .get(url)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !answer.status().is_success() {
        return Err(format!("answered {}", answer.status().as_u16()));
    }
    let mut body = vec![];
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.without_url().to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > METRICS_MAX_BYTES {
            return Err(format!("its metrics are past {METRICS_MAX_BYTES} bytes"));
        }
    }
    let text = String::from_utf8_lossy(&body);
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("not Prometheus text: {e}"))?;
    let mut served = Served::default();
    let mut found = false;
    let mut buckets: Vec<(f64, u64)> = vec![];
    let (mut series_bounds, mut mixed): (Option<Vec<f64>>, bool) = (None, false);
    // A count is a whole number, not negative, and finite.
    let count = |v: f64| -> Result<u64, String> {
        match v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1e18 {
            true => Ok(v as u64),
            false => Err(format!("{v} is not a count")),
        }
    };
    for sample in &parsed.samples {
        match &sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)
                if sample.metric == requests =>
            {
                found = true;
                let n = count(*v)?;
                served.requests = served.requests.saturating_add(n);
                if sample.labels.get("code").is_some_and(|c| c.starts_with('5')) {
                    served.errors = served.errors.saturating_add(n);
                }
            }
            prometheus_parse::Value::Histogram(counts)
                if latency.is_some_and(|l| sample.metric == l || sample.metric == format!("{l}_bucket")) =>
            {
                let bounds: Vec<f64> = counts.iter().map(|c| c.less_than).collect();
                match &series_bounds {
                    // Series with other buckets cannot be added up: no latency from it.
                    Some(first) if *first != bounds => mixed = true,
                    Some(_) => {}
                    None => series_bounds = Some(bounds),
                }
                for c in counts {
                    let n = count(c.count)?;
                    match buckets.iter_mut().find(|(le, _)| *le == c.less_than) {
                        Some(b) => b.1 = b.1.saturating_add(n),
                        None => buckets.push((c.less_than, n)),
                    }
                }
            }
            _ => {}
        }
    }
    if !found {
        return Err(format!("no {requests} in its metrics"));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !mixed {
        served.buckets = buckets.into_iter().map(|(le, n)| (le.to_string(), n)).collect();
    }
    Ok(served)
}

/// The samples of an instant query's `data`: each series's labels (as PromQL writes a
/// selector) and value; a scalar is one value without labels.
fn samples(data: &Value) -> Result<Vec<(String, f64)>, String> {
    let number = |v: &Value| -> Result<f64, String> {
        v.get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| format!("{v} is not a [time, \"number\"] pair"))
    };
    let result = data.get("result").unwrap_or(&Value::Null);
    match data.get("resultType").and_then(Value::as_str) {
        Some("scalar") => Ok(vec![(String::new(), number(result)?)]),
        Some("vector") => result
            .as_array()
            .ok_or("a vector without results")?
            .iter()
            .map(|s| {
                let labels = s
                    .get("metric")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let labels = if labels.is_empty() {
                    labels
                } else {
                    format!("{{{labels}}}")
                };
                Ok((labels, number(s.get("value").unwrap_or(&Value::Null))?))
            })
            .collect(),
        other => Err(format!(
            "a {} result; the query must give a number or an instant vector",
            other.unwrap_or("missing")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{judge_alarms, samples, Alarm};
    use crate::deploy::checks::Reading;
    use serde_json::json;

    /// A provider that finds no credentials, as the default chain does on a machine
    /// without any.
    #[derive(Debug)]
    struct NoCredentials;

    impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded("no credentials here"),
            ))
        }
    }

    /// No credentials stay missing (refused); a CloudWatch that cannot be reached may
    /// answer later (no data). The SDK's own errors, through its HTTP client.
    #[tokio::test]
    async fn describe_alarms_without_credentials_is_refused_and_unreachable_is_no_data() {
        let sdk = crate::aws::sdk_config().await;
        let client = |credentials: bool| {
            // Not from `sdk`, whose credentials (the environment's) it would keep.
            let mut conf = aws_sdk_cloudwatch::config::Builder::new()
                .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
                .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
                // Nothing listens on port 1 of this machine.
                .endpoint_url("http://127.0.0.1:1")
                .retry_config(aws_config::retry::RetryConfig::disabled());
            conf.set_http_client(sdk.http_client());
            conf.set_credentials_provider(Some(match credentials {
                true => aws_sdk_cloudwatch::config::SharedCredentialsProvider::new(
                    aws_sdk_cloudwatch::config::Credentials::new("id", "secret", None, None, "test"),
                ),
                false => aws_sdk_cloudwatch::config::SharedCredentialsProvider::new(NoCredentials),
            }));
            aws_sdk_cloudwatch::Client::from_conf(conf.build())
        };
        let read = |c: aws_sdk_cloudwatch::Client| async move {
            let e = c.describe_alarms().send().await.expect_err("nothing answers");
            super::alarms_unread(e)
        };
        assert!(matches!(read(client(false)).await, Reading::Refused { .. }));
        assert!(matches!(read(client(true)).await, Reading::NoData { .. }));
    }

    #[test]
    fn one_alarm_in_alarm_fails_and_an_unknown_name_is_the_checks_fault() {
        let alarm = |name: &str, state: &str| Alarm {
            name: name.into(),
            state: state.into(),
            reason: format!("{name} crossed its threshold"),
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let read = |n: &[&str], found: &[Alarm]| judge_alarms(&names(n), found);
        let both = [alarm("a", "OK"), alarm("b", "ALARM")];
        assert!(matches!(read(&["a", "b"], &both), Reading::Fail { detail }
            if detail == "CloudWatch alarm b is ALARM: b crossed its threshold"));
        // ALARM is the verdict even when another name is not there.
        assert!(matches!(read(&["a", "b", "c"], &both), Reading::Fail { .. }));
        let ok = [alarm("a", "OK"), alarm("b", "INSUFFICIENT_DATA")];
        assert!(matches!(read(&["a", "b", "c"], &ok), Reading::Refused { detail }
            if detail.contains("no alarm named c")));
        assert!(matches!(read(&["a", "b"], &ok), Reading::Pass { detail }
            if detail.contains("1 OK, 1 INSUFFICIENT_DATA")));
        let dark = [alarm("b", "INSUFFICIENT_DATA")];
        assert!(matches!(read(&["b"], &dark), Reading::NoData { .. }));
    }

    #[test]
    fn instant_vectors_and_scalars_are_read() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"version": "1.3.0"}, "value": [1.5, "0.05"]},
            {"metric": {}, "value": [1.5, "NaN"]},
            {"metric": {"a": "b"}, "value": [1.5, "+Inf"]},
        ]});
        let read = samples(&vector).unwrap();
        assert_eq!(read[0], ("{version=\"1.3.0\"}".to_string(), 0.05));
        assert!(read[1].0.is_empty() && read[1].1.is_nan());
        assert_eq!(read[2].1, f64::INFINITY);
        let scalar = json!({"resultType": "scalar", "result": [1.5, "3"]});
        assert_eq!(samples(&scalar).unwrap(), vec![(String::new(), 3.0)]);
        let matrix = json!({"resultType": "matrix", "result": []});
        assert!(samples(&matrix).unwrap_err().contains("matrix"));
        let bad = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, 2]}]});
        assert!(samples(&bad).is_err());
    }
}
