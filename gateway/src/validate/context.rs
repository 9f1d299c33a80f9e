//! Prompt + output budget against the served model's context window, decided
//! without a tokenizer: only when it is certain.
//!
//! The bound. Qwen2.5's tokenizer (byte-level BPE, like GPT-2, cl100k and
//! Llama 3) first splits text with its pre-tokenizer regex and merges bytes
//! only inside one piece. Every piece of that regex holds at most one run of
//! non-whitespace characters (an optional leading space or punctuation mark
//! stays attached to the run it precedes; whitespace-only pieces hold none),
//! so a text has at least as many tokens as it has maximal runs of
//! non-whitespace. Only ASCII whitespace separates runs here: any regex
//! engine counts it as `\s`, and treating other spaces as part of a run can
//! only lower the count. A chat message adds at least 3 tokens in ChatML
//! (`<|im_start|>`, its role, `<|im_end|>`), the reply prompt 2 more; the
//! default system prompt the template adds and a message's `name` are not
//! counted. So the bound is often far below the truth (a paragraph of
//! Chinese without spaces counts 1), never above it: a request refused here
//! would certainly have been refused by vLLM, and everything else goes on to
//! vLLM, whose own 400 the relay maps to `context_length_exceeded`.

use tollgate_shared::openai::{ChatMessage, ChatRole};

use crate::error::ApiError;

/// Tokens ChatML spends on each rendered message, at least.
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// `<|im_start|>assistant` opening the reply.
pub const TOKENS_FOR_REPLY: u64 = 2;

/// The number of maximal runs of non-(ASCII-)whitespace characters in `text`:
/// a lower bound on its tokens.
pub fn min_tokens(text: &str) -> u64 {
    // 1 for ASCII whitespace (\t \n \v \f \r and space), else 0. Bytes of a
    // multi-byte character are never ASCII whitespace.
    let space = |c: u8| u8::from((c == b' ') | (c.wrapping_sub(b'\t') < 5));
    let b = text.as_bytes();
    let Some(&first) = b.first() else { return 0 };
    // A run starts at the first byte or right after a space. Counted pairwise
    // in blocks whose count fits a u8, so the inner loop has no carried state
    // and vectorises (about 0.1 ms a megabyte).
    let mut runs = u64::from(1 - space(first));
    for (now, before) in b[1..].chunks(255).zip(b.chunks(255)) {
        let mut block: u8 = 0;
        for (&c, &p) in now.iter().zip(before) {
            block += space(p) & (1 - space(c));
        }
        runs += u64::from(block);
    }
    runs
}

/// The lower bound for a chat conversation as Qwen's template renders it
/// (a `developer` message is not rendered, so it counts nothing).
pub fn min_chat_tokens(messages: &[ChatMessage]) -> u64 {
    let mut total = TOKENS_FOR_REPLY;
    for m in messages {
        if m.role == ChatRole::Developer {
            continue;
        }
        total += TOKENS_PER_MESSAGE;
        if let Some(c) = &m.content {
            c.for_each_text(|t| total += min_tokens(t));
        }
    }
    total
}

/// Refuses the request when `prompt_min + budget` exceeds the window. `budget`
/// is the output the client asked for (vLLM needs room for at least 1 token
/// when it was not given).
pub fn check(
    param: &str,
    prompt_min: u64,
    budget: u64,
    max_model_len: Option<u64>,
) -> Result<(), ApiError> {
    let Some(max) = max_model_len else {
        // The workers have not reported yet: vLLM decides.
        return Ok(());
    };
    let total = prompt_min.saturating_add(budget);
    if total <= max {
        return Ok(());
    }
    Err(ApiError::InvalidRequest {
        message: format!(
            "This model's maximum context length is {max} tokens. However, you requested \
             {budget} output tokens and your prompt contains at least {prompt_min} input \
             tokens, for a total of at least {total} tokens. Please reduce the length of the \
             input prompt or the number of requested output tokens."
        ),
        param: Some(param.to_owned()),
        code: Some("context_length_exceeded"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_non_whitespace_are_counted() {
        assert_eq!(min_tokens(""), 0);
        assert_eq!(min_tokens("   \n\t"), 0);
        assert_eq!(min_tokens("hello"), 1);
        assert_eq!(min_tokens("  hello,   world!\n"), 2);
        assert_eq!(min_tokens("a b\tc\nd\re"), 5);
        // Non-ASCII spaces do not split (a lower count is the safe side).
        assert_eq!(min_tokens("a\u{3000}b\u{00A0}c"), 1);
        assert_eq!(min_tokens("你好，世界。 مرحبا بالعالم"), 3);
    }

    #[test]
    fn punctuation_and_digits_stay_with_their_run() {
        let text = "The quick brown fox, 12345 times, jumped over the lazy dog's back.";
        assert_eq!(min_tokens(text), 12);
    }

    #[test]
    fn only_certain_overflows_are_refused() {
        assert!(check("messages", 100, 8000, None).is_ok());
        assert!(check("messages", 24_768, 8000, Some(32_768)).is_ok());
        match check("messages", 24_769, 8000, Some(32_768)) {
            Err(ApiError::InvalidRequest {
                code: Some("context_length_exceeded"),
                param: Some(p),
                ..
            }) => assert_eq!(p, "messages"),
            other => panic!("{other:?}"),
        }
    }
}
