//! The simulator's labeller: a deterministic keyword classifier over the HN topics, so demos on
//! real titles look sensible. For labels it has no keywords for (another taxonomy), it picks one
//! by a stable hash of the title. It is honest about being a toy: good enough to see the plumbing
//! work, never a substitute for a model.

use std::sync::LazyLock;

/// Keywords per HN topic, matched against lower-cased words of the title (prefix match, so
/// "databases" hits "database").
const KEYWORDS: &[(&str, &[&str])] = &[
    (
        "ai_ml_agents",
        &[
            "ai",
            "llm",
            "llms",
            "gpt",
            "openai",
            "anthropic",
            "claude",
            "gemini",
            "chatgpt",
            "agent",
            "agents",
            "agentic",
            "model",
            "models",
            "neural",
            "machine learning",
            "deep learning",
            "transformer",
            "inference",
            "prompt",
            "copilot",
            "diffusion",
            "mistral",
            "llama",
            "deepseek",
            "embedding",
            "rag",
            "fine-tun",
            "training",
            "artificial intelligence",
            "vibe coding",
            "ml",
        ],
    ),
    (
        "programming_dev_tools",
        &[
            "rust",
            "python",
            "javascript",
            "typescript",
            "golang",
            "go ",
            "java",
            "kotlin",
            "swift",
            "c++",
            "haskell",
            "lisp",
            "zig",
            "compiler",
            "programming",
            "programmer",
            "code",
            "coding",
            "git",
            "github",
            "editor",
            "vim",
            "emacs",
            "ide",
            "library",
            "framework",
            "api",
            "sql",
            "database",
            "postgres",
            "sqlite",
            "debugger",
            "refactor",
            "open source",
            "open-source",
            "language",
            "parser",
            "regex",
            "wasm",
            "webassembly",
            "css",
            "html",
            "react",
            "npm",
            "json",
        ],
    ),
    (
        "infra_cloud_ops",
        &[
            "aws",
            "cloud",
            "kubernetes",
            "k8s",
            "docker",
            "container",
            "server",
            "servers",
            "devops",
            "outage",
            "datacenter",
            "data center",
            "cdn",
            "cloudflare",
            "dns",
            "network",
            "linux",
            "kernel",
            "deploy",
            "infrastructure",
            "latency",
            "scaling",
            "s3",
            "azure",
            "gcp",
            "terraform",
            "observability",
            "uptime",
            "self-host",
            "self host",
            "backup",
            "storage",
        ],
    ),
    (
        "hardware_electronics",
        &[
            "chip",
            "chips",
            "cpu",
            "gpu",
            "nvidia",
            "amd",
            "intel",
            "arm",
            "risc-v",
            "apple m",
            "iphone",
            "phone",
            "laptop",
            "hardware",
            "electronics",
            "pcb",
            "fpga",
            "raspberry pi",
            "arduino",
            "battery",
            "semiconductor",
            "tsmc",
            "keyboard",
            "mouse",
            "display",
            "usb",
            "3d print",
            "robot",
            "drone",
            "sensor",
            "camera",
            "x86",
            "m1",
            "m4",
            "macbook",
        ],
    ),
    (
        "security_privacy",
        &[
            "security",
            "vulnerability",
            "exploit",
            "cve",
            "hack",
            "hacked",
            "hacker",
            "breach",
            "leak",
            "leaked",
            "malware",
            "ransomware",
            "phishing",
            "privacy",
            "surveillance",
            "encryption",
            "crypto",
            "password",
            "passkey",
            "backdoor",
            "attack",
            "attacker",
            "zero-day",
            "spyware",
            "tracking",
            "nsa",
            "xss",
            "injection",
            "sandbox",
            "oauth",
            "auth",
            "tls",
        ],
    ),
    (
        "business_startups_career",
        &[
            "startup",
            "startups",
            "founder",
            "ceo",
            "funding",
            "raises",
            "acquires",
            "acquisition",
            "ipo",
            "layoff",
            "layoffs",
            "hiring",
            "job",
            "jobs",
            "career",
            "salary",
            "company",
            "revenue",
            "profit",
            "vc",
            "venture",
            "yc",
            "business",
            "market",
            "pricing",
            "customers",
            "manager",
            "management",
            "remote work",
            "interview",
            "launch hn",
            "employees",
            "sales",
        ],
    ),
    (
        "science_math_research",
        &[
            "science",
            "scientist",
            "scientists",
            "physics",
            "quantum",
            "biology",
            "chemistry",
            "math",
            "mathematics",
            "theorem",
            "proof",
            "research",
            "researchers",
            "study",
            "paper",
            "nasa",
            "space",
            "mars",
            "moon",
            "telescope",
            "galaxy",
            "dna",
            "gene",
            "cancer",
            "brain",
            "cell",
            "climate",
            "species",
            "fossil",
            "medicine",
            "vaccine",
            "disease",
            "evolution",
            "universe",
        ],
    ),
    (
        "society_policy_economy",
        &[
            "law",
            "court",
            "judge",
            "lawsuit",
            "ruling",
            "government",
            "congress",
            "senate",
            "eu",
            "regulation",
            "ban",
            "banned",
            "policy",
            "tax",
            "tariff",
            "economy",
            "inflation",
            "election",
            "police",
            "ftc",
            "doj",
            "antitrust",
            "trump",
            "president",
            "rights",
            "censorship",
            "school",
            "education",
            "housing",
            "healthcare",
            "immigration",
            "visa",
            "war",
            "union",
            "citizens",
        ],
    ),
    (
        "culture_media_games",
        &[
            "game",
            "games",
            "gaming",
            "nintendo",
            "steam",
            "film",
            "movie",
            "music",
            "book",
            "books",
            "novel",
            "art",
            "artist",
            "museum",
            "history",
            "historical",
            "youtube",
            "netflix",
            "tv",
            "podcast",
            "video",
            "wikipedia",
            "blog",
            "writing",
            "culture",
            "design",
            "photography",
            "comic",
            "retro",
            "typography",
            "font",
            "internet archive",
            "social media",
        ],
    ),
];

