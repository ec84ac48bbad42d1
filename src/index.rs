//! The key index: adore's ranking read from the model itself. Per layer and KV head g, two
//! learned maps A_g, B_g (head_dim × rank) give every query head a short query A_gᵀ q and every
//! token a short key B_gᵀ k, from the layer's real rotated queries and keys, so that
//! (A_gᵀ q) · (B_gᵀ k) approximates the attention logit q · k up to a constant per query. A
//! layer's attention over the short keys (rank floats per token and KV head) then ranks every
//! past token for that layer, and the layer attends to its best `budget` with full K/V.
//!
//! The maps are fitted, not trained by gradient: for query second moments S_q = E[q qᵀ] (over
//! the group's query heads) and key covariance S_k (centred: a key's mean shifts every logit of a
//! query equally and so never changes a softmax), the rank-r product A Bᵀ minimising
//! E[(qᵀ (I - A Bᵀ) k)²] is S_q^{-1/2} U_r Σ_r V_rᵀ S_k^{-1/2}, from the singular value
//! decomposition U Σ Vᵀ of S_q^{1/2} S_k^{1/2} (queries and keys taken as independent). The
//! file (safetensors, like the controller's) names the model it was fitted for.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::model_file;
use crate::ops::key_score::ShortKeyType;
use crate::session::{Session, SessionOptions};

/// How a session stores each token's short keys: int8 with a scale per key, 20 bytes a key of
/// rank 16 against 32 in f16 and 64 in f32 (the scan over every token's keys is what grows with
/// the context, and on a CPU device it waits on memory). The ranking moves by the rounding of
/// each value to 1/254 of its key's largest, far below the index's own error.
pub const SHORT_KEYS: ShortKeyType = ShortKeyType::I8;

const KIND: model_file::Kind = model_file::Kind {
    name: "key index",
    plural: "key indexes",
    format: "adore-key-index-v1",
    made: "fitted",
    remedy: "fit one for this model (`adore index fit`)",
};

/// A prompt gets a key index fitted to it (for a model with none) when it has at least this
/// many tokens: on the default model an index fitted to 128 tokens of one play already ranks
/// another play well above sink (docs/results.md, 2026-12-06)...
pub const FIT_MIN_TOKENS: usize = 128;
/// ...from at most this many (its first).
pub const FIT_MAX_TOKENS: usize = 1024;
/// Floats per token and KV head of an index fitted to a prompt (the shipped indexes' rank).
pub const FIT_RANK: usize = 16;

/// Key indexes shipped with the library: (file name, contents).
const BUILTIN: &[(&str, &[u8])] = &[
    ("controllers/smollm2-135m-instruct.index.safetensors", include_bytes!("../controllers/smollm2-135m-instruct.index.safetensors")),
    ("controllers/gemma-3-270m.index.safetensors", include_bytes!("../controllers/gemma-3-270m.index.safetensors")),
    ("controllers/qwen2.5-coder-0.5b.index.safetensors", include_bytes!("../controllers/qwen2.5-coder-0.5b.index.safetensors")),
];

/// A fitted key index.
#[derive(Clone, Debug)]
pub struct KeyIndex {
    /// sha256 of the model's configuration and embedding table.
    pub fingerprint: String,
    pub layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Floats per token and KV head in the index (a multiple of 4).
    pub rank: usize,
    /// The first layers attend to every token (their index maps are unused).
    pub dense_layers: usize,
    /// How the maps were made (free text).
    pub fitting: String,
    /// (layers, n_kv_heads, head_dim, rank): the query map of each KV head's group.
    pub a: Vec<f32>,
    /// (layers, n_kv_heads, head_dim, rank): the key map.
    pub b: Vec<f32>,
}

/// Second moments of one layer's rotated queries and keys, gathered over texts.
#[derive(Clone, Debug)]
pub struct IndexStats {
    pub layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// (layers, n_kv_heads, hd, hd) Σ q qᵀ over the group's query heads.
    q_outer: Vec<f64>,
    q_count: Vec<f64>,
    /// (layers, n_kv_heads, hd, hd) Σ k kᵀ and (layers, n_kv_heads, hd) Σ k.
    k_outer: Vec<f64>,
    k_sum: Vec<f64>,
    k_count: Vec<f64>,
}

