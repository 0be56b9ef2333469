//! SSM Change Calendar: an environment's `change_calendar`, read through GetCalendarState
//! before each deploy takes its lock.

use async_trait::async_trait;
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

#[async_trait]
impl ChangeCalendars for SsmCalendars {
    async fn state(&self, name: &str, at: DateTime<Utc>) -> Result<CalendarState, PortError> {
        let out = self
            .0
            .get_calendar_state()
            .calendar_names(name)
            .at_time(at.to_rfc3339_opts(SecondsFormat::Secs, true))
            .send()
            .await
            .map_err(|e| sdk_err("SSM GetCalendarState", e))?;
        let open = match out.state() {
            Some(SsmState::Open) => true,
            Some(SsmState::Closed) => false,
            other => return Err(format!("GetCalendarState answered the state {other:?}").into()),
        };
        let next_change = match out.next_transition_time() {
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|e| format!("GetCalendarState's NextTransitionTime {t:?}: {e}"))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        Ok(CalendarState { open, next_change })
    }
}
