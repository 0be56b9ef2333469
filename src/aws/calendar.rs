//! SSM Change Calendar: an environment's `change_calendar`, read through GetCalendarState
//! before each deploy takes its lock.

use async_trait::async_trait;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::CalendarState as SsmState;
use chrono::{DateTime, SecondsFormat, Utc};

use super::sdk_err;
use crate::deploy::ports::{CalendarState, ChangeCalendars, PortError};

pub struct SsmCalendars(aws_sdk_ssm::Client);

impl SsmCalendars {
    pub fn new(client: aws_sdk_ssm::Client) -> SsmCalendars {
        SsmCalendars(client)
    }
}

/// GetCalendarState's errors that asking again will not mend: the calendar is not there,
/// is not a calendar, holds what SSM cannot read, or this role may not read it.
const LASTING: [&str; 4] = [
    "InvalidDocument",
    "InvalidDocumentType",
    "UnsupportedCalendarException",
    "AccessDeniedException",
];

#[async_trait]
impl ChangeCalendars for SsmCalendars {
    async fn state(
        &self,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<Result<CalendarState, String>, PortError> {
        let out = match self
            .0
            .get_calendar_state()
            .calendar_names(name)
            .at_time(at.to_rfc3339_opts(SecondsFormat::Secs, true))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
                if LASTING.contains(&code) {
                    let message = e.as_service_error().and_then(|s| s.message()).unwrap_or("");
                    return Ok(Err(format!("{code}: {message}")));
                }
                return Err(sdk_err("SSM GetCalendarState", e));
            }
        };
        let closed = match out.state() {
            Some(SsmState::Open) => {
                return Ok(Ok(CalendarState {
                    open: true,
                    next_change: None,
                }))
            }
            Some(SsmState::Closed) => CalendarState {
                open: false,
                next_change: None,
            },
            other => {
                return Ok(Err(format!(
                    "GetCalendarState answered the state {other:?}"
                )))
            }
        };
        // Only a closed calendar's next change matters: when to look again.
        let next_change = out.next_transition_time().and_then(|t| {
            DateTime::parse_from_rfc3339(t)
                .inspect_err(|e| tracing::warn!(calendar = name, next = t, error = %e, "cannot read NextTransitionTime"))
                .ok()
                .map(|t| t.with_timezone(&Utc))
        });
        Ok(Ok(CalendarState {
            next_change,
            ..closed
        }))
    }
}
