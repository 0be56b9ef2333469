//! Logs: JSON on Lambda, human on a terminal.

use std::io::IsTerminal;

/// JSON logs on Lambda (CloudWatch) or when asked, text otherwise, coloured only on a
/// terminal (a log file or journald gets no escape codes); `RUST_LOG` filters both, else
/// `default` (e.g. "info", or "warn" for commands whose output is the point).
pub fn init_tracing(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(false)
            .without_time()
            .init();
    } else {
        builder.init();
    }
}
