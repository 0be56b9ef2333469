//! Package uploads: S3 `ObjectCreated` (an internal PyPI bucket), CodeArtifact package
//! version events, and new files in the local package directory.

use aws_lambda_events::event::s3::S3Event;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Ingress, JobReceipt};
use crate::deploy::job::Source;
use crate::deploy::version::{parse_distribution_filename, PackageName, Version};

/// What became of one uploaded file or package version.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UploadOutcome {
    Queued {
        location: String,
        jobs: Vec<JobReceipt>,
    },
    Ignored {
        location: String,
        reason: String,
    },
}

/// A CodeArtifact "Package Version State Change" event from EventBridge.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeArtifactDetail {
    pub domain_name: String,
    pub repository_name: String,
    pub package_format: String,
    pub package_name: String,
    pub package_version: String,
    pub package_version_state: String,
    pub operation_type: String,
}

impl Ingress {
    /// Queues one job per app (and auto-deploy environment) that uses `package`.
    /// Anything that is not a package of a configured app is logged and ignored.
    async fn upload(
        &self,
        location: String,
        parsed: Result<(PackageName, Version), String>,
        now: DateTime<Utc>,
    ) -> Result<UploadOutcome, String> {
        let (package, version) = match parsed {
            Ok(p) => p,
            Err(reason) => {
                tracing::info!(%location, %reason, "upload ignored");
                return Ok(UploadOutcome::Ignored { location, reason });
            }
        };
        let source = Source::Upload {
            location: location.clone(),
        };
        let jobs: Vec<_> = self
            .config
            .apps_for_package(&package)
            .flat_map(|app| Ingress::auto_jobs(app, &version, &source, now))
            .collect();
        if jobs.is_empty() {
            let reason =
                format!("package {package} {version} belongs to no app that deploys automatically");
            tracing::info!(%location, %reason, "upload ignored");
            return Ok(UploadOutcome::Ignored { location, reason });
        }
        match self.enqueue(jobs).await {
            Ok(jobs) => Ok(UploadOutcome::Queued { location, jobs }),
            Err(reply) => Err(reply.reason().to_string()),
        }
    }

    /// A wheel or sdist file name, wherever it was uploaded.
    pub async fn upload_file(
        &self,
        location: String,
        file_name: &str,
        now: DateTime<Utc>,
    ) -> Result<UploadOutcome, String> {
        let parsed = parse_distribution_filename(file_name)
            .map(|d| (d.package, d.version))
            .map_err(|e| e.to_string());
        self.upload(location, parsed, now).await
    }

    /// Every `ObjectCreated` record of an S3 event; an error means "retry the event".
    pub async fn s3_event(
        &self,
        event: &S3Event,
        now: DateTime<Utc>,
    ) -> Result<Vec<UploadOutcome>, String> {
        let mut out = vec![];
        for rec in &event.records {
            let bucket = rec.s3.bucket.name.clone().unwrap_or_default();
            // S3 event keys are form-encoded: '+' is a space, the rest percent-escaped.
            let raw_key = rec
                .s3
                .object
                .key
                .clone()
                .unwrap_or_default()
                .replace('+', " ");
            let key = percent_encoding::percent_decode_str(&raw_key)
                .decode_utf8_lossy()
                .into_owned();
            let location = format!("s3://{bucket}/{key}");
            if !rec
                .event_name
                .as_deref()
                .unwrap_or_default()
                .starts_with("ObjectCreated:")
            {
                out.push(UploadOutcome::Ignored {
                    location,
                    reason: format!("S3 event {:?}", rec.event_name),
                });
                continue;
            }
            out.push(self.upload_file(location, &key, now).await?);
        }
        Ok(out)
    }

    /// A CodeArtifact package version that reached the Published state.
    pub async fn codeartifact_event(
        &self,
        detail: &CodeArtifactDetail,
        now: DateTime<Utc>,
    ) -> Result<UploadOutcome, String> {
        let location = format!(
            "codeartifact://{}/{}/{}/{}/{}",
            detail.domain_name,
            detail.repository_name,
            detail.package_format,
            detail.package_name,
            detail.package_version
        );
        let parsed = if detail.package_format != "pypi" {
            Err(format!(
                "package format {:?} is not pypi",
                detail.package_format
            ))
        } else if detail.package_version_state != "Published" || detail.operation_type == "Deleted"
        {
            Err(format!(
                "version is {} ({})",
                detail.package_version_state, detail.operation_type
            ))
        } else {
            detail
                .package_name
                .parse::<PackageName>()
                .map_err(|_| {
                    format!(
                        "package name {:?} is not valid PEP 508",
                        detail.package_name
                    )
                })
                .and_then(|p| {
                    Version::parse(&detail.package_version)
                        .map(|v| (p, v))
                        .map_err(|e| e.to_string())
                })
        };
        self.upload(location, parsed, now).await
    }
}

/// Reads the `detail` of an EventBridge event, whatever the envelope type.
pub fn eventbridge_detail<T: serde::de::DeserializeOwned>(event: &Value) -> Result<T, String> {
    serde_json::from_value(event.get("detail").cloned().unwrap_or(json!(null)))
        .map_err(|e| format!("malformed EventBridge detail: {e}"))
}
