//! An order-preserving JSON value. ComfyUI is Python: dicts keep insertion order, so the
//! prompt, `extra_data` and history entries come back with keys in the order they were
//! sent. `serde_json::Value` (without `preserve_order`) would sort them.
//! Also holds Python `str()` / `repr()` renderings used in validation messages.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;
use std::fmt;

/// A JSON value whose objects keep their key order (last duplicate wins, first position
/// kept, like a Python dict built by `json.loads`).
#[derive(Debug, Clone, PartialEq)]
pub enum OJson {
    /// `null` / `None`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// Any JSON number (int or float, as parsed).
    Num(Number),
    /// A string.
    Str(String),
    /// A list.
    Arr(Vec<OJson>),
    /// An object, in key order.
    Obj(Vec<(String, OJson)>),
}

impl OJson {
    /// The value under `key` if this is an object.
    pub fn get(&self, key: &str) -> Option<&OJson> {
        match self {
            OJson::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Mutable access to the value under `key` if this is an object.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut OJson> {
        match self {
            OJson::Obj(fields) => fields.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python `d[key] = value`: replace in place or append at the end.
    pub fn set(&mut self, key: &str, value: OJson) {
        if let OJson::Obj(fields) = self {
            if let Some(slot) = fields.iter_mut().find(|(k, _)| k == key) {
                slot.1 = value;
            } else {
                fields.push((key.to_string(), value));
            }
        }
    }

    /// Python `d.pop(key, None)`.
    pub fn remove(&mut self, key: &str) -> Option<OJson> {
        if let OJson::Obj(fields) = self {
            let pos = fields.iter().position(|(k, _)| k == key)?;
            return Some(fields.remove(pos).1);
        }
        None
    }

    /// The string if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            OJson::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The fields if this is an object.
    pub fn as_obj(&self) -> Option<&[(String, OJson)]> {
        match self {
            OJson::Obj(f) => Some(f),
            _ => None,
        }
    }

    /// The number as f64 if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            OJson::Num(n) => n.as_f64(),
            _ => None,
        }
    }

    /// The number as i64 if this is an integral number.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            OJson::Num(n) => n.as_i64(),
            _ => None,
        }
    }

    /// Python truthiness (`bool(x)`).
    pub fn truthy(&self) -> bool {
        match self {
            OJson::Null => false,
            OJson::Bool(b) => *b,
            OJson::Num(n) => n.as_f64().is_some_and(|f| f != 0.0),
            OJson::Str(s) => !s.is_empty(),
            OJson::Arr(a) => !a.is_empty(),
            OJson::Obj(o) => !o.is_empty(),
        }
    }

    /// Convert to a (key-sorted) `serde_json::Value`.
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            OJson::Null => serde_json::Value::Null,
            OJson::Bool(b) => serde_json::Value::Bool(*b),
            OJson::Num(n) => serde_json::Value::Number(n.clone()),
            OJson::Str(s) => serde_json::Value::String(s.clone()),
            OJson::Arr(a) => serde_json::Value::Array(a.iter().map(OJson::to_value).collect()),
            OJson::Obj(o) => serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect()),
        }
    }

    /// Convert from a `serde_json::Value` (keys come out sorted).
    pub fn from_value(v: &serde_json::Value) -> OJson {
        match v {
            serde_json::Value::Null => OJson::Null,
            serde_json::Value::Bool(b) => OJson::Bool(*b),
            serde_json::Value::Number(n) => OJson::Num(n.clone()),
            serde_json::Value::String(s) => OJson::Str(s.clone()),
            serde_json::Value::Array(a) => OJson::Arr(a.iter().map(OJson::from_value).collect()),
            serde_json::Value::Object(o) => {
                OJson::Obj(o.iter().map(|(k, v)| (k.clone(), OJson::from_value(v))).collect())
            }
        }
    }

    /// Serialize like Python's `json.dumps` (`", "` / `": "`, ASCII only).
    pub fn to_json(&self) -> String {
        py_json(self)
    }
}

impl Serialize for OJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OJson::Null => s.serialize_unit(),
            OJson::Bool(b) => s.serialize_bool(*b),
            OJson::Num(n) => n.serialize(s),
            OJson::Str(v) => s.serialize_str(v),
            OJson::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            OJson::Obj(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for OJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OJsonVisitor)
    }
}

struct OJsonVisitor;

