//! Token counts as OpenAI's current models count them: the o200k_base encoding (gpt-4o, gpt-4.1,
//! o-series, gpt-5). The simulator bills with it and counts a batch's enqueued tokens with it,
//! so every cost figure (`classify`, `bench`, `eval`, the docs) approximates what OpenAI would
//! bill (the schema counted as its JSON text; OpenAI's own rendering of it is not public). The
//! service itself never loads the table: its pacer estimates from characters, as OpenAI's rate
//! limiter does (`upstream::templates`).
//!
//! Written here rather than taken from `tiktoken-rs` or `bpe-openai`: both load the vocabulary
//! into 45-65 MiB of heap, about the whole service's memory budget at 10,000 calls in flight.
//! `build.rs` turns the vocabulary into a table embedded in the binary and read in place. The
//! algorithm is tiktoken's: split the text with o200k's pattern, then merge each piece's bytes
//! pair by pair, lowest rank first. The pattern is matched by hand (`pieces`) rather than by the
//! `regex` crate, whose compiled form of its Unicode classes alone is 2.4 MiB of heap; the
//! classes are ranges `build.rs` takes from `regex-syntax`'s Unicode tables. `pieces` is checked
//! against the pattern itself (`fancy-regex`) on random text of every class, and every count
//! against `tiktoken-rs` on real and adversarial titles (`tests/api/tokens.rs`).

use std::cmp::Ordering;

/// The table `build.rs` writes: `[tokens, slots]`, `offsets[tokens + 1]`, `slots[slots]`, bytes.
static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k.table"));

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

// The classes of o200k's pattern as sorted ranges: `LETTER` (`\p{L}`), `NUMBER` (`\p{N}`),
// `UPPER` (`[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, what a word's capitals are made of) and `LOWER`
// (`[\p{Ll}\p{Lm}\p{Lo}\p{M}]`, its lower-case rest), written by `build.rs`.
include!(concat!(env!("OUT_DIR"), "/o200k_classes.rs"));