/// The label for `title` among `labels` (the request's enum) and a confidence in 0..=1.
pub fn classify(title: &str, labels: &[String]) -> (String, f64) {
    let text = normalise(title);
    let hash = fnv1a(title.as_bytes());
    let best = labels
        .iter()
        .filter_map(|label| Some((label, score(&text, keywords_for(label)?))))
        .filter(|(_, score)| *score > 0)
        .max_by_key(|(_, score)| *score);
    // A stable wobble of up to 0.05, so confidences are not all identical.
    let wobble = (hash % 6) as f64 / 100.0;
    match best {
        Some((label, score)) => {
            let confidence = (0.6 + 0.1 * score.min(3) as f64 + wobble).min(0.97);
            (label.clone(), round2(confidence))
        }
        None => {
            let fallback = labels
                .iter()
                .find(|l| l.as_str() == "other")
                .unwrap_or(&labels[(hash % labels.len() as u64) as usize]);
            (fallback.clone(), round2(0.35 + wobble))
        }
    }
}

/// A keyword as searched for: `" word"`, and whether it must end at a word boundary (short
/// keywords: "ai" must not match "aid").
struct Needle {
    text: String,
    whole_word: bool,
}

/// Built once: the simulator shares the machine with what it measures, so it must be cheap.
static NEEDLES: LazyLock<Vec<(&'static str, Vec<Needle>)>> = LazyLock::new(|| {
    KEYWORDS
        .iter()
        .map(|(label, words)| {
            let needles = words
                .iter()
                .map(|w| Needle {
                    text: format!(" {}", w.trim_end()),
                    whole_word: w.len() <= 3,
                })
                .collect();
            (*label, needles)
        })
        .collect()
});

fn keywords_for(label: &str) -> Option<&'static [Needle]> {
    NEEDLES
        .iter()
        .find(|(l, _)| *l == label)
        .map(|(_, n)| n.as_slice())
}

/// Lower-cased, with punctuation turned to spaces and a space at each end, so `" word"` matches
/// at word starts only.
fn normalise(title: &str) -> String {
    let mut out = String::with_capacity(title.len() + 2);
    out.push(' ');
    for c in title.chars().flat_map(char::to_lowercase) {
        out.push(if c.is_alphanumeric() || "+-".contains(c) {
            c
        } else {
            ' '
        });
    }
    out.push(' ');
    out
}

fn score(text: &str, needles: &[Needle]) -> usize {
    needles
        .iter()
        .filter(|n| {
            text.match_indices(&n.text)
                .any(|(at, _)| !n.whole_word || text[at + n.text.len()..].starts_with(' '))
        })
        .count()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// FNV-1a: stable across runs and platforms, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hn() -> Vec<String> {
        KEYWORDS
            .iter()
            .map(|(l, _)| l.to_string())
            .chain(["other".to_string()])
            .collect()
    }

    #[test]
    fn labels_real_titles_sensibly() {
        let cases = [
            ("OpenAI releases a new GPT model for agents", "ai_ml_agents"),
            (
                "Show HN: A fast JSON parser in Rust",
                "programming_dev_tools",
            ),
            (
                "AWS us-east-1 outage takes down half the internet",
                "infra_cloud_ops",
            ),
            (
                "Critical vulnerability in OpenSSH allows remote exploit",
                "security_privacy",
            ),
            (
                "NASA telescope finds water on a distant moon",
                "science_math_research",
            ),
            ("What I had for breakfast", "other"),
        ];
        for (title, want) in cases {
            assert_eq!(classify(title, &hn()).0, want, "{title}");
        }
    }

    #[test]
    fn is_deterministic_and_in_range() {
        let a = classify("Ban me at the IP level if you don't like me", &hn());
        assert_eq!(
            a,
            classify("Ban me at the IP level if you don't like me", &hn())
        );
        assert!((0.0..=1.0).contains(&a.1));
    }

    #[test]
    fn short_keywords_need_a_word_boundary() {
        assert_eq!(classify("Humanitarian aid arrives", &hn()).0, "other");
    }

    #[test]
    fn unknown_taxonomy_gets_a_stable_label_from_its_enum() {
        let labels = vec!["positive".to_string(), "negative".to_string()];
        let (label, _) = classify("Anything at all", &labels);
        assert!(labels.contains(&label));
    }
}
