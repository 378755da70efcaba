//! Label quality from (gold, prediction) pairs: accuracy strict and lenient, per-label precision
//! and recall, macro-F1, the confusion matrix, calibration and agreement between settings. Pure
//! functions, so every figure of a report can be recomputed from `items.csv`.

use std::collections::BTreeSet;

/// The column of the confusion matrix for items that got an error instead of a label.
pub const ERROR_COLUMN: &str = "(error)";

/// Confidence bins of the reliability diagram and the ECE: ten of equal width.
const BINS: usize = 10;

/// One item as scored: the gold label, a second acceptable one, and what came back.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub gold: &'a str,
    pub alt: Option<&'a str>,
    /// `None` when the item got an error.
    pub topic: Option<&'a str>,
    pub confidence: Option<f64>,
}

impl Outcome<'_> {
    fn strict(&self) -> bool {
        self.topic == Some(self.gold)
    }

    fn lenient(&self) -> bool {
        self.strict() || (self.topic.is_some() && self.topic == self.alt)
    }
}

/// One gold label's figures. Precision is `None` when the label was never predicted.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScores {
    pub label: String,
    /// Items whose gold label this is.
    pub support: usize,
    /// Items predicted as this label.
    pub predicted: usize,
    pub precision: Option<f64>,
    pub recall: f64,
    pub f1: f64,
}

/// One confidence bin: `[lower, upper)`, the last one closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_confidence: f64,
    /// Strict accuracy of the bin's items.
    pub accuracy: f64,
}

/// Rows are gold labels, columns predicted labels then `ERROR_COLUMN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<usize>>,
}

/// Everything one setting scored.
#[derive(Debug, Clone)]
pub struct Scores {
    pub items: usize,
    pub item_errors: usize,
    /// Items whose label is the gold one, over all items (an error counts as wrong).
    pub strict_accuracy: f64,
    /// The same, accepting the second label too.
    pub lenient_accuracy: f64,
    /// The mean F1 over the gold labels, each weighing the same.
    pub macro_f1: f64,
    pub per_label: Vec<LabelScores>,
    pub confusion: Confusion,
    pub calibration: Vec<Bin>,
    /// Expected calibration error: the bins' gaps between accuracy and confidence, weighted by
    /// their share of the answered items.
    pub ece: f64,
}

