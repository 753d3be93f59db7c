//! The pure logic of `prompt-guard`: no bindings, testable on any target.

use serde_json::{Map, Value};

/// A log line's severity (mapped onto the host's `level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// A refusal: becomes the WIT `plugin-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>, field: Option<&'static str>) -> Self {
        Self { code, message: message.into(), field }
    }
}

/// What one call produced: the new inputs (`None` when unchanged) or a refusal, and the log.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Option<String>, Rejection>,
    pub logs: Vec<(LogLevel, String)>,
}

/// The ratios `aspectRatio` may take.
pub const RATIOS: [(u32, u32); 8] = [(1, 1), (4, 3), (3, 2), (16, 9), (21, 9), (3, 4), (2, 3), (9, 16)];

/// The plugin's configuration, parsed from the host's JSON text.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Config {
    pub max_prompt_chars: Option<usize>,
    /// Each blocked entry as its lowercase words.
    pub blocked: Vec<Vec<String>>,
    pub presets: Map<String, Value>,
    pub aspect_ratios: bool,
    pub long_side: u32,
}

impl Config {
    /// Parse the configuration (`{}` or empty text means every feature off).
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        let bad = |message: String| Rejection::new("BAD_CONFIG", message, None);
        let text = text.trim();
        let value: Value = if text.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(text).map_err(|e| bad(format!("plugin config is not JSON: {e}")))?
        };
        let Value::Object(map) = value else {
            return Err(bad("plugin config must be a JSON object".into()));
        };
        let mut config = Config { long_side: 1024, ..Config::default() };
        if let Some(max) = map.get("maxPromptChars").filter(|v| !v.is_null()) {
            let max = max.as_u64().ok_or_else(|| bad("maxPromptChars must be a non-negative integer".into()))?;
            config.max_prompt_chars = Some(usize::try_from(max).unwrap_or(usize::MAX));
        }
        if let Some(blocked) = map.get("blocked").filter(|v| !v.is_null()) {
            let list = blocked.as_array().ok_or_else(|| bad("blocked must be an array of strings".into()))?;
            for entry in list {
                let entry = entry.as_str().ok_or_else(|| bad("blocked must be an array of strings".into()))?;
                let lower = entry.to_lowercase();
                let entry_words = words(&lower);
                if !entry_words.is_empty() {
                    config.blocked.push(entry_words.into_iter().map(str::to_owned).collect());
                }
            }
        }
        if let Some(presets) = map.get("presets").filter(|v| !v.is_null()) {
            let presets = presets.as_object().ok_or_else(|| bad("presets must be an object of strings".into()))?;
            if presets.values().any(|v| !v.is_string()) {
                return Err(bad("presets must be an object of strings".into()));
            }
            config.presets = presets.clone();
        }
        if let Some(flag) = map.get("aspectRatios").filter(|v| !v.is_null()) {
            config.aspect_ratios = flag.as_bool().ok_or_else(|| bad("aspectRatios must be a boolean".into()))?;
        }
        if let Some(side) = map.get("longSide").filter(|v| !v.is_null()) {
            let side = side
                .as_u64()
                .filter(|s| (64..=16384).contains(s) && s % 64 == 0)
                .ok_or_else(|| bad("longSide must be a multiple of 64 between 64 and 16384".into()))?;
            config.long_side = side as u32;
        }
        Ok(config)
    }
}

/// Run the hook: `config` and `inputs` are the JSON texts the host passes.
pub fn transform(config: &str, inputs: &str) -> Outcome {
    let mut logs = Vec::new();
    let result = Config::parse(config).and_then(|config| apply(&config, inputs, &mut logs));
    Outcome { result, logs }
}

