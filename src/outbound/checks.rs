//! Reads a deploy's metric checks: Prometheus instant queries over its HTTP API.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::http::{excerpt, Client};
use crate::config::secrets::Secrets;
use crate::config::{Check, CheckSource, Config};
use crate::deploy::checks::{promql, Reading};
use crate::deploy::job::DeployJob;
use crate::deploy::ports::Checks;

/// How long one reading may take: a deploy step reads every check in turn.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CheckReader {
    config: Arc<Config>,
    secrets: Arc<Secrets>,
    http: Client,
}

impl CheckReader {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> CheckReader {
        CheckReader {
            config,
            secrets,
            http: Client::new(READ_TIMEOUT),
        }
    }

    async fn read_one(&self, job: &DeployJob, check: &Check) -> Reading {
        let CheckSource::Prometheus {
            url,
            query,
            condition,
            token,
        } = &check.source;
        let query = promql(query, &job.version.to_string(), &job.app, &job.env);
        let mut request = self
            .http
            .get(format!("{url}/api/v1/query"))
            .query(&[("query", query.as_str())]);
        if let Some(token) = token {
            match self.secrets.resolve(token).await {
                Ok(t) => request = request.bearer_auth(t),
                Err(e) => {
                    return Reading::NoData {
                        detail: format!("cannot read the Prometheus token: {e}"),
                    }
                }
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
            return Reading::NoData {
                detail: format!("Prometheus answered {}: {why}", status.as_u16()),
            };
        }
        match samples(parsed.get("data").unwrap_or(&Value::Null)) {
            Ok(values) => condition.judge(&values),
            Err(why) => Reading::NoData {
                detail: format!("Prometheus's answer: {why}"),
            },
        }
    }
}

#[async_trait]
impl Checks for CheckReader {
    async fn read(&self, job: &DeployJob, names: &[String]) -> Vec<(String, Reading)> {
        let checks = self.config.checks_for(job);
        let mut readings = vec![];
        for name in names {
            let reading = match checks.iter().find(|c| &c.name == name) {
                Some(check) => self.read_one(job, check).await,
                // The config changed under a running deploy: nothing to read it by.
                None => Reading::NoData {
                    detail: format!("no check named {name} in the config now"),
                },
            };
            if let Reading::NoData { detail } = &reading {
                tracing::warn!(job_id = %job.id, check = %name, %detail, "check without data");
            }
            readings.push((name.clone(), reading));
        }
        readings
    }
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
    use super::samples;
    use serde_json::json;

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
