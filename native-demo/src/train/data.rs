//! Teacher data: `adore collect` writes one safetensors file per sequence of a text, holding the
//! token ids, the sampled query positions, each query's teacher distribution over the keys
//! (see [`TeacherKind`]) and H2O's accumulated attention at that query (the column sums of the
//! averaged attention's rows up to it), next to a manifest. Finished
//! sequences are skipped when a run is repeated, so an interrupted collection resumes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::progress;
use anyhow::{bail, Context as _, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use super::teacher::Teacher;

pub const FORMAT: &str = "adore-teacher-v1";

/// What the teacher distribution of a query measures, per key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TeacherKind {
    /// Full attention averaged over heads and layers (ADORE.md's first design).
    Attention,
    /// Each key's contribution to the attention outputs: every head's weight on it times the
    /// norm of its value through the output projection, summed over heads and layers. A key
    /// that draws attention but adds little (a newline acting as a sink) ranks low.
    Contribution,
    /// The averaged attention of the query and the next `H - 1` queries on each key up to the
    /// query, averaged over those queries: a release is final, so a key should be kept for what
    /// it will be worth over the steps ahead, not only to the current token.
    Future(usize),
}

impl TeacherKind {
    pub fn name(self) -> String {
        match self {
            TeacherKind::Attention => "attention".to_string(),
            TeacherKind::Contribution => "contribution".to_string(),
            TeacherKind::Future(h) => format!("future-{h}"),
        }
    }
}

impl std::str::FromStr for TeacherKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "attention" => Ok(TeacherKind::Attention),
            "contribution" => Ok(TeacherKind::Contribution),
            _ => match s.strip_prefix("future-").map(str::parse::<usize>) {
                Some(Ok(h)) if h >= 1 => Ok(TeacherKind::Future(h)),
                _ => bail!("--teacher is `attention`, `contribution` or `future-H` (H >= 1 queries), not {s:?}"),
            },
        }
    }
}

