//! The `{{token}}` scanner and renderer (`workflows::template`) on arbitrary templates and
//! inputs: never a panic, and
//! - `placeholders`, `Template::placeholders` and `token_locations` name the same tokens;
//! - a template without tokens renders to itself, whatever the inputs;
//! - with a value for every token, rendering succeeds, and every single-token string is
//!   replaced by exactly its value; without one, it fails naming a token the template has.
//!
//! Input: the template, a NUL byte, the inputs. A template that is not JSON is used as
//! one string (the scanner on raw text); inputs that are not a JSON object are empty.
#![no_main]

use comfyui_gateway::workflows::template::{self, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let (head, tail) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(head);
    let template: Value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()));
    let mut inputs: Map<String, Value> = serde_json::from_slice(tail).unwrap_or_default();

    let parsed = Template::parse(&template);
    let names = template::placeholders(&template);
    assert_eq!(&names, parsed.placeholders());
    let located: Vec<String> = template::token_locations(&template).into_keys().collect();
    assert_eq!(located, names.iter().cloned().collect::<Vec<_>>());

    match parsed.render(&inputs) {
        Ok(rendered) => {
            if names.is_empty() {
                assert_eq!(rendered, template, "a template without tokens renders to itself");
            }
            assert!(serde_json::from_str::<Value>(&rendered.to_string()).is_ok());
        }
        Err(template::RenderError::UnknownToken { name, .. }) => {
            assert!(names.contains(&name), "{name} is not a token of the template");
            assert!(template::lookup(&inputs, &name).is_none(), "{name} has a value");
        }
    }

    // A value for every token (a string, a number or an object in turn): rendering succeeds.
    for (i, name) in names.iter().enumerate() {
        if template::lookup(&inputs, name).is_none() {
            let value = match i % 3 {
                0 => Value::String(format!("v{{{{{name}}}}}")),
                1 => Value::from(i),
                _ => serde_json::json!({ "k": [i] }),
            };
            inputs.insert(name.clone(), value);
        }
    }
    let rendered = parsed.render(&inputs).expect("every token has a value");
    if let Value::String(s) = &template
        && template::is_single_token(s)
    {
        let name = names.first().expect("a single token is a placeholder");
        assert_eq!(Some(&rendered), template::lookup(&inputs, name));
    }
});
