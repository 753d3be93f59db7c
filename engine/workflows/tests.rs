//! Tests of registration (`compile`) and job preparation (`prepare`), including every bundled
//! workflow.

use rand::{SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use super::*;

const LIMITS: Limits = Limits { image_size_max: 2048, batch_size_max: 4 };

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn paths(err: &WorkflowError) -> Vec<&str> {
    err.field_errors().iter().map(|e| e.path.as_str()).collect()
}

fn simple_template() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1, "color": "{{color}}"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t_{{name}}"}}
    })
}

fn simple_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "width": {"type": "integer", "minimum": 1, "default": 64},
            "height": {"type": "integer", "minimum": 1, "default": 64},
            "color": {"type": "integer", "default": 0},
            "steps": {"type": "integer", "minimum": 1, "maximum": 150}
        }
    })
}

#[test]
fn prepare_renders_typed_values_and_text() {
    let wf = CompiledWorkflow::compile(&simple_template(), Some(&simple_schema()), None).unwrap();
    let p = wf.prepare(&json!({"name": "cat", "width": 128}), &LIMITS, &mut rng()).unwrap();
    assert_eq!(p.prompt["1"]["inputs"]["width"], json!(128));
    assert_eq!(p.prompt["1"]["inputs"]["height"], json!(64));
    assert_eq!(p.prompt["2"]["inputs"]["filename_prefix"], json!("t_cat"));
    assert_eq!(p.prompt["2"]["inputs"]["images"], json!(["1", 0]));
    assert_eq!(Value::Object(p.inputs), json!({"name": "cat", "width": 128, "height": 64, "color": 0}));
    assert_eq!(p.seed, None);
}

#[test]
fn token_without_input_or_default_is_rejected_by_name() {
    let mut schema = simple_schema();
    schema["properties"].as_object_mut().unwrap().remove("color");
    let err = CompiledWorkflow::compile(&simple_template(), Some(&schema), None).unwrap_err();
    assert!(matches!(err, WorkflowError::Definition(_)));
    assert!(err.to_string().contains("{{color}}"), "{err}");
    // An explicit default is enough.
    let defaults = obj(json!({"color": 255}));
    let wf = CompiledWorkflow::compile(&simple_template(), Some(&schema), Some(&defaults));
    // ...but the schema forbids additional properties, so the default itself is rejected.
    let err = wf.unwrap_err();
    assert_eq!(paths(&err), ["/defaults/color"]);
    schema["additionalProperties"] = json!(true);
    let wf = CompiledWorkflow::compile(&simple_template(), Some(&schema), Some(&defaults)).unwrap();
    let p = wf.prepare(&json!({"name": "x"}), &LIMITS, &mut rng()).unwrap();
    assert_eq!(p.prompt["1"]["inputs"]["color"], json!(255));
}

#[test]
fn bad_definitions_are_rejected_with_paths() {
    let cases = [
        (json!([]), "/workflow"),
        (json!({}), "/workflow"),
        (json!({"1": 5}), "/workflow/1"),
        (json!({"1": {"inputs": {}}}), "/workflow/1/class_type"),
        (json!({"1": {"class_type": "{{cls}}", "inputs": {}}}), "/workflow/1/class_type"),
        (json!({"1": {"class_type": "SaveImage"}}), "/workflow/1/inputs"),
        (json!({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}), "/workflow/1/inputs/images"),
    ];
    for (template, path) in cases {
        let err = CompiledWorkflow::compile(&template, Some(&json!({"type": "object"})), None).unwrap_err();
        assert!(paths(&err).contains(&path), "{template}: {err}");
    }
    let err = CompiledWorkflow::compile(
        &simple_template(),
        Some(&json!({"type": "object", "properties": {"name": {"type": "strin"}}})),
        None,
    )
    .unwrap_err();
    assert!(paths(&err).iter().any(|p| p.starts_with("/inputSchema/properties/name")), "{err}");
    let err = CompiledWorkflow::compile(&simple_template(), Some(&json!({"type": "array"})), None).unwrap_err();
    assert!(paths(&err).contains(&"/inputSchema/type"), "{err}");
}

