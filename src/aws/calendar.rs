//! SSM Change Calendar: an environment's `change_calendar`, read through GetCalendarState
//! before each deploy takes its lock.

use async_trait::async_trait;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::CalendarState as SsmState;
use chrono::{DateTime, SecondsFormat, Utc};

use super::{refused, sdk_err};
use crate::deploy::ports::{CalendarState, ChangeCalendars, PortError};

pub struct SsmCalendars(aws_sdk_ssm::Client);

impl SsmCalendars {
    pub fn new(client: aws_sdk_ssm::Client) -> SsmCalendars {
        SsmCalendars(client)
    }
}

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
                // A refusal of the request (not there, not a calendar, not readable by
                // this role, another region's ARN) is not mended by asking again;
                // throttling, a 5xx or no answer may be.
                if refused(&e) {
                    let code = e.as_service_error().and_then(|s| s.code());
                    let message = e.as_service_error().and_then(|s| s.message());
                    return Ok(Err(format!(
                        "{}: {}",
                        code.unwrap_or("refused"),
                        message.unwrap_or_default()
                    )));
                }
                return Err(sdk_err("SSM GetCalendarState", e));
            }
        };
        let next_change = match out.state() {
            Some(SsmState::Open) => {
                return Ok(Ok(CalendarState {
                    open: true,
                    next_change: None,
                }))
            }
            // Only a closed calendar's next change matters: when to look again.
            Some(SsmState::Closed) => out.next_transition_time().and_then(|t| {
                DateTime::parse_from_rfc3339(t)
                    .inspect_err(|e| tracing::warn!(calendar = name, next = t, error = %e, "cannot read NextTransitionTime"))
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }),
            other => {
                let said = other.map_or("none", |s| s.as_str());
                return Ok(Err(format!("GetCalendarState answered the state {said}")));
            }
        };
        Ok(Ok(CalendarState {
            open: false,
            next_change,
        }))
    }
}
