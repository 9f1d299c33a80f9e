//! Exact token counts from a Hugging Face `tokenizer.json` of the byte-level
//! BPE kind Qwen2.5 ships (NFC normaliser, Qwen2's split pattern, GPT-2 byte
//! mapping, ranked merges, added special tokens). Without a file, counts are
//! a documented conservative estimate (`validate::estimate_tokens`).
//!
//! - `pretokenize`: the split pattern, by hand
//! - this file: loading, byte mapping, BPE merges and counting

mod pretokenize;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("not a byte-level BPE tokenizer.json: {0}")]
    Format(String),
}

#[derive(Deserialize)]
struct File {
    model: Model,
    #[serde(default)]
    added_tokens: Vec<Added>,
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    merges: Vec<Merge>,
}

/// Merges are `"a b"` strings in older files and `["a", "b"]` pairs in newer ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
}

#[derive(Deserialize)]
struct Added {
    content: String,
}

/// Pieces whose counts are remembered (prompts repeat system prompts and words).
const CACHE_LIMIT: usize = 100_000;

pub struct Tokenizer {
    ranks: HashMap<(String, String), u32>,
    /// Special tokens, longest first, each counting as one token.
    added: Vec<String>,
    byte_char: [char; 256],
    cache: Mutex<HashMap<String, u32>>,
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\u{fffd}')
        };
    }
    map
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenizerError::Read(path.display().to_string(), e.to_string()))?;
        Tokenizer::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Tokenizer, TokenizerError> {
        let file: File =
            serde_json::from_str(text).map_err(|e| TokenizerError::Format(e.to_string()))?;
        if file.model.kind != "BPE" {
            return Err(TokenizerError::Format(format!(
                "model type {}",
                file.model.kind
            )));
        }
        let mut ranks = HashMap::with_capacity(file.model.merges.len());
        for (rank, m) in file.model.merges.into_iter().enumerate() {
            let pair = match m {
                Merge::Pair(a, b) => (a, b),
                Merge::Joined(s) => match s.split_once(' ') {
                    Some((a, b)) => (a.to_owned(), b.to_owned()),
                    None => return Err(TokenizerError::Format(format!("merge `{s}`"))),
                },
            };
            ranks.insert(pair, rank as u32);
        }
        let mut added: Vec<String> = file
            .added_tokens
            .into_iter()
            .map(|a| a.content)
            .filter(|c| !c.is_empty())
            .collect();
        added.sort_by_key(|a| std::cmp::Reverse(a.len()));
        if file.model.vocab.is_empty() {
            return Err(TokenizerError::Format("empty vocabulary".into()));
        }
        Ok(Tokenizer {
            ranks,
            added,
            byte_char: byte_chars(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The number of tokens `text` encodes to (special tokens included).
    pub fn count(&self, text: &str) -> u64 {
        let mut total = 0u64;
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .added
                .iter()
                .filter_map(|a| rest.find(a.as_str()).map(|at| (at, a.len())))
                .min_by_key(|(at, _)| *at);
            let (plain, special) = match next {
                Some((at, len)) => (&rest[..at], Some(len)),
                None => (rest, None),
            };
            total += self.count_plain(plain);
            match special {
                Some(len) => {
                    total += 1;
                    rest = &rest[plain.len() + len..];
                }
                None => break,
            }
        }
        total
    }

    fn count_plain(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let normalized: String = text.nfc().collect();
        pretokenize::split(&normalized)
            .into_iter()
            .map(|p| u64::from(self.count_piece(p)))
            .sum()
    }

    fn count_piece(&self, piece: &str) -> u32 {
        if let Ok(cache) = self.cache.lock()
            && let Some(n) = cache.get(piece)
        {
            return *n;
        }
        let n = self.bpe(piece).len() as u32;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(piece.to_owned(), n);
        }
        n
    }

    /// The BPE symbols of one piece: lowest-ranked adjacent pair merged first.
    fn bpe(&self, piece: &str) -> Vec<String> {
        let mut symbols: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_char[b as usize].to_string())
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", symbols[i], symbols[i + 1]);
            symbols.splice(i..i + 2, [merged]);
        }
        // A symbol missing from the vocabulary would still cost a token (as <unk>).
        symbols
    }
}