impl IndexStats {
    pub fn new(layers: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        let (hd, g) = (head_dim, layers * n_kv_heads);
        IndexStats {
            layers,
            n_heads,
            n_kv_heads,
            head_dim,
            q_outer: vec![0.0; g * hd * hd],
            q_count: vec![0.0; g],
            k_outer: vec![0.0; g * hd * hd],
            k_sum: vec![0.0; g * hd],
            k_count: vec![0.0; g],
        }
    }

    /// Adds rows of layer `l`'s rotated queries, (rows, n_heads, head_dim).
    pub fn add_queries(&mut self, l: usize, q: &[f32]) {
        let (hd, group) = (self.head_dim, self.n_heads / self.n_kv_heads);
        for row in q.chunks_exact(self.n_heads * hd) {
            for (h, v) in row.chunks_exact(hd).enumerate() {
                let g = l * self.n_kv_heads + h / group;
                add_outer(&mut self.q_outer[g * hd * hd..(g + 1) * hd * hd], v);
                self.q_count[g] += 1.0;
            }
        }
    }

    /// Adds rows of layer `l`'s rotated keys, (rows, n_kv_heads, head_dim).
    pub fn add_keys(&mut self, l: usize, k: &[f32]) {
        let hd = self.head_dim;
        for row in k.chunks_exact(self.n_kv_heads * hd) {
            for (h, v) in row.chunks_exact(hd).enumerate() {
                let g = l * self.n_kv_heads + h;
                add_outer(&mut self.k_outer[g * hd * hd..(g + 1) * hd * hd], v);
                for (s, &x) in self.k_sum[g * hd..(g + 1) * hd].iter_mut().zip(v) {
                    *s += x as f64;
                }
                self.k_count[g] += 1.0;
            }
        }
    }

    /// Layer l, KV head h: (S_q, S_k centred).
    fn moments(&self, g: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let hd = self.head_dim;
        let (nq, nk) = (self.q_count[g], self.k_count[g]);
        if nq < 1.0 || nk < 2.0 {
            return Err(Error::arg("fitting a key index needs queries and keys of every layer: give it some text"));
        }
        let sq: Vec<f64> = self.q_outer[g * hd * hd..(g + 1) * hd * hd].iter().map(|x| x / nq).collect();
        let mean: Vec<f64> = self.k_sum[g * hd..(g + 1) * hd].iter().map(|x| x / nk).collect();
        let mut sk: Vec<f64> = self.k_outer[g * hd * hd..(g + 1) * hd * hd].iter().map(|x| x / nk).collect();
        for i in 0..hd {
            for j in 0..hd {
                sk[i * hd + j] -= mean[i] * mean[j];
            }
        }
        Ok((sq, sk))
    }
}

fn add_outer(acc: &mut [f64], v: &[f32]) {
    let n = v.len();
    for i in 0..n {
        let vi = v[i] as f64;
        for j in 0..n {
            acc[i * n + j] += vi * v[j] as f64;
        }
    }
}

/// Eigenvalues (descending) and unit eigenvectors (columns of the returned n × n matrix, in
/// the same order) of a symmetric matrix, by cyclic Jacobi rotations.
pub fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        if off.sqrt() <= 1e-15 * norm {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (c, &i) in order.iter().enumerate() {
        for k in 0..n {
            vecs[k * n + c] = v[k * n + i];
        }
    }
    (vals, vecs)
}

