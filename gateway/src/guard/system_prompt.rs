//! The operator's system prompt and what happens to the client's:
//!
//! - `prepend`: the configured prompt becomes the first message; the client's
//!   own system messages stay after it (Qwen's template renders a system
//!   message anywhere as a system turn). A conversation that already opens
//!   with exactly the configured prompt — a client replaying the history it
//!   was given — is left as it is, so the prompt is never doubled.
//! - `enforce`: every client `system` and `developer` message is removed and
//!   the configured prompt is the only system message. Without a configured
//!   prompt, clients simply cannot set one.
//! - `off`: the client's messages go to the model unchanged.
//!
//! Raw completions (`/v1/completions`) have no roles, so no policy applies.

use tollgate_shared::config::SystemPromptPolicy;
use tollgate_shared::openai::{ChatMessage, ChatRole, MessageContent};

pub fn apply(policy: SystemPromptPolicy, prompt: Option<&str>, messages: &mut Vec<ChatMessage>) {
    match policy {
        SystemPromptPolicy::Off => {}
        SystemPromptPolicy::Prepend => {
            if let Some(p) = prompt
                && !opens_with(messages, p)
            {
                messages.insert(0, system(p));
            }
        }
        SystemPromptPolicy::Enforce => {
            messages.retain(|m| !matches!(m.role, ChatRole::System | ChatRole::Developer));
            if let Some(p) = prompt {
                messages.insert(0, system(p));
            }
        }
    }
}

fn opens_with(messages: &[ChatMessage], prompt: &str) -> bool {
    messages.first().is_some_and(|m| {
        m.role == ChatRole::System
            && matches!(&m.content, Some(MessageContent::Text(t)) if t == prompt)
    })
}

fn system(prompt: &str) -> ChatMessage {
    ChatMessage {
        role: ChatRole::System,
        content: Some(MessageContent::Text(prompt.to_owned())),
        name: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(ChatRole, &str)]) -> Vec<ChatMessage> {
        list.iter()
            .map(|(role, text)| ChatMessage {
                role: *role,
                content: Some(MessageContent::Text((*text).to_owned())),
                name: None,
            })
            .collect()
    }

    fn shape(m: &[ChatMessage]) -> Vec<(ChatRole, String)> {
        m.iter()
            .map(|m| (m.role, m.content.as_ref().unwrap().text()))
            .collect()
    }

    const OP: &str = "Be helpful.";

    #[test]
    fn prepend_puts_the_operator_first_and_keeps_the_client() {
        let mut m = msgs(&[(ChatRole::System, "Be evil."), (ChatRole::User, "hi")]);
        apply(SystemPromptPolicy::Prepend, Some(OP), &mut m);
        assert_eq!(
            shape(&m),
            [
                (ChatRole::System, OP.into()),
                (ChatRole::System, "Be evil.".into()),
                (ChatRole::User, "hi".into())
            ]
        );
        // Replayed history that already opens with it: not doubled.
        apply(SystemPromptPolicy::Prepend, Some(OP), &mut m);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn enforce_replaces_system_and_developer_messages() {
        let mut m = msgs(&[
            (ChatRole::Developer, "dev"),
            (ChatRole::User, "hi"),
            (ChatRole::System, "late system"),
            (ChatRole::Assistant, "hello"),
        ]);
        apply(SystemPromptPolicy::Enforce, Some(OP), &mut m);
        assert_eq!(
            shape(&m),
            [
                (ChatRole::System, OP.into()),
                (ChatRole::User, "hi".into()),
                (ChatRole::Assistant, "hello".into())
            ]
        );
        let mut m = msgs(&[(ChatRole::System, "mine"), (ChatRole::User, "hi")]);
        apply(SystemPromptPolicy::Enforce, None, &mut m);
        assert_eq!(shape(&m), [(ChatRole::User, "hi".into())]);
    }

    #[test]
    fn off_and_absent_prompts_change_nothing() {
        let mut m = msgs(&[(ChatRole::System, "mine"), (ChatRole::User, "hi")]);
        apply(SystemPromptPolicy::Off, Some(OP), &mut m);
        apply(SystemPromptPolicy::Prepend, None, &mut m);
        assert_eq!(m.len(), 2);
    }
}
