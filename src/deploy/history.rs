//! What was live on an app+env, which versions were rolled back from, and where a
//! rollback goes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::{DeployJob, JobId};
use super::version::Version;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub job: DeployJob,
    pub recorded_at: DateTime<Utc>,
    /// Nodes the deploy went live without: installs that failed within `max_errors`,
    /// nodes unhealthy within `max_failed` (`Outcome::left_behind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_behind: Option<String>,
    /// The faulty mark this deploy lifted: a person deployed the marked version by name
    /// and it went well (`job.requested_by` says who).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Faulty>,
}

impl HistoryEntry {
    pub fn new(job: DeployJob, recorded_at: DateTime<Utc>) -> HistoryEntry {
        HistoryEntry {
            job,
            recorded_at,
            left_behind: None,
            cleared: None,
        }
    }
}

/// A version rolled back from after it served: it failed its restart, health check or bake
/// on a node and the deploy put the previous version back, or a `rollback` replaced it.
/// Install failures and nodes that went away mark nothing. A marked version is never the
/// target of a rollback or of an automatic job; a person may deploy it by name (and is
/// told), and once such a deploy succeeds the mark is lifted (`HistoryEntry::cleared`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faulty {
    pub version: Version,
    /// The deploy that rolled back from it.
    pub job: JobId,
    /// Empty once the list outgrew its parameter and this mark's reason gave way ([`fit`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// What the marks of one app+env may take: one standard-tier Parameter Store value.
pub const MARKS_MAX_BYTES: usize = 4096;

/// Fits `marks` (newest first) into `max_bytes` of JSON, the one Parameter Store value
/// they share: the oldest marks' reasons give way first, so that a version's mark
/// outlives its words (about 45 marks fit a 4 KB value without reasons); only past that
/// are the oldest marks dropped. The JSON and how many marks were dropped.
pub fn fit(marks: &mut Vec<Faulty>, max_bytes: usize) -> (String, usize) {
    let mut dropped = 0;
    loop {
        let value = serde_json::to_string(&marks).unwrap_or_default();
        if value.len() <= max_bytes || marks.len() <= 1 {
            return (value, dropped);
        }
        match marks.iter_mut().rev().find(|m| !m.reason.is_empty()) {
            Some(oldest) => oldest.reason.clear(),
            None => {
                marks.pop();
                dropped += 1;
            }
        }
    }
}

impl Faulty {
    /// Why it was marked; a mark whose words gave way (see [`fit`]) says by which job and
    /// when.
    pub fn why(&self) -> String {
        match self.reason.as_str() {
            "" => format!(
                "rolled back from by job {} on {}",
                self.job,
                self.at.format("%Y-%m-%d %H:%M UTC")
            ),
            reason => reason.to_string(),
        }
    }
}

/// The mark on `version`, if it was rolled back from.
pub fn faulty_mark<'a>(faulty: &'a [Faulty], version: &Version) -> Option<&'a Faulty> {
    faulty.iter().find(|f| f.version.same_as(version))
}

/// The live job and the one a rollback restores: the newest earlier entry whose version
/// is neither the live one (re-deploys of it are skipped) nor marked faulty. `Err` says
/// why there is none.
pub fn rollback_target<'a>(
    history: &'a [HistoryEntry],
    faulty: &[Faulty],
) -> Result<(&'a DeployJob, &'a DeployJob), String> {
    let live = &history.first().ok_or("nothing is live yet")?.job;
    let mut skipped = vec![];
    for job in history.iter().skip(1).map(|h| &h.job) {
        if job.version.same_as(&live.version) {
            continue;
        }
        match faulty_mark(faulty, &job.version) {
            Some(_) => {
                if !skipped.contains(&&job.version) {
                    skipped.push(&job.version);
                }
            }
            None => return Ok((live, job)),
        }
    }
    Err(if skipped.is_empty() {
        format!("no version before {} is on record", live.version)
    } else {
        let names: Vec<String> = skipped.iter().map(|v| v.to_string()).collect();
        format!(
            "every earlier version on record is marked faulty ({}): deploy one by name to go back anyway",
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::*;
    use crate::deploy::job::Source;

    fn history(versions: &[&str]) -> Vec<HistoryEntry> {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let job = DeployJob::new(
                    "hello",
                    "production",
                    "hello-app".parse().unwrap(),
                    Version::parse(v).unwrap(),
                    Source::Cli {
                        user: "ann".into(),
                        nonce: format!("{i}"),
                    },
                    at - Duration::minutes(i as i64),
                );
                HistoryEntry::new(job.clone(), job.requested_at)
            })
            .collect()
    }

    fn mark(v: &str) -> Faulty {
        Faulty {
            version: Version::parse(v).unwrap(),
            job: JobId::derive("hello", "production", &Version::parse(v).unwrap(), "x"),
            reason: "rolled back".into(),
            at: Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
        }
    }

    fn target(h: &[HistoryEntry], f: &[Faulty]) -> Result<String, String> {
        rollback_target(h, f).map(|(_, to)| to.version.to_string())
    }

    #[test]
    fn rollback_goes_to_the_newest_earlier_version_that_is_not_live() {
        let h = history(&["1.2.0", "1.2", "1.1.0", "1.0.0"]);
        assert_eq!(target(&h, &[]), Ok("1.1.0".into()));
    }

    #[test]
    fn rollback_skips_faulty_versions() {
        // 1.1.0 went live, was rolled back to 1.0.0; rolling back again must not bring
        // 1.1.0 back.
        let h = history(&["1.0.0", "1.1.0", "1.0.0"]);
        let err = target(&h, &[mark("1.1.0")]).unwrap_err();
        assert!(err.contains("marked faulty (1.1.0)"), "{err}");
        let h = history(&["1.2.0", "1.1.0", "1.0.0"]);
        assert_eq!(target(&h, &[mark("1.1")]), Ok("1.0.0".into()));
    }

    #[test]
    fn marks_past_their_parameter_lose_the_oldest_reasons_before_any_mark() {
        let mut marks: Vec<Faulty> = (0..40)
            .map(|i| Faulty {
                reason: "x".repeat(300),
                ..mark(&format!("1.{i}.0"))
            })
            .collect();
        let (value, dropped) = fit(&mut marks, 4096);
        assert!(value.len() <= 4096, "{}", value.len());
        assert_eq!((dropped, marks.len()), (0, 40));
        assert_eq!(marks[0].reason.len(), 300, "the newest keeps its words");
        assert!(marks[39].reason.is_empty());
        let back: Vec<Faulty> = serde_json::from_str(&value).unwrap();
        assert_eq!(back, marks);
        assert!(
            marks[39].why().starts_with("rolled back from by job "),
            "{}",
            marks[39].why()
        );
        assert_eq!(marks[0].why(), marks[0].reason);

        let mut many: Vec<Faulty> = (0..100).map(|i| mark(&format!("1.{i}.0"))).collect();
        let (value, dropped) = fit(&mut many, 4096);
        assert!(value.len() <= 4096 && dropped > 0 && many.len() >= 40);
        assert_eq!(many[0].version.to_string(), "1.0.0", "the newest stays");
        assert_eq!(many.len() + dropped, 100);
    }

    #[test]
    fn rollback_with_one_version_on_record_says_so() {
        assert_eq!(
            target(&history(&["1.0.0", "1.0.0"]), &[]),
            Err("no version before 1.0.0 is on record".into())
        );
        assert_eq!(target(&[], &[]), Err("nothing is live yet".into()));
    }
}