#[test]
fn schema_errors_carry_paths() {
    let wf = CompiledWorkflow::compile(&simple_template(), Some(&simple_schema()), None).unwrap();
    let err = wf.prepare(&json!({"steps": 0, "width": "wide", "bogus": 1}), &LIMITS, &mut rng()).unwrap_err();
    assert!(matches!(err, WorkflowError::Invalid(_)));
    let mut got = paths(&err);
    got.sort_unstable();
    assert_eq!(got, ["/bogus", "/name", "/steps", "/width"]);
    let err = wf.prepare(&json!([1]), &LIMITS, &mut rng()).unwrap_err();
    assert_eq!(paths(&err), ["/"]);
}

#[test]
fn limits_are_enforced() {
    let wf = CompiledWorkflow::compile(&simple_template(), Some(&simple_schema()), None).unwrap();
    let err = wf.prepare(&json!({"name": "x", "width": 4096}), &LIMITS, &mut rng()).unwrap_err();
    assert_eq!(paths(&err), ["/width"]);
    assert!(err.to_string().contains("MAX_IMAGE_SIZE"), "{err}");
    assert!(wf.prepare(&json!({"name": "x", "width": 2048}), &LIMITS, &mut rng()).is_ok());
}

#[test]
fn seed_is_drawn_when_omitted_and_kept_when_given() {
    let template = json!({"1": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "other": "{{s2}}"}}});
    let schema = json!({"type": "object", "properties": {
        "seed": {"type": "integer", "minimum": 0, "maximum": schema::SEED_MAX},
        "s2": {"type": "integer", "x-seed": true, "minimum": 5, "maximum": 9}
    }});
    let wf = CompiledWorkflow::compile(&template, Some(&schema), None).unwrap();
    let mut r = rng();
    let a = wf.prepare(&json!({}), &LIMITS, &mut r).unwrap();
    let b = wf.prepare(&json!({}), &LIMITS, &mut r).unwrap();
    let seed = a.seed.unwrap();
    assert!((0..=schema::SEED_MAX).contains(&seed));
    assert_ne!(a.seed, b.seed);
    assert_eq!(a.inputs["seed"], json!(seed));
    assert_eq!(a.prompt["1"]["inputs"]["seed"], json!(seed));
    let s2 = a.inputs["s2"].as_i64().unwrap();
    assert!((5..=9).contains(&s2));
    let given = wf.prepare(&json!({"seed": 7, "s2": 6}), &LIMITS, &mut r).unwrap();
    assert_eq!(given.seed, None);
    assert_eq!(given.prompt["1"]["inputs"]["seed"], json!(7));
}

#[test]
fn derived_schema_without_one_given() {
    let template = json!({"1": {"class_type": "X", "inputs": {"a": "{{a}}", "s": "{{seed}}", "n": "{{n}}"}}});
    let defaults = obj(json!({"n": 3}));
    let wf = CompiledWorkflow::compile(&template, None, Some(&defaults)).unwrap();
    assert_eq!(wf.input_schema()["required"], json!(["a"]));
    let p = wf.prepare(&json!({"a": "x"}), &LIMITS, &mut rng()).unwrap();
    assert_eq!(p.prompt["1"]["inputs"]["n"], json!(3));
    assert!(p.seed.is_some());
    let err = wf.prepare(&json!({"a": {"link": 1}, "n": "three"}), &LIMITS, &mut rng()).unwrap_err();
    let mut got = paths(&err);
    got.sort_unstable();
    assert_eq!(got, ["/a", "/n"]);
}

#[test]
fn nested_defaults_feed_dotted_tokens() {
    let template = json!({"1": {"class_type": "ImageScaleBy", "inputs": {"scale_by": "{{up.factor}}", "upscale_method": "{{up.method}}"}}});
    let schema = json!({"type": "object", "properties": {"up": {"type": "object", "properties": {
        "factor": {"type": "number", "default": 2},
        "method": {"type": "string", "default": "lanczos"}
    }}}});
    let wf = CompiledWorkflow::compile(&template, Some(&schema), None).unwrap();
    let p = wf.prepare(&json!({"up": {"factor": 1.5}}), &LIMITS, &mut rng()).unwrap();
    assert_eq!(p.prompt["1"]["inputs"], json!({"scale_by": 1.5, "upscale_method": "lanczos"}));
}