/// S^{power} of a symmetric positive semi-definite matrix, eigenvalues floored at `floor`.
fn sym_power(m: &[f64], n: usize, power: f64, floor: f64) -> Vec<f64> {
    let (vals, vecs) = symmetric_eigen(m, n);
    let mut out = vec![0.0; n * n];
    for (c, &l) in vals.iter().enumerate() {
        let w = l.max(floor).powf(power);
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] += w * vecs[i * n + c] * vecs[j * n + c];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// The rank-r maps (A, B), each (n, r) row-major, minimising E[(qᵀ (I - A Bᵀ) k)²] for query
/// second moments `sq` and key covariance `sk`.
pub fn fit_maps(sq: &[f64], sk: &[f64], n: usize, rank: usize) -> (Vec<f64>, Vec<f64>) {
    let floor = |m: &[f64]| 1e-9 * (0..n).map(|i| m[i * n + i]).sum::<f64>().max(f64::MIN_POSITIVE) / n as f64;
    let (fq, fk) = (floor(sq), floor(sk));
    let (lq, lk) = (sym_power(sq, n, 0.5, fq), sym_power(sk, n, 0.5, fk));
    let (lq_inv, lk_inv) = (sym_power(sq, n, -0.5, fq), sym_power(sk, n, -0.5, fk));
    let m = matmul(&lq, &lk, n);
    // M = U Σ Vᵀ: V and Σ² from MᵀM, U = M V Σ^{-1}.
    let mut mtm = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            mtm[i * n + j] = (0..n).map(|k| m[k * n + i] * m[k * n + j]).sum();
        }
    }
    let (s2, v) = symmetric_eigen(&mtm, n);
    let (mut a, mut b) = (vec![0.0; n * rank], vec![0.0; n * rank]);
    for c in 0..rank.min(n) {
        let s = s2[c].max(0.0).sqrt();
        if s <= 0.0 {
            continue;
        }
        let vc: Vec<f64> = (0..n).map(|k| v[k * n + c]).collect();
        let uc: Vec<f64> = (0..n).map(|i| (0..n).map(|k| m[i * n + k] * vc[k]).sum::<f64>() / s).collect();
        let root = s.sqrt();
        for i in 0..n {
            a[i * rank + c] = root * (0..n).map(|k| lq_inv[i * n + k] * uc[k]).sum::<f64>();
            b[i * rank + c] = root * (0..n).map(|k| lk_inv[i * n + k] * vc[k]).sum::<f64>();
        }
    }
    (a, b)
}

impl KeyIndex {
    /// Fits an index of `rank` from gathered moments; the first `dense_layers` layers attend
    /// densely and get no maps of their own (they are fitted anyway, and unused).
    pub fn fit(fingerprint: &str, stats: &IndexStats, rank: usize, dense_layers: usize, fitting: String) -> Result<Self> {
        let hd = stats.head_dim;
        if rank == 0 || !rank.is_multiple_of(4) || rank > hd {
            return Err(Error::arg(format!("the key index's rank must be a multiple of 4 from 4 to head_dim ({hd}), not {rank}")));
        }
        if dense_layers >= stats.layers {
            return Err(Error::arg(format!("{dense_layers} dense layers leave none of the model's {} to index", stats.layers)));
        }
        let per = hd * rank;
        let (mut a, mut b) = (Vec::with_capacity(stats.layers * stats.n_kv_heads * per), Vec::new());
        for g in 0..stats.layers * stats.n_kv_heads {
            let (sq, sk) = stats.moments(g)?;
            let (ag, bg) = fit_maps(&sq, &sk, hd, rank);
            a.extend(ag.iter().map(|&x| x as f32));
            b.extend(bg.iter().map(|&x| x as f32));
        }
        Ok(KeyIndex {
            fingerprint: fingerprint.to_string(),
            layers: stats.layers,
            n_heads: stats.n_heads,
            n_kv_heads: stats.n_kv_heads,
            head_dim: hd,
            rank,
            dense_layers,
            fitting,
            a,
            b,
        })
    }

