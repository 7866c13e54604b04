//! Objects entering and leaving the pipeline.

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

use super::resource::ResourceType;
use super::value::str_at;

/// Where an input object came from, so errors can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A document in a file (line of the document's first line, 1-based).
    File {
        /// The file.
        path: PathBuf,
        /// First line of the document.
        line: usize,
    },
    /// Listed from a cluster.
    Live,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Live => write!(f, "cluster"),
        }
    }
}

/// An object read from the source, with its type.
#[derive(Clone, Debug)]
pub struct SourceObject {
    /// Its resource type.
    pub rt: ResourceType,
    /// The object as the API (or the file) gave it.
    pub value: Value,
    /// Where it came from.
    pub origin: Origin,
}

impl SourceObject {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or("")
    }

    /// `metadata.namespace`.
    pub fn namespace(&self) -> Option<&str> {
        str_at(&self.value, &["metadata", "namespace"])
    }

    /// `resource namespace/name (origin)` for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{} ({})",
            self.rt.qualified(),
            self.namespace().unwrap_or("-"),
            self.name(),
            self.origin
        )
    }
}

/// A cleaned and transformed object ready to render.
#[derive(Clone, Debug)]
pub struct ExportedObject {
    /// Its resource type.
    pub rt: ResourceType,
    /// Destination namespace (`None` for cluster-scoped objects such as the Namespace).
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// The object to write.
    pub value: Value,
}

impl ExportedObject {
    /// Whether this is a core Secret (written encrypted or not at all).
    pub fn is_secret(&self) -> bool {
        self.rt.group.is_empty() && self.rt.kind == "Secret"
    }
}
