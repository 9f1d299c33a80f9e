//! What a simulated sequence says: deterministic, readable pseudo-text (or,
//! with `--echo`, the prompt as rendered), and where it ends.
//!
//! The whole plan is fixed when the request arrives: the engine only needs
//! to know how many tokens to produce and why it stops; the HTTP side asks
//! for the text of token `i` as it streams.

use std::sync::{Arc, OnceLock};

use super::engine::FinishReason;

/// Short words (one token each under the simulator's tokenizer).
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at",
    "by", "this", "from", "or", "be", "are", "an", "but", "not", "which", "have", "one", "you",
    "they", "were", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when",
    "will", "would", "who", "so", "no", "out", "up", "into", "them", "some", "could", "time",
    "these", "two", "may", "then", "first", "any", "like", "other", "over", "new", "also", "after",
    "most", "made", "only", "use", "used", "where", "well", "many", "years", "work", "state",
    "still", "world", "each", "place", "small", "large", "water", "light", "model", "data",
    "value", "cache", "token", "query", "graph", "route", "queue", "batch", "cloud", "node",
    "shard", "fast", "slow", "clear", "plain", "short", "long", "early", "late", "high", "low",
    "open", "close", "green", "quiet", "sound", "river", "stone", "paper", "table", "field",
    "house", "road", "city", "north", "south", "east", "west", "plan", "rule", "order", "point",
    "line", "form", "part", "case", "fact", "idea", "way", "day", "life", "hand", "eye", "mind",
    "word", "name", "story", "page", "note", "given", "known", "found", "seen", "held", "kept",
    "set", "run", "ran", "move", "keep", "hold", "bring", "write", "read", "learn", "build",
    "grow", "start", "end", "turn", "show", "help", "ask", "need", "feel", "try", "leave", "call",
    "good", "great", "right", "old", "big", "real", "best", "free", "full", "sure", "able",
    "human", "local", "whole", "often", "never", "again", "very", "just", "even", "much", "here",
    "now", "soon",
];

/// How a sequence's text is produced.
#[derive(Debug, Clone)]
pub enum Source {
    /// Pseudo-words from a seed; `end` is the natural length (its last token is ".").
    Words { seed: u64, end: Option<u32> },
    /// The tokens of a given text (the rendered prompt), then nothing.
    Echo { text: Arc<str>, ends: Arc<[u32]> },
}

impl Source {
    /// The text of token `i`.
    pub fn token(&self, i: u32) -> &str {
        match self {
            Source::Words { seed, end } => word_token(*seed, *end, i),
            Source::Echo { text, ends } => {
                let i = i as usize;
                match ends.get(i) {
                    Some(&e) => {
                        let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                        text.get(start..e as usize).unwrap_or("")
                    }
                    None => "",
                }
            }
        }
    }
}

/// What decides a sequence's output.
#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    pub seed: u64,
    pub max_tokens: u32,
    pub min_tokens: u32,
    pub ignore_eos: bool,
    pub stop: &'a [String],
    pub include_stop_str_in_output: bool,
    /// `Some`: echo these tokens instead of inventing words.
    pub echo: Option<(Arc<str>, Arc<[u32]>)>,
}

/// A sequence's output, fixed up front.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    pub source: Source,
    /// Tokens the engine generates (at least 1).
    pub tokens: u32,
    pub finish: FinishReason,
    /// The stop string that ended the text, if one did.
    pub stop_reason: Option<String>,
    /// Bytes of text shown, when a stop string cut it short.
    pub text_limit: Option<usize>,
}

impl OutputPlan {
    pub fn new(req: &PlanRequest<'_>) -> OutputPlan {
        let max_tokens = req.max_tokens.max(1);
        let (source, natural) = match &req.echo {
            Some((text, ends)) => {
                let len = u32::try_from(ends.len()).unwrap_or(u32::MAX).max(1);
                let end = (!req.ignore_eos).then_some(len.max(req.min_tokens));
                (
                    Source::Echo {
                        text: text.clone(),
                        ends: ends.clone(),
                    },
                    end,
                )
            }
            None => {
                let end = (!req.ignore_eos).then(|| natural_len(req.seed).max(req.min_tokens));
                (
                    Source::Words {
                        seed: req.seed,
                        end,
                    },
                    end,
                )
            }
        };
        let (tokens, finish) = match natural {
            Some(n) if n <= max_tokens => (n, FinishReason::Stop),
            _ => (max_tokens, FinishReason::Length),
        };
        let mut plan = OutputPlan {
            source,
            tokens,
            finish,
            stop_reason: None,
            text_limit: None,
        };
        plan.apply_stop_strings(req);
        plan
    }

