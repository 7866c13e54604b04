//! Small helpers for editing objects held as `serde_json::Value`.
//!
//! Objects stay untyped through the pipeline: a deny-list cleaner must keep every field it
//! does not know (new API fields, custom resources), which typed structs would drop.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The string at `path`, if every step exists and the leaf is a string.
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path)?.as_str()
}

/// The value at `path`.
pub fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// The value at `path`, mutably.
pub fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// Removes the value at `path` and returns it.
pub fn remove(v: &mut Value, path: &[&str]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    get_mut(v, parent)?.as_object_mut()?.remove(*last)
}

/// The object map at `path`, created (with its parents) when missing.
pub fn ensure_map<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for k in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("object")
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut().expect("object")
}

/// `metadata.labels` as a map of strings (non-string values are ignored).
pub fn labels(v: &Value) -> BTreeMap<String, String> {
    string_map(get(v, &["metadata", "labels"]))
}

/// `metadata.annotations` as a map of strings.
pub fn annotations(v: &Value) -> BTreeMap<String, String> {
    string_map(get(v, &["metadata", "annotations"]))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `metadata.annotations[key]`.
pub fn set_annotation(v: &mut Value, key: &str, value: impl Into<String>) {
    ensure_map(v, &["metadata", "annotations"])
        .insert(key.to_string(), Value::String(value.into()));
}

/// Removes empty `labels` / `annotations` maps under `metadata` so output carries no `{}`.
pub fn drop_empty_metadata_maps(metadata: &mut Value) {
    if let Some(m) = metadata.as_object_mut() {
        for key in ["labels", "annotations"] {
            if m.get(key)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                m.remove(key);
            }
        }
    }
}

/// Calls `f` on every pod spec inside a workload: Pods, templates of Deployments,
/// StatefulSets, DaemonSets, ReplicaSets, Jobs, and CronJobs' job templates.
pub fn for_each_pod_spec(obj: &mut Value, mut f: impl FnMut(&mut Value)) {
    for path in [
        &["spec"][..],
        &["spec", "template", "spec"][..],
        &["spec", "jobTemplate", "spec", "template", "spec"][..],
    ] {
        if let Some(spec) = get_mut(obj, path)
            && spec.get("containers").is_some()
        {
            f(spec);
        }
    }
}

/// Calls `f` on every pod template's `metadata` (Deployments, StatefulSets, Jobs, ...).
pub fn for_each_template_metadata(obj: &mut Value, mut f: impl FnMut(&mut Value)) {
    for path in [
        &["spec", "template", "metadata"][..],
        &["spec", "jobTemplate", "spec", "template", "metadata"][..],
    ] {
        if let Some(m) = get_mut(obj, path) {
            f(m);
        }
    }
}
