//! Turns OpenAI's o200k_base vocabulary (`assets/o200k/o200k_base.tiktoken`, one base64 token and
//! its rank a line) into a table the binary embeds and reads in place: token counts then cost no
//! heap and no start-up time, and only the pages a lookup touches are ever resident. The loaded
//! vocabulary of a tokenizer crate is 45-65 MiB of heap, more than the whole service's budget.
//!
//! Layout, little-endian u32 words then bytes (read by `src/tokens.rs`, which must agree):
//! `[tokens, slots]`, `offsets[tokens + 1]` into the bytes, `slots[slots]` (0 = empty, else
//! rank + 1, open addressing by FNV-1a with linear probing), then the token bytes by rank.
//!
//! It also writes the Unicode classes o200k's split pattern is written in as sorted ranges
//! (`o200k_classes.rs`), from `regex-syntax`'s tables: the service reads a few kilobytes of
//! ranges instead of parsing classes out of those tables at run time.

use std::path::PathBuf;

const VOCABULARY: &str = "assets/o200k/o200k_base.tiktoken";
/// A power of two over 1.3x the 199,998 tokens: short probes, 1 MiB.
const SLOTS: usize = 1 << 18;

fn main() {
    println!("cargo::rerun-if-changed={VOCABULARY}");
    println!("cargo::rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(VOCABULARY).expect("the o200k vocabulary is in assets/");
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .enumerate()
        .map(|(line, entry)| {
            let (token, rank) = entry.split_once(' ').expect("a line is `base64 rank`");
            assert_eq!(
                rank.parse::<usize>().ok(),
                Some(line),
                "ranks run 0, 1, 2, ..."
            );
            base64(token)
        })
        .collect();

    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    let mut bytes = Vec::new();
    for token in &tokens {
        offsets.push(bytes.len() as u32);
        bytes.extend_from_slice(token);
    }
    offsets.push(bytes.len() as u32);

    let mut slots = vec![0u32; SLOTS];
    for (rank, token) in tokens.iter().enumerate() {
        let mut slot = fnv1a(token) as usize & (SLOTS - 1);
        while slots[slot] != 0 {
            slot = (slot + 1) & (SLOTS - 1);
        }
        slots[slot] = rank as u32 + 1;
    }

    let mut table = Vec::new();
    for word in [tokens.len() as u32, SLOTS as u32]
        .iter()
        .chain(&offsets)
        .chain(&slots)
    {
        table.extend_from_slice(&word.to_le_bytes());
    }
    table.extend_from_slice(&bytes);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("o200k.table"), table).expect("OUT_DIR is writable");
    std::fs::write(out.join("o200k_classes.rs"), classes()).expect("OUT_DIR is writable");
}

/// The pattern's classes as Rust statics of `(first, last)` character ranges.
fn classes() -> String {
    let mut code = String::new();
    for (name, class) in [
        ("LETTER", r"\p{L}"),
        ("NUMBER", r"\p{N}"),
        ("UPPER", r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
        ("LOWER", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"),
    ] {
        let hir = regex_syntax::parse(class).expect("a valid Unicode class");
        let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(ranges)) =
            hir.kind()
        else {
            unreachable!("a class parses to a class")
        };
        code.push_str(&format!("static {name}: &[(char, char)] = &["));
        for range in ranges.ranges() {
            code.push_str(&format!("({:?}, {:?}),", range.start(), range.end()));
        }
        code.push_str("];\n");
    }
    code
}

/// The hash `src/tokens.rs` looks tokens up by.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Standard base64 with padding, as the vocabulary file writes tokens.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text}"),
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = chunk
            .iter()
            .filter(|c| **c != b'=')
            .map(|c| value(*c))
            .collect();
        let bits = digits
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&bits.to_be_bytes()[1..digits.len()]);
    }
    out
}
