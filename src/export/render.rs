//! Deterministic YAML for one object: `apiVersion, kind, metadata` first (metadata as
//! `name, namespace, labels, annotations`, then the rest), then the usual body fields in a
//! fixed order, then any other field sorted; nested maps sorted; lists in API order.
//!
//! Order is decided here, not by `serde_json::Map` — whether that map keeps insertion order
//! depends on a cargo feature any crate in the graph may switch on.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

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

/// Renders `obj` as a YAML document.
pub fn render(obj: &Value) -> Result<String, crate::yaml::RenderError> {
    crate::yaml::to_string(&Canonical {
        value: obj,
        first: TOP,
        child_first: Some(("metadata", METADATA)),
    })
}

struct Canonical<'a> {
    value: &'a Value,
    /// Keys emitted first, in this order.
    first: &'static [&'static str],
    /// A key whose value gets its own first-keys list.
    child_first: Option<(&'static str, &'static [&'static str])>,
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

impl Serialize for Canonical<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for k in ordered_keys(m, self.first) {
                    let first = match self.child_first {
                        Some((key, f)) if key == k => f,
                        _ => &[],
                    };
                    map.serialize_entry(
                        k,
                        &Canonical {
                            value: &m[k],
                            first,
                            child_first: None,
                        },
                    )?;
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Canonical {
                        value: v,
                        first: &[],
                        child_first: None,
                    })?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
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
    }
}