#[test]
fn optional_token_without_value_is_an_input_error() {
    let template = json!({"1": {"class_type": "X", "inputs": {"a": "{{a}}"}}});
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let wf = CompiledWorkflow::compile(&template, Some(&schema), None).unwrap();
    let err = wf.prepare(&json!({}), &LIMITS, &mut rng()).unwrap_err();
    assert_eq!(paths(&err), ["/a"]);
}

#[test]
fn bundled_workflows_compile_and_prepare() {
    let all = bundled::all();
    let ids: Vec<_> = all.iter().map(|w| w.id).collect();
    assert_eq!(ids, ["sdxl_realism_v1", "sprite_transparent_bg", "icon_512"]);
    for w in &all {
        assert_eq!(w.input_schema["title"], json!(w.name), "{}", w.id);
        assert_eq!(w.input_schema["description"], json!(w.description), "{}", w.id);
        let wf = CompiledWorkflow::compile(&w.template, Some(&w.input_schema), None)
            .unwrap_or_else(|e| panic!("{}: {e}", w.id));
        let p =
            wf.prepare(&json!({"prompt": "a cat"}), &LIMITS, &mut rng()).unwrap_or_else(|e| panic!("{}: {e}", w.id));
        assert!(p.seed.is_some(), "{}", w.id);
        let nodes = p.prompt.as_object().unwrap();
        for (id, node) in nodes {
            assert!(node["class_type"].is_string(), "{} node {id}", w.id);
            assert!(node["inputs"].is_object(), "{} node {id}", w.id);
        }
        assert!(!p.prompt.to_string().contains("{{"), "{}", w.id);
        let ksampler = nodes.values().find(|n| n["class_type"] == "KSampler").unwrap();
        assert_eq!(ksampler["inputs"]["seed"], json!(p.seed.unwrap()));
        assert!(ksampler["inputs"]["steps"].is_i64());
        let latent = nodes.values().find(|n| n["class_type"] == "EmptyLatentImage").unwrap();
        let ckpt = nodes.values().find(|n| n["class_type"] == "CheckpointLoaderSimple").unwrap();
        assert_eq!(ckpt["inputs"]["ckpt_name"], "sd_xl_base_1.0.safetensors");
        let expected = match w.id {
            "sdxl_realism_v1" => (1024, 30, 7.0),
            "sprite_transparent_bg" => (512, 25, 7.5),
            _ => (512, 20, 6.0),
        };
        assert_eq!(latent["inputs"]["width"], json!(expected.0), "{}", w.id);
        assert_eq!(latent["inputs"]["height"], json!(expected.0), "{}", w.id);
        assert_eq!(ksampler["inputs"]["steps"], json!(expected.1), "{}", w.id);
        assert_eq!(ksampler["inputs"]["cfg"], json!(expected.2), "{}", w.id);
        assert!(bundled::get(w.id).is_some());
    }
}

#[test]
fn sprite_prompt_gets_its_suffix() {
    let w = bundled::get("sprite_transparent_bg").unwrap();
    let wf = CompiledWorkflow::compile(&w.template, Some(&w.input_schema), None).unwrap();
    let p = wf.prepare(&json!({"prompt": "a knight"}), &LIMITS, &mut rng()).unwrap();
    let text = p.prompt["6"]["inputs"]["text"].as_str().unwrap();
    assert!(text.starts_with("a knight, game sprite"), "{text}");
    assert_eq!(p.prompt["9"]["inputs"]["images"], json!(["16", 0]));
}

#[test]
fn icon_scale_changes_the_graph_and_counts_against_the_limit() {
    let w = bundled::get("icon_512").unwrap();
    let wf = CompiledWorkflow::compile(&w.template, Some(&w.input_schema), None).unwrap();
    let p = wf.prepare(&json!({"prompt": "a cat", "scale": 2}), &LIMITS, &mut rng()).unwrap();
    assert_eq!(p.prompt["10"]["inputs"]["scale_by"], json!(2));
    assert!(wf.prepare(&json!({"prompt": "a cat", "scale": 3}), &LIMITS, &mut rng()).is_err());
    let err = wf.prepare(&json!({"prompt": "a cat", "scale": 2, "width": 1536}), &LIMITS, &mut rng()).unwrap_err();
    assert_eq!(paths(&err), ["/width"]);
}

