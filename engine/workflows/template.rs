//! Template placeholders and rendering: `{{name}}` tokens in ComfyUI API-format JSON.
//!
//! Token grammar: `{{`, optional spaces, a name matching `[A-Za-z_][A-Za-z0-9_.-]*`, optional
//! spaces, `}}`. A brace run longer than two (`{{{x}}}`, `{{{{x}}}}`) and anything else that does
//! not match the grammar is left as literal text. Tokens are looked for in string *values* only,
//! never in object keys.
//!
//! - A string that is exactly one token is replaced by the input's JSON value, whatever its type
//!   (`"{{seed}}"` → `42`, `"{{opts}}"` → `{"a": 1}`).
//! - Tokens inside a longer string are interpolated as text: strings raw, every other value as
//!   compact JSON (`7.5`, `true`, `null`, `[1,2]`).
//! - A name is looked up as an exact key of the inputs first; failing that, a dotted name
//!   (`upscale.factor`) walks nested objects.
//!
//! Rendering is on the submit hot path, so [`Template::parse`] does the scanning once and
//! [`Template::render`] only copies literals and substitutes values; no regex anywhere.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Rendering failed: a token has no value among the inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The token `name`, found at JSON pointer `path` in the template, has no input value.
    #[error("template token {{{{{name}}}}} at {path} has no input value")]
    UnknownToken {
        /// The token's name.
        name: String,
        /// JSON pointer of the string holding the token, within the template.
        path: String,
    },
}

/// A template scanned once, ready to be rendered many times.
#[derive(Debug, Clone)]
pub struct Template {
    root: Node,
    placeholders: BTreeSet<String>,
}

/// A template value with its tokens located; subtrees without tokens are kept whole.
#[derive(Debug, Clone)]
enum Node {
    /// No token anywhere below: copied as is.
    Literal(Value),
    /// A string that is exactly one token: replaced by the input's value.
    Token(String),
    /// A string with tokens inside longer text.
    Text(Vec<Part>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// A piece of an interpolated string.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Token(String),
}

impl Template {
    /// Scan `template` for tokens once.
    pub fn parse(template: &Value) -> Self {
        let mut placeholders = BTreeSet::new();
        let root = parse_node(template, &mut placeholders);
        Self { root, placeholders }
    }

    /// Every token name used in the template.
    pub fn placeholders(&self) -> &BTreeSet<String> {
        &self.placeholders
    }

    /// Substitute `inputs` into the template.
    ///
    /// # Errors
    /// [`RenderError::UnknownToken`] when a token has no value in `inputs`.
    pub fn render(&self, inputs: &Map<String, Value>) -> Result<Value, RenderError> {
        render_node(&self.root, inputs)
    }
}

/// Every token name used in the string values of `template` (object keys are not searched).
pub fn placeholders(template: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect(template, &mut names);
    names
}

/// Render `template` with `inputs` in one go (scans the template; prefer [`Template`] when the
/// same template is rendered repeatedly).
///
/// # Errors
/// [`RenderError::UnknownToken`] when a token has no value in `inputs`.
pub fn render(template: &Value, inputs: &Map<String, Value>) -> Result<Value, RenderError> {
    Template::parse(template).render(inputs)
}

/// Whether `s` is exactly one token (and is thus replaced by a value of any JSON type).
pub fn is_single_token(s: &str) -> bool {
    next_token(s, 0).is_some_and(|(start, end, _)| start == 0 && end == s.len())
}

/// Where each token first occurs: token name → JSON pointer of the string holding it.
pub fn token_locations(template: &Value) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    locate(template, &mut String::new(), &mut found);
    found
}

