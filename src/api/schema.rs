//! Schema overrides for shapes schemars cannot describe in a structural CRD schema.

use schemars::{Schema, SchemaGenerator, json_schema};

/// `conditions`: a list keyed by `type`, so server-side apply merges entries by type
/// instead of replacing the list.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

/// Any JSON value (a JSON-patch `value`): the apiserver keeps it as given.
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// A free-form object (a merge patch).
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}
