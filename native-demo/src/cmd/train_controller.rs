//! `adore train-controller` (feature `train`): fit an ADORE controller to `collect` data and
//! report held-out recall of the teacher's top-m beside H2O and sinks + window. With the
//! feature `research`, the loss and input variants measured and not shipped.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::options::ModelPath;
use crate::progress;
use crate::train::{self, data::Sequence, fit::Target};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelPath,
    /// Training data (a `collect` directory).
    #[arg(long)]
    data: PathBuf,
    /// Held-out data (a `collect` directory of other texts); default: the last tenth of --data.
    #[arg(long)]
    heldout: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Controller width d_c.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Distance buckets of the score bias.
    #[arg(long, default_value_t = 128)]
    buckets: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Budgets m at which recall of the teacher's top-m is reported.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    budgets: Vec<usize>,
    /// Protected first and most recent tokens of the policies compared.
    #[arg(long, default_value_t = 4)]
    sinks: usize,
    #[arg(long, default_value_t = 16)]
    recent: usize,
    /// What the controller learns per query: `top-M`, membership in the teacher's top M keys
    /// (what a budget of M keeps).
    #[arg(long, default_value = "top-128")]
    target: Target,
    /// Write the report (losses per epoch, recall table) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[cfg(feature = "research")]
    #[command(flatten)]
    research: Research,
}

/// Variants measured and not shipped (and `--target distribution`).
#[cfg(feature = "research")]
#[derive(Args)]
struct Research {
    /// Which keys the loss covers: all of them, or only those the policy decides on (the sinks
    /// and recent window left out).
    #[arg(long, value_enum, default_value = "unprotected")]
    loss_keys: LossKeys,
    /// What the controller reads per token: 0, its embedding; L, the model's residual stream
    /// after layer L (collected with `collect --features-after L`).
    #[arg(long, default_value_t = 0)]
    input_layer: usize,
}

#[cfg(feature = "research")]
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LossKeys {
    All,
    Unprotected,
}

pub fn run(a: TrainArgs) -> Result<()> {
    #[cfg(feature = "research")]
    let (unprotected_only, input_layer) = (a.research.loss_keys == LossKeys::Unprotected, a.research.input_layer);
    #[cfg(not(feature = "research"))]
    let (unprotected_only, input_layer) = (true, 0);
    if a.target == Target::Distribution && !cfg!(feature = "research") {
        bail!("--target distribution was measured and not shipped: build with the feature `research` to use it");
    }
    let path = a.model.path()?;
    let files = adore::model::files::Files::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec = adore::ModelSpec::read(files.source())?;
    let fingerprint = spec.fingerprint()?;
    let embed = spec.get("token_embd.weight")?.to_f32();
    let mut train_seqs = train::data::read_dir(&a.data)?;
    let held = match &a.heldout {
        Some(dir) => train::data::read_dir(dir)?,
        None => {
            if train_seqs.len() < 2 {
                bail!("{} holds one sequence: give --heldout or collect more", a.data.display());
            }
            let keep = train_seqs.len() - (train_seqs.len() / 10).max(1).min(train_seqs.len() - 1);
            train_seqs.split_off(keep)
        }
    };
    let (epochs, lr, batch, buckets, seed) = (a.epochs, a.lr, a.batch, a.buckets, a.seed);
    let o = train::fit::FitOptions {
        d_c: a.width,
        buckets,
        epochs,
        seed,
        lr,
        batch,
        sinks: a.sinks,
        recent: a.recent,
        budgets: a.budgets.clone(),
        unprotected_only,
        target: a.target,
        input_layer,
    };
    eprintln!("train-controller: {} training and {} held-out sequences, {epochs} epochs", train_seqs.len(), held.len());
    let bar = progress::bar(epochs as u64, "train {bar:40} epoch {pos}/{len}, {eta} left {msg}");
    let t0 = std::time::Instant::now();
    let (mut c, report) = train::fit::fit(&embed, spec.config.hidden, &fingerprint, &train_seqs, &held, &o, &mut |e| {
        let line = format!(
            "epoch {:>3}: training loss {:.4}, held-out loss {:.4} ({:.0} s)",
            e.epoch,
            e.train_loss,
            e.heldout_loss,
            t0.elapsed().as_secs_f64()
        );
        progress::line(&bar, &line);
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let names = |s: &[Sequence]| {
        let mut v: Vec<String> = s.iter().map(|q| q.name.splitn(4, '-').nth(3).unwrap_or("").to_string()).collect();
        v.dedup();
        v.join(", ")
    };
    let (sinks, recent) = (a.sinks, a.recent);
    c.training = format!(
        "trained by adore train-controller on {} sequences of {} ({}); held out: {}; {epochs} epochs, lr {lr}, batch {batch}, {buckets} buckets, seed {seed}, target {}, loss over {} keys, input {}; final held-out loss {:.4}",
        train_seqs.len(),
        train_seqs[0].len(),
        names(&train_seqs),
        names(&held),
        match a.target {
            Target::Distribution => "the teacher's distribution".to_string(),
            Target::TopM(m) => format!("the teacher's top {m}"),
        },
        if unprotected_only { format!("the unprotected ({sinks} sinks, {recent} recent left out)") } else { "all".to_string() },
        if input_layer == 0 { "the token embeddings".to_string() } else { format!("the residual stream after layer {input_layer}") },
        report.epochs.last().map_or(f64::NAN, |e| e.heldout_loss)
    );
    std::fs::write(&a.out, c.to_bytes()?).with_context(|| format!("writing {}", a.out.display()))?;
    println!("| m | held-out queries | adore | adore, releases final | h2o | sinks + window |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &report.recall {
        println!("| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |", r.m, r.queries, r.adore, r.adore_final, r.h2o, r.sink_window);
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