    fn map<'a>(&self, m: &'a [f32], l: usize, g: usize) -> &'a [f32] {
        let per = self.head_dim * self.rank;
        let at = (l * self.n_kv_heads + g) * per;
        &m[at..at + per]
    }

    /// Layer `l`'s maps as the GPU reads them (shaders/short_rows.wgsl): (2, n_kv_heads,
    /// head_dim, rank), the query maps a_g first, scaled by sqrt(rank / head_dim) so that
    /// attention over the short vectors (which scales by 1 / sqrt(rank)) sees the model's logit
    /// scale 1 / sqrt(head_dim), then the key maps b_g.
    pub fn maps(&self, l: usize) -> Vec<f32> {
        let scale = (self.rank as f32 / self.head_dim as f32).sqrt();
        let mut w = Vec::with_capacity(2 * self.n_kv_heads * self.head_dim * self.rank);
        for g in 0..self.n_kv_heads {
            w.extend(self.map(&self.a, l, g).iter().map(|v| v * scale));
        }
        for g in 0..self.n_kv_heads {
            w.extend_from_slice(self.map(&self.b, l, g));
        }
        w
    }

    /// Reference: head `h`'s short query (or with `key`, KV head `h`'s short key) of the vector
    /// `x` (head_dim) at layer `l`, from [`KeyIndex::maps`].
    pub fn short(&self, l: usize, h: usize, x: &[f32], key: bool) -> Vec<f32> {
        let (hd, r) = (self.head_dim, self.rank);
        let g = if key { self.n_kv_heads + h } else { h / (self.n_heads / self.n_kv_heads) };
        let m = &self.maps(l)[g * hd * r..(g + 1) * hd * r];
        (0..r).map(|c| (0..hd).map(|i| m[i * r + c] * x[i]).sum()).collect()
    }

    /// Reference: the approximate logit of query head `h`'s vector `q` against a key `k` of
    /// its KV head at layer `l` (without the 1 / sqrt(head_dim) scale).
    pub fn logit(&self, l: usize, h: usize, q: &[f32], k: &[f32]) -> f32 {
        self.logit_as(l, h, q, k, ShortKeyType::F32)
    }

    /// [`KeyIndex::logit`] with the short key as a session stores it ([`SHORT_KEYS`]).
    pub fn logit_stored(&self, l: usize, h: usize, q: &[f32], k: &[f32]) -> f32 {
        self.logit_as(l, h, q, k, SHORT_KEYS)
    }

    fn logit_as(&self, l: usize, h: usize, q: &[f32], k: &[f32], kind: ShortKeyType) -> f32 {
        let (hd, r) = (self.head_dim, self.rank);
        let g = h / (self.n_heads / self.n_kv_heads);
        let (a, b) = (self.map(&self.a, l, g), self.map(&self.b, l, g));
        let key: Vec<f32> = (0..r).map(|c| (0..hd).map(|i| b[i * r + c] * k[i]).sum::<f32>()).collect();
        let key = kind.round(&key, r);
        (0..r).map(|c| (0..hd).map(|i| a[i * r + c] * q[i]).sum::<f32>() * key[c]).sum()
    }

    /// Bytes the index adds per token: rank elements ([`SHORT_KEYS`]) per KV head of every
    /// indexed layer.
    pub fn bytes_per_token(&self) -> usize {
        (self.layers - self.dense_layers) * SHORT_KEYS.bytes_per_token(self.n_kv_heads, self.rank)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let shape = vec![self.layers, self.n_kv_heads, self.head_dim, self.rank];
        let tensors = [("query_map", shape.clone(), &self.a[..]), ("key_map", shape, &self.b[..])];
        let meta =
            [("n_heads", self.n_heads.to_string()), ("dense_layers", self.dense_layers.to_string()), ("fitting", self.fitting.clone())];
        model_file::write(&KIND, &self.fingerprint, &tensors, &meta)
    }

    /// Reads an index file, checking that it was fitted for the model with `fingerprint`.
    pub fn from_bytes(file: &str, bytes: &[u8], fingerprint: &str) -> Result<Self> {
        let f = model_file::Opened::open(file, bytes, &KIND, fingerprint)?;
        let (bad, num) = (|what: String| f.meta.bad(what), |k: &str| f.meta.num(k));
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let (shape, v) = f.tensor(name)?;
            if shape.len() != 4 {
                return Err(bad(format!("{name} has shape {shape:?}, not (layers, kv heads, head_dim, rank)")));
            }
            Ok((shape, v))
        };
        let (shape, a) = read("query_map")?;
        let (shape_b, b) = read("key_map")?;
        if shape_b != shape {
            return Err(Error::ShapeMismatch { tensor: format!("{file}: key_map"), expected: shape, found: shape_b });
        }
        let (n_heads, dense_layers) = (num("n_heads")?, num("dense_layers")?);
        let (layers, n_kv_heads, head_dim, rank) = (shape[0], shape[1], shape[2], shape[3]);
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) || rank == 0 || !rank.is_multiple_of(4) || dense_layers >= layers {
            return Err(bad(format!(
                "{n_heads} query heads over {n_kv_heads} KV heads, rank {rank}, {dense_layers} dense of {layers} layers is not an index"
            )));
        }
        let fitting = f.meta.values.get("fitting").cloned().unwrap_or_default();
        Ok(KeyIndex { fingerprint: fingerprint.to_string(), layers, n_heads, n_kv_heads, head_dim, rank, dense_layers, fitting, a, b })
    }

    /// The index shipped for the model with `fingerprint`, if there is one.
    pub fn builtin(fingerprint: &str) -> Option<Self> {
        BUILTIN.iter().find_map(|(name, bytes)| KeyIndex::from_bytes(name, bytes, fingerprint).ok())
    }

    /// Checks the index against a model's shape.
    pub fn check(&self, c: &crate::model::Config) -> Result<()> {
        if (self.layers, self.n_heads, self.n_kv_heads, self.head_dim) != (c.layers, c.n_heads, c.n_kv_heads, c.head_dim) {
            return Err(Error::Config(format!(
                "the key index has {} layers of {} query heads over {} KV heads of {}; the model {} of {} over {} of {}",
                self.layers, self.n_heads, self.n_kv_heads, self.head_dim, c.layers, c.n_heads, c.n_kv_heads, c.head_dim
            )));
        }
        Ok(())
    }
}