fn apply(config: &Config, inputs: &str, logs: &mut Vec<(LogLevel, String)>) -> Result<Option<String>, Rejection> {
    let value: Value = serde_json::from_str(inputs)
        .map_err(|e| Rejection::new("INVALID_INPUTS", format!("inputs are not JSON: {e}"), None))?;
    let Value::Object(mut map) = value else {
        return Err(Rejection::new("INVALID_INPUTS", "inputs must be a JSON object", None));
    };
    let mut changed = false;

    // 1. The client's prompt: length, then blocked words.
    if let Some(Value::String(prompt)) = map.get("prompt") {
        check_prompt(config, prompt)?;
    }

    // 2. A preset's text appended to the prompt.
    if let Some(preset) = map.get("preset") {
        let name = preset
            .as_str()
            .ok_or_else(|| {
                Rejection::new("UNKNOWN_PRESET", "preset must be a preset name (a string)", Some("/preset"))
            })?
            .to_owned();
        let text = config.presets.get(&name).and_then(Value::as_str).ok_or_else(|| {
            let mut known: Vec<&str> = config.presets.keys().map(String::as_str).collect();
            known.sort_unstable();
            let known = if known.is_empty() { "none are configured".to_owned() } else { known.join(", ") };
            Rejection::new("UNKNOWN_PRESET", format!("unknown preset \"{name}\" (known: {known})"), Some("/preset"))
        })?;
        let prompt = match map.get("prompt") {
            Some(Value::String(prompt)) => format!("{prompt}{text}"),
            None | Some(Value::Null) => text.trim_start_matches(|c: char| c == ',' || c.is_whitespace()).to_owned(),
            Some(_) => {
                return Err(Rejection::new("INVALID_INPUTS", "a preset needs prompt to be a string", Some("/prompt")));
            }
        };
        map.insert("prompt".into(), Value::String(prompt));
        map.remove("preset");
        changed = true;
        logs.push((LogLevel::Info, format!("applied preset \"{name}\"")));
    }

    // 3. An aspect ratio turned into width and height.
    if config.aspect_ratios
        && let Some(ratio) = map.get("aspectRatio")
    {
        let (w, h) = ratio.as_str().and_then(parse_ratio).ok_or_else(|| {
            let allowed: Vec<String> = RATIOS.iter().map(|(w, h)| format!("{w}:{h}")).collect();
            Rejection::new(
                "BAD_ASPECT_RATIO",
                format!("aspectRatio must be one of {} (got {ratio})", allowed.join(", ")),
                Some("/aspectRatio"),
            )
        })?;
        let (width, height) = dimensions(w, h, config.long_side);
        for key in ["width", "height"] {
            if map.contains_key(key) {
                logs.push((LogLevel::Warn, format!("aspectRatio {w}:{h} overrides the given {key}")));
            }
        }
        map.insert("width".into(), Value::from(width));
        map.insert("height".into(), Value::from(height));
        map.remove("aspectRatio");
        changed = true;
        logs.push((LogLevel::Info, format!("aspectRatio {w}:{h} -> {width}x{height}")));
    }

    if !changed {
        logs.push((LogLevel::Debug, "inputs unchanged".into()));
        return Ok(None);
    }
    Ok(Some(Value::Object(map).to_string()))
}

fn check_prompt(config: &Config, prompt: &str) -> Result<(), Rejection> {
    if let Some(max) = config.max_prompt_chars {
        let len = prompt.chars().count();
        if len > max {
            return Err(Rejection::new(
                "PROMPT_TOO_LONG",
                format!("the prompt has {len} characters; at most {max} are allowed"),
                Some("/prompt"),
            ));
        }
    }
    if !config.blocked.is_empty() {
        let lower = prompt.to_lowercase();
        let prompt_words = words(&lower);
        for entry in &config.blocked {
            if prompt_words.windows(entry.len()).any(|w| w.iter().zip(entry).all(|(a, b)| *a == b.as_str())) {
                return Err(Rejection::new(
                    "PROMPT_BLOCKED",
                    format!("the prompt contains the blocked term \"{}\"", entry.join(" ")),
                    Some("/prompt"),
                ));
            }
        }
    }
    Ok(())
}