    /// Ends the plan at the first stop string, checked after each token as
    /// vLLM does (not before `min_tokens`).
    fn apply_stop_strings(&mut self, req: &PlanRequest<'_>) {
        let stops: Vec<&str> = req
            .stop
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        let Some(longest) = stops.iter().map(|s| s.len()).max() else {
            return;
        };
        let mut text = String::new();
        for i in 0..self.tokens {
            let before = text.len();
            text.push_str(self.source.token(i));
            if i + 1 < req.min_tokens {
                continue;
            }
            let from = before.saturating_sub(longest - 1);
            let found = stops
                .iter()
                .filter_map(|s| find_from(&text, s, from).map(|at| (at, *s)))
                .min_by_key(|(at, _)| *at);
            if let Some((at, stop)) = found {
                self.tokens = i + 1;
                self.finish = FinishReason::Stop;
                self.stop_reason = Some(stop.to_owned());
                self.text_limit = Some(if req.include_stop_str_in_output {
                    at + stop.len()
                } else {
                    at
                });
                return;
            }
        }
    }

    /// The text of the whole output.
    pub fn full_text(&self) -> String {
        let mut text = String::new();
        for i in 0..self.tokens {
            text.push_str(self.source.token(i));
        }
        if let Some(limit) = self.text_limit {
            text.truncate(limit);
        }
        text
    }
}

/// Cuts token texts to the plan's visible text while streaming.
#[derive(Debug, Default)]
pub struct Cursor {
    emitted: usize,
}

impl Cursor {
    /// The visible part of token `i`, given all earlier tokens went through this cursor.
    pub fn next<'p>(&mut self, plan: &'p OutputPlan, i: u32) -> &'p str {
        let piece = plan.source.token(i);
        let start = self.emitted;
        self.emitted += piece.len();
        match plan.text_limit {
            Some(limit) if self.emitted > limit => {
                let keep = limit.saturating_sub(start).min(piece.len());
                piece.get(..keep).unwrap_or("")
            }
            _ => piece,
        }
    }
}

fn find_from(text: &str, pat: &str, from: usize) -> Option<usize> {
    let mut from = from.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    text[from..].find(pat).map(|i| i + from)
}

/// A deterministic 64-bit mix (splitmix64 finaliser) of two values.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable hash of a text (FNV-1a, 64 bit).
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where a pseudo-text ends by itself: 64 to 511 tokens, by seed.
pub fn natural_len(seed: u64) -> u32 {
    64 + (mix(seed, 0x0045_4f53) % 448) as u32
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Comma,
    Period,
}

/// The kind token `i` would have, ignoring its neighbours.
fn raw_kind(seed: u64, i: u32) -> Kind {
    match mix(seed, u64::from(i)) % 100 {
        0..=5 => Kind::Period,
        6..=9 => Kind::Comma,
        _ => Kind::Word,
    }
}

/// Punctuation never starts the text nor follows punctuation; a text with a
/// natural end closes with a word and a period.
fn kind(seed: u64, end: Option<u32>, i: u32) -> Kind {
    match end {
        Some(e) if i + 1 == e && i > 0 => return Kind::Period,
        Some(e) if i + 2 == e => return Kind::Word,
        _ => {}
    }
    if i == 0 {
        return Kind::Word;
    }
    match raw_kind(seed, i) {
        Kind::Word => Kind::Word,
        k if i == 1 || raw_kind(seed, i - 1) == Kind::Word => k,
        _ => Kind::Word,
    }
}