/// One sequence's teacher data.
pub struct Sequence {
    pub name: String,
    pub ids: Vec<u32>,
    pub queries: Vec<u32>,
    /// (queries, seq_len): distribution over keys 0..=t, zeros after.
    pub teacher: Vec<f32>,
    /// (queries, seq_len): accumulated attention of keys over queries 0..=t.
    pub h2o: Vec<f32>,
    /// (layer, (seq_len, hidden)): the residual stream after that layer, for controllers that
    /// read the model's state (`collect --features-after`).
    pub features: Vec<(usize, Vec<f32>)>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    fn to_bytes(&self, meta: HashMap<String, String>) -> Result<Vec<u8>> {
        let (n, q) = (self.ids.len(), self.queries.len());
        let b = |v: &[u32]| bytemuck_u32(v);
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut parts = vec![
            ("ids".to_string(), Dtype::U32, vec![n], b(&self.ids)),
            ("queries".to_string(), Dtype::U32, vec![q], b(&self.queries)),
            ("teacher".to_string(), Dtype::F32, vec![q, n], f(&self.teacher)),
            ("h2o".to_string(), Dtype::F32, vec![q, n], f(&self.h2o)),
        ];
        for (layer, x) in &self.features {
            parts.push((format!("features.{layer}"), Dtype::F32, vec![n, x.len() / n.max(1)], f(x)));
        }
        let views = parts
            .iter()
            .map(|(name, dt, shape, bytes)| Ok((name.to_string(), TensorView::new(*dt, shape.clone(), bytes)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a teacher data file", path.display()))?;
        let get = |name: &str, dt: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let t = st.tensor(name).with_context(|| format!("{}: no tensor {name}", path.display()))?;
            if t.dtype() != dt {
                bail!("{}: tensor {name} is {:?}, expected {dt:?}", path.display(), t.dtype());
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let u32s = |b: &[u8]| b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<u32>>();
        let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>();
        let (ids_shape, ids) = get("ids", Dtype::U32)?;
        let (q_shape, queries) = get("queries", Dtype::U32)?;
        let (t_shape, teacher) = get("teacher", Dtype::F32)?;
        let (h_shape, h2o) = get("h2o", Dtype::F32)?;
        let (n, q) = (ids_shape[0], q_shape[0]);
        if t_shape != [q, n] || h_shape != [q, n] {
            bail!("{}: teacher and h2o must be ({q}, {n})", path.display());
        }
        let mut features = Vec::new();
        for (name, _) in st.tensors() {
            if let Some(layer) = name.strip_prefix("features.") {
                let layer: usize = layer.parse().with_context(|| format!("{}: tensor {name} names no layer", path.display()))?;
                let (shape, x) = get(&name, Dtype::F32)?;
                if shape.len() != 2 || shape[0] != n {
                    bail!("{}: {name} must be ({n}, hidden), not {shape:?}", path.display());
                }
                features.push((layer, f32s(&x)));
            }
        }
        features.sort_by_key(|(l, _)| *l);
        let seq = Sequence {
            name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            ids: u32s(&ids),
            queries: u32s(&queries),
            teacher: f32s(&teacher),
            h2o: f32s(&h2o),
            features,
        };
        if seq.queries.iter().any(|&t| t as usize >= n) {
            bail!("{}: a query position is outside the sequence", path.display());
        }
        Ok(seq)
    }
}

fn bytemuck_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every sequence file in `dir`, in name order.
pub fn read_dir(dir: &Path) -> Result<Vec<Sequence>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seq-")) && p.extension().is_some_and(|e| e == "safetensors")
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} holds no teacher data (seq-*.safetensors); make some with `adore collect`", dir.display());
    }
    paths.iter().map(|p| Sequence::read(p)).collect()
}

/// A small deterministic generator (splitmix64) for query sampling and shuffles.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `count` distinct query positions in [first, n), ascending, from the sequence's own seed.
pub fn sample_queries(n: usize, count: usize, first: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    let span = n.saturating_sub(first);
    let mut pool: Vec<u32> = (first as u32..n as u32).collect();
    let take = count.min(span);
    for i in 0..take {
        let j = i + rng.below(span - i);
        pool.swap(i, j);
    }
    pool.truncate(take);
    pool.sort_unstable();
    pool
}

/// Row t of the future view: the mean over queries t..t+h (clipped to the sequence) of the
/// averaged attention `att` ((n, n)) on keys 0..=t, normalised to sum to 1; zeros after t.
pub fn future_row(att: &[f32], n: usize, t: usize, h: usize) -> Vec<f32> {
    let mut row = vec![0f64; n];
    for q in t..(t + h).min(n) {
        for (r, &p) in row[..=t].iter_mut().zip(&att[q * n..q * n + t + 1]) {
            *r += p as f64;
        }
    }
    let z: f64 = row.iter().sum();
    row.iter().map(|&r| if z > 0.0 { (r / z) as f32 } else { 0.0 }).collect()
}

/// The teacher's rows at `queries` (from `view`, (n, n)) and H2O's accumulated attention there
/// (from the (n, n) averaged attention `att`).
pub fn targets(att: &[f32], view: &[f32], n: usize, queries: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut teacher = Vec::with_capacity(queries.len() * n);
    let mut h2o = Vec::with_capacity(queries.len() * n);
    let mut acc = vec![0f64; n];
    let mut row = 0usize;
    for &t in queries {
        let t = t as usize;
        while row <= t {
            for (a, &p) in acc.iter_mut().zip(&att[row * n..(row + 1) * n]) {
                *a += p as f64;
            }
            row += 1;
        }
        teacher.extend_from_slice(&view[t * n..(t + 1) * n]);
        h2o.extend(acc.iter().map(|&a| a as f32));
    }
    (teacher, h2o)
}

pub struct Collect<'a> {
    pub teacher: &'a Teacher,
    pub tokenizer: &'a adore::model::tokenizer::Tokenizer,
    pub fingerprint: &'a str,
    pub texts: &'a [PathBuf],
    pub out: &'a Path,
    pub seq_len: usize,
    pub queries: usize,
    pub seed: u64,
    pub kind: TeacherKind,
    /// Layers after which the residual stream is stored (numbered from 1).
    pub features_after: &'a [usize],
}