#[test]
fn bundled_limits_and_ranges() {
    let w = bundled::get("sdxl_realism_v1").unwrap();
    let wf = CompiledWorkflow::compile(&w.template, Some(&w.input_schema), None).unwrap();
    let err = wf
        .prepare(
            &json!({"prompt": "a", "batch_size": 8, "steps": 151, "width": 40, "sampler_name": "magic", "cfg": 31}),
            &LIMITS,
            &mut rng(),
        )
        .unwrap_err();
    let mut got = paths(&err);
    got.sort_unstable();
    assert_eq!(got, ["/batch_size", "/cfg", "/sampler_name", "/steps", "/width"]);
    let err = wf.prepare(&json!({}), &LIMITS, &mut rng()).unwrap_err();
    assert_eq!(paths(&err), ["/prompt"]);
    // ComfyUI's step of 8 is a hint: a width of 1000 runs, as it does in ComfyUI.
    assert!(wf.prepare(&json!({"prompt": "a", "width": 1000}), &LIMITS, &mut rng()).is_ok());
}

#[test]
fn definition_error_points_at_the_token() {
    let template = json!({"1": {"class_type": "X", "inputs": {"a": "x {{ghost}}"}}});
    let err = CompiledWorkflow::compile(&template, Some(&json!({"type": "object"})), None).unwrap_err();
    assert_eq!(paths(&err), ["/workflow/1/inputs/a"]);
    assert!(err.to_string().contains("{{ghost}}"), "{err}");
}

#[test]
fn substituted_values_are_not_rescanned_and_lists_cannot_become_links() {
    let template = json!({
        "1": {"class_type": "X", "inputs": {"text": "{{a}}!", "whole": "{{a}}", "list": "{{l}}"}},
        "2": {"class_type": "Y", "inputs": {"from": ["1", 0]}}
    });
    let schema = json!({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "default": "B"}, "l": {"type": "array"}
    }});
    let wf = CompiledWorkflow::compile(&template, Some(&schema), None).unwrap();
    let p = wf.prepare(&json!({"a": "{{b}}", "l": ["2", 0]}), &LIMITS, &mut rng()).unwrap();
    assert_eq!(p.prompt["1"]["inputs"]["text"], json!("{{b}}!"));
    assert_eq!(p.prompt["1"]["inputs"]["whole"], json!("{{b}}"));
    assert_eq!(p.prompt["1"]["inputs"]["list"], json!({"__value__": ["2", 0]}));
    // Literal links in the template are untouched.
    assert_eq!(p.prompt["2"]["inputs"]["from"], json!(["1", 0]));
}

/// A random JSON value, at most `depth` levels deep.
fn random_value(r: &mut StdRng, depth: u32) -> Value {
    use rand::Rng;
    let strings = ["", "a cat", "{{prompt}}", "dpmpp_2m", "karras", "é\u{0}"];
    match r.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.random_bool(0.5)),
        2 => json!(r.random_range(-10i64..5000)),
        3 => json!(r.random_range(-1.0..5000.0)),
        4 => json!([8, 64, 512, 1024, 2048, 4096, i64::MAX][r.random_range(0..7)]),
        5 => json!(strings[r.random_range(0..strings.len())]),
        6 => Value::Array((0..r.random_range(0..3)).map(|_| random_value(r, depth - 1)).collect()),
        _ => {
            let keys = ["prompt", "x", "factor"];
            Value::Object(
                (0..r.random_range(0..3))
                    .map(|_| (keys[r.random_range(0..3)].to_owned(), random_value(r, depth - 1)))
                    .collect(),
            )
        }
    }
}

