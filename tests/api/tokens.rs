//! Our o200k_base counter against `tiktoken-rs`, a tokenizer nobody here wrote: every real and
//! adversarial title, the prompts we send, and texts built to hit the pattern's corners.

use hn_classifier::taxonomy::{AnswerForm, Taxonomy};
use hn_classifier::tokens;

fn theirs(text: &str) -> u64 {
    static BPE: std::sync::LazyLock<tiktoken_rs::CoreBPE> =
        std::sync::LazyLock::new(|| tiktoken_rs::o200k_base().expect("o200k loads"));
    BPE.encode_ordinary(text).len() as u64
}

fn assert_same(texts: impl IntoIterator<Item = String>) -> usize {
    let mut checked = 0;
    for text in texts {
        assert_eq!(tokens::count(&text), theirs(&text), "{text:?}");
        checked += 1;
    }
    checked
}

#[test]
fn counts_every_data_title_as_tiktoken_does() {
    let mut texts = Vec::new();
    for file in ["hn_titles.txt", "nasty_titles.txt"] {
        let path = format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("the data files are in the repository");
        texts.extend(text.lines().map(str::to_owned));
        texts.push(text);
    }
    assert!(assert_same(texts) > 5_000);
}

#[test]
fn counts_our_prompts_and_schemas_as_tiktoken_does() {
    let t = Taxonomy::hn_topics();
    let mut texts = Vec::new();
    for form in [AnswerForm::LabelOnly, AnswerForm::LabelAndConfidence] {
        texts.push(t.instructions(form).to_owned());
        texts.push(t.packed_instructions(form));
        texts.push(t.answer_schema(form).to_string());
        texts.push(t.packed_schema(20, form).to_string());
    }
    assert_same(texts);
}

#[test]
fn counts_the_patterns_corners_as_tiktoken_does() {
    let corners = [
        "a   b  \n c ",
        "   leading and trailing   ",
        "\t\ttabs\tthen words",
        "line\r\n\r\n  next\n\n\nthird",
        "  1234567 numbers 12 and 1,000,000",
        "I'm sure they'LL say it's 'quoted' YOU'VE",
        "CamelCaseWords and ALLCAPS and mIxEd",
        "path/to/file.rs:42 -> foo::bar()",
        "emoji 👍🏽 and 🏴󠁧󠁢󠁳󠁣󠁴󠁿 flags",
        "\u{a0}non-breaking\u{2003}em space\u{3000}ideographic",
        "<|endoftext|> is text here",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        " ",
        "\n",
        "x",
    ];
    assert_same(corners.map(str::to_owned));
}
