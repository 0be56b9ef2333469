//! `[[apps.X.checks]]` and `[[apps.X.environments.E.checks]]`: metric checks.

use std::collections::BTreeSet;

use super::{check_url, valid_name, Checker};
use crate::config::raw::RawCheck;
use crate::config::template::Template;
use crate::config::{Check, CheckSource};
use crate::deploy::analysis::Settings;
use crate::deploy::checks::{Condition, NoData};

/// The false-alarm rate and the requests a side needs unless the check says.
const DEFAULT_ALPHA: f64 = 0.01;
const DEFAULT_MIN_REQUESTS: u64 = 200;

fn check_analysis(
    c: &mut Checker,
    k: &str,
    url: String,
    requests: Option<String>,
    latency: Option<String>,
    alpha: Option<f64>,
    min_requests: Option<u64>,
) -> Option<CheckSource> {
    let metrics_url = match Template::parse(&url) {
        Ok(t) if url.starts_with("http://") || url.starts_with("https://") => Some(t),
        Ok(_) => {
            c.error(
                format!("{k}.analysis"),
                format!("{url:?} is not an http(s) URL"),
                "each node's metrics, e.g. \"http://{node_host}:{port}/metrics\"",
            );
            None
        }
        Err(e) => {
            c.error(
                format!("{k}.analysis"),
                e.to_string(),
                "placeholders are {node}, {node_host} and the node's vars",
            );
            None
        }
    };
    let metric = |c: &mut Checker, key: &str, name: Option<&str>, needed: bool| -> Option<String> {
        match name {
            Some(n) if is_metric_name(n) => Some(n.to_string()),
            Some(n) => {
                c.error(
                    format!("{k}.{key}"),
                    format!("{n:?} is not a metric name"),
                    "letters, digits, '_' and ':', not starting with a digit",
                );
                None
            }
            None if needed => {
                c.error(
                    format!("{k}.{key}"),
                    "an analysis needs the nodes' request counter",
                    "requests = \"http_requests_total\" (labelled code=\"…\": 5xx are errors)",
                );
                None
            }
            None => None,
        }
    };
    let requests = metric(c, "requests", requests.as_deref(), true);
    let latency_ok = latency.as_deref().is_none_or(is_metric_name);
    let latency = metric(c, "latency", latency.as_deref(), false);
    let alpha = alpha.unwrap_or(DEFAULT_ALPHA);
    let alpha_ok = alpha > 0.0 && alpha <= 0.2;
    if !alpha_ok {
        c.error(
            format!("{k}.alpha"),
            format!("{alpha} is not a false-alarm rate shipit takes"),
            "more than 0 and at most 0.2, e.g. alpha = 0.01",
        );
    }
    let min_requests = min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    if min_requests == 0 {
        c.error(
            format!("{k}.min_requests"),
            "0 requests prove nothing",
            "how many requests each side must serve before the canary passes, e.g. 200",
        );
    }
    if !alpha_ok || min_requests == 0 || !latency_ok {
        return None;
    }
    Some(CheckSource::Analysis {
        metrics_url: metrics_url?,
        requests: requests?,
        latency,
        settings: Settings {
            alpha_ppm: (alpha * 1e6).round() as u32,
            min_requests,
        },
    })
}

/// What DescribeAlarms takes in one call: 1 to 100 names of 1 to 255 characters (the
/// CloudWatch API reference), `{app}` and `{env}` counted as written.
fn check_alarm_names(c: &mut Checker, k: &str, alarms: Vec<String>) -> Option<Vec<String>> {
    let key = format!("{k}.cloudwatch_alarms");
    if alarms.is_empty() || alarms.len() > 100 {
        c.error(
            key,
            format!("{} alarm names: one check reads 1 to 100", alarms.len()),
            "cloudwatch_alarms = [\"{app}-{env}-5xx\"] (split a longer list into checks)",
        );
        return None;
    }
    let bad = alarms.iter().find(|a| {
        a.trim().is_empty() || a.chars().count() > 255 || a.chars().any(char::is_control)
    });
    if let Some(a) = bad {
        c.error(
            key,
            format!("{a:?} is not a CloudWatch alarm name"),
            "1 to 255 characters, no control characters",
        );
        return None;
    }
    Some(alarms)
}

