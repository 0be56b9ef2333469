//! `[[apps.X.checks]]` and `[[apps.X.environments.E.checks]]`: metric checks.

use std::collections::BTreeSet;

use super::{check_url, valid_name, Checker};
use crate::config::raw::RawCheck;
use crate::config::{Check, CheckSource};
use crate::deploy::checks::{Condition, NoData};

/// `key`: `apps.X` or `apps.X.environments.E`.
pub(super) fn check_checks(c: &mut Checker, key: &str, raw: Vec<RawCheck>) -> Vec<Check> {
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
        if let Some(check) = check_one(c, &k, r) {
            checks.push(check);
        }
    }
    checks
}

fn check_one(c: &mut Checker, k: &str, r: RawCheck) -> Option<Check> {
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
    let Some(url) = r.prometheus else {
        c.error(
            k,
            "the check reads nothing: no prometheus",
            "prometheus = \"http://prometheus:9090\", with query and condition",
        );
        return None;
    };
    let url = url.trim_end_matches('/').to_string();
    let token = match &r.token {
        Some(t) => {
            // A token goes only where it cannot be read on the way.
            check_url(c, &format!("{k}.prometheus"), &url);
            Some(c.secret(&format!("{k}.token"), t)?)
        }
        None => {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
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
