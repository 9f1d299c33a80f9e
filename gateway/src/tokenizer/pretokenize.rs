//! Qwen2's pre-tokenizer split, by hand. The pattern in its tokenizer.json is
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! which needs look-ahead (`(?!\S)`) that the `regex` crate does not have.
//! [`split`] tries the same alternatives in the same order at each position.

fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}

fn is_number(c: char) -> bool {
    c.is_numeric()
}

fn is_nl(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// Splits `text` into the pieces BPE works on, in order; they cover `text`.
pub fn split(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |(b, _)| *b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let n = piece_len(&chars, i);
        out.push(&text[chars[i].0..end_of(i + n)]);
        i += n;
    }
    out
}

/// Length in chars of the piece starting at `i` (always ≥ 1).
fn piece_len(chars: &[(usize, char)], i: usize) -> usize {
    let at = |k: usize| chars.get(k).map(|(_, c)| *c);
    let c = chars[i].1;
    // 1. contractions, case-insensitive
    if c == '\'' {
        let lower = |k: usize| at(k).map(|c| c.to_ascii_lowercase());
        match (lower(i + 1), lower(i + 2)) {
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => return 3,
            (Some('s' | 't' | 'm' | 'd'), _) => return 2,
            _ => {}
        }
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    let start = if !is_nl(c) && !is_letter(c) && !is_number(c) && at(i + 1).is_some_and(is_letter) {
        i + 1
    } else {
        i
    };
    if at(start).is_some_and(is_letter) {
        let mut k = start;
        while at(k).is_some_and(is_letter) {
            k += 1;
        }
        return k - i;
    }
    // 3. \p{N}: one digit at a time
    if is_number(c) {
        return 1;
    }
    // 4.  ?[^\s\p{L}\p{N}]+[\r\n]*
    let punct = |x: char| !x.is_whitespace() && !is_letter(x) && !is_number(x);
    let start = if c == ' ' && at(i + 1).is_some_and(punct) {
        i + 1
    } else {
        i
    };
    if at(start).is_some_and(punct) {
        let mut k = start;
        while at(k).is_some_and(punct) {
            k += 1;
        }
        while at(k).is_some_and(is_nl) {
            k += 1;
        }
        return k - i;
    }
    // Whitespace from here on: the run starting at i.
    let mut run_end = i;
    while at(run_end).is_some_and(char::is_whitespace) {
        run_end += 1;
    }
    // 5. \s*[\r\n]+ : up to the last newline of the run, newlines included.
    if let Some(last_nl) = (i..run_end).rev().find(|&k| at(k).is_some_and(is_nl)) {
        return last_nl + 1 - i;
    }
    // 6. \s+(?!\S): the run, less its last char when a non-space follows.
    if run_end == chars.len() {
        return run_end - i;
    }
    if run_end - i > 1 {
        return run_end - i - 1;
    }
    // 7. \s+ (or any other single char)
    1
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_like_qwen2s_pattern() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            split("I'm here, it's 2024!"),
            [
                "I", "'m", " here", ",", " it", "'s", " ", "2", "0", "2", "4", "!"
            ]
        );
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("x\n\ny"), ["x", "\n\n", "y"]);
        assert_eq!(split("end   "), ["end", "   "]);
        // An optional leading non-letter joins the letter run, as the pattern says.
        assert_eq!(split("你好,世界"), ["你好", ",世界"]);
        assert_eq!(split(" ...\n"), [" ...\n"]);
        assert_eq!(
            split("<|im_start|>user"),
            ["<|", "im", "_start", "|>", "user"]
        );
    }

    #[test]
    fn pieces_cover_the_text() {
        for t in ["", "  \t x \r\n\r\n  y", "Ünïcödé 123 éé'LL", "🙂👍🏽 ok"] {
            assert_eq!(split(t).concat(), t);
        }
    }
}
