//! Integration tests: the real router over real sockets on 127.0.0.1.

mod classify;
mod deploy;
mod helpers;
mod resilience;
mod shutdown;
mod upstream_answers;
mod validation;
