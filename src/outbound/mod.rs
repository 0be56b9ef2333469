//! What a deploy asks of and tells the world outside over HTTP: the gate (GitHub)
//! before it starts, its metric checks (Prometheus) and the notifiers (chat, APM) as it
//! goes.

outside_input! {
    pub mod checks;
}
outside_input! {
    pub mod gate;
}
pub mod http;
pub mod notify;