impl<'de> Visitor<'de> for OJsonVisitor {
    type Value = OJson;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<OJson, E> {
        Ok(OJson::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<OJson, E> {
        Ok(OJson::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<OJson, E> {
        Ok(OJson::Num(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<OJson, E> {
        Number::from_f64(v).map(OJson::Num).ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<OJson, E> {
        Ok(OJson::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<OJson, E> {
        Ok(OJson::Str(v))
    }
    fn visit_unit<E>(self) -> Result<OJson, E> {
        Ok(OJson::Null)
    }
    fn visit_none<E>(self) -> Result<OJson, E> {
        Ok(OJson::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OJson, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(OJson::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OJson, A::Error> {
        let mut obj = OJson::Obj(Vec::new());
        while let Some((k, v)) = map.next_entry::<String, OJson>()? {
            obj.set(&k, v);
        }
        Ok(obj)
    }
}

/// `serde_json` formatter reproducing Python's `json.dumps` defaults: `", "` between
/// items, `": "` after keys, and `ensure_ascii` (`\uXXXX` escapes).
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serialize `v` like Python's `json.dumps(v)` (what aiohttp's `json_response` and
/// ComfyUI's WebSocket `send_json` put on the wire).
pub fn py_json<T: Serialize + ?Sized>(v: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    if v.serialize(&mut ser).is_err() {
        return "null".to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".to_string())
}

/// Convert a `serde_json::Value` into an [`OJson`] whose object keys follow `ranks`
/// (listed keys first, in list order; others after, alphabetically), recursively. Used to
/// reproduce the key order of ComfyUI's Python dict literals.
pub fn reorder(v: &serde_json::Value, ranks: &[&str]) -> OJson {
    match v {
        serde_json::Value::Object(o) => {
            let mut fields: Vec<(String, OJson)> = o.iter().map(|(k, v)| (k.clone(), reorder(v, ranks))).collect();
            fields.sort_by_key(|(k, _)| (ranks.iter().position(|r| r == k).unwrap_or(usize::MAX), k.clone()));
            OJson::Obj(fields)
        }
        serde_json::Value::Array(a) => OJson::Arr(a.iter().map(|x| reorder(x, ranks)).collect()),
        other => OJson::from_value(other),
    }
}

/// Key order of validation errors (`{"type", "message", "details", "extra_info"}` ...).
pub const VALIDATION_KEY_ORDER: &[&str] = &[
    "prompt_id",
    "number",
    "error",
    "node_errors",
    "errors",
    "dependent_outputs",
    "class_type",
    "type",
    "message",
    "details",
    "extra_info",
    "input_name",
    "input_config",
    "received_type",
    "received_value",
    "exception_message",
    "exception_type",
    "traceback",
    "linked_node",
];

/// Python `repr()` of a float (`1.0`, `0.01`, `1e-05`, `1e+16`).
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust `{:e}` gives `1e-5`; Python gives `1e-05`.
        let s = format!("{f:e}");
        if let Some((m, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            return format!("{m}e{sign}{digits:0>2}");
        }
        return s;
    }
    if f.fract() == 0.0 { format!("{f:.1}") } else { format!("{f}") }
}

/// Python `str()` of a JSON number as Python would hold it after `json.loads`.
pub fn py_num(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        py_float(n.as_f64().unwrap_or(0.0))
    }
}

/// Python `str()` of a value (strings unquoted, containers in `repr` form).
pub fn py_str(v: &OJson) -> String {
    match v {
        OJson::Str(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python `repr()` of a value (`'text'`, `None`, `True`, `[1, 'a']`, `{'k': 1}`).
pub fn py_repr(v: &OJson) -> String {
    match v {
        OJson::Null => "None".into(),
        OJson::Bool(true) => "True".into(),
        OJson::Bool(false) => "False".into(),
        OJson::Num(n) => py_num(n),
        OJson::Str(s) => {
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        }
        OJson::Arr(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        OJson::Obj(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&OJson::Str(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python type name of a JSON value (for `TypeError` messages).
pub fn py_type_name(v: &OJson) -> &'static str {
    match v {
        OJson::Null => "NoneType",
        OJson::Bool(_) => "bool",
        OJson::Num(n) if n.is_f64() => "float",
        OJson::Num(_) => "int",
        OJson::Str(_) => "str",
        OJson::Arr(_) => "list",
        OJson::Obj(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_python_renderings() {
        let v: OJson = serde_json::from_str(r#"{"b":1,"a":[1.0,"x",null],"b":2}"#).unwrap();
        assert_eq!(v.to_json(), r#"{"b": 2, "a": [1.0, "x", null]}"#);
        assert_eq!(py_json(&OJson::Str("é".into())), r#""\u00e9""#);
        assert_eq!(py_repr(&v), "{'b': 2, 'a': [1.0, 'x', None]}");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(0.01), "0.01");
        assert_eq!(py_float(8.0), "8.0");
    }
}