fn word_token(seed: u64, end: Option<u32>, i: u32) -> &'static str {
    match kind(seed, end, i) {
        Kind::Period => ".",
        Kind::Comma => ",",
        Kind::Word => {
            let w = (mix(seed ^ 0x5752_4453, u64::from(i)) % WORDS.len() as u64) as usize;
            let capital = i == 0 || kind(seed, end, i - 1) == Kind::Period;
            let spaced = if capital {
                &capitalised()[w]
            } else {
                &spaced()[w]
            };
            if i == 0 { &spaced[1..] } else { spaced }
        }
    }
}

fn spaced() -> &'static [String] {
    static SPACED: OnceLock<Vec<String>> = OnceLock::new();
    SPACED.get_or_init(|| WORDS.iter().map(|w| format!(" {w}")).collect())
}

fn capitalised() -> &'static [String] {
    static CAPS: OnceLock<Vec<String>> = OnceLock::new();
    CAPS.get_or_init(|| {
        WORDS
            .iter()
            .map(|w| {
                let mut chars = w.chars();
                let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or(' ');
                format!(" {first}{}", chars.as_str())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer;

    fn req(seed: u64, max_tokens: u32) -> PlanRequest<'static> {
        PlanRequest {
            seed,
            max_tokens,
            min_tokens: 0,
            ignore_eos: false,
            stop: &[],
            include_stop_str_in_output: false,
            echo: None,
        }
    }

    #[test]
    fn same_seed_same_text_other_seed_other_text() {
        let a = OutputPlan::new(&req(7, 40)).full_text();
        let b = OutputPlan::new(&req(7, 40)).full_text();
        let c = OutputPlan::new(&req(8, 40)).full_text();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.chars().next().unwrap().is_ascii_uppercase(), "{a}");
        assert!(
            !a.contains(".,") && !a.contains(",.") && !a.contains(".."),
            "{a}"
        );
    }

    #[test]
    fn natural_end_is_stop_otherwise_length() {
        let n = natural_len(3);
        let short = OutputPlan::new(&req(3, n - 1));
        assert_eq!((short.tokens, short.finish), (n - 1, FinishReason::Length));
        let long = OutputPlan::new(&req(3, n + 10));
        assert_eq!((long.tokens, long.finish), (n, FinishReason::Stop));
        assert!(long.full_text().ends_with('.'));
        let endless = OutputPlan::new(&PlanRequest {
            ignore_eos: true,
            ..req(3, n + 10)
        });
        assert_eq!(
            (endless.tokens, endless.finish),
            (n + 10, FinishReason::Length)
        );
    }

    #[test]
    fn generated_words_count_one_token_each() {
        let plan = OutputPlan::new(&req(11, 60));
        assert_eq!(tokenizer::count(&plan.full_text()), plan.tokens as usize);
    }

    #[test]
    fn stop_string_cuts_text_and_sets_reason() {
        let full = OutputPlan::new(&req(5, 200)).full_text();
        let stop = vec![",".to_owned()];
        let plan = OutputPlan::new(&PlanRequest {
            stop: &stop,
            ..req(5, 200)
        });
        let cut = full.find(',').unwrap();
        assert_eq!(plan.full_text(), full[..cut]);
        assert_eq!(plan.finish, FinishReason::Stop);
        assert_eq!(plan.stop_reason.as_deref(), Some(","));
        // Streaming through a cursor shows the same text.
        let mut cursor = Cursor::default();
        let streamed: String = (0..plan.tokens).map(|i| cursor.next(&plan, i)).collect();
        assert_eq!(streamed, plan.full_text());
    }

    #[test]
    fn echo_repeats_the_tokens_then_stops() {
        let text: Arc<str> = Arc::from("Hello there, world");
        let ends: Arc<[u32]> = tokenizer::spans(&text).map(|r| r.end as u32).collect();
        let plan = OutputPlan::new(&PlanRequest {
            echo: Some((text.clone(), ends.clone())),
            ..req(1, 2)
        });
        assert_eq!(
            (plan.full_text().as_str(), plan.finish),
            ("Hello there", FinishReason::Length)
        );
        let plan = OutputPlan::new(&PlanRequest {
            echo: Some((text, ends)),
            ..req(1, 100)
        });
        assert_eq!(
            (plan.full_text().as_str(), plan.finish),
            ("Hello there, world", FinishReason::Stop)
        );
        assert_eq!(plan.tokens, 4);
    }
}