fn locate(value: &Value, at: &mut String, found: &mut BTreeMap<String, String>) {
    match value {
        Value::String(s) => {
            let mut from = 0;
            while let Some((_, end, name)) = next_token(s, from) {
                found.entry(name.to_owned()).or_insert_with(|| at.clone());
                from = end;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                locate(item, at, found);
                at.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&escape_pointer(key));
                locate(item, at, found);
                at.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The value of token `name`: an exact key first, then a dotted path through nested objects.
pub fn lookup<'a>(inputs: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = inputs.get(name) {
        return Some(value);
    }
    if !name.contains('.') {
        return None;
    }
    let mut segments = name.split('.');
    let mut current = inputs.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// The next token in `s` at or after byte `from`: `(start, end, name)` with `s[start..end]`
/// being the whole `{{ name }}`.
fn next_token(s: &str, mut from: usize) -> Option<(usize, usize, &str)> {
    let bytes = s.as_bytes();
    while from < bytes.len() {
        let start = from + s[from..].find("{{")?;
        let mut after_run = start;
        while after_run < bytes.len() && bytes[after_run] == b'{' {
            after_run += 1;
        }
        // Only a run of exactly two braces opens a token; `{{{` and longer stay text.
        from = after_run;
        if after_run - start != 2 {
            continue;
        }
        let mut i = skip_spaces(bytes, after_run);
        let name_start = i;
        if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.' | b'-')) {
                i += 1;
            }
        } else {
            continue;
        }
        let name_end = i;
        i = skip_spaces(bytes, i);
        let closes = bytes.get(i) == Some(&b'}') && bytes.get(i + 1) == Some(&b'}');
        if closes && bytes.get(i + 2) != Some(&b'}') {
            return Some((start, i + 2, &s[name_start..name_end]));
        }
    }
    None
}

fn skip_spaces(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    i
}

/// Tokens of one string, with the text between them.
fn split(s: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some((start, end, name)) = next_token(s, at) {
        if start > at {
            parts.push(Part::Text(s[at..start].to_owned()));
        }
        parts.push(Part::Token(name.to_owned()));
        at = end;
    }
    if at < s.len() && !parts.is_empty() {
        parts.push(Part::Text(s[at..].to_owned()));
    }
    parts
}

