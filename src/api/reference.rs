//! The configuration reference (`docs/reference.md`), generated from the CRDs' OpenAPI
//! schemas so it cannot drift from what the apiserver validates: one table per resource
//! with every field's path, type, default, constraints and description, then the
//! cross-field rules (CEL) with their messages.

use std::fmt::Write as _;

use serde_json::Value;

/// The reference in Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the CRD schemas by `dr-syncer crds --reference` (`make crds`); a test\n\
         fails when this file is stale. Field paths use `[]` for list items and `{}` for map\n\
         values.\n",
    );
    for crd in super::crds() {
        let spec = &crd.spec;
        let Some(version) = spec.versions.iter().find(|v| v.storage) else {
            continue;
        };
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).expect("schema serializes"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "\n## {kind}\n\n`{group}/{version}`, {scope}; short names: {short}.\n\n",
            kind = spec.names.kind,
            group = spec.group,
            version = version.name,
            scope = if spec.scope == "Namespaced" {
                "namespaced"
            } else {
                "cluster-scoped"
            },
            short = spec
                .names
                .short_names
                .as_ref()
                .map(|s| s
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_else(|| "none".into()),
        );
        let mut rows = Vec::new();
        let mut rules = Vec::new();
        for part in ["spec", "status"] {
            if let Some(s) = schema.pointer(&format!("/properties/{part}")) {
                walk(part, s, false, &mut rows, &mut rules);
            }
        }
        out.push_str("| Field | Type | Required | Default | Description |\n");
        out.push_str("|---|---|---|---|---|\n");
        for row in rows {
            out.push_str(&row);
        }
        if !rules.is_empty() {
            out.push_str("\nRules checked by the apiserver:\n\n");
            for r in rules {
                out.push_str(&r);
            }
        }
    }
    out
}

fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn type_of(s: &Value) -> String {
    let base = match s.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "[]{}",
            s.get("items").map(type_of).unwrap_or_else(|| "any".into())
        ),
        Some("object") if s.get("additionalProperties").is_some_and(Value::is_object) => {
            format!("map[string]{}", type_of(&s["additionalProperties"]))
        }
        Some(t) => t.to_string(),
        None if s.get("x-kubernetes-int-or-string").is_some() => "int or string".into(),
        None => "any".into(),
    };
    match s.get("enum").and_then(Value::as_array) {
        Some(values) => format!(
            "{base}: {}",
            values
                .iter()
                .map(|v| format!(
                    "`{}`",
                    v.as_str().map(str::to_string).unwrap_or(v.to_string())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => base,
    }
}

fn constraints(s: &Value) -> String {
    let mut c = Vec::new();
    for (key, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(v) = s.get(key) {
            c.push(format!("{label} {v}"));
        }
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        c.push(format!("pattern `{p}`"));
    }
    if c.is_empty() {
        String::new()
    } else {
        format!(" ({})", c.join(", "))
    }
}

fn walk(path: &str, s: &Value, required: bool, rows: &mut Vec<String>, rules: &mut Vec<String>) {
    let default = s
        .get("default")
        .map(|d| format!("`{d}`"))
        .unwrap_or_default();
    let description = s.get("description").and_then(Value::as_str).unwrap_or("");
    rows.push(format!(
        "| `{path}` | {} | {} | {} | {} |\n",
        cell(&type_of(s)),
        if required { "yes" } else { "" },
        cell(&default),
        cell(&format!("{description}{}", constraints(s))),
    ));
    if let Some(list) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
        for r in list {
            let message = r.get("message").and_then(Value::as_str).unwrap_or("");
            let rule = r.get("rule").and_then(Value::as_str).unwrap_or("");
            rules.push(format!(
                "- `{path}`: {} — `{}`\n",
                cell(message),
                cell(rule)
            ));
        }
    }
    let req: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(
                &format!("{path}.{name}"),
                child,
                req.contains(&name.as_str()),
                rows,
                rules,
            );
        }
    }
    if let Some(items) = s.get("items").filter(|i| i.get("properties").is_some()) {
        walk(&format!("{path}[]"), items, false, rows, rules);
    }
    if let Some(values) = s
        .get("additionalProperties")
        .filter(|v| v.get("properties").is_some())
    {
        walk(&format!("{path}{{}}"), values, false, rows, rules);
    }
}