/// A session of full attention that has run `ids` as a prompt, recording every layer's rotated
/// queries: `session.inspect().queries(l)` and `.keys(l)` then give layer l's queries and
/// keys by position (a fresh full-attention session places position p in slot p). `done` is
/// told how many tokens have run after each chunk.
pub async fn record(model: &Arc<Model>, ids: &[u32], chunk: usize, mut done: impl FnMut(usize)) -> Result<Session> {
    let options = SessionOptions { context: ids.len(), chunk, record_queries: true, ..Default::default() };
    let mut s = Session::new(model.clone(), options)?;
    let mut n = 0;
    for part in ids.chunks(chunk) {
        s.prefill(part).await?;
        n += part.len();
        done(n);
    }
    Ok(s)
}

/// A key index fitted to a prompt, for a model with none: rank [`FIT_RANK`] (or the largest
/// multiple of 4 up to head_dim), from the rotated queries and keys of the prompt's first
/// [`FIT_MAX_TOKENS`] tokens under full attention. A prompt needs [`FIT_MIN_TOKENS`] tokens.
pub async fn fit_to_prompt(model: &Arc<Model>, ids: &[u32], chunk: usize, done: impl FnMut(usize)) -> Result<KeyIndex> {
    let c = &model.config;
    if ids.len() < FIT_MIN_TOKENS {
        return Err(Error::arg(format!("a key index is fitted to a prompt of at least {FIT_MIN_TOKENS} tokens, not {}", ids.len())));
    }
    let ids = &ids[..ids.len().min(FIT_MAX_TOKENS)];
    let rank = FIT_RANK.min(c.head_dim / 4 * 4);
    let s = record(model, ids, chunk, done).await?;
    let mut stats = IndexStats::new(c.layers, c.n_heads, c.n_kv_heads, c.head_dim);
    for l in 0..c.layers {
        stats.add_queries(l, &s.inspect().queries(l).await?);
        stats.add_keys(l, &s.inspect().keys(l).await?);
    }
    let fitting = format!("rank {rank} fitted to rotated queries and keys of a prompt ({} tokens)", ids.len());
    KeyIndex::fit(&model.fingerprint, &stats, rank, 0, fitting)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    #[test]
    fn eigen_reconstructs() {
        let n = 7;
        let mut s = 3;
        let x: Vec<f64> = (0..n * n).map(|_| rng(&mut s)).collect();
        let m: Vec<f64> = (0..n * n).map(|i| x[i] + x[(i % n) * n + i / n]).collect();
        let (vals, vecs) = symmetric_eigen(&m, n);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|c| vals[c] * vecs[i * n + c] * vecs[j * n + c]).sum();
                assert!((r - m[i * n + j]).abs() < 1e-9, "{r} vs {}", m[i * n + j]);
            }
        }
    }

    #[test]
    fn full_rank_maps_are_exact_and_low_rank_beats_truncated_keys() {
        // Correlated keys with a dominant direction the queries barely look along.
        let (n, samples) = (8, 4000);
        let mut s = 11;
        let mut stats = IndexStats::new(1, 1, 1, n);
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        for _ in 0..samples {
            let q: Vec<f32> = (0..n).map(|i| (rng(&mut s) * if i < 2 { 4.0 } else { 0.5 }) as f32).collect();
            let k: Vec<f32> = (0..n)
                .map(|i| {
                    (rng(&mut s)
                        * match i {
                            0 | 1 => 0.8,
                            _ if i == n - 1 => 6.0,
                            _ => 1.0,
                        }
                        + 0.3) as f32
                })
                .collect();
            stats.add_queries(0, &q);
            stats.add_keys(0, &k);
            qs.push(q);
            ks.push(k);
        }
        let err = |idx: &KeyIndex| -> f64 {
            let mut e = 0.0;
            for t in 0..500 {
                let (q, k, k2) = (&qs[t], &ks[t], &ks[t + 1]);
                // Differences of logits between two keys: what a softmax sees.
                let exact: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() - q.iter().zip(k2).map(|(a, b)| a * b).sum::<f32>();
                let approx = idx.logit(0, 0, q, k) - idx.logit(0, 0, q, k2);
                e += ((exact - approx) as f64).powi(2);
            }
            e / 500.0
        };
        let full = KeyIndex::fit("f", &stats, n, 0, String::new()).unwrap();
        assert!(err(&full) < 1e-8, "full rank is exact: {}", err(&full));
        let low = KeyIndex::fit("f", &stats, 4, 0, String::new()).unwrap();
        // Principal components of the keys alone keep the direction the queries ignore.
        let (_, vecs) = symmetric_eigen(&stats.moments(0).unwrap().1, n);
        let mut pca = low.clone();
        for i in 0..n {
            for c in 0..4 {
                pca.a[i * 4 + c] = vecs[i * n + c] as f32;
                pca.b[i * 4 + c] = vecs[i * n + c] as f32;
            }
        }
        assert!(err(&low) < 0.5 * err(&pca), "fitted {} vs key PCA {}", err(&low), err(&pca));
    }

    #[test]
    fn file_round_trip_and_refusals() {
        let mut stats = IndexStats::new(2, 4, 2, 8);
        let mut s = 5;
        for l in 0..2 {
            let q: Vec<f32> = (0..3 * 32).map(|_| rng(&mut s) as f32).collect();
            let k: Vec<f32> = (0..3 * 16).map(|_| rng(&mut s) as f32).collect();
            stats.add_queries(l, &q);
            stats.add_keys(l, &k);
        }
        let idx = KeyIndex::fit("abc", &stats, 4, 1, "test".into()).unwrap();
        let back = KeyIndex::from_bytes("x", &idx.to_bytes().unwrap(), "abc").unwrap();
        assert_eq!((back.a, back.b, back.rank, back.dense_layers, back.n_heads), (idx.a.clone(), idx.b.clone(), 4, 1, 4));
        assert!(KeyIndex::from_bytes("x", &idx.to_bytes().unwrap(), "other").unwrap_err().to_string().contains("another model"));
        assert!(KeyIndex::from_bytes("x", b"not a file", "abc").is_err());
        assert!(KeyIndex::fit("abc", &stats, 6, 0, String::new()).is_err());
        assert!(KeyIndex::fit("abc", &stats, 4, 2, String::new()).is_err());
        assert!(KeyIndex::fit("abc", &IndexStats::new(2, 4, 2, 8), 4, 0, String::new()).is_err());
        // The maps as the GPU reads them give the reference logit.
        let q: Vec<f32> = (0..32).map(|_| rng(&mut s) as f32).collect();
        let k: Vec<f32> = (0..16).map(|_| rng(&mut s) as f32).collect();
        for h in 0..4 {
            let g = h / 2;
            let (qs, ks) = (idx.short(1, h, &q[h * 8..h * 8 + 8], false), idx.short(1, g, &k[g * 8..g * 8 + 8], true));
            let short: f32 = (0..4).map(|c| qs[c] * ks[c]).sum::<f32>() / (4f32 / 8.0).sqrt();
            let want = idx.logit(1, h, &q[h * 8..h * 8 + 8], &k[g * 8..g * 8 + 8]);
            assert!((short - want).abs() < 1e-4, "head {h}: {short} vs {want}");
        }
    }
}