/// Property: whatever the inputs, `prepare` answers (no panic); when it accepts them, every
/// node is still a node and the inputs satisfy the limits.
#[test]
fn random_inputs_never_panic_and_accepted_ones_render() {
    use rand::Rng;
    let mut r = rng();
    for w in bundled::all() {
        let wf = CompiledWorkflow::compile(&w.template, Some(&w.input_schema), None).unwrap();
        let mut names: Vec<String> = w.input_schema["properties"].as_object().unwrap().keys().cloned().collect();
        names.push("unknown".into());
        let mut accepted = 0;
        for _ in 0..300 {
            let mut inputs = Map::new();
            inputs.insert("prompt".into(), json!("a cat"));
            for _ in 0..r.random_range(0..4) {
                let name = names[r.random_range(0..names.len())].clone();
                inputs.insert(name, random_value(&mut r, 2));
            }
            if r.random_bool(0.05) {
                inputs.remove("prompt");
            }
            let Ok(p) = wf.prepare(&Value::Object(inputs), &LIMITS, &mut r) else {
                continue;
            };
            accepted += 1;
            for node in p.prompt.as_object().unwrap().values() {
                assert!(node["class_type"].is_string() && node["inputs"].is_object());
            }
            for dim in ["width", "height"] {
                assert!(p.inputs[dim].as_i64().unwrap() <= 2048);
            }
            assert!(p.inputs["batch_size"].as_i64().unwrap() <= 4);
        }
        assert!(accepted > 10, "{}: only {accepted} accepted", w.id);
    }
}

#[test]
fn integral_floats_reach_comfyui_as_integers() {
    let w = bundled::get("sdxl_realism_v1").unwrap();
    let wf = CompiledWorkflow::compile(&w.template, Some(&w.input_schema), None).unwrap();
    let p =
        wf.prepare(&json!({"prompt": "a", "width": 512.0, "steps": 20.0, "seed": 3.0}), &LIMITS, &mut rng()).unwrap();
    assert!(p.prompt["5"]["inputs"]["width"].is_i64());
    assert!(p.prompt["3"]["inputs"]["steps"].is_i64());
    assert!(p.prompt["3"]["inputs"]["seed"].is_i64());
    assert_eq!(p.seed, None);
}

#[test]
fn invalid_schema_default_is_blamed_on_the_schema() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "default": "x"}}});
    let template = json!({"1": {"class_type": "X", "inputs": {"n": "{{n}}"}}});
    let err = CompiledWorkflow::compile(&template, Some(&schema), None).unwrap_err();
    assert_eq!(paths(&err), ["/inputSchema"]);
    assert!(err.to_string().contains("/n"), "{err}");
}

#[test]
fn compiled_workflows_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<CompiledWorkflow>();
}

/// A stored record whose JSON is damaged does not compile (the job is refused with
/// `INTERNAL` before any plugin runs); its texts are never read as `null`.
#[test]
fn a_damaged_stored_record_is_an_error_never_null() {
    let good = bundled::all().remove(0).record(0);
    assert!(crate::service::compile_record(&good).is_ok());
    assert_eq!(decode_stored("/workflow", "{\"a\": 1}").unwrap(), json!({"a": 1}));
    let damaged = |edit: &dyn Fn(&mut crate::domain::WorkflowRecord)| {
        let mut rec = good.clone();
        edit(&mut rec);
        crate::service::compile_record(&rec).unwrap_err()
    };
    let e = damaged(&|r| r.template_json = "{\"1\": {\"class_type\"".into());
    assert_eq!(paths(&e), ["/workflow"], "{e}");
    assert!(e.to_string().contains("not JSON"), "{e}");
    let e = damaged(&|r| r.template_json = String::new());
    assert_eq!(paths(&e), ["/workflow"], "{e}");
    let e = damaged(&|r| r.schema_json = Some("nope".into()));
    assert_eq!(paths(&e), ["/inputSchema"], "{e}");
    let e = damaged(&|r| r.defaults_json = Some("{".into()));
    assert_eq!(paths(&e), ["/defaults"], "{e}");
    let e = damaged(&|r| r.defaults_json = Some("[1, 2]".into()));
    assert_eq!(paths(&e), ["/defaults"], "{e}");
}