/// The words of `text`: maximal runs of alphanumeric characters (any script).
pub fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// `"16:9"` → `(16, 9)` when it is one of [`RATIOS`].
pub fn parse_ratio(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.trim().split_once(':')?;
    let ratio = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    RATIOS.contains(&ratio).then_some(ratio)
}

/// Width and height for ratio `w:h`: the long side is `long_side`, the short one the nearest
/// multiple of 64 (at least 64).
pub fn dimensions(w: u32, h: u32, long_side: u32) -> (u32, u32) {
    let (long, short) = if w >= h { (w, h) } else { (h, w) };
    let exact = f64::from(long_side) * f64::from(short) / f64::from(long);
    let short_side = (((exact / 64.0).round() as u32) * 64).max(64);
    if w >= h { (long_side, short_side) } else { (short_side, long_side) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONFIG: &str = r#"{"maxPromptChars": 40, "blocked": ["gore", "Bad Thing"],
        "presets": {"cinematic": ", cinematic lighting, 35mm"}, "aspectRatios": true}"#;

    fn run(config: &str, inputs: Value) -> Result<Option<Value>, Rejection> {
        transform(config, &inputs.to_string()).result.map(|o| o.map(|s| serde_json::from_str(&s).unwrap()))
    }

    fn code(r: Result<Option<Value>, Rejection>) -> (&'static str, Option<&'static str>) {
        let e = r.unwrap_err();
        (e.code, e.field)
    }

    #[test]
    fn unchanged_inputs_are_returned_as_none() {
        assert_eq!(run(CONFIG, json!({"prompt": "a cat", "seed": 1})).unwrap(), None);
        assert_eq!(run("{}", json!({"aspectRatio": "16:9"})).unwrap(), None, "aspectRatios off by default");
        assert_eq!(run("", json!({})).unwrap(), None);
    }

    #[test]
    fn too_long_prompt_is_refused() {
        let long = "a".repeat(41);
        assert_eq!(code(run(CONFIG, json!({"prompt": long}))), ("PROMPT_TOO_LONG", Some("/prompt")));
        // Characters, not bytes.
        assert_eq!(run(CONFIG, json!({"prompt": "é".repeat(40)})).unwrap(), None);
    }

    #[test]
    fn blocked_words_are_whole_words_case_insensitive() {
        assert_eq!(code(run(CONFIG, json!({"prompt": "some GORE here"}))), ("PROMPT_BLOCKED", Some("/prompt")));
        assert_eq!(code(run(CONFIG, json!({"prompt": "gore."}))), ("PROMPT_BLOCKED", Some("/prompt")));
        assert_eq!(code(run(CONFIG, json!({"prompt": "a bad   thing!"}))), ("PROMPT_BLOCKED", Some("/prompt")));
        assert_eq!(run(CONFIG, json!({"prompt": "gorey goregous"})).unwrap(), None);
        assert_eq!(run(CONFIG, json!({"prompt": "bad things"})).unwrap(), None);
        let e = run(CONFIG, json!({"prompt": "gore"})).unwrap_err();
        assert!(e.message.contains("\"gore\""), "{}", e.message);
    }

    #[test]
    fn preset_is_appended_and_removed() {
        let out = run(CONFIG, json!({"prompt": "a cat", "preset": "cinematic", "seed": 3})).unwrap().unwrap();
        assert_eq!(out, json!({"prompt": "a cat, cinematic lighting, 35mm", "seed": 3}));
        let out = run(CONFIG, json!({"preset": "cinematic"})).unwrap().unwrap();
        assert_eq!(out, json!({"prompt": "cinematic lighting, 35mm"}));
    }

    #[test]
    fn length_is_checked_before_the_preset() {
        let prompt = "a".repeat(40);
        let out = run(CONFIG, json!({"prompt": prompt, "preset": "cinematic"})).unwrap().unwrap();
        assert!(out["prompt"].as_str().unwrap().len() > 40);
    }

    #[test]
    fn unknown_preset_is_refused() {
        let e = run(CONFIG, json!({"prompt": "x", "preset": "noir"})).unwrap_err();
        assert_eq!((e.code, e.field), ("UNKNOWN_PRESET", Some("/preset")));
        assert!(e.message.contains("cinematic"), "{}", e.message);
        assert_eq!(code(run(CONFIG, json!({"preset": 3}))), ("UNKNOWN_PRESET", Some("/preset")));
        assert_eq!(code(run("{}", json!({"preset": "x"}))), ("UNKNOWN_PRESET", Some("/preset")));
    }

    #[test]
    fn aspect_ratio_becomes_width_and_height() {
        let out = run(CONFIG, json!({"aspectRatio": "16:9", "prompt": "x"})).unwrap().unwrap();
        assert_eq!(out, json!({"prompt": "x", "width": 1024, "height": 576}));
        let out = run(CONFIG, json!({"aspectRatio": "9:16"})).unwrap().unwrap();
        assert_eq!(out, json!({"width": 576, "height": 1024}));
        let cfg = r#"{"aspectRatios": true, "longSide": 1536}"#;
        let out = run(cfg, json!({"aspectRatio": "1:1", "width": 7})).unwrap().unwrap();
        assert_eq!(out, json!({"width": 1536, "height": 1536}));
    }

    #[test]
    fn every_ratio_gives_multiples_of_64() {
        for (w, h) in RATIOS {
            for long in [768, 1024, 1536, 2048] {
                let (width, height) = dimensions(w, h, long);
                assert_eq!(width % 64, 0);
                assert_eq!(height % 64, 0);
                assert_eq!(width.max(height), long);
                let want = f64::from(w) / f64::from(h);
                let got = f64::from(width) / f64::from(height);
                assert!((got / want - 1.0).abs() < 0.1, "{w}:{h} at {long}: {width}x{height}");
            }
        }
        assert_eq!(dimensions(4, 3, 1024), (1024, 768));
        assert_eq!(dimensions(3, 2, 1024), (1024, 704));
        assert_eq!(dimensions(21, 9, 1024), (1024, 448));
        assert_eq!(dimensions(3, 4, 1024), (768, 1024));
    }

    #[test]
    fn bad_aspect_ratio_is_refused() {
        for bad in [json!("5:4"), json!("16x9"), json!(1.5), json!("")] {
            assert_eq!(code(run(CONFIG, json!({"aspectRatio": bad}))), ("BAD_ASPECT_RATIO", Some("/aspectRatio")));
        }
        assert_eq!(parse_ratio(" 16 : 9 "), Some((16, 9)));
    }

    #[test]
    fn bad_config_and_inputs_are_reported() {
        assert_eq!(code(run("[1]", json!({}))), ("BAD_CONFIG", None));
        assert_eq!(code(run(r#"{"maxPromptChars": -1}"#, json!({}))), ("BAD_CONFIG", None));
        assert_eq!(code(run(r#"{"longSide": 1000}"#, json!({}))), ("BAD_CONFIG", None));
        assert_eq!(code(run(r#"{"presets": {"a": 1}}"#, json!({}))), ("BAD_CONFIG", None));
        assert_eq!(transform("{}", "[]").result.unwrap_err().code, "INVALID_INPUTS");
        assert_eq!(transform("{}", "nope").result.unwrap_err().code, "INVALID_INPUTS");
    }

    #[test]
    fn logs_say_what_was_done() {
        let out = transform(CONFIG, r#"{"prompt": "x", "preset": "cinematic", "aspectRatio": "4:3"}"#);
        assert!(out.result.is_ok());
        let lines: Vec<&str> = out.logs.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(lines, ["applied preset \"cinematic\"", "aspectRatio 4:3 -> 1024x768"]);
    }
}
