//! What the audit trail may keep of a prompt: its SHA-256 and length, and,
//! when `telemetry.audit_prompt_sample` is on, a short sample in which
//! e-mail addresses, phone numbers, card numbers, API keys (`sk-…`) and JWTs
//! are masked. The whole prompt is masked before it is cut, so a secret that
//! straddles the cut is not half kept.

use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};
use tollgate_shared::openai::{ChatMessage, Prompt};

/// Characters a prompt sample keeps.
pub const SAMPLE_CHARS: usize = 256;

/// What the trail records of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFacts {
    /// Characters of client text (message contents, or the prompt strings).
    pub chars: u64,
    /// Hex SHA-256 of the prompt as JSON (`messages` of a chat, `prompt` of a
    /// completion), compact, as the gateway parsed it.
    pub sha256: String,
    pub sample: Option<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    tollgate_shared::hex::lower(&Sha256::digest(bytes))
}

fn facts(json: &[u8], texts: &[&str], sample: bool) -> PromptFacts {
    PromptFacts {
        chars: texts.iter().map(|t| t.chars().count() as u64).sum(),
        sha256: sha256_hex(json),
        sample: sample.then(|| redacted_sample(&texts.join("\n"))),
    }
}

pub fn chat(messages: &[ChatMessage], sample: bool) -> PromptFacts {
    let mut texts = Vec::new();
    for m in messages {
        if let Some(c) = &m.content {
            c.for_each_text(|t| texts.push(t));
        }
    }
    facts(
        &serde_json::to_vec(messages).unwrap_or_default(),
        &texts,
        sample,
    )
}

pub fn completion(prompt: &Prompt, sample: bool) -> PromptFacts {
    let texts: Vec<&str> = prompt.texts().iter().map(String::as_str).collect();
    facts(
        &serde_json::to_vec(prompt).unwrap_or_default(),
        &texts,
        sample,
    )
}

pub fn generate(prompt: &str, sample: bool) -> PromptFacts {
    facts(
        &serde_json::to_vec(prompt).unwrap_or_default(),
        &[prompt],
        sample,
    )
}

/// A pattern compiled on first use. The patterns are constants (a unit test
/// checks each compiles); one that did not would mask nothing, not panic.
type Pattern = LazyLock<Option<Regex>>;

// Order matters: tokens before e-mails and numbers, cards before phones.
static JWT: Pattern =
    LazyLock::new(|| Regex::new(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").ok());
static API_KEY: Pattern = LazyLock::new(|| Regex::new(r"\bsk-[A-Za-z0-9_-]{8,}").ok());
static EMAIL: Pattern = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").ok()
});
/// 13 to 19 digits, single spaces or dashes between groups.
static CARD: Pattern = LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").ok());
static PHONE: Pattern = LazyLock::new(|| Regex::new(r"\+?\(?\d[\d ().-]{6,}\d").ok());

/// The Luhn checksum every payment card number passes.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Replaces every match of `p` for which `keep` says no with `with`.
fn mask(text: String, p: &Pattern, with: &str, keep: impl Fn(&str) -> bool) -> String {
    let Some(re) = p.as_ref() else {
        return text;
    };
    re.replace_all(&text, |c: &regex::Captures<'_>| {
        if keep(&c[0]) {
            c[0].to_owned()
        } else {
            with.to_owned()
        }
    })
    .into_owned()
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// `text` with secrets and personal data masked.
pub fn redact(text: &str) -> String {
    let out = mask(text.to_owned(), &JWT, "[jwt]", |_| false);
    let out = mask(out, &API_KEY, "[api_key]", |_| false);
    let out = mask(out, &EMAIL, "[email]", |_| false);
    let out = mask(out, &CARD, "[card]", |m| !luhn(&digits(m)));
    // At least 9 digits: dates (8) and short numbers are not phone numbers.
    mask(out, &PHONE, "[phone]", |m| digits(m).len() < 9)
}

/// The first [`SAMPLE_CHARS`] characters of the masked prompt.
pub fn redacted_sample(text: &str) -> String {
    let masked = redact(text);
    match masked.char_indices().nth(SAMPLE_CHARS) {
        Some((cut, _)) => format!("{}…", &masked[..cut]),
        None => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_personal_data_are_masked() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjMSJ9.c2lnbmF0dXJlLXZhbHVl";
        let text = format!(
            "mail jane.doe+x@example.co.uk, key sk-proj-AbC123xyz_789, token {jwt}, \
             card 4111 1111 1111 1111, call +1 (415) 555-0100, order 2026-11-25"
        );
        let r = redact(&text);
        for secret in ["jane.doe", "AbC123", jwt, "4111", "555-0100"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        for mask in ["[email]", "[api_key]", "[jwt]", "[card]", "[phone]"] {
            assert!(r.contains(mask), "{mask} missing in {r}");
        }
        assert!(
            r.contains("order 2026-11-25"),
            "a date is no phone number: {r}"
        );
    }

    #[test]
    fn a_sample_is_masked_before_it_is_cut() {
        let key = format!("sk-{}", "k".repeat(400));
        let s = redacted_sample(&format!("{} {key}", "a".repeat(250)));
        assert!(!s.contains("kkk"), "{s}");
        assert!(s.ends_with("[api_key]") || s.ends_with('…'), "{s}");
    }

    #[test]
    fn the_digest_names_the_prompt_not_its_text() {
        let f = generate("hello", false);
        assert_eq!(f.chars, 5);
        // sha256 of the JSON string "hello" (with its quotes).
        assert_eq!(
            f.sha256,
            "5aa762ae383fbb727af3c7a36d4940a5b8c40a989452d2304fc958ff3f354e7a"
        );
        assert_eq!(f.sample, None);
        assert_eq!(
            generate("hi sk-abcdefghijk", true).sample.as_deref(),
            Some("hi [api_key]")
        );
    }

    #[test]
    fn every_pattern_compiles() {
        for p in [&JWT, &API_KEY, &EMAIL, &CARD, &PHONE] {
            assert!(p.is_some());
        }
    }

    #[test]
    fn luhn_checks_card_numbers() {
        assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
    }
}
