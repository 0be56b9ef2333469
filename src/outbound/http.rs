//! What the gate and the notifiers share over HTTP: one way to build a client, and which
//! answers are worth asking again.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;

/// A client with a timeout and shipit's User-Agent (GitHub refuses API requests without
/// one), built on its first use: building one loads the system's root certificates, which
/// a Lambda function would otherwise do at every cold start, whether or not its events
/// ever call out (most deploy steps do not notify, most chat commands ask no gate).
pub struct Client {
    timeout: Duration,
    redirects: bool,
    built: OnceLock<reqwest::Client>,
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        Client {
            timeout,
            redirects: true,
            built: OnceLock::new(),
        }
    }

    /// A client that follows no redirect: what it sends goes where it was sent only.
    pub fn without_redirects(timeout: Duration) -> Client {
        Client {
            redirects: false,
            ..Client::new(timeout)
        }
    }
}

impl std::ops::Deref for Client {
    type Target = reqwest::Client;

    fn deref(&self) -> &reqwest::Client {
        self.built.get_or_init(|| {
            let redirects = match self.redirects {
                true => reqwest::redirect::Policy::default(),
                false => reqwest::redirect::Policy::none(),
            };
            reqwest::Client::builder()
                .timeout(self.timeout)
                .redirect(redirects)
                .user_agent(concat!("shipit/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("an HTTP client with default TLS settings")
        })
    }
}

/// A 5xx or a 429 may pass later; any other answer is the answer.
pub fn is_transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The start of a response body, for an error message.
pub fn excerpt(body: &str, chars: usize) -> String {
    body.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_overload_and_server_errors_are_retried() {
        for s in [500, 502, 503, 429] {
            assert!(is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 422] {
            assert!(!is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert_eq!(excerpt("héllo", 2), "hé");
    }
}
