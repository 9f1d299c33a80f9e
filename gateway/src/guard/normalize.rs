//! Text as the deny patterns see it: NFKC-normalised (full-width and other
//! compatibility look-alikes folded to their plain forms) with invisible
//! characters removed (zero-width and other format characters, variation
//! selectors, Unicode tag characters), so `ｓｙｓｔｅｍ:` or `sys\u{200B}tem:`
//! match what `system:` matches. Only the copy used for matching changes: the
//! prompt sent to the model is the client's own text.

use std::borrow::Cow;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// The normalised form of `text`, borrowed when it is already normal
/// (always for ASCII, so the common case costs one scan).
///
/// Only the non-ASCII runs are looked at, each with the ASCII character
/// before it: an ASCII character is a starter that never composes with what
/// precedes it, so normalising text piecewise at the boundary before an
/// ASCII character gives the same result as normalising it whole (the
/// `fuzz` tests check this against whole-text NFKC). A long text with a few
/// full-width marks is then normalised only around them.
pub fn for_matching(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii() {
            i += 1;
            continue;
        }
        let start = i.saturating_sub(1);
        let mut end = i;
        while end < b.len() && !b[end].is_ascii() {
            end += 1;
        }
        let piece = &text[start..end];
        if piece.chars().any(is_invisible) || !quick_yes(piece.chars()) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..start]);
            normalize_piece(piece, o);
            copied = end;
        }
        i = end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// NFKC of `piece` without its invisibles, appended to `out`. CJK unified
/// ideographs neither change under NFKC nor compose with a neighbour, so
/// they are copied, and only the text between them (full-width punctuation,
/// mostly) goes through the normaliser: Chinese text costs a scan, not a
/// normalisation.
fn normalize_piece(piece: &str, out: &mut String) {
    let mut pending: Option<usize> = None;
    for (i, c) in piece.char_indices() {
        if is_cjk_ideograph(c) {
            if let Some(from) = pending.take() {
                normalize_run(&piece[from..i], out);
            }
            out.push(c);
        } else if pending.is_none() {
            pending = Some(i);
        }
    }
    if let Some(from) = pending {
        normalize_run(&piece[from..], out);
    }
}

fn normalize_run(run: &str, out: &mut String) {
    // Invisibles go first: left in, one could keep a base letter and a
    // combining mark apart during composition.
    let visible = || run.chars().filter(|c| !is_invisible(*c));
    if quick_yes(visible()) {
        // Emoji ZWJ sequences and the like: only the joiners go.
        out.extend(visible());
    } else {
        out.extend(visible().nfkc());
    }
}

/// CJK Unified Ideographs and Extension A: no decomposition, combining
/// class 0, part of no composition.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF)
}

fn quick_yes(chars: impl Iterator<Item = char>) -> bool {
    matches!(is_nfkc_quick(chars), IsNormalized::Yes)
}

/// Characters that render as nothing: Unicode's format characters (Cf) and
/// the other default-ignorable code points (variation selectors, Hangul
/// fillers, the tag block). Emoji ZWJ sequences lose their joiners here,
/// which only affects matching.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x08E2
            | 0x115F
            | 0x1160
            | 0x17B4
            | 0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_normal_text_is_borrowed() {
        assert!(matches!(for_matching("plain text"), Cow::Borrowed(_)));
        assert!(matches!(for_matching("你好世界"), Cow::Borrowed(_)));
        assert!(matches!(for_matching("مرحبا بالعالم"), Cow::Borrowed(_)));
    }

    #[test]
    fn look_alikes_and_invisibles_fold_away() {
        assert_eq!(for_matching("ｓｙｓｔｅｍ："), "system:");
        assert_eq!(for_matching("sys\u{200B}tem:"), "system:");
        assert_eq!(for_matching("sys\u{00AD}tem\u{FEFF}:"), "system:");
        assert_eq!(for_matching("s\u{E0073}ystem\u{E007F}:"), "system:");
        assert_eq!(for_matching("ex\u{2060}ec\u{FE0F}("), "exec(");
        // Mathematical bold letters are compatibility forms of plain ones.
        assert_eq!(for_matching("𝐞𝐱𝐞𝐜("), "exec(");
    }

    #[test]
    fn emoji_sequences_only_lose_their_joiners() {
        let family = "👨\u{200D}👩\u{200D}👧";
        assert_eq!(for_matching(family), "👨👩👧");
    }
}
