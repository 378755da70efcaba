//! An endpoint's idle HTTP/1.1 connections, one call on each at a time (hyper's connection API).
//!
//! As hyper-util's pool does: the most recently used idle connection is taken first (the
//! likeliest still open), one the server closed is skipped (hyper's dispatcher sees the close),
//! and idle ones are reaped on their age, below the minute or so after which servers and load
//! balancers close them: a call sent on a connection just being closed would fail having been
//! sent. They are reaped, oldest first, whenever the list is touched: after a burst, the first
//! call past `IDLE_FOR` closes the sockets left idle (the server may close them sooner; hyper
//! then sees it and the entry is skipped).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::connect::Stream;
use crate::upstream::body::RequestBody;
use crate::upstream::error::TransportError;

/// An idle connection older than this is closed rather than reused (nginx closes idle ones
/// after 75 s by default, many load balancers after 60 s).
const IDLE_FOR: Duration = Duration::from_secs(50);

pub type Sender = http1::SendRequest<Full<RequestBody>>;

#[derive(Debug)]
pub struct Idle {
    /// Oldest first.
    list: Mutex<VecDeque<(Sender, Instant)>>,
    max: usize,
    idle_for: Duration,
}

impl Idle {
    pub fn new(max: usize) -> Self {
        Self {
            list: Mutex::new(VecDeque::new()),
            max,
            idle_for: IDLE_FOR,
        }
    }

    fn reap(&self, list: &mut VecDeque<(Sender, Instant)>) {
        while list
            .front()
            .is_some_and(|(sender, since)| since.elapsed() >= self.idle_for || sender.is_closed())
        {
            list.pop_front();
        }
    }

    /// The most recently used idle connection still open, if any.
    pub async fn take(&self) -> Option<Sender> {
        loop {
            let (mut sender, _) = {
                let mut list = self.list.lock().expect("idle lock poisoned");
                self.reap(&mut list);
                list.pop_back()?
            };
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keeps `sender` for the next call, unless it is closed or enough are kept.
    pub fn put(&self, sender: Sender) {
        let mut list = self.list.lock().expect("idle lock poisoned");
        self.reap(&mut list);
        if list.len() < self.max && !sender.is_closed() {
            list.push_back((sender, Instant::now()));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.lock().unwrap().len()
    }

    #[cfg(test)]
    pub fn with_idle_for(self, idle_for: Duration) -> Self {
        Self { idle_for, ..self }
    }
}

/// Starts an HTTP/1.1 connection on `stream`, with its driver task.
pub async fn handshake(stream: Stream) -> Result<Sender, TransportError> {
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| TransportError::Handshake(e.into()))?;
    crate::tasks::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection closed");
        }
    });
    Ok(sender)
}