/// A Prometheus metric name.
fn is_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The keys set on a check that say what it reads and how: each belongs to one kind.
fn source_keys(r: &RawCheck) -> Vec<&'static str> {
    [
        ("check", r.check.is_some()),
        ("cloudwatch_alarms", r.cloudwatch_alarms.is_some()),
        ("datadog_monitors", r.datadog_monitors.is_some()),
        ("datadog_tags", r.datadog_tags.is_some()),
        ("app_key", r.app_key.is_some()),
        ("analysis", r.analysis.is_some()),
        ("requests", r.requests.is_some()),
        ("latency", r.latency.is_some()),
        ("alpha", r.alpha.is_some()),
        ("min_requests", r.min_requests.is_some()),
        ("prometheus", r.prometheus.is_some()),
        ("query", r.query.is_some()),
        ("condition", r.condition.is_some()),
        ("token", r.token.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// Refuses the keys of `set` that are not the kind's `own`: a check reads one source.
fn only(c: &mut Checker, k: &str, set: &[&str], own: &[&str], what: &str) {
    let other: Vec<&str> = set.iter().copied().filter(|s| !own.contains(s)).collect();
    if !other.is_empty() {
        c.error(
            k,
            format!("{what}: {} (another kind's)", other.join(", ")),
            "split it into two checks",
        );
    }
}

/// `key`: `apps.X` or `apps.X.environments.E`.
/// `known`: the placeholders a node check's command may use.
pub(super) fn check_checks(
    c: &mut Checker,
    key: &str,
    raw: Vec<RawCheck>,
    known: &BTreeSet<String>,
) -> Vec<Check> {
    let mut names = BTreeSet::new();
    let mut checks = vec![];
    for (i, r) in raw.into_iter().enumerate() {
        let k = format!("{key}.checks[{i}]");
        if !valid_name(&r.name) {
            c.error(
                format!("{k}.name"),
                format!("{:?} is not a check name", r.name),
                "lower-case letters, digits, '-' or '_' (at most 40), e.g. \"error-ratio\"",
            );
        }
        if !names.insert(r.name.clone()) {
            c.error(
                format!("{k}.name"),
                format!("a second check named {:?}", r.name),
                "give each check its own name",
            );
        }
        if let Some(check) = check_one(c, &k, r, known) {
            checks.push(check);
        }
    }
    let analyses = checks
        .iter()
        .filter(|ch| matches!(ch.source, CheckSource::Analysis { .. }))
        .count();
    if analyses > 1 {
        c.error(
            format!("{key}.checks"),
            format!("{analyses} analyses: a deploy compares its canary with its baseline once"),
            "keep one check with analysis = \"…\"",
        );
    }
    checks
}

fn check_one(c: &mut Checker, k: &str, r: RawCheck, known: &BTreeSet<String>) -> Option<Check> {
    let no_data = match r.no_data.as_deref() {
        None | Some("fail") => Some(NoData::Fail),
        Some("pass") => Some(NoData::Pass),
        Some(other) => {
            c.error(
                format!("{k}.no_data"),
                format!("{other:?} is not what no data may mean"),
                "no_data = \"fail\" (roll back) or \"pass\" (pass it over)",
            );
            None
        }
    };
    let set = source_keys(&r);
    if let Some(command) = r.check {
        only(
            c,
            k,
            &set,
            &["check"],
            "a node check runs its command on the nodes",
        );
        return Some(Check {
            name: r.name,
            no_data: no_data?,
            source: CheckSource::Node {
                command: c.template(&format!("{k}.check"), &command, known)?,
            },
        });
    }
    if let Some(alarms) = r.cloudwatch_alarms {
        let own = ["cloudwatch_alarms"];
        only(c, k, &set, &own, "a CloudWatch check reads alarms by name");
        return Some(Check {
            name: r.name,
            no_data: no_data?,
            source: CheckSource::CloudWatch {
                alarms: check_alarm_names(c, k, alarms)?,
            },
        });
    }
    if r.datadog_monitors.is_some() || r.datadog_tags.is_some() {
        let own = ["datadog_monitors", "datadog_tags", "app_key"];
        only(c, k, &set, &own, "a Datadog check reads monitors");
        let monitors = r.datadog_monitors.unwrap_or_default();
        let tags = r.datadog_tags.unwrap_or_default();
        let bad_tag = tags.iter().find(|t| {
            t.is_empty()
                || !t.chars().all(|ch| {
                    ch.is_ascii_alphanumeric()
                        || matches!(ch, ':' | '_' | '-' | '.' | '/' | '{' | '}')
                })
        });
        if let Some(t) = bad_tag {
            c.error(
                format!("{k}.datadog_tags"),
                format!("{t:?} is not a Datadog tag"),
                "key:value, e.g. \"service:hello\" or \"env:{env}\"",
            );
        }
        if monitors.is_empty() == tags.is_empty() {
            c.error(
                k,
                "a Datadog check names its monitors either by id or by tags",
                "datadog_monitors = [12345] or datadog_tags = [\"service:hello\"]",
            );
        }
        let app_key = match &r.app_key {
            Some(key) => c.secret(&format!("{k}.app_key"), key),
            None => {
                c.error(
                    format!("{k}.app_key"),
                    "reading monitors needs a Datadog application key",
                    "app_key = \"ssm:/shipit/secrets/datadog-app\" (the API key and site are notify.datadog's)",
                );
                None
            }
        };
        if bad_tag.is_some() || monitors.is_empty() == tags.is_empty() {
            return None;
        }
        return Some(Check {
            name: r.name,
            no_data: no_data?,
            source: CheckSource::Datadog {
                monitors,
                tags,
                app_key: app_key?,
            },
        });
    }
    if let Some(url) = r.analysis {
        let own = ["analysis", "requests", "latency", "alpha", "min_requests"];
        only(c, k, &set, &own, "an analysis compares canary and baseline");
        let source = check_analysis(c, k, url, r.requests, r.latency, r.alpha, r.min_requests);
        return Some(Check {
            name: r.name,
            no_data: no_data?,
            source: source?,
        });
    }
    let Some(url) = r.prometheus else {
        c.error(
            k,
            "the check reads nothing: no prometheus, analysis, datadog_monitors, datadog_tags, cloudwatch_alarms or check",
            "prometheus = \"http://prometheus:9090\", with query and condition",
        );
        return None;
    };
    let own = ["prometheus", "query", "condition", "token"];
    only(c, k, &set, &own, "a Prometheus check reads one query");
    let url = url.trim_end_matches('/').to_string();
    let token = match &r.token {
        Some(t) => {
            // A token goes only where it cannot be read on the way.
            check_url(c, &format!("{k}.prometheus"), &url);
            Some(c.secret(&format!("{k}.token"), t)?)
        }
        None => {
            let plain = !url.contains(['?', '#', '@', ' ']);
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() < 10
                || !plain
            {
                c.error(
                    format!("{k}.prometheus"),
                    format!("{url:?} is not an http(s) URL"),
                    "the Prometheus server's URL, e.g. \"http://prometheus:9090\"",
                );
            }
            None
        }
    };
    let query = match r.query {
        Some(q) if !q.trim().is_empty() => Some(q),
        _ => {
            c.error(
                format!("{k}.query"),
                "a Prometheus check needs a query",
                "a PromQL expression; {version}, {app} and {env} become quoted strings",
            );
            None
        }
    };
    let condition = match r.condition.as_deref().map(Condition::parse) {
        Some(Ok(condition)) => Some(condition),
        Some(Err(why)) => {
            c.error(format!("{k}.condition"), why, "e.g. condition = \"< 0.01\"");
            None
        }
        None => {
            c.error(
                format!("{k}.condition"),
                "a Prometheus check needs a condition",
                "what each sample must meet, e.g. condition = \"< 0.01\"",
            );
            None
        }
    };
    Some(Check {
        name: r.name,
        no_data: no_data?,
        source: CheckSource::Prometheus {
            url,
            query: query?,
            condition: condition?,
            token,
        },
    })
}
