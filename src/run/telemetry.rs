//! Logs: JSON on Lambda, human on a terminal.

/// JSON logs on Lambda (CloudWatch), human ones on a terminal; `RUST_LOG` filters both,
/// else `default` (e.g. "info", or "warn" for commands whose output is the point).
pub fn init_tracing(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
