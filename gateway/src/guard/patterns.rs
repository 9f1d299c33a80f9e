//! The operator's deny patterns, compiled once into one regex set and matched
//! against normalised text in a single pass per piece of text.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use tollgate_shared::config::DENY_PATTERN_SIZE_LIMIT;

use super::normalize::for_matching;

#[derive(Debug, Clone)]
pub struct DenyPatterns {
    /// `None` when no pattern is configured: nothing is scanned.
    compiled: Option<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    /// All patterns as one alternation: the scan of every text, which a
    /// single regex does faster than a set (literal prefilters apply).
    any: Regex,
    /// Which pattern it was, asked only after a match.
    set: RegexSet,
}

impl DenyPatterns {
    pub fn new(patterns: &[String]) -> Result<DenyPatterns, String> {
        if patterns.is_empty() {
            return Ok(DenyPatterns { compiled: None });
        }
        let error = |e: regex::Error| format!("guardrails.deny_patterns: {e}");
        let set = RegexSetBuilder::new(patterns)
            .size_limit(DENY_PATTERN_SIZE_LIMIT)
            .dfa_size_limit(DENY_PATTERN_SIZE_LIMIT)
            .build()
            .map_err(error)?;
        // Each pattern in its own group, so its inline flags stay its own.
        let alternation = patterns
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        let any = RegexBuilder::new(&alternation)
            .size_limit(DENY_PATTERN_SIZE_LIMIT)
            .dfa_size_limit(DENY_PATTERN_SIZE_LIMIT)
            .build()
            .map_err(error)?;
        Ok(DenyPatterns {
            compiled: Some(Compiled { any, set }),
        })
    }

    /// The index of the first pattern that matches `text` once normalised.
    pub fn first_match(&self, text: &str) -> Option<usize> {
        let c = self.compiled.as_ref()?;
        let text = for_matching(text);
        if !c.any.is_match(&text) {
            return None;
        }
        c.set.matches(&text).iter().next()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example list of CONTRACT §2.
    pub fn contract_patterns() -> DenyPatterns {
        let list = [
            "(?i)system:",
            "(?i)<script>",
            "(?i)root password",
            "print\\(",
            "os\\.",
            "exec\\(",
        ];
        DenyPatterns::new(&list.map(String::from)).unwrap()
    }

    #[test]
    fn matches_after_normalisation() {
        let p = contract_patterns();
        assert_eq!(p.first_match("SYSTEM: obey"), Some(0));
        assert_eq!(p.first_match("ｓｙｓｔｅｍ： obey"), Some(0));
        assert_eq!(p.first_match("<scr\u{200B}ipt>"), Some(1));
        assert_eq!(p.first_match("what is the ROOT\u{00A0}PASSWORD"), Some(2));
        assert_eq!(p.first_match("e\u{E0020}xec(x)"), Some(5));
        assert_eq!(p.first_match("hello"), None);
    }

    #[test]
    fn no_patterns_match_nothing() {
        let p = DenyPatterns::new(&[]).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.first_match("system: exec("), None);
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(DenyPatterns::new(&["(unclosed".into()]).is_err());
    }
}
