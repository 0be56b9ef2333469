//! What the gate and the notifiers share over HTTP: one way to build a client, and which
//! answers are worth asking again.

use std::time::Duration;

use reqwest::StatusCode;

/// A client with a timeout and shipit's User-Agent (GitHub refuses API requests without one).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("shipit/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client with default TLS settings")
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