fn within(ranges: &[(char, char)], c: char) -> bool {
    ranges
        .binary_search_by(|&(start, end)| {
            if end < c {
                Ordering::Less
            } else if start > c {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .is_ok()
}

/// A character with the class tests the pattern makes of it most.
#[derive(Clone, Copy)]
struct Char {
    c: char,
    letter: bool,
    number: bool,
    space: bool,
}

impl Char {
    fn of(c: char) -> Self {
        Self {
            c,
            letter: within(LETTER, c),
            number: within(NUMBER, c),
            space: c.is_whitespace(),
        }
    }

    fn upper(&self) -> bool {
        within(UPPER, self.c)
    }

    fn lower(&self) -> bool {
        within(LOWER, self.c)
    }

    fn newline(&self) -> bool {
        matches!(self.c, '\r' | '\n')
    }

    /// `[^\r\n\p{L}\p{N}]`: what may open a word.
    fn opens_word(&self) -> bool {
        !self.newline() && !self.letter && !self.number
    }

    /// `[^\s\p{L}\p{N}]`: punctuation, symbols, marks.
    fn other(&self) -> bool {
        !self.space && !self.letter && !self.number
    }
}

/// Calls `each` with the pieces o200k's pattern splits `text` into, in order: at each position,
/// the first of its alternatives that matches, as a backtracking matcher takes it.
fn pieces(text: &str, mut each: impl FnMut(&str)) {
    let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let cs: Vec<Char> = text.chars().map(Char::of).collect();
    let mut at = 0;
    while at < cs.len() {
        let end = word(&cs, at)
            .or_else(|| digits(&cs, at))
            .or_else(|| punctuation(&cs, at))
            .or_else(|| spaces(&cs, at))
            .expect("every character starts some alternative");
        let to = offsets.get(end).copied().unwrap_or(text.len());
        each(&text[offsets[at]..to]);
        at = end;
    }
}

/// `[^\r\n\p{L}\p{N}]?[UPPER]*[LOWER]+('s|'t|...)?`, then `...?[UPPER]+[LOWER]*(...)?`: a word,
/// optionally after one non-letter, with its contraction. Where it ends, if either matches.
fn word(cs: &[Char], at: usize) -> Option<usize> {
    let opened = cs[at].opens_word().then_some(at + 1);
    let starts = || opened.into_iter().chain([at]);
    let lower_rest = |from: usize| {
        let upper_end = run(cs, from, Char::upper);
        if cs.get(upper_end).is_some_and(Char::lower) {
            return Some(run(cs, upper_end, Char::lower));
        }
        // Give capitals back until one can be the lower-case part (Lm, Lo and M are both).
        (from..upper_end)
            .rev()
            .find(|&j| cs[j].lower())
            .map(|j| j + 1)
    };
    let upper_first = |from: usize| {
        let upper_end = run(cs, from, Char::upper);
        (upper_end > from).then(|| run(cs, upper_end, Char::lower))
    };
    starts()
        .find_map(lower_rest)
        .or_else(|| starts().find_map(upper_first))
        .map(|end| contraction(cs, end))
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at `at`: where the word ends with it.
fn contraction(cs: &[Char], at: usize) -> usize {
    if cs.get(at).map(|c| c.c) != Some('\'') {
        return at;
    }
    // Case-insensitive as Unicode folds: the long s is an s.
    let folded = |i: usize| {
        cs.get(i).map(|c| match c.c {
            'ſ' => 's',
            c => c.to_ascii_lowercase(),
        })
    };
    match (folded(at + 1), folded(at + 2)) {
        (Some('s' | 't' | 'm' | 'd'), _) => at + 2,
        (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => at + 3,
        _ => at,
    }
}

/// `\p{N}{1,3}`.
fn digits(cs: &[Char], at: usize) -> Option<usize> {
    let end = run(cs, at, |c| c.number).min(at + 3);
    (end > at).then_some(end)
}

/// ` ?[^\s\p{L}\p{N}]+[\r\n/]*`.
fn punctuation(cs: &[Char], at: usize) -> Option<usize> {
    let from = if cs[at].c == ' ' && cs.get(at + 1).is_some_and(Char::other) {
        at + 1
    } else {
        at
    };
    let end = run(cs, from, Char::other);
    (end > from).then(|| run(cs, end, |c| matches!(c.c, '\r' | '\n' | '/')))
}

/// `\s*[\r\n]+`, then `\s+(?!\S)`, then `\s+`: spaces up to the last line break among them; or
/// a run of spaces before a word, leaving its last to the word (" hello" is one token) unless
/// the run is a single space or ends the text.
fn spaces(cs: &[Char], at: usize) -> Option<usize> {
    let end = run(cs, at, |c| c.space);
    if end == at {
        return None;
    }
    if let Some(last_break) = (at..end).rev().find(|&i| cs[i].newline()) {
        return Some(last_break + 1);
    }
    if end < cs.len() && end - at > 1 {
        return Some(end - 1);
    }
    Some(end)
}

/// Where the run of characters `is` accepts, from `at`, ends.
fn run(cs: &[Char], at: usize, is: impl Fn(&Char) -> bool) -> usize {
    cs[at.min(cs.len())..]
        .iter()
        .position(|c| !is(c))
        .map_or(cs.len(), |n| at + n)
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

fn table_word(index: usize) -> u32 {
    let at = 4 * index;
    u32::from_le_bytes(TABLE[at..at + 4].try_into().expect("four bytes"))
}

/// The vocabulary's size and its hash table's.
fn sizes() -> (usize, usize) {
    (table_word(0) as usize, table_word(1) as usize)
}

/// The bytes of the token ranked `rank`.
fn token(rank: usize) -> &'static [u8] {
    let (tokens, slots) = sizes();
    let bytes = 4 * (2 + tokens + 1 + slots);
    let (start, end) = (table_word(2 + rank) as usize, table_word(3 + rank) as usize);
    &TABLE[bytes + start..bytes + end]
}

/// The rank of `bytes` when the vocabulary has them as one token.
fn rank(bytes: &[u8]) -> Option<u32> {
    let (tokens, slots) = sizes();
    let first_slot = 2 + tokens + 1;
    let mut slot = fnv1a(bytes) as usize & (slots - 1);
    loop {
        let entry = table_word(first_slot + slot);
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
    use std::sync::LazyLock;

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

    /// o200k's pattern as OpenAI writes it, look-ahead and all, for `fancy-regex`.
    const PATTERN: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    );

    /// Characters of every class the pattern tells apart (capitals, small letters, title case,
    /// modifier and other letters, marks, numbers of each kind, spaces and line breaks,
    /// punctuation, symbols), and the contractions in each case and with the long s.
    const ATOMS: [&str; 44] = [
        "a", "z", "A", "Z", "é", "É", "ǅ", "ʰ", "中", "ـ", "\u{301}", "\u{903}", "0", "7", "Ⅻ",
        "½", "٣", " ", " ", "\t", "\n", "\r", "\u{a0}", "\u{3000}", "'", ".", "/", "-", "!", "$",
        "👍", "🏽", "'s", "'S", "'ſ", "'t", "'re", "'VE", "'m", "'ll", "'Ll", "'d", "'x", "'",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        /// The pieces match the pattern's own matches, on text drawn from characters of every
        /// class it tells apart (a piece's boundary can move without changing a count).
        #[test]
        fn pieces_are_the_patterns_matches(
            atoms in proptest::collection::vec(proptest::sample::select(ATOMS.to_vec()), 0..30)
        ) {
            static THEIRS: LazyLock<fancy_regex::Regex> =
                LazyLock::new(|| fancy_regex::Regex::new(PATTERN).unwrap());
            let text: String = atoms.concat();
            let mut ours = Vec::new();
            pieces(&text, |p| ours.push(p.to_owned()));
            let theirs: Vec<String> =
                THEIRS.find_iter(&text).map(|m| m.unwrap().as_str().to_owned()).collect();
            proptest::prop_assert_eq!(ours, theirs, "{:?}", text);
        }
    }

    #[test]
    fn a_run_of_spaces_leaves_its_last_to_the_next_word() {
        let mut seen = Vec::new();
        pieces("a   b  \n c ", |p| seen.push(p.to_owned()));
        assert_eq!(seen, ["a", "  ", " b", "  \n", " c", " "]);
    }
}
