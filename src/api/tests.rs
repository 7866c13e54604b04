//! Pure checks of the generated schemas and of the schedule pattern.

use serde_json::Value;

use super::*;

fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), v));
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| walk(v, format!("{path}.{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| walk(v, format!("{path}[{i}]"), out)),
        _ => {}
    }
}

fn all_schema_nodes() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for crd in crds() {
        let v = serde_json::to_value(&crd).unwrap();
        let mut nodes = Vec::new();
        walk(&v, crd.metadata.name.clone().unwrap(), &mut nodes);
        out.extend(nodes.into_iter().map(|(p, v)| (p, v.clone())));
    }
    out
}

#[test]
fn schema_has_no_unsigned_formats() {
    // schemars emits uint32/uint64, which the apiserver does not know.
    for (path, node) in all_schema_nodes() {
        if let Some(f) = node.get("format").and_then(Value::as_str) {
            assert!(!f.starts_with("uint"), "{path} has format {f}");
        }
    }
}

#[test]
fn schema_never_mixes_properties_and_additional_properties() {
    for (path, node) in all_schema_nodes() {
        if node.get("properties").is_some_and(Value::is_object) {
            assert!(
                node.get("additionalProperties").is_none(),
                "{path} has properties and additionalProperties"
            );
        }
    }
}

#[test]
fn schema_strings_checked_by_cel_are_bounded() {
    // An unbounded string under `matches()` blows the apiserver's CEL cost budget.
    for (path, node) in all_schema_nodes() {
        let rules = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array);
        let uses_matches = rules.is_some_and(|r| {
            r.iter()
                .any(|r| r["rule"].as_str().unwrap_or("").contains("matches("))
        });
        if uses_matches && node.get("type").and_then(Value::as_str) == Some("string") {
            assert!(
                node.get("maxLength").is_some(),
                "{path} uses matches() without maxLength"
            );
        }
    }
}

#[test]
fn short_names_never_take_configmaps_cm() {
    for crd in crds() {
        let shorts = crd.spec.names.short_names.unwrap_or_default();
        assert!(!shorts.iter().any(|s| s == "cm"), "{:?}", crd.metadata.name);
    }
}

#[test]
fn schedule_pattern_table() {
    let re = regex::Regex::new(&schedule_pattern()).unwrap();
    let cases = [
        ("*/5 * * * *", true),
        ("0 8-18/2 * * MON-FRI", true),
        ("15,45 0 1 jan,jul *", true),
        ("0 0 29 2 0", true),
        ("59 23 31 12 7", true),
        ("@hourly", true),
        ("@daily", true),
        ("@weekly", true),
        ("@monthly", true),
        ("@yearly", true),
        ("60 * * * *", false),
        ("* 24 * * *", false),
        ("* * 0 * *", false),
        ("* * 32 * *", false),
        ("* * * 13 *", false),
        ("* * * * 8", false),
        ("*/0 * * * *", false),
        ("* * * *", false),
        ("* * * * * *", false),
        ("@every 5m", false),
        ("", false),
        ("every five minutes", false),
        ("0 0 * * MON;", false),
    ];
    for (schedule, valid) in cases {
        assert_eq!(re.is_match(schedule), valid, "{schedule:?}");
    }
}
