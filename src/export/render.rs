//! Deterministic YAML for one object: `apiVersion, kind, metadata` first (metadata as
//! `name, namespace, labels, annotations`, then the rest), then the usual body fields in a
//! fixed order, then any other field sorted; nested maps sorted; lists in API order.
//!
//! Order is decided here, not by `serde_json::Map` — whether that map keeps insertion order
//! depends on a cargo feature any crate in the graph may switch on. [`Node`] is the ordered
//! tree; SOPS encryption walks the same tree, so its MAC covers exactly the emitted order.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

const TOP: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "data",
    "binaryData",
    "stringData",
    "type",
    "immutable",
    "rules",
    "subjects",
    "roleRef",
    "webhooks",
];
const METADATA: &[&str] = &["name", "namespace", "labels", "annotations"];

/// A YAML/JSON tree whose maps keep their order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A map, in document order.
    Map(Vec<(String, Node)>),
    /// A list.
    Seq(Vec<Node>),
    /// A string.
    Str(String),
    /// A number.
    Num(Number),
    /// A boolean.
    Bool(bool),
    /// Null.
    Null,
}

impl Node {
    /// The canonical ordering of an object (see the module docs).
    pub fn canonical(obj: &Value) -> Node {
        Self::ordered(obj, TOP, Some(("metadata", METADATA)))
    }

    fn ordered(
        v: &Value,
        first: &[&str],
        child_first: Option<(&str, &'static [&'static str])>,
    ) -> Node {
        match v {
            Value::Object(m) => Node::Map(
                ordered_keys(m, first)
                    .into_iter()
                    .map(|k| {
                        let f: &[&str] = match child_first {
                            Some((key, f)) if key == k => f,
                            _ => &[],
                        };
                        (k.clone(), Self::ordered(&m[k], f, None))
                    })
                    .collect(),
            ),
            Value::Array(a) => Node::Seq(a.iter().map(|v| Self::ordered(v, &[], None)).collect()),
            Value::String(s) => Node::Str(s.clone()),
            Value::Number(n) => Node::Num(n.clone()),
            Value::Bool(b) => Node::Bool(*b),
            Value::Null => Node::Null,
        }
    }

    /// Back to an unordered JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
            Node::Seq(s) => Value::Array(s.iter().map(Node::to_value).collect()),
            Node::Str(s) => Value::String(s.clone()),
            Node::Num(n) => Value::Number(n.clone()),
            Node::Bool(b) => Value::Bool(*b),
            Node::Null => Value::Null,
        }
    }

    /// The value of `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn ordered_keys<'a>(m: &'a Map<String, Value>, first: &[&str]) -> Vec<&'a String> {
    let mut head: Vec<&String> = first
        .iter()
        .filter_map(|k| m.get_key_value(*k).map(|(k, _)| k))
        .collect();
    let mut rest: Vec<&String> = m.keys().filter(|k| !first.contains(&k.as_str())).collect();
    rest.sort();
    head.extend(rest);
    head
}

/// Renders `obj` as a YAML document.
pub fn render(obj: &Value) -> Result<String, crate::yaml::RenderError> {
    crate::yaml::to_string(&Node::canonical(obj))
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Node::Seq(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Node::Str(v) => s.serialize_str(v),
            Node::Num(n) => n.serialize(s),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Null => s.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Num(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Num(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Number::from_f64(v).map(Node::Num).unwrap_or(Node::Null))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Node>()? {
            out.push((k, v));
        }
        Ok(Node::Map(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_orders_keys_and_never_folds() {
        let long = "x ".repeat(100);
        let obj = json!({
            "spec": {"z": 1, "a": [3, 1, 2]},
            "metadata": {"uid": "u", "annotations": {"b": "2", "a": "1"}, "name": "web", "namespace": "shop"},
            "kind": "ConfigMap", "apiVersion": "v1", "zzz": true, "data": {"long": long, "script": "line1\nline2\n", "on": "yes"},
        });
        let yaml = render(&obj).unwrap();
        let expected = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n    a: \"1\"\n    b: \"2\"\n  uid: u\nspec:\n  a:\n  - 3\n  - 1\n  - 2\n  z: 1\ndata:\n  long: \"{long}\"\n  \"on\": \"yes\"\n  script: |\n    line1\n    line2\nzzz: true\n"
        );
        assert_eq!(yaml, expected);
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, obj, "round trip keeps every value and type");
        let node: Node = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            node,
            Node::canonical(&obj),
            "reading back keeps document order"
        );
    }
}
