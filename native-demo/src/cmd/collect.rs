//! `adore collect` (feature `train`): teacher data for controller training. Full attention
//! over the texts on the CPU (candle); for sampled queries, the attention distribution
//! averaged over heads and layers, and H2O's accumulated attention. With the feature
//! `research`, the teachers and inputs measured and not shipped (docs/results.md).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::options::ModelPath;
use crate::train;

#[derive(Args)]
pub struct CollectArgs {
    #[command(flatten)]
    model: ModelPath,
    /// Plain-text files, cut into windows of --seq-len tokens.
    #[arg(long, num_args = 1.., required = true)]
    text: Vec<PathBuf>,
    /// Output directory (a repeated run resumes where it stopped).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Query positions sampled per sequence.
    #[arg(long, default_value_t = 32)]
    queries: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[cfg(feature = "research")]
    #[command(flatten)]
    research: Research,
}

/// Variants measured and not shipped.
#[cfg(feature = "research")]
#[derive(Args)]
struct Research {
    /// What the teacher distribution measures: `attention` (averaged over heads and layers),
    /// `contribution` (attention times the size of what each key's value adds to the head's
    /// output, summed over heads and layers) or `future-H` (the averaged attention of the query
    /// and the H - 1 queries after it, on the keys up to the query).
    #[arg(long, default_value = "attention")]
    teacher: train::data::TeacherKind,
    /// Also store the residual stream after these layers (numbered from 1), for controllers
    /// that read the model's state (`train-controller --input-layer`).
    #[arg(long, value_delimiter = ',')]
    features_after: Vec<usize>,
}

pub fn run(a: CollectArgs) -> Result<()> {
    #[cfg(feature = "research")]
    let (kind, features_after) = (a.research.teacher, a.research.features_after);
    #[cfg(not(feature = "research"))]
    let (kind, features_after) = (train::data::TeacherKind::Attention, Vec::new());
    let path = a.model.path()?;
    let files = adore::model::files::Files::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec = adore::ModelSpec::read(files.source())?;
    let teacher = train::teacher::Teacher::new(&spec)?;
    let fingerprint = spec.fingerprint()?;
    train::data::collect(&train::data::Collect {
        teacher: &teacher,
        tokenizer: &spec.tokenizer,
        fingerprint: &fingerprint,
        texts: &a.text,
        out: &a.out,
        seq_len: a.seq_len,
        queries: a.queries,
        seed: a.seed,
        kind,
        features_after: &features_after,
    })
}
