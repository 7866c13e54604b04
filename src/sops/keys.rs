//! age recipients (who Secrets are encrypted for) and identities (who can decrypt them).

use std::str::FromStr;

use super::SopsError;

/// A validated, de-duplicated, sorted set of age X25519 recipients.
#[derive(Clone, Debug, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Parses recipients; the error names the bad entry.
    pub fn from_list(list: &[String]) -> Result<Self, SopsError> {
        let mut parsed: Vec<(String, age::x25519::Recipient)> = Vec::new();
        for r in list {
            let r = r.trim();
            let rec = age::x25519::Recipient::from_str(r)
                .map_err(|e| SopsError::Format(format!("age recipient {r:?}: {e}")))?;
            parsed.push((rec.to_string(), rec));
        }
        parsed.sort_by(|a, b| a.0.cmp(&b.0));
        parsed.dedup_by(|a, b| a.0 == b.0);
        Ok(Recipients(parsed.into_iter().map(|(_, r)| r).collect()))
    }

    /// Parses a recipients file: one `age1…` per line, `#` comments and blank lines allowed.
    pub fn parse_file(text: &str) -> Result<Vec<String>, SopsError> {
        Ok(text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Whether there is no recipient.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recipients.
    pub fn iter(&self) -> impl Iterator<Item = &age::x25519::Recipient> {
        self.0.iter()
    }

    /// The recipients as sorted strings (for comparisons and `.sops.yaml`).
    pub fn strings(&self) -> Vec<String> {
        self.0.iter().map(|r| r.to_string()).collect()
    }
}

/// Identities that can decrypt.
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes;
    /// `#` comments and blank lines allowed). Only X25519 identities exist in dr-syncer's
    /// world: Secrets are encrypted for X25519 recipients.
    pub fn from_file_contents(text: &str) -> Result<Self, SopsError> {
        let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line)
                .map_err(|e| SopsError::Format(format!("identity file line {}: {e}", i + 1)))?;
            ids.push(Box::new(id));
        }
        if ids.is_empty() {
            return Err(SopsError::Format("identity file holds no identity".into()));
        }
        Ok(Identities(ids))
    }

    /// A single X25519 identity.
    pub fn from_identity(id: age::x25519::Identity) -> Self {
        Identities(vec![Box::new(id)])
    }

    /// The identities, as age wants them.
    pub fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|b| b.as_ref() as &dyn age::Identity)
    }
}
