//! The Batch API lane of a job, the parts that need no store: the input file made of its
//! titles (bad ones answered with their error at once), the answers read back with the same
//! checks as live ones, and when a batch must give way to live calls to meet the deadline.
//! `Jobs::run_batches` drives it; `crate::batch_api` holds the provider's Files and Batches
//! calls and the JSONL line format, shared with `classify --batch-api`.

use std::collections::HashMap;

use super::job::{BatchWork, ItemOutcome, ResultLine};
use super::plan::{Offer, rest};
use crate::classify::check_title;
use crate::taxonomy::Taxonomy;
use crate::upstream::{UpstreamClient, Usage};

/// A request's id in the file: `hnc-` and the indices of its titles as ranges
/// (`hnc-100-119`, `hnc-5-7_9-12`), so the answer finds its titles without any other state.
pub fn custom_id(indices: &[u64]) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &i in indices {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => ranges.push((i, i)),
        }
    }
    let parts: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    format!("hnc-{}", parts.join("_"))
}

/// The indices a `custom_id` names, in order; `None` for one this lane did not write.
pub fn indices_of(custom_id: &str) -> Option<Vec<u64>> {
    let mut indices = Vec::new();
    for range in custom_id.strip_prefix("hnc-")?.split('_') {
        let (a, b) = range.split_once('-')?;
        let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        if b < a || b - a > 10_000 {
            return None;
        }
        indices.extend(a..=b);
    }
    Some(indices)
}

/// The input file for `titles` (index, text) in packs of `pack` titles, each line sent to
/// `path`; titles that fail the live path's checks are answered with their error instead.
pub fn input_file(
    upstream: &UpstreamClient,
    taxonomy: &Taxonomy,
    titles: &[(u64, String)],
    max_title_chars: usize,
    path: &str,
) -> (Vec<u8>, Vec<(u64, ItemOutcome)>) {
    let mut rejected = Vec::new();
    let mut sendable: Vec<(u64, &str)> = Vec::new();
    for (index, title) in titles {
        match check_title(title, max_title_chars) {
            Ok(checked) => sendable.push((*index, checked)),
            Err(e) => rejected.push((
                *index,
                ItemOutcome::Done(ResultLine::error(*index, e.code(), &e.to_string())),
            )),
        }
    }
    let mut jsonl = Vec::new();
    for pack in sendable.chunks(upstream.pack_size().max(1)) {
        let indices: Vec<u64> = pack.iter().map(|(i, _)| *i).collect();
        let texts: Vec<&str> = pack.iter().map(|(_, t)| *t).collect();
        let body = upstream.batch_body(taxonomy, &texts);
        jsonl.extend(crate::batch_api::openai::input_line(
            &custom_id(&indices),
            path,
            &body,
        ));
    }
    (jsonl, rejected)
}

/// The titles a batch's output and error files answered well, and what the answers cost (at
/// the Batch price). A title left out (its line failed, the batch was cancelled or expired
/// before it) goes live.
pub fn read_answers(
    upstream: &UpstreamClient,
    taxonomy: &Taxonomy,
    files: &[Vec<u8>],
) -> (Vec<(u64, ItemOutcome)>, Usage) {
    let mut answered: HashMap<u64, ItemOutcome> = HashMap::new();
    let mut usage = Usage::default();
    for content in files {
        for (id, body) in crate::batch_api::openai::answered_lines(content) {
            let Some(indices) = indices_of(&id) else {
                continue;
            };
            let (predictions, spent) = upstream.read_batch_answer(taxonomy, &body, indices.len());
            usage += spent;
            for (index, prediction) in indices.into_iter().zip(predictions) {
                if let Some(p) = prediction {
                    answered.insert(index, ItemOutcome::Done(ResultLine::of(index, &p)));
                }
            }
        }
    }
    let mut outcomes: Vec<(u64, ItemOutcome)> = answered.into_iter().collect();
    outcomes.sort_by_key(|(i, _)| *i);
    (outcomes, usage)
}

/// Whether `work`'s batch must give way now: what is left would no longer finish live before
/// the deadline with the margin, once the provider has taken its time to cancel (and the
/// margin again to read what it did).
pub fn must_escalate(work: &BatchWork, offer: &Offer, pack: usize, now_ms: i64) -> bool {
    let Some(deadline_ms) = work.deadline_ms else {
        return false;
    };
    let rest = rest(work.plan.as_ref(), work.pending, pack);
    let needs = offer.live_needs(offer.live_time(&rest).0) + offer.cancel_allowance();
    deadline_ms - now_ms < needs.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custom_id_names_its_titles_as_ranges_and_reads_back() {
        let indices = [5, 6, 7, 9, 10, 11, 12, 40];
        let id = custom_id(&indices);
        assert_eq!(id, "hnc-5-7_9-12_40-40");
        assert_eq!(indices_of(&id).unwrap(), indices);
        assert_eq!(indices_of("req-3"), None);
        assert_eq!(indices_of("hnc-9-3"), None);
        assert_eq!(indices_of("hnc-0-99999999"), None, "bounded");
    }

    #[test]
    fn a_batch_gives_way_once_the_rest_would_not_finish_live_in_time() {
        let offer = Offer {
            calls_per_s: Some(10.0),
            tokens_per_s: None,
            price: None,
            flex: false,
            batch: None,
            batch_observed: false,
            margin: std::time::Duration::from_secs(60),
        };
        let work = |deadline_ms| BatchWork {
            job_id: "job".into(),
            taxonomy: "hn-topics".into(),
            deadline_ms: Some(deadline_ms),
            plan: None,
            cancelled: false,
            pending: 600,
            state: Default::default(),
        };
        // 600 calls: 60 s live, 75 s with the factor, 135 s with the margin; without a batch
        // window the provider's ten minutes to cancel, and the margin again: 795 s.
        assert!(!must_escalate(&work(796_000), &offer, 1, 0));
        assert!(must_escalate(&work(794_000), &offer, 1, 0));
        assert!(!must_escalate(
            &BatchWork {
                deadline_ms: None,
                ..work(0)
            },
            &offer,
            1,
            0
        ));
    }
}
