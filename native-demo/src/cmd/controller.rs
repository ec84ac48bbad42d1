//! `adore controller init`: a seeded random (untrained) ADORE controller for a model.

use std::path::PathBuf;

use adore::controller::Controller;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use crate::options::ModelArgs;

#[derive(Subcommand)]
pub enum Action {
    /// Write a seeded random (untrained) controller for a model.
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Controller width d_c.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Distance buckets of the score bias.
    #[arg(long, default_value_t = 128)]
    buckets: usize,
}

pub fn run(action: Action) -> Result<()> {
    let Action::Init(a) = action;
    let m = a.model.load()?;
    let c = Controller::random(&m.fingerprint, m.config.hidden, a.width, a.buckets, a.seed)?;
    std::fs::write(&a.out, c.to_bytes()?).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} (random controller, width {}, {} buckets, seed {})", a.out.display(), a.width, a.buckets, a.seed);
    Ok(())
}