/// Qwen2.5's chat template adds this system message when a chat has none.
pub const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// How the gateway counts prompt tokens: exactly with a tokenizer, else by estimate.
pub enum TokenCounter {
    /// One token per 3 bytes: never below what Qwen2.5's tokenizer gives for
    /// English (~4 bytes a token) or CJK (3 bytes a character).
    Estimate,
    Exact(Box<Tokenizer>),
}

impl TokenCounter {
    pub fn count(&self, text: &str) -> u64 {
        match self {
            TokenCounter::Estimate => (text.len() as u64).div_ceil(3),
            TokenCounter::Exact(t) => t.count(text),
        }
    }

    /// Tokens of a chat as Qwen2.5's ChatML template renders it for vLLM:
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, the default system
    /// message when there is none, and the `<|im_start|>assistant\n` prompt.
    pub fn count_chat<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
        let mut rendered = String::new();
        let mut first = true;
        for (role, content) in messages {
            if first && role != "system" {
                rendered.push_str(&format!(
                    "<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
                ));
            }
            first = false;
            rendered.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        rendered.push_str("<|im_start|>assistant\n");
        match self {
            TokenCounter::Exact(t) => t.count(&rendered),
            // The markers are single tokens to a tokenizer; the estimate charges them as text.
            TokenCounter::Estimate => self.count(&rendered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny tokenizer.json of the Qwen2 kind: byte alphabet, a few merges, specials.
    fn tiny() -> Tokenizer {
        let chars = byte_chars();
        let mut vocab: HashMap<String, u32> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let merges = [
            ("h", "e"),
            ("l", "l"),
            ("he", "ll"),
            ("hell", "o"),
            ("Ġ", "w"),
            ("o", "r"),
            ("Ġw", "or"),
            ("l", "d"),
            ("Ġwor", "ld"),
        ];
        for (a, b) in merges {
            let id = vocab.len() as u32;
            vocab.insert(format!("{a}{b}"), id);
        }
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()},
            "added_tokens": [{"id": 9000, "content": "<|im_start|>"}, {"id": 9001, "content": "<|im_end|>"}],
        });
        Tokenizer::from_json(&json.to_string()).unwrap()
    }

    #[test]
    fn merges_apply_by_rank() {
        let t = tiny();
        assert_eq!(t.bpe("hello"), ["hello"]);
        assert_eq!(t.bpe("Ġworld".replace('Ġ', " ").as_str()), ["Ġworld"]);
        assert_eq!(t.count("hello world"), 2);
        assert_eq!(t.count("hellx"), 2, "he, ll, hell merge; x stays alone");
    }

    #[test]
    fn special_tokens_count_one_each_and_bytes_cover_everything() {
        let t = tiny();
        assert_eq!(t.count("<|im_start|>hello<|im_end|>"), 3);
        // Unmerged text costs one token per byte.
        assert_eq!(t.count("é"), 2);
        assert_eq!(t.count(""), 0);
    }

    #[test]
    fn chats_are_counted_as_the_template_renders_them() {
        let t = TokenCounter::Exact(Box::new(tiny()));
        let with_system = t.count_chat([("system", "hello"), ("user", "hello world")]);
        // Each message: im_start + role bytes + \n + content + im_end + \n; then the assistant prompt.
        let expected = (1 + 6 + 1 + 1 + 1 + 1) + (1 + 4 + 1 + 2 + 1 + 1) + (1 + 9 + 1);
        assert_eq!(with_system, expected);
        assert!(
            t.count_chat([("user", "hello world")]) > with_system - 5,
            "the default system message is counted"
        );
        assert!(TokenCounter::Estimate.count_chat([("user", "hello")]) >= 10);
    }

    #[test]
    fn merge_pairs_in_the_newer_format_load_too() {
        let json = r#"{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]}}"#;
        assert_eq!(Tokenizer::from_json(json).unwrap().count("ab"), 1);
        assert!(
            Tokenizer::from_json(r#"{"model":{"type":"WordPiece","vocab":{},"merges":[]}}"#)
                .is_err()
        );
    }
}
