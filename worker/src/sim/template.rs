//! Qwen2.5's chat template (ChatML), rendered the way its Jinja template does:
//! a system turn first (Qwen's default one when the conversation has none),
//! tools listed in the system turn, tool results folded into user turns, then
//! `<|im_start|>assistant\n` when a generation prompt is asked for.

use serde_json::Value;

use super::protocol::Message;

pub const DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

const TOOLS_HEADER: &str = "\n\n# Tools\n\nYou may call one or more functions to assist with \
the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const TOOLS_FOOTER: &str = "\n</tools>\n\nFor each function call, return a json object with \
function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

/// How to close the rendered conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Open an assistant turn (`add_generation_prompt`, the default).
    GenerationPrompt,
    /// Leave the last message open for the model to continue.
    ContinueFinal,
    /// Neither.
    Closed,
}

/// Renders `messages` (and `tools`) to the prompt text Qwen2.5 sees.
pub fn render(messages: &[Message], tools: Option<&[Value]>, ending: Ending) -> String {
    let mut out = String::with_capacity(256);
    let first_is_system = messages.first().is_some_and(|m| m.role == "system");
    let system = match messages.first() {
        Some(m) if first_is_system => content(m),
        _ => DEFAULT_SYSTEM.to_owned(),
    };
    match tools {
        Some(tools) if !tools.is_empty() => {
            out.push_str("<|im_start|>system\n");
            out.push_str(&system);
            out.push_str(TOOLS_HEADER);
            for tool in tools {
                out.push('\n');
                push_json(&mut out, tool);
            }
            out.push_str(TOOLS_FOOTER);
        }
        _ => push_turn(&mut out, "system", &system),
    }
    let mut last_content_end = out.len();
    for (i, m) in messages.iter().enumerate() {
        let tool_calls = m.tool_calls.as_deref().unwrap_or_default();
        match m.role.as_str() {
            "system" if i == 0 => {}
            "user" | "system" => push_turn(&mut out, &m.role, &content(m)),
            "assistant" if tool_calls.is_empty() => push_turn(&mut out, "assistant", &content(m)),
            "assistant" => {
                out.push_str("<|im_start|>assistant");
                let text = content(m);
                if !text.is_empty() {
                    out.push('\n');
                    out.push_str(&text);
                }
                for call in tool_calls {
                    out.push_str("\n<tool_call>\n{\"name\": \"");
                    out.push_str(&call.function.name);
                    out.push_str("\", \"arguments\": ");
                    push_arguments(&mut out, &call.function.arguments);
                    out.push_str("}\n</tool_call>");
                }
                out.push_str("<|im_end|>\n");
            }
            "tool" => {
                if i == 0 || messages[i - 1].role != "tool" {
                    out.push_str("<|im_start|>user");
                }
                out.push_str("\n<tool_response>\n");
                out.push_str(&content(m));
                out.push_str("\n</tool_response>");
                if messages.get(i + 1).is_none_or(|n| n.role != "tool") {
                    out.push_str("<|im_end|>\n");
                }
            }
            // Qwen's template renders no other role (e.g. "developer").
            _ => continue,
        }
        last_content_end = out.len();
    }
    match ending {
        Ending::GenerationPrompt => out.push_str("<|im_start|>assistant\n"),
        Ending::ContinueFinal => {
            // Cut the closing tokens of the last message.
            let closing = "<|im_end|>\n";
            if out[..last_content_end].ends_with(closing) {
                out.truncate(last_content_end - closing.len());
            }
        }
        Ending::Closed => {}
    }
    out
}

fn content(m: &Message) -> String {
    m.content.as_ref().map(|c| c.text()).unwrap_or_default()
}

fn push_turn(out: &mut String, role: &str, text: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(text);
    out.push_str("<|im_end|>\n");
}

/// Arguments arrive as a JSON string; vLLM parses them before templating.
fn push_arguments(out: &mut String, arguments: &Value) {
    match arguments {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => push_json(out, &v),
            Err(_) => push_json(out, arguments),
        },
        other => push_json(out, other),
    }
}

/// JSON as Python's `json.dumps` writes it (the template's `tojson`):
/// `", "` and `": "` separators, non-ASCII kept.
fn push_json(out: &mut String, v: &Value) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                push_json(out, item);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(json: &str) -> Vec<Message> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_system_prompt_when_none_given() {
        let text = render(
            &msgs(r#"[{"role":"user","content":"Hi"}]"#),
            None,
            Ending::GenerationPrompt,
        );
        assert_eq!(
            text,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
             assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn given_system_prompt_and_history() {
        let text = render(
            &msgs(
                r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},
                {"role":"assistant","content":"Hello!"},{"role":"developer","content":"x"},
                {"role":"user","content":"Bye"}]"#,
            ),
            None,
            Ending::GenerationPrompt,
        );
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn tools_calls_and_results() {
        let tools: Vec<Value> = serde_json::from_str(
            r#"[{"type":"function","function":{"name":"f","parameters":{}}}]"#,
        )
        .unwrap();
        let text = render(
            &msgs(
                r#"[{"role":"user","content":"q"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function",
                  "function":{"name":"f","arguments":"{\"x\":1}"}}]},
                {"role":"tool","content":"r1"},{"role":"tool","content":"r2"}]"#,
            ),
            Some(&tools),
            Ending::Closed,
        );
        assert!(text.starts_with(&format!("<|im_start|>system\n{DEFAULT_SYSTEM}\n\n# Tools")));
        assert!(text.contains(
            "<tools>\n{\"function\": {\"name\": \"f\", \"parameters\": {}}, \"type\": \"function\"}\n</tools>"
        ));
        assert!(text.ends_with(
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<tool_call>\n\
             {\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n\
             </tool_response><|im_end|>\n"
        ));
    }

    #[test]
    fn continue_final_message_leaves_it_open() {
        let text = render(
            &msgs(r#"[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hel"}]"#),
            None,
            Ending::ContinueFinal,
        );
        assert!(text.ends_with("<|im_start|>assistant\nHel"), "{text}");
    }
}
