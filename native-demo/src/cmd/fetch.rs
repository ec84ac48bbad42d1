//! `adore fetch`: download (if needed) and verify the default model; print its path.

use std::path::PathBuf;

use anyhow::Result;

use crate::progress;

pub fn run() -> Result<()> {
    println!("{}", default_model()?.display());
    Ok(())
}

/// The default model's path, downloading it (with progress) if it is not in the cache.
pub fn default_model() -> Result<PathBuf> {
    let bar = progress::bytes("downloading");
    let path = adore::fetch::default_model_with(&mut |m| bar.suspend(|| eprintln!("{m}")), &mut |done, total| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(path)
}
