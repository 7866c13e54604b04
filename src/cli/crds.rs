//! `dr-syncer crds`: the CRDs generated from the Rust types, the only source of `crds/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::api;

/// Arguments of `dr-syncer crds`.
#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
    #[arg(long, env = "DR_SYNCER_CRDS_DIR")]
    pub dir: Option<PathBuf>,
    /// Print the configuration reference (Markdown, from the CRD schemas) instead.
    #[arg(long, conflicts_with = "dir")]
    pub reference: bool,
}

/// Prints or writes the CRDs.
pub fn run(args: &CrdsArgs) -> anyhow::Result<ExitCode> {
    if args.reference {
        print!("{}", api::reference::markdown());
        return Ok(ExitCode::SUCCESS);
    }
    match &args.dir {
        None => print!("{}", api::crds_yaml()?),
        Some(dir) => write_files(dir)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn write_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, yaml) in api::crd_files()? {
        let path = dir.join(&file);
        // temp + rename: a reader never sees a half-written CRD.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    Ok(())
}
