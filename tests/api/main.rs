//! Integration tests: the real router over real sockets on 127.0.0.1.

mod architecture;
mod batch_api;
mod bench;
mod chat;
mod classify;
mod client;
mod confidence;
mod deploy;
mod efficiency;
mod eval;
mod helpers;
mod local_llm;
mod openapi;
mod prompt;
mod resilience;
mod security;
mod shared;
mod shutdown;
mod taxonomies;
mod tiers;
mod tls;
mod tokens;
mod traces;
mod upstream_answers;
mod upstreams;
mod validation;
