//! A deterministic stand-in for Qwen2.5's BPE tokenizer (no vocabulary ships
//! with the simulator). Every byte of the text belongs to exactly one token:
//!
//! - the special tokens `<|im_start|>`, `<|im_end|>`, `<|endoftext|>`: one token each;
//! - a CJK ideograph, kana or hangul syllable, or any other non-ASCII symbol: one token each;
//! - a word (a run of letters, with the single space before it): one token
//!   per started 6 bytes, so most English words are one token;
//! - a digit: one token each (Qwen splits numbers into digits);
//! - a run of whitespace: one token per started 4 characters;
//! - any other ASCII character (punctuation): one token each.
//!
//! That is about 4 bytes a token on English prose and 1 a character on CJK,
//! close to the real tokenizer. Token ids are a hash of the token's text below
//! Qwen's regular vocabulary size; the special tokens keep their real ids.

/// Qwen2.5's special tokens and their ids.
pub const SPECIAL_TOKENS: [(&str, u32); 3] = [
    ("<|endoftext|>", 151_643),
    ("<|im_start|>", 151_644),
    ("<|im_end|>", 151_645),
];
/// Ids below this are regular tokens.
const REGULAR_VOCAB: u32 = 151_643;
const WORD_BYTES_PER_TOKEN: usize = 6;
const SPACE_CHARS_PER_TOKEN: usize = 4;

/// Byte ranges of the tokens of `text`, in order, covering all of it.
pub fn spans(text: &str) -> Spans<'_> {
    Spans {
        text,
        pos: 0,
        word_end: 0,
    }
}

/// Number of tokens of `text`.
#[cfg(test)]
pub fn count(text: &str) -> usize {
    spans(text).count()
}

/// The token ids of `text` (what `/tokenize` answers).
pub fn token_ids(text: &str) -> Vec<u32> {
    spans(text).map(|r| token_id(&text[r])).collect()
}

/// The id of one token's text.
pub fn token_id(piece: &str) -> u32 {
    if let Some((_, id)) = SPECIAL_TOKENS.iter().find(|(s, _)| *s == piece) {
        return *id;
    }
    // FNV-1a: stable across runs and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in piece.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % REGULAR_VOCAB
}

/// Iterator over token spans; see the module doc for the rule.
pub struct Spans<'a> {
    text: &'a str,
    pos: usize,
    /// End of the word being cut into tokens, when inside one.
    word_end: usize,
}

impl Iterator for Spans<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let rest = self.text.get(start..)?;
        let first = rest.chars().next()?;
        let end = if start < self.word_end {
            word_chunk_end(self.text, start, self.word_end)
        } else if first == '<' && rest.starts_with("<|") {
            match SPECIAL_TOKENS.iter().find(|(s, _)| rest.starts_with(s)) {
                Some((s, _)) => start + s.len(),
                None => start + 1,
            }
        } else if is_word_char(first) || (first == ' ' && starts_word(&rest[1..])) {
            self.word_end = start + first.len_utf8() + word_len(&rest[first.len_utf8()..]);
            word_chunk_end(self.text, start, self.word_end)
        } else if first.is_whitespace() {
            whitespace_chunk_end(rest) + start
        } else {
            // Digits, punctuation, CJK, symbols: one character each.
            start + first.len_utf8()
        };
        self.pos = end;
        Some(start..end)
    }
}

/// Letters that form words: alphabetic, but not CJK (one token a character).
fn is_word_char(c: char) -> bool {
    c.is_alphabetic() && !is_cjk(c)
}

fn starts_word(s: &str) -> bool {
    s.chars().next().is_some_and(is_word_char)
}

/// Bytes of the run of word characters at the start of `s`.
fn word_len(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !is_word_char(*c))
        .map_or(s.len(), |(i, _)| i)
}

/// End of the next token inside a word: at most 6 bytes, at least one character.
fn word_chunk_end(text: &str, start: usize, word_end: usize) -> usize {
    let limit = (start + WORD_BYTES_PER_TOKEN).min(word_end);
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end == start {
        let first = text[start..].chars().next().map_or(1, char::len_utf8);
        end = start + first;
    }
    end
}

/// Bytes of the next whitespace token at the start of `rest`. A space that
/// opens a word is left to the word.
fn whitespace_chunk_end(rest: &str) -> usize {
    let mut end = 0;
    for (n, (i, c)) in rest.char_indices().enumerate() {
        if n == SPACE_CHARS_PER_TOKEN || !c.is_whitespace() {
            break;
        }
        if c == ' ' && n > 0 && starts_word(&rest[i + 1..]) {
            break;
        }
        end = i + c.len_utf8();
    }
    end.max(1)
}

/// CJK ideographs, kana, hangul and full-width forms.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x30FF      // CJK punctuation, hiragana, katakana
        | 0x3400..=0x4DBF    // extension A
        | 0x4E00..=0x9FFF    // unified ideographs
        | 0xAC00..=0xD7AF    // hangul syllables
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0xFF00..=0xFFEF    // full-width forms
        | 0x20000..=0x2FFFF) // supplementary ideographs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        spans(text).map(|r| &text[r]).collect()
    }

    #[test]
    fn english_words_are_mostly_one_token() {
        assert_eq!(
            pieces("Hello world, how are you?"),
            ["Hello", " world", ",", " how", " are", " you", "?"]
        );
        assert_eq!(
            pieces(" internationalization"),
            [" inter", "nation", "alizat", "ion"]
        );
    }

    #[test]
    fn specials_digits_cjk_whitespace() {
        assert_eq!(
            pieces("<|im_start|>user\n12<|im_end|>"),
            ["<|im_start|>", "user", "\n", "1", "2", "<|im_end|>"]
        );
        assert_eq!(pieces("你好，世界"), ["你", "好", "，", "世", "界"]);
        assert_eq!(pieces("a  \n\n\n\n b"), ["a", "  \n\n", "\n\n", " b"]);
        assert_eq!(pieces("<|x"), ["<", "|", "x"]);
    }

    #[test]
    fn spans_cover_every_byte() {
        let text = "Ünïcödé wörds — 東京 🎉 <|im_end|>\t\tx1.5";
        let mut pos = 0;
        for r in spans(text) {
            assert_eq!(r.start, pos);
            assert!(r.end > r.start);
            pos = r.end;
        }
        assert_eq!(pos, text.len());
    }

    #[test]
    fn about_four_bytes_a_token_on_english() {
        let text = "The quick brown fox jumps over the lazy dog. It was a bright cold day \
                    in April, and the clocks were striking thirteen. Winston Smith, his chin \
                    nuzzled into his breast in an effort to escape the vile wind, slipped \
                    quickly through the glass doors of Victory Mansions.";
        let ratio = text.len() as f64 / count(text) as f64;
        assert!((3.5..5.5).contains(&ratio), "{ratio}");
    }

    #[test]
    fn ids_are_stable_and_specials_keep_theirs() {
        assert_eq!(token_ids("<|im_start|><|im_end|>"), [151_644, 151_645]);
        let ids = token_ids("hello hello");
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]); // "hello" and " hello" differ
        assert!(ids.iter().all(|&i| i < REGULAR_VOCAB));
        assert_eq!(token_ids("hello"), token_ids("hello"));
    }
}
