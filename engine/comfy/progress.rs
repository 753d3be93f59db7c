//! A job's progress as a whole, from ComfyUI's per-node events. ComfyUI reports which node
//! runs (`executing`), the steps within it (`progress`) and the nodes it skips because
//! their outputs are cached (`execution_cached`); the job's percent is the share of the
//! prompt's work done, each node weighing its steps when known (a sampler's `steps`
//! input, or the maximum its progress reports) and 1 otherwise. The percent never goes
//! back, and is rounded to a tenth.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::graph;

/// How far a prompt's run is.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Each node of the prompt: its class and weight.
    nodes: BTreeMap<String, (String, f64)>,
    /// Nodes that will not run (cached).
    cached: BTreeSet<String>,
    /// Nodes that ran.
    done: BTreeSet<String>,
    /// The node running, with its steps done and steps in all (0 when not reported).
    current: Option<(String, f64, f64)>,
    /// The last percent reported.
    percent: f64,
}

/// The progress at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The whole job, 0 to 100, rounded to a tenth; never less than an earlier snapshot's.
    pub percent: f64,
    /// The node running (its id in the prompt), when known.
    pub node: Option<String>,
    /// Its class (`KSampler`, ...), when the prompt names it.
    pub class: Option<String>,
    /// Steps done within the node.
    pub value: f64,
    /// Steps of the node (0: not reported).
    pub max: f64,
}

/// A sampler's step count from its literal inputs (`KSamplerAdvanced` runs from
/// `start_at_step` to `end_at_step`), when it has one.
fn steps_of(inputs: &serde_json::Map<String, Value>) -> Option<f64> {
    let steps = inputs.get("steps").and_then(Value::as_f64)?;
    let start = inputs.get("start_at_step").and_then(Value::as_f64).unwrap_or(0.0);
    let end = inputs.get("end_at_step").and_then(Value::as_f64).unwrap_or(steps).min(steps);
    Some((end - start).max(1.0))
}

/// `x` rounded to a tenth.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Tracker {
    /// A tracker of `prompt` (API format) before it runs.
    pub fn new(prompt: &Value) -> Tracker {
        let nodes = prompt
            .as_object()
            .into_iter()
            .flatten()
            .map(|(id, node)| {
                let class = node.get(graph::CLASS_TYPE).and_then(Value::as_str).unwrap_or_default().to_string();
                let weight = node.get(graph::INPUTS).and_then(Value::as_object).and_then(steps_of).unwrap_or(1.0);
                (id.clone(), (class, weight))
            })
            .collect();
        Tracker { nodes, cached: BTreeSet::new(), done: BTreeSet::new(), current: None, percent: 0.0 }
    }

    /// `nodes` will not run.
    pub fn cached(&mut self, nodes: &[String]) {
        self.cached.extend(nodes.iter().cloned());
    }

    /// `node` started: the one before it is done.
    pub fn started(&mut self, node: &str) {
        if self.current.as_ref().is_some_and(|(n, ..)| n == node) {
            return;
        }
        if let Some((previous, ..)) = self.current.take() {
            self.done.insert(previous);
        }
        self.current = Some((node.to_string(), 0.0, 0.0));
    }

    /// `value` of `max` steps done within `node` (the running one when not named).
    pub fn step(&mut self, node: Option<&str>, value: f64, max: f64) {
        if let Some(node) = node {
            self.started(node);
        }
        let Some((node, v, m)) = &mut self.current else { return };
        if max > 0.0 && value.is_finite() && max.is_finite() {
            (*v, *m) = (value.clamp(0.0, max), max);
            // The steps it reports are its weight from now on.
            if let Some((_, weight)) = self.nodes.get_mut(node.as_str()) {
                *weight = max;
            }
        }
    }

    /// The progress now.
    pub fn snapshot(&mut self) -> Snapshot {
        let weight = |id: &str| self.nodes.get(id).map_or(1.0, |(_, w)| *w);
        let total: f64 = self.nodes.iter().filter(|(id, _)| !self.cached.contains(*id)).map(|(_, (_, w))| w).sum();
        let done: f64 = self.done.iter().filter(|id| !self.cached.contains(*id)).map(|id| weight(id)).sum();
        let running = self.current.as_ref().map_or(0.0, |(id, v, m)| if *m > 0.0 { weight(id) * v / m } else { 0.0 });
        if total > 0.0 {
            let now = tenth((100.0 * (done + running) / total).clamp(0.0, 100.0));
            self.percent = self.percent.max(now);
        }
        let (node, value, max) = match &self.current {
            Some((n, v, m)) => (Some(n.clone()), tenth(*v), tenth(*m)),
            None => (None, 0.0, 0.0),
        };
        let class = node.as_ref().and_then(|n| self.nodes.get(n)).map(|(c, _)| c.clone()).filter(|c| !c.is_empty());
        Snapshot { percent: self.percent, node, class, value, max }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A text-to-image prompt: loader, two texts, a latent, a 20-step sampler, decode, save.
    fn prompt() -> Value {
        json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "b", "clip": ["4", 1]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"steps": 20, "seed": 1, "model": ["4", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}
        })
    }

    #[test]
    fn a_run_goes_from_0_to_100_weighted_by_steps() {
        let mut t = Tracker::new(&prompt());
        assert_eq!(t.snapshot().percent, 0.0);
        // Total weight: 6 nodes of 1 and the sampler's 20 = 26.
        for node in ["4", "6", "7", "5"] {
            t.started(node);
        }
        let s = t.snapshot();
        assert_eq!((s.node.as_deref(), s.class.as_deref()), (Some("5"), Some("EmptyLatentImage")));
        assert_eq!(s.percent, tenth(300.0 / 26.0));
        t.step(Some("3"), 10.0, 20.0);
        let s = t.snapshot();
        assert_eq!((s.percent, s.value, s.max), (tenth(1400.0 / 26.0), 10.0, 20.0));
        assert_eq!(s.class.as_deref(), Some("KSampler"));
        t.step(None, 20.0, 20.0);
        t.started("8");
        t.started("9");
        t.step(Some("9"), 1.0, 1.0);
        assert_eq!(t.snapshot().percent, 100.0);
    }

    #[test]
    fn cached_nodes_do_not_count_and_the_percent_never_goes_back() {
        let mut t = Tracker::new(&prompt());
        t.cached(&["4".into(), "6".into(), "7".into(), "5".into()]);
        t.started("3");
        t.step(None, 5.0, 20.0);
        // 5 of 22 (the sampler's 20, decode, save).
        assert_eq!(t.snapshot().percent, tenth(500.0 / 22.0));
        // A node reporting more steps than its input said weighs more: the share falls,
        // the percent does not.
        let before = t.snapshot().percent;
        t.step(None, 5.0, 200.0);
        assert_eq!(t.snapshot().percent, before);
        // Repeated and odd readings change nothing.
        t.step(None, f64::NAN, 20.0);
        t.started("3");
        assert_eq!(t.snapshot().percent, before);
    }

    #[test]
    fn an_advanced_sampler_weighs_the_steps_it_runs() {
        let p = json!({
            "1": {"class_type": "KSamplerAdvanced", "inputs": {"steps": 30, "start_at_step": 20, "end_at_step": 10000}},
            "2": {"class_type": "KSamplerAdvanced", "inputs": {"steps": 30, "start_at_step": 0, "end_at_step": 20}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": ["9", 0]}}
        });
        let t = Tracker::new(&p);
        assert_eq!(t.nodes["1"].1, 10.0);
        assert_eq!(t.nodes["2"].1, 20.0);
        assert_eq!(t.nodes["3"].1, 1.0);
    }
}
