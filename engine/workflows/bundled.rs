//! The workflows shipped with the gateway, compiled into the binary from `workflows/` at the
//! repository root and registered on first start. `workflows/README.md` describes the files.

use serde_json::Value;

/// A workflow shipped with the gateway: template and input schema as written in `workflows/`.
#[derive(Debug, Clone, PartialEq)]
pub struct BundledWorkflow {
    /// Stable workflow id (`workflowId` in job submissions).
    pub id: &'static str,
    /// Human-readable name (also the schema's `title`).
    pub name: &'static str,
    /// What it makes (also the schema's `description`).
    pub description: &'static str,
    /// The ComfyUI API-format template with `{{name}}` tokens.
    pub template: Value,
    /// Its draft 2020-12 input schema.
    pub input_schema: Value,
}

impl BundledWorkflow {
    /// The record that registers it (version 0: the store assigns the next).
    pub fn record(&self, created_ms: u64) -> crate::domain::WorkflowRecord {
        crate::domain::WorkflowRecord {
            id: self.id.to_string(),
            version: 0,
            name: self.name.to_string(),
            description: self.description.to_string(),
            template_json: self.template.to_string(),
            schema_json: Some(self.input_schema.to_string()),
            defaults_json: None,
            created_ms,
            keep_previews: false,
            plugin: None,
        }
    }
}

/// One bundled workflow's sources.
struct Source {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    template: &'static str,
    input_schema: &'static str,
}

macro_rules! source {
    ($id:literal, $name:literal, $description:literal) => {
        Source {
            id: $id,
            name: $name,
            description: $description,
            template: include_str!(concat!("../../workflows/", $id, ".json")),
            input_schema: include_str!(concat!("../../workflows/", $id, ".schema.json")),
        }
    };
}

const SOURCES: [Source; 3] = [
    source!(
        "sdxl_realism_v1",
        "SDXL realism v1",
        "Photorealistic text-to-image with SDXL base: 1024x1024, 30 steps, cfg 7.0, dpmpp_2m/karras."
    ),
    source!(
        "sprite_transparent_bg",
        "Sprite, transparent background",
        "Game sprite on a transparent background: 512x512, 25 steps, cfg 7.5. Generated on a flat green background which is keyed out to alpha (RGBA PNG)."
    ),
    source!(
        "icon_512",
        "Icon 512",
        "Square icon: 512x512, 20 steps, cfg 6.0, dpmpp_2m/karras; scale 2 upscales the result 2x (lanczos) to 1024x1024."
    ),
];

/// Every bundled workflow, in a stable order.
pub fn all() -> Vec<BundledWorkflow> {
    SOURCES.iter().map(load).collect()
}

/// The bundled workflow `id`, if there is one.
pub fn get(id: &str) -> Option<BundledWorkflow> {
    SOURCES.iter().find(|s| s.id == id).map(load)
}

fn load(source: &Source) -> BundledWorkflow {
    // Bundled files are part of the build, not input; the tests below parse every one.
    let parse = |text: &str, file: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("bundled workflows/{}{file} is not JSON: {e}", source.id))
    };
    BundledWorkflow {
        id: source.id,
        name: source.name,
        description: source.description,
        template: parse(source.template, ".json"),
        input_schema: parse(source.input_schema, ".schema.json"),
    }
}
