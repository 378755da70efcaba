//! Token counts as OpenAI's current models count them: the o200k_base encoding (gpt-4o, gpt-4.1,
//! o-series, gpt-5). The simulator bills with it and counts a batch's enqueued tokens with it,
//! and the pacer spends a TPM budget with it, so every cost figure is what OpenAI would count.
//!
//! Written here rather than taken from `tiktoken-rs` or `bpe-openai`: both load the vocabulary
//! into 45-65 MiB of heap, about the whole service's memory budget at 10,000 calls in flight.
//! `build.rs` turns the vocabulary into a table embedded in the binary and read in place. The
//! algorithm is tiktoken's: split the text with o200k's pattern, then merge each piece's bytes
//! pair by pair, lowest rank first. `tests/api/tokens.rs` checks every count against
//! `tiktoken-rs` on real and adversarial titles.

use std::sync::LazyLock;

use regex::Regex;

/// The table `build.rs` writes: `[tokens, slots]`, `offsets[tokens + 1]`, `slots[slots]`, bytes.
static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k.table"));

/// o200k's split pattern without its one look-ahead (`\s+(?!\S)`), which the `regex` crate does
/// not have; `pieces` restores what it does.
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

static SPLIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(PATTERN).expect("the o200k pattern compiles"));

/// The number of o200k_base tokens in `text`, read as ordinary text (a special token's spelling,
/// such as `<|endoftext|>`, counts as the characters it is made of, as the API reads input).
pub fn count(text: &str) -> u64 {
    let mut total = 0;
    pieces(text, |piece| total += piece_tokens(piece.as_bytes()));
    total as u64
}

/// Tokens a chat-style message adds around its content (role and separators), as OpenAI's own
/// counting guide gives them for the gpt-4o family.
pub const PER_MESSAGE: u64 = 3;
/// Tokens that open the model's reply.
pub const REPLY_PRIMING: u64 = 3;

/// Calls `each` with the pieces o200k's pattern splits `text` into, in order.
fn pieces(text: &str, mut each: impl FnMut(&str)) {
    let mut at = 0;
    while let Some(found) = SPLIT.find_at(text, at) {
        let mut end = found.end();
        // `\s+(?!\S)`, tried before `\s+`: a run of spaces before a word leaves its last space to
        // the word (" hello" is one token), unless the run is a single space or ends the text.
        let run = found.as_str();
        let spaces_only = run.chars().all(char::is_whitespace) && !run.ends_with(['\r', '\n']);
        if spaces_only && end < text.len() && run.chars().nth(1).is_some() {
            end -= run.chars().next_back().map_or(0, char::len_utf8);
        }
        each(&text[found.start()..end]);
        at = end;
    }
}

/// Tokens in one piece: one when the vocabulary has it whole, else tiktoken's byte-pair merge.
fn piece_tokens(piece: &[u8]) -> usize {
    if rank(piece).is_some() {
        return 1;
    }
    // parts[i] = (where part i starts, the rank of part i merged with part i + 1).
    let pair = |parts: &[(usize, u32)], i: usize| match parts.get(i + 2) {
        Some(&(end, _)) => rank(&piece[parts[i].0..end]).unwrap_or(u32::MAX),
        None => u32::MAX,
    };
    let mut parts: Vec<(usize, u32)> = (0..=piece.len()).map(|i| (i, u32::MAX)).collect();
    for i in 0..parts.len() {
        parts[i].1 = pair(&parts, i);
    }
    loop {
        let lowest = parts[..parts.len() - 1]
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, rank))| *rank)
            .map(|(i, &(_, rank))| (i, rank));
        let Some((i, _)) = lowest.filter(|(_, rank)| *rank != u32::MAX) else {
            break;
        };
        parts.remove(i + 1);
        parts[i].1 = pair(&parts, i);
        if i > 0 {
            parts[i - 1].1 = pair(&parts, i - 1);
        }
    }
    parts.len() - 1
}

fn word(index: usize) -> u32 {
    let at = 4 * index;
    u32::from_le_bytes(TABLE[at..at + 4].try_into().expect("four bytes"))
}

/// The vocabulary's size and its hash table's.
fn sizes() -> (usize, usize) {
    (word(0) as usize, word(1) as usize)
}

/// The bytes of the token ranked `rank`.
fn token(rank: usize) -> &'static [u8] {
    let (tokens, slots) = sizes();
    let bytes = 4 * (2 + tokens + 1 + slots);
    let (start, end) = (word(2 + rank) as usize, word(3 + rank) as usize);
    &TABLE[bytes + start..bytes + end]
}

/// The rank of `bytes` when the vocabulary has them as one token.
fn rank(bytes: &[u8]) -> Option<u32> {
    let (tokens, slots) = sizes();
    let first_slot = 2 + tokens + 1;
    let mut slot = fnv1a(bytes) as usize & (slots - 1);
    loop {
        let entry = word(first_slot + slot);
        if entry == 0 {
            return None;
        }
        if token(entry as usize - 1) == bytes {
            return Some(entry - 1);
        }
        slot = (slot + 1) & (slots - 1);
    }
}

/// The hash `build.rs` placed the tokens by.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_found_at_its_own_rank() {
        let (tokens, _) = sizes();
        assert_eq!(tokens, 199_998);
        for r in 0..tokens {
            assert_eq!(rank(token(r)), Some(r as u32), "token {r}");
        }
    }

    #[test]
    fn counts_known_texts() {
        // Counts as tiktoken gives them for o200k_base.
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        assert_eq!(
            count(r#"{"topic":"programming_dev_tools","confidence":0.93}"#),
            14
        );
        assert_eq!(count(r#"{"topic":"programming_dev_tools"}"#), 8);
    }

    #[test]
    fn a_run_of_spaces_leaves_its_last_to_the_next_word() {
        let mut seen = Vec::new();
        pieces("a   b  \n c ", |p| seen.push(p.to_owned()));
        assert_eq!(seen, ["a", "  ", " b", "  \n", " c", " "]);
    }
}
