//! A request body as the template's shared bytes around the call's own content. Every call to
//! an endpoint repeats the same two kilobytes of instructions and schema around a title of a
//! few dozen bytes; held once and counted by reference, ten thousand calls in flight (or
//! waiting for a connection) cost their titles, not twenty megabytes of copies. It is a
//! `bytes::Buf`, so HTTP/2 and HTTP/1.1 write it with vectored I/O, copying nothing.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::settings::ServiceTier;

/// The bytes of a JSON request before and after its one varying string (a title, or a pack's
/// items): found once, at start-up, by serialising the envelope around two contents that differ
/// in one byte and cutting where the two differ, so nothing in the shared bytes (a taxonomy's
/// wording, say) can be mistaken for the content.
#[derive(Debug, Clone)]
pub struct Frame {
    head: Bytes,
    tail: Bytes,
}

impl Frame {
    /// The frame of `envelope`, a function from the content to the whole JSON body.
    pub fn new(envelope: impl Fn(&str) -> Vec<u8>) -> Self {
        let (a, b) = (envelope("a"), envelope("b"));
        assert_eq!(a.len(), b.len(), "the envelope serialises its content once");
        let at = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .expect("the envelope contains its content");
        // `at` is the content's one character; the quotes around it belong to the content.
        let body = Bytes::from(a);
        Self {
            head: body.slice(..at - 1),
            tail: body.slice(at + 2..),
        }
    }

    /// The body with `content` (serialised here as a JSON string) in its place.
    pub fn around(&self, content: &str) -> RequestBody {
        let own = serde_json::to_vec(content).expect("a string always serialises");
        RequestBody {
            chunks: Arc::new([
                self.head.clone(),
                Bytes::new(),
                Bytes::new(),
                Bytes::from(own),
                self.tail.clone(),
            ]),
            at: 0,
            offset: 0,
        }
    }
}

/// One call's body: `[head, tier field, rest of head, own content, tail]`, empty chunks skipped,
/// and how far it has been read. The chunks are shared: the body passes through five futures of
/// the call path by value, and a copy kept to send it again (a stream the server never
/// processed) costs a reference count, not an allocation.
#[derive(Debug, Clone)]
pub struct RequestBody {
    chunks: Arc<[Bytes; 5]>,
    /// The chunk being read, and how much of it has been.
    at: usize,
    offset: usize,
}

impl RequestBody {
    /// The body with `"service_tier":"…"` as its first field, when a tier is asked for.
    pub fn with_service_tier(mut self, tier: Option<ServiceTier>) -> Self {
        let Some(tier) = tier else {
            return self;
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        if chunks[0].first() == Some(&b'{') {
            let head = std::mem::take(&mut chunks[0]);
            chunks[0] = head.slice(..1);
            chunks[1] = Bytes::from_static(tier_field(tier).as_bytes());
            chunks[2] = head.slice(1..);
        }
        self
    }

    /// The whole body in one buffer (the Batch API's JSONL lines, tests, benchmarks).
    pub fn to_vec(&self) -> Vec<u8> {
        self.unread().collect::<Vec<_>>().concat()
    }

    /// What is left to read, chunk by chunk, empty ones included.
    fn unread(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks[self.at..]
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { &c[self.offset..] } else { &c[..] })
    }
}

fn tier_field(tier: ServiceTier) -> &'static str {
    match tier {
        ServiceTier::Auto => r#""service_tier":"auto","#,
        ServiceTier::Default => r#""service_tier":"default","#,
        ServiceTier::Flex => r#""service_tier":"flex","#,
        ServiceTier::Priority => r#""service_tier":"priority","#,
    }
}

impl Buf for RequestBody {
    fn remaining(&self) -> usize {
        self.unread().map(<[u8]>::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.unread().find(|c| !c.is_empty()).unwrap_or(&[])
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            // Past the last chunk this indexes out of bounds: `Buf` says advancing past the end
            // panics.
            let left = self.chunks[self.at].len() - self.offset;
            let step = n.min(left);
            self.offset += step;
            n -= step;
            if n > 0 {
                self.at += 1;
                self.offset = 0;
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in self.unread().filter(|c| !c.is_empty()) {
            if n == dst.len() {
                break;
            }
            dst[n] = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame::new(|content| {
            serde_json::to_vec(&serde_json::json!({"model": "m", "input": content, "n": 1}))
                .unwrap()
        })
    }

    #[test]
    fn the_body_is_the_envelope_around_the_content_escaped() {
        let title = "Say \"hi\" to a\\b\n";
        let body = frame().around(title);
        let expected =
            serde_json::to_vec(&serde_json::json!({"model": "m", "input": title, "n": 1})).unwrap();
        assert_eq!(body.to_vec(), expected);
        assert_eq!(body.remaining(), expected.len());
    }

    #[test]
    fn read_in_pieces_it_gives_the_same_bytes() {
        let mut body = frame()
            .around("Rust 2.0")
            .with_service_tier(Some(ServiceTier::Flex));
        let whole = body.to_vec();
        let copy = body.clone();
        let value: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(value["service_tier"], "flex");
        assert_eq!(value["input"], "Rust 2.0");
        let mut read = Vec::new();
        while body.has_remaining() {
            let step = body.chunk().len().min(3);
            read.extend_from_slice(&body.chunk()[..step]);
            body.advance(step);
        }
        assert_eq!(read, whole);
        assert!(!body.has_remaining());
        assert_eq!(
            copy.to_vec(),
            whole,
            "a copy taken before reading reads whole"
        );
    }

    #[test]
    fn vectored_chunks_cover_the_body() {
        let body = frame().around("t");
        let mut slices = [IoSlice::new(&[]); 8];
        let n = body.chunks_vectored(&mut slices);
        let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, body.to_vec());
    }
}
