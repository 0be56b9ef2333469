//! The deploy queue on AWS: SQS FIFO.

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::sdk_err;
use crate::deploy::job::DeployJob;
use crate::deploy::ports::{Enqueued, JobQueue, PortError};

/// SQS FIFO: one message group per app+env keeps its deploys in order; the job id is the
/// deduplication id, so SQS drops a second copy of the same event (within its 5-minute
/// window; beyond it the Step Functions execution name, also the job id, catches it).
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
        }
    }
}

/// SendMessageBatch takes at most 10 entries.
const SQS_BATCH: usize = 10;

#[async_trait]
impl JobQueue for SqsQueue {
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError> {
        for chunk in jobs.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, job)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(job.to_json())
                        .message_group_id(job.group())
                        .message_deduplication_id(job.id.as_str())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_err("SQS SendMessageBatch", e))?;
            if let Some(f) = out.failed.first() {
                return Err(format!(
                    "SQS refused {} of {} jobs: {} {}",
                    out.failed.len(),
                    chunk.len(),
                    f.code,
                    f.message.as_deref().unwrap_or("")
                )
                .into());
            }
        }
        // SQS drops duplicates silently and answers as if it had queued them.
        Ok(vec![Enqueued::Queued; jobs.len()])
    }
}