/// Runs the teacher over every full window of `seq_len` tokens of each text.
pub fn collect(c: &Collect) -> Result<()> {
    if c.seq_len < 2 || c.queries == 0 {
        bail!("--seq-len must be at least 2 and --queries at least 1");
    }
    std::fs::create_dir_all(c.out).with_context(|| format!("creating {}", c.out.display()))?;
    let manifest_path = c.out.join("manifest.json");
    let manifest = serde_json::json!({
        "format": FORMAT,
        "model_fingerprint": c.fingerprint,
        "seq_len": c.seq_len,
        "queries": c.queries,
        "seed": c.seed,
        "teacher": c.kind.name(),
        "features_after": c.features_after,
    });
    if manifest_path.exists() {
        let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)
            .with_context(|| format!("{} is not a manifest", manifest_path.display()))?;
        // Data collected before the teacher could be chosen is the averaged attention's.
        if let Some(o) = old.as_object_mut() {
            o.entry("teacher").or_insert_with(|| TeacherKind::Attention.name().into());
            o.entry("features_after").or_insert_with(|| serde_json::json!([]));
        }
        if old != manifest {
            bail!("{} holds data made with other settings or for another model ({old}); use a new --out directory", c.out.display());
        }
    } else {
        std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)?;
    }
    // The work: (text, window) pairs, named so that a repeated run finds what is done.
    let mut jobs = Vec::new();
    for (ti, path) in c.texts.iter().enumerate() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let ids = c.tokenizer.encode(&text)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for (w, window) in ids.chunks_exact(c.seq_len).enumerate() {
            jobs.push((format!("seq-{ti:03}-{w:04}-{stem}"), window.to_vec(), ti as u64 * 100_000 + w as u64));
        }
    }
    if jobs.is_empty() {
        bail!("the texts hold fewer than --seq-len {} tokens", c.seq_len);
    }
    let done = |name: &str| Sequence::read(&c.out.join(format!("{name}.safetensors"))).is_ok();
    let todo: Vec<_> = jobs.iter().filter(|(name, _, _)| !done(name)).collect();
    eprintln!("collect: {} sequences of {} tokens, {} already done", jobs.len(), c.seq_len, jobs.len() - todo.len());
    let bar = progress::count((todo.len() * c.seq_len) as u64, "collect", "tokens");
    for (name, ids, seed) in todo {
        let views = c.teacher.attention(ids, c.kind == TeacherKind::Contribution, c.features_after)?;
        let queries = sample_queries(ids.len(), c.queries, 1, c.seed ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let n = ids.len();
        let view = views.contribution.as_deref().unwrap_or(&views.attention);
        let (teacher, h2o) = targets(&views.attention, view, n, &queries);
        let teacher = match c.kind {
            TeacherKind::Future(h) => queries.iter().flat_map(|&t| future_row(&views.attention, n, t as usize, h)).collect(),
            _ => teacher,
        };
        let seq = Sequence { name: name.clone(), ids: ids.clone(), queries, teacher, h2o, features: views.features };
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("model_fingerprint", c.fingerprint.to_string()),
            ("name", name.clone()),
            ("teacher", c.kind.name()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Written under a temporary name and renamed, so a file is either whole or absent.
        let tmp = c.out.join(format!("{name}.part"));
        std::fs::write(&tmp, seq.to_bytes(meta)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, c.out.join(format!("{name}.safetensors")))?;
        progress::advance(&bar, c.seq_len as u64, "collect", "tokens");
    }
    bar.finish_and_clear();
    eprintln!("collect: wrote {} sequences to {}", jobs.len(), c.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{future_row, TeacherKind};

    #[test]
    fn teacher_kinds_parse_and_nonsense_is_refused() {
        assert_eq!("attention".parse::<TeacherKind>().unwrap(), TeacherKind::Attention);
        assert_eq!("future-256".parse::<TeacherKind>().unwrap(), TeacherKind::Future(256));
        assert_eq!(TeacherKind::Future(7).name(), "future-7");
        for bad in ["future-0", "future-", "future-x", "future256", "", "Attention"] {
            let e = bad.parse::<TeacherKind>().unwrap_err().to_string();
            assert!(e.contains("--teacher"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn future_row_averages_the_next_queries_on_keys_up_to_the_query() {
        // 4 queries over 4 keys, causal rows.
        #[rustfmt::skip]
        let att = [
            1.0, 0.0, 0.0, 0.0,
            0.5, 0.5, 0.0, 0.0,
            0.2, 0.2, 0.6, 0.0,
            0.1, 0.3, 0.2, 0.4,
        ];
        // h = 1 is the query's own row.
        assert_eq!(future_row(&att, 4, 2, 1), vec![0.2, 0.2, 0.6, 0.0]);
        // Query 1 with h = 3: rows 1, 2, 3 on keys 0 and 1 sum to (0.8, 1.0), normalised.
        let r = future_row(&att, 4, 1, 3);
        let want = [0.8 / 1.8, 1.0 / 1.8, 0.0, 0.0];
        assert!(r.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{r:?}");
        // The horizon is clipped at the end of the sequence.
        let r = future_row(&att, 4, 3, 100);
        assert!(r.iter().zip([0.1, 0.3, 0.2, 0.4]).all(|(a, b)| (a - b).abs() < 1e-6), "{r:?}");
    }
}