pub fn score(outcomes: &[Outcome<'_>]) -> Scores {
    let items = outcomes.len();
    let share = |n: usize| {
        if items == 0 {
            0.0
        } else {
            n as f64 / items as f64
        }
    };
    let per_label = per_label(outcomes);
    let macro_f1 = if per_label.is_empty() {
        0.0
    } else {
        per_label.iter().map(|l| l.f1).sum::<f64>() / per_label.len() as f64
    };
    let calibration = calibration(outcomes);
    Scores {
        items,
        item_errors: outcomes.iter().filter(|o| o.topic.is_none()).count(),
        strict_accuracy: share(outcomes.iter().filter(|o| o.strict()).count()),
        lenient_accuracy: share(outcomes.iter().filter(|o| o.lenient()).count()),
        macro_f1,
        per_label,
        confusion: confusion(outcomes),
        ece: ece(&calibration),
        calibration,
    }
}

fn per_label(outcomes: &[Outcome<'_>]) -> Vec<LabelScores> {
    let gold: BTreeSet<&str> = outcomes.iter().map(|o| o.gold).collect();
    gold.into_iter()
        .map(|label| {
            let support = outcomes.iter().filter(|o| o.gold == label).count();
            let predicted = outcomes.iter().filter(|o| o.topic == Some(label)).count();
            let hits = outcomes
                .iter()
                .filter(|o| o.gold == label && o.topic == Some(label))
                .count();
            let precision = (predicted > 0).then(|| hits as f64 / predicted as f64);
            let recall = hits as f64 / support as f64;
            let p = precision.unwrap_or(0.0);
            let f1 = if p + recall > 0.0 {
                2.0 * p * recall / (p + recall)
            } else {
                0.0
            };
            LabelScores {
                label: label.to_owned(),
                support,
                predicted,
                precision,
                recall,
                f1,
            }
        })
        .collect()
}

fn confusion(outcomes: &[Outcome<'_>]) -> Confusion {
    let labels: Vec<String> = outcomes
        .iter()
        .flat_map(|o| [Some(o.gold), o.topic])
        .flatten()
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let column = |topic: Option<&str>| match topic {
        Some(t) => labels
            .iter()
            .position(|l| l == t)
            .expect("every topic is a label"),
        None => labels.len(),
    };
    let mut counts = vec![vec![0; labels.len() + 1]; labels.len()];
    for o in outcomes {
        let row = labels
            .iter()
            .position(|l| l == o.gold)
            .expect("every gold is a label");
        counts[row][column(o.topic)] += 1;
    }
    Confusion { labels, counts }
}

/// The bin a confidence falls in; 1.0 belongs to the last.
pub fn bin_of(confidence: f64) -> usize {
    ((confidence * BINS as f64).floor() as usize).min(BINS - 1)
}

fn calibration(outcomes: &[Outcome<'_>]) -> Vec<Bin> {
    (0..BINS)
        .map(|b| {
            let members: Vec<(f64, bool)> = outcomes
                .iter()
                .filter_map(|o| {
                    o.confidence
                        .filter(|_| o.topic.is_some())
                        .map(|c| (c, o.strict()))
                })
                .filter(|(c, _)| bin_of(*c) == b)
                .collect();
            let count = members.len();
            let mean = |f: &dyn Fn(&(f64, bool)) -> f64| {
                if count == 0 {
                    0.0
                } else {
                    members.iter().map(f).sum::<f64>() / count as f64
                }
            };
            Bin {
                lower: b as f64 / BINS as f64,
                upper: (b + 1) as f64 / BINS as f64,
                count,
                mean_confidence: mean(&|m| m.0),
                accuracy: mean(&|m| f64::from(u8::from(m.1))),
            }
        })
        .collect()
}

fn ece(bins: &[Bin]) -> f64 {
    let answered: usize = bins.iter().map(|b| b.count).sum();
    if answered == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 / answered as f64 * (b.accuracy - b.mean_confidence).abs())
        .sum()
}

/// The share of items both settings answered on which they gave the same label; `None` when
/// no item was answered by both.
pub fn agreement(a: &[Option<&str>], b: &[Option<&str>]) -> Option<f64> {
    let both: Vec<(&str, &str)> = a.iter().zip(b).filter_map(|(x, y)| x.zip(*y)).collect();
    (!both.is_empty())
        .then(|| both.iter().filter(|(x, y)| x == y).count() as f64 / both.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome<'a>(
        gold: &'a str,
        alt: Option<&'a str>,
        topic: Option<&'a str>,
        confidence: f64,
    ) -> Outcome<'a> {
        Outcome {
            gold,
            alt,
            topic,
            confidence: topic.map(|_| confidence),
        }
    }

    #[test]
    fn accuracy_f1_confusion_and_calibration_by_hand() {
        let outcomes = [
            outcome("a", None, Some("a"), 0.95),
            outcome("a", Some("b"), Some("b"), 0.85),
            outcome("b", None, Some("b"), 0.91),
            outcome("b", None, Some("a"), 0.15),
            outcome("b", None, None, 0.0),
        ];
        let s = score(&outcomes);
        assert_eq!((s.items, s.item_errors), (5, 1));
        assert!((s.strict_accuracy - 0.4).abs() < 1e-12);
        assert!((s.lenient_accuracy - 0.6).abs() < 1e-12);
        // a: precision 1/2, recall 1/2, F1 1/2; b: precision 1/2, recall 1/3, F1 0.4.
        assert_eq!(s.per_label[0].precision, Some(0.5));
        assert!((s.per_label[1].recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.macro_f1 - 0.45).abs() < 1e-12, "{}", s.macro_f1);
        assert_eq!(s.confusion.labels, ["a", "b"]);
        assert_eq!(s.confusion.counts, [vec![1, 1, 0], vec![1, 1, 1]]);
        // Bins: 0.1-0.2 {0.15 wrong}, 0.8-0.9 {0.85 wrong}, 0.9-1.0 {0.95 right, 0.91 right}.
        let expected = 0.25 * 0.15 + 0.25 * 0.85 + 0.5 * (1.0 - 0.93);
        assert!((s.ece - expected).abs() < 1e-12, "{} vs {expected}", s.ece);
        assert_eq!(s.calibration.iter().map(|b| b.count).sum::<usize>(), 4);
        assert_eq!(bin_of(1.0), 9);
    }

    #[test]
    fn agreement_counts_only_items_both_answered() {
        let k1 = [Some("a"), Some("b"), None, Some("c")];
        let k5 = [Some("a"), Some("c"), Some("c"), None];
        assert_eq!(agreement(&k1, &k5), Some(0.5));
        assert_eq!(agreement(&[None], &[Some("a")]), None);
    }
}
