//! User transforms from `spec.transforms`: conditions plus an RFC 6902 JSON patch or an
//! RFC 7386 merge patch, applied after the built-in DR transforms and before encryption.

use kube::core::{Selector, SelectorExt};
use regex::Regex;
use serde_json::Value;

use crate::api::{JsonPatchVerb, Transform};

use super::policy::PolicyError;
use super::resource::ResourceType;
use super::value;

/// A transform ready to apply.
#[derive(Debug, Clone)]
pub struct CompiledTransform {
    /// Name for summaries (`transforms[i]` when unnamed).
    pub name: String,
    resource_types: Vec<String>,
    namespaces: Vec<String>,
    name_regex: Option<Regex>,
    selector: Option<Selector>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Json(json_patch::Patch),
    Merge(Value),
}

/// What happened when a transform met an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Conditions did not match.
    NotMatched,
    /// Patched.
    Applied,
    /// Matched but not applied (a `test` failed or a path was missing); the object is
    /// left as it was.
    Skipped(String),
}

impl CompiledTransform {
    /// Compiles `t`; `field` is its path (`spec.transforms[0]`) for errors.
    pub fn compile(field: &str, t: &Transform) -> Result<Self, PolicyError> {
        let m = t.match_.clone().unwrap_or_default();
        let name_regex = m
            .name_regex
            .as_deref()
            .map(|r| Regex::new(&format!("^(?:{r})$")))
            .transpose()
            .map_err(|e| PolicyError::new(format!("{field}.match.nameRegex"), e.to_string()))?;
        let selector = m
            .label_selector
            .map(Selector::try_from)
            .transpose()
            .map_err(|e| PolicyError::new(format!("{field}.match.labelSelector"), e.to_string()))?;
        let action = match (&t.json_patch, &t.merge_patch) {
            (Some(ops), None) => {
                for (i, op) in ops.iter().enumerate() {
                    let needs_value = matches!(
                        op.op,
                        JsonPatchVerb::Add | JsonPatchVerb::Replace | JsonPatchVerb::Test
                    );
                    if needs_value && op.value.is_none() {
                        return Err(PolicyError::new(
                            format!("{field}.jsonPatch[{i}].value"),
                            "required for add, replace and test",
                        ));
                    }
                }
                let json = serde_json::to_value(ops).expect("patch ops serialize");
                let patch = serde_json::from_value(json)
                    .map_err(|e| PolicyError::new(format!("{field}.jsonPatch"), e.to_string()))?;
                Action::Json(patch)
            }
            (None, Some(merge)) => Action::Merge(merge.clone()),
            _ => {
                return Err(PolicyError::new(
                    field,
                    "needs exactly one of jsonPatch or mergePatch",
                ));
            }
        };
        Ok(CompiledTransform {
            name: t
                .name
                .clone()
                .unwrap_or_else(|| field.trim_start_matches("spec.").to_string()),
            resource_types: m.resource_types,
            namespaces: m.namespaces,
            name_regex,
            selector,
            action,
        })
    }

    fn matches(&self, rt: &ResourceType, source_namespace: &str, obj: &Value) -> bool {
        let name = value::str_at(obj, &["metadata", "name"]).unwrap_or("");
        (self.resource_types.is_empty() || self.resource_types.iter().any(|e| rt.matches(e)))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == source_namespace))
            && self.name_regex.as_ref().is_none_or(|r| r.is_match(name))
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&value::labels(obj)))
    }

    /// Applies the transform to `obj` when its conditions hold. A JSON patch is atomic: on
    /// any failure the object is unchanged.
    pub fn apply(&self, rt: &ResourceType, source_namespace: &str, obj: &mut Value) -> Outcome {
        if !self.matches(rt, source_namespace, obj) {
            return Outcome::NotMatched;
        }
        match &self.action {
            Action::Json(patch) => match json_patch::patch(obj, patch) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Skipped(e.to_string()),
            },
            Action::Merge(m) => {
                json_patch::merge(obj, m);
                Outcome::Applied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::resource::Registry;
    use serde_json::json;

    fn compile(t: Value) -> Result<CompiledTransform, PolicyError> {
        CompiledTransform::compile("spec.transforms[0]", &serde_json::from_value(t).unwrap())
    }

    #[test]
    fn transform_apply_table() {
        let reg = Registry::builtin();
        let cm = reg.lookup("v1", "ConfigMap").unwrap();
        let base = json!({"metadata": {"name": "billing-config", "labels": {"tier": "api"}}, "data": {"LOG": "info"}});
        let cases = [
            (
                "merge",
                json!({"mergePatch": {"data": {"LOG": "debug"}}}),
                Outcome::Applied,
                json!("debug"),
            ),
            (
                "json-replace",
                json!({"jsonPatch": [{"op": "replace", "path": "/data/LOG", "value": "warn"}]}),
                Outcome::Applied,
                json!("warn"),
            ),
            (
                "test-passes",
                json!({"jsonPatch": [{"op": "test", "path": "/data/LOG", "value": "info"}, {"op": "replace", "path": "/data/LOG", "value": "x"}]}),
                Outcome::Applied,
                json!("x"),
            ),
            (
                "test-fails-leaves-object",
                json!({"jsonPatch": [{"op": "replace", "path": "/data/LOG", "value": "x"}, {"op": "test", "path": "/data/LOG", "value": "nope"}]}),
                Outcome::Skipped(String::new()),
                json!("info"),
            ),
            (
                "name-regex-miss",
                json!({"match": {"nameRegex": "web-.*"}, "mergePatch": {"data": {"LOG": "x"}}}),
                Outcome::NotMatched,
                json!("info"),
            ),
            (
                "name-regex-anchored",
                json!({"match": {"nameRegex": "billing"}, "mergePatch": {"data": {"LOG": "x"}}}),
                Outcome::NotMatched,
                json!("info"),
            ),
            (
                "type-miss",
                json!({"match": {"resourceTypes": ["secrets"]}, "mergePatch": {"data": {"LOG": "x"}}}),
                Outcome::NotMatched,
                json!("info"),
            ),
            (
                "selector-hit",
                json!({"match": {"labelSelector": {"matchLabels": {"tier": "api"}}}, "mergePatch": {"data": {"LOG": "x"}}}),
                Outcome::Applied,
                json!("x"),
            ),
            (
                "namespace-miss",
                json!({"match": {"namespaces": ["other"]}, "mergePatch": {"data": {"LOG": "x"}}}),
                Outcome::NotMatched,
                json!("info"),
            ),
        ];
        for (name, t, expected, log) in cases {
            let t = compile(t).unwrap();
            let mut obj = base.clone();
            let out = t.apply(cm, "billing", &mut obj);
            match (&out, &expected) {
                (Outcome::Skipped(_), Outcome::Skipped(_)) => {}
                _ => assert_eq!(out, expected, "{name}"),
            }
            assert_eq!(obj["data"]["LOG"], log, "{name}");
        }
    }

    #[test]
    fn transform_compile_errors_name_the_field() {
        let cases = [
            (
                json!({"match": {"nameRegex": "("}, "mergePatch": {}}),
                "spec.transforms[0].match.nameRegex",
            ),
            (
                json!({"jsonPatch": [{"op": "add", "path": "/a"}]}),
                "spec.transforms[0].jsonPatch[0].value",
            ),
            (json!({}), "spec.transforms[0]"),
        ];
        for (t, field) in cases {
            assert_eq!(compile(t).unwrap_err().field, field);
        }
    }
}
