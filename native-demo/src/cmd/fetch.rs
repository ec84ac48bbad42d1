//! `adore fetch [NAME]`: download (if needed) and verify a known model (the default without a
//! name); print its path. `adore fetch --list` lists the names.

use std::path::PathBuf;

use adore::fetch::{KnownModel, DEFAULT_MODEL, KNOWN};
use anyhow::{bail, Result};
use clap::Args;

use crate::progress;

#[derive(Args)]
pub struct FetchArgs {
    /// A known model's name (see --list); the default model without one.
    pub name: Option<String>,
    /// List the known models and whether each is in the cache.
    #[arg(long)]
    pub list: bool,
}

pub fn run(a: FetchArgs) -> Result<()> {
    if a.list {
        let dir = adore::fetch::cache_dir()?;
        for m in KNOWN {
            let cached = if dir.join(m.file).exists() { "cached" } else { "not fetched" };
            println!("{:<20} {:>6} MB  {cached:<11}  {}", m.name, m.bytes / 1_000_000, m.about);
        }
        return Ok(());
    }
    let name = a.name.as_deref().unwrap_or(DEFAULT_MODEL);
    println!("{}", fetch(known(name)?)?.display());
    Ok(())
}

/// A known model by name, or an error listing the names.
pub fn known(name: &str) -> Result<&'static KnownModel> {
    match adore::fetch::known(name) {
        Some(m) => Ok(m),
        None => bail!("no known model is called {name:?}; known: {}", KNOWN.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")),
    }
}

/// The default model's path, downloading it (with progress) if it is not in the cache.
pub fn default_model() -> Result<PathBuf> {
    fetch(known(DEFAULT_MODEL)?)
}

/// A known model's path, downloading it (with progress) if it is not in the cache.
pub fn fetch(model: &KnownModel) -> Result<PathBuf> {
    let bar = progress::bytes("downloading");
    let path = adore::fetch::fetch(model, &mut |m| bar.suspend(|| eprintln!("{m}")), &mut |done, total| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(path)
}