fn collect(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let mut at = 0;
            while let Some((_, end, name)) = next_token(s, at) {
                names.insert(name.to_owned());
                at = end;
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect(item, names)),
        Value::Object(map) => map.values().for_each(|item| collect(item, names)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn parse_node(value: &Value, names: &mut BTreeSet<String>) -> Node {
    match value {
        Value::String(s) => {
            let mut parts = split(s);
            for part in &parts {
                if let Part::Token(name) = part {
                    names.insert(name.clone());
                }
            }
            match parts.len() {
                0 => Node::Literal(value.clone()),
                1 => match parts.pop() {
                    Some(Part::Token(name)) => Node::Token(name),
                    // `split` never yields a lone text part.
                    _ => Node::Literal(value.clone()),
                },
                _ => Node::Text(parts),
            }
        }
        Value::Array(items) => {
            let nodes: Vec<Node> = items.iter().map(|item| parse_node(item, names)).collect();
            if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                Node::Literal(value.clone())
            } else {
                Node::Array(nodes)
            }
        }
        Value::Object(map) => {
            let nodes: Vec<(String, Node)> = map.iter().map(|(k, v)| (k.clone(), parse_node(v, names))).collect();
            if nodes.iter().all(|(_, n)| matches!(n, Node::Literal(_))) {
                Node::Literal(value.clone())
            } else {
                Node::Object(nodes)
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Node::Literal(value.clone()),
    }
}

fn unknown(name: &str) -> RenderError {
    RenderError::UnknownToken { name: name.to_owned(), path: String::new() }
}

/// Prefix the error's path with one segment while unwinding.
fn within(err: RenderError, segment: &str) -> RenderError {
    let RenderError::UnknownToken { name, path } = err;
    RenderError::UnknownToken { name, path: format!("/{}{path}", escape_pointer(segment)) }
}

/// Escape one JSON pointer segment (RFC 6901).
pub(crate) fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn render_node(node: &Node, inputs: &Map<String, Value>) -> Result<Value, RenderError> {
    match node {
        Node::Literal(value) => Ok(value.clone()),
        Node::Token(name) => lookup(inputs, name).cloned().ok_or_else(|| unknown(name)),
        Node::Text(parts) => {
            let mut out = String::new();
            for part in parts {
                match part {
                    Part::Text(text) => out.push_str(text),
                    Part::Token(name) => match lookup(inputs, name).ok_or_else(|| unknown(name))? {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    },
                }
            }
            Ok(Value::String(out))
        }
        Node::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| render_node(item, inputs).map_err(|e| within(e, &i.to_string())))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Node::Object(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, item) in entries {
                let value = render_node(item, inputs).map_err(|e| within(e, key))?;
                map.insert(key.clone(), value);
            }
            Ok(Value::Object(map))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::json;

    fn inputs(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn exact_token_takes_input_type() {
        let t = json!({"seed": "{{seed}}", "cfg": "{{ cfg }}", "on": "{{flag}}", "s": "{{name}}"});
        let out = render(&t, &inputs(json!({"seed": 42, "cfg": 7.5, "flag": true, "name": "x"}))).unwrap();
        assert_eq!(out, json!({"seed": 42, "cfg": 7.5, "on": true, "s": "x"}));
    }

    #[test]
    fn tokens_in_longer_strings_interpolate_as_text() {
        let t = json!("{{prompt}}, sprite, {{n}} steps, {{f}}, {{o}}, {{nothing}}!");
        let out =
            render(&t, &inputs(json!({"prompt": "a cat", "n": 30, "f": false, "o": {"a": [1, 2]}, "nothing": null})))
                .unwrap();
        assert_eq!(out, json!("a cat, sprite, 30 steps, false, {\"a\":[1,2]}, null!"));
    }

    #[test]
    fn nested_and_array_values() {
        let t = json!({"1": {"inputs": {"list": ["{{a}}", {"deep": "{{b}}"}, 3], "obj": "{{o}}"}}});
        let out = render(&t, &inputs(json!({"a": [1, "two"], "b": {"x": 1}, "o": {"k": null}}))).unwrap();
        assert_eq!(out, json!({"1": {"inputs": {"list": [[1, "two"], {"deep": {"x": 1}}, 3], "obj": {"k": null}}}}));
    }

    #[test]
    fn dotted_names_walk_nested_inputs() {
        let t = json!(["{{upscale.factor}}", "{{a.b}}"]);
        let out =
            render(&t, &inputs(json!({"upscale": {"factor": 2}, "a.b": "exact wins", "a": {"b": "no"}}))).unwrap();
        assert_eq!(out, json!([2, "exact wins"]));
    }

    #[test]
    fn unknown_token_is_an_error_with_its_path() {
        let t = json!({"3": {"inputs": {"text": "hi {{missing}}"}}});
        let err = render(&t, &Map::new()).unwrap_err();
        assert_eq!(err, RenderError::UnknownToken { name: "missing".into(), path: "/3/inputs/text".into() });
        assert!(err.to_string().contains("{{missing}}"));
    }

    #[test]
    fn keys_and_malformed_braces_are_left_alone() {
        let t = json!({
            "{{key}}": "{{{{x}}}}",
            "b": "{{{x}}}",
            "c": "{{ 1x }}",
            "d": "{{x}",
            "e": "{x}}",
            "f": "{{x}}}",
            "g": "{{}}",
            "h": "{{x y}}",
            "i": "é{{x}}é"
        });
        assert_eq!(placeholders(&t), ["x"].iter().map(|s| s.to_string()).collect());
        let out = render(&t, &inputs(json!({"x": 1, "key": "k"}))).unwrap();
        let mut expected = t.clone();
        expected["i"] = json!("é1é");
        assert_eq!(out, expected);
    }

    #[test]
    fn placeholders_lists_every_token_once() {
        let t = json!({"a": "{{x}} and {{ y }}", "b": ["{{x}}", {"c": "{{z.w}}"}], "k": 1});
        let names: Vec<_> = placeholders(&t).into_iter().collect();
        assert_eq!(names, ["x", "y", "z.w"]);
        assert_eq!(Template::parse(&t).placeholders(), &placeholders(&t));
    }

    /// Property: strings built from random pieces render to the same string with every token
    /// replaced by its text, and token-free strings come back unchanged.
    #[test]
    fn random_strings_render_like_a_reference() {
        let pieces = ["a", " ", "{", "}", "{{", "}}", "é", "x", "_", ".", "-", "9"];
        let mut rng = StdRng::seed_from_u64(7);
        let vars = inputs(json!({"x": "X", "x9": 9, "_": true}));
        for _ in 0..2000 {
            let n = rng.random_range(0..12);
            let s: String = (0..n).map(|_| pieces[rng.random_range(0..pieces.len())]).collect();
            let names = placeholders(&json!(s));
            if names.is_empty() {
                assert_eq!(render(&json!(s), &vars).unwrap(), json!(s), "{s:?}");
            }
            // Wrapping a known token in text interpolates it exactly once per occurrence.
            let wrapped = format!("{s}|{{{{x}}}}|{s}");
            let vars_all: Map<String, Value> =
                names.iter().map(|n| (n.clone(), json!(""))).chain(vars.clone()).collect();
            let out = render(&json!(wrapped), &vars_all).unwrap();
            let text = out.as_str().unwrap_or_default();
            assert!(text.contains("|X|"), "{wrapped:?} -> {text:?}");
        }
    }
}
