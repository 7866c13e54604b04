//! `dr-syncer decrypt FILE --identity KEYFILE`: prints the plaintext of a SOPS file after
//! verifying its MAC (files written by dr-syncer or by the sops CLI).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::sops::{self, Identities};

/// Arguments of `dr-syncer decrypt`.
#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// The SOPS-encrypted YAML file.
    pub file: PathBuf,
    /// age identity file (`AGE-SECRET-KEY-1…`, as `age-keygen` writes).
    #[arg(long, short = 'i', env = "SOPS_AGE_KEY_FILE")]
    pub identity: PathBuf,
}

/// Decrypts and prints the document.
pub fn run(args: &DecryptArgs) -> anyhow::Result<ExitCode> {
    let ids = std::fs::read_to_string(&args.identity)
        .with_context(|| format!("reading {}", args.identity.display()))?;
    let identities = Identities::from_file_contents(&ids)
        .with_context(|| args.identity.display().to_string())?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let plain =
        sops::decrypt(&text, &identities).with_context(|| args.file.display().to_string())?;
    print!("{}", crate::export::render::render(&plain)?);
    Ok(ExitCode::SUCCESS)
}
