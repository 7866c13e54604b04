//! Kubernetes Events for the objects dr-syncer reconciles, shared by the controller and the
//! data-sync tasks. Events are a report, not state: a failure to publish is logged, never
//! fatal. Notes are cut to 1 000 characters (the API's limit is 1 KiB).

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

/// Publishes a Normal (or, with `warning`, a Warning) Event about `obj`.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(name = %obj.meta().name.as_deref().unwrap_or(""), error = %e, "cannot publish event");
    }
}
