//! Deterministic YAML output shared by every writer (CRDs, exports, bootstrap files).
//!
//! serde-saphyr folds single-line strings longer than 80 characters into `>` block scalars
//! by default; folded text is easy to corrupt when reviewed or edited by hand (and would hit
//! every base64 value and `ENC[...]` string), so the fold width is unbounded. Multi-line
//! strings are written as `|` literal blocks, which keep every byte and diff line by line.

use serde::Serialize;
use serde_saphyr::SerializerOptions;

/// Error from rendering a value as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot render YAML: {0}")]
pub struct RenderError(#[from] serde_saphyr::SerializeError);

fn options() -> SerializerOptions {
    let mut options = SerializerOptions::default();
    options.prefer_block_scalars = true;
    options.folded_wrap_chars = usize::MAX;
    options
}

/// Renders one value as a YAML document (no leading `---`).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, RenderError> {
    Ok(serde_saphyr::to_string_with_options(value, options())?)
}

/// Renders several values as one multi-document YAML stream, each document led by `---`.
pub fn to_multi_doc<T: Serialize>(values: &[T]) -> Result<String, RenderError> {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        out.push_str(&to_string(value)?);
    }
    Ok(out)
}
