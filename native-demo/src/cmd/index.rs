//! `adore index fit`: a key index (`adore::index`) fitted to a model's rotated queries and
//! keys over texts, with how well each layer's short keys rank the tokens its attention ranks.

use std::path::PathBuf;
use std::sync::Arc;

use adore::index::{IndexStats, KeyIndex};
use adore::model::{Config, Model};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};

use crate::options::ModelArgs;
use crate::progress;

#[derive(Subcommand)]
pub enum Action {
    /// Fit a key index to a model's queries and keys over texts.
    Fit(FitArgs),
}

#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Texts to fit on (repeat the flag for several).
    #[arg(long, required = true)]
    text: Vec<PathBuf>,
    /// Tokens from the start of each text.
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Floats per token and KV head in the index (a multiple of 4); several (8,16) write one
    /// file each, named OUT with `.rN` before its extension.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    rank: Vec<usize>,
    /// First layers that attend to every token; several (0,2) write one file each, named OUT
    /// with `.dN` before its extension.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    dense_layers: Vec<usize>,
    #[arg(long)]
    out: PathBuf,
    /// Report the recall of each layer's top `--recall-of` tokens (held-out queries: the last
    /// eighth of the last text), by the short keys against the layer's own attention.
    #[arg(long, default_value_t = 32)]
    recall_of: usize,
}

pub fn run(action: Action) -> Result<()> {
    let Action::Fit(a) = action;
    let m = a.model.load()?;
    let c = &m.config;
    let mut stats = IndexStats::new(c.layers, c.n_heads, c.n_kv_heads, c.head_dim);
    let mut last = None;
    let mut names = Vec::new();
    for (i, path) in a.text.iter().enumerate() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut ids = m.tokenizer.encode(&text)?;
        ids.truncate(a.tokens.min(c.context));
        if ids.len() < 16 {
            bail!("{} holds {} tokens; fitting needs at least 16", path.display(), ids.len());
        }
        let (qs, ks) = record(&m, &ids).with_context(|| format!("running {}", path.display()))?;
        // The last text's last eighth is held out for the recall report.
        let held = if i + 1 == a.text.len() { ids.len() - ids.len() / 8 } else { ids.len() };
        for l in 0..c.layers {
            stats.add_queries(l, &qs[l][..held * c.q_dim()]);
            stats.add_keys(l, &ks[l][..held * c.kv_dim()]);
        }
        names.push(format!("{} ({} tokens)", path.file_name().unwrap_or_default().to_string_lossy(), ids.len()));
        eprintln!("index: {} tokens of {}", ids.len(), path.display());
        last = Some((qs, ks, held, ids.len()));
    }
    for &rank in &a.rank {
        let fitting = format!("rank {rank} fitted to rotated queries and keys of {}", names.join(", "));
        let index = KeyIndex::fit(&m.fingerprint, &stats, rank, 0, fitting)?;
        for &dense in &a.dense_layers {
            let mut tag = String::new();
            if a.rank.len() > 1 {
                tag += &format!("r{rank}.");
            }
            if a.dense_layers.len() > 1 {
                tag += &format!("d{dense}.");
            }
            let out = a.out.with_extension(format!("{tag}{}", a.out.extension().unwrap_or_default().to_string_lossy()));
            if dense >= c.layers {
                bail!("{dense} dense layers leave none of the model's {} to index", c.layers);
            }
            let index = KeyIndex { dense_layers: dense, ..index.clone() };
            std::fs::write(&out, index.to_bytes()?).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} (rank {rank}, {dense} dense layers, {} bytes per token)", out.display(), index.bytes_per_token());
        }
        if let Some((qs, ks, held, n)) = &last {
            println!("| layer | rank {rank}: top-{} recall, held-out queries |", a.recall_of);
            println!("|---:|---:|");
            let mut all = 0.0;
            for l in 0..c.layers {
                let r = recall(&index, c, l, &qs[l], &ks[l], *held, *n, a.recall_of);
                all += r;
                println!("| {l} | {r:.3} |");
            }
            println!("| mean | {:.3} |", all / c.layers as f64);
        }
    }
    Ok(())
}

/// Every layer's rotated queries and keys over `ids` under full attention, by position: (ids.len(),
/// q_dim) and (ids.len(), kv_dim) each.
fn record(m: &Arc<Model>, ids: &[u32]) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
    let bar = progress::count(ids.len() as u64, "index", "tokens");
    let s = pollster::block_on(adore::index::record(m, ids, 256, |n| bar.set_position(n as u64)))?;
    bar.finish_and_clear();
    let (mut qs, mut ks) = (Vec::new(), Vec::new());
    for l in 0..m.config.layers {
        qs.push(pollster::block_on(s.inspect().queries(l))?);
        ks.push(pollster::block_on(s.inspect().keys(l))?);
    }
    Ok((qs, ks))
}

/// Mean over held-out query positions of the share of layer `l`'s `top` tokens by attention
/// (summed over heads) that the short keys' attention also puts in its top `top`.
#[allow(clippy::too_many_arguments)]
fn recall(index: &KeyIndex, c: &Config, l: usize, q: &[f32], k: &[f32], held: usize, n: usize, top: usize) -> f64 {
    let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let positions: Vec<usize> = (held..n).step_by(((n - held) / 16).max(1)).filter(|&t| t >= top).collect();
    let mut total = 0.0;
    for &t in &positions {
        let mut exact = vec![0.0f64; t + 1];
        let mut short = vec![0.0f64; t + 1];
        for h in 0..c.n_heads {
            let qh = &q[t * c.q_dim() + h * hd..][..hd];
            let g = h / group;
            let key = |j: usize| &k[j * c.kv_dim() + g * hd..][..hd];
            let e: Vec<f64> = (0..=t).map(|j| qh.iter().zip(key(j)).map(|(a, b)| (a * b) as f64).sum()).collect();
            let s: Vec<f64> = (0..=t).map(|j| index.logit_stored(l, h, qh, key(j)) as f64).collect();
            for (acc, v) in [(&mut exact, e), (&mut short, s)] {
                let scale = 1.0 / (hd as f64).sqrt();
                let mx = v.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = v.iter().map(|x| ((x - mx) * scale).exp()).sum();
                for (a, x) in acc.iter_mut().zip(&v) {
                    *a += ((x - mx) * scale).exp() / z;
                }
            }
        }
        let best = |v: &[f64]| {
            let mut o: Vec<usize> = (0..v.len()).collect();
            o.sort_by(|&i, &j| v[j].total_cmp(&v[i]));
            o.truncate(top);
            o
        };
        let want = best(&exact);
        let got = best(&short);
        total += want.iter().filter(|i| got.contains(i)).count() as f64 / top as f64;
    }
    total / positions.len().max(1) as f64
}
