//! The ADORE controller: a GRU over the model's own token embeddings that gives every token a
//! key, and the current token a query; score(t, i) = q_t · k_i / sqrt(d_c) + b(bucket(t - i)).
//! Weights live in a safetensors file whose metadata names the model they were made for.

use crate::error::{Error, Result};
use crate::model_file;

const KIND: model_file::Kind = model_file::Kind {
    name: "controller",
    plural: "controllers",
    format: "adore-controller-v1",
    made: "made",
    remedy: "train or init a controller for this model",
};

/// Added to the mean square of a residual-stream row before it is normalised as input.
pub const INPUT_EPS: f32 = 1e-6;

/// Controllers shipped with the library: (file name, contents).
const BUILTIN: &[(&str, &[u8])] =
    &[("controllers/smollm2-135m-instruct.safetensors", include_bytes!("../controllers/smollm2-135m-instruct.safetensors"))];

/// Controller weights, row-major f32. GRU gates in PyTorch's order (r, z, n).
#[derive(Clone, Debug)]
pub struct Controller {
    pub d_c: usize,
    pub hidden: usize,
    pub buckets: usize,
    pub max_distance: usize,
    /// sha256 of the model's configuration and embedding table.
    pub fingerprint: String,
    /// How the weights were made (free text).
    pub training: String,
    /// What the GRU reads for each token: 0, the token's embedding (ADORE.md's design); L > 0,
    /// the model's residual stream after layer L (numbered from 1), RMS-normalised, so that
    /// keys and queries see the token in its context.
    pub input_layer: usize,
    pub proj: Vec<f32>,        // (d_c, hidden)
    pub w_ih: Vec<f32>,        // (3 d_c, d_c)
    pub w_hh: Vec<f32>,        // (3 d_c, d_c)
    pub b_ih: Vec<f32>,        // (3 d_c)
    pub b_hh: Vec<f32>,        // (3 d_c)
    pub w_k: Vec<f32>,         // (d_c, d_c)
    pub w_q: Vec<f32>,         // (d_c, d_c)
    pub bucket_bias: Vec<f32>, // (buckets)
}

/// T5-style logarithmic distance buckets (one direction): exact below buckets / 2, then
/// log-spaced up to max_distance.
pub fn bucket(distance: u32, buckets: usize, max_distance: usize) -> usize {
    let exact = (buckets / 2).max(1);
    let d = distance as usize;
    if d < exact {
        return d;
    }
    let span = ((max_distance as f64) / exact as f64).ln().max(1e-9);
    let b = exact + (((d as f64) / exact as f64).ln() / span * (buckets - exact) as f64) as usize;
    b.min(buckets - 1)
}

/// A residual-stream row divided by its root mean square (with [`INPUT_EPS`]): a controller's
/// input when it reads the residual stream.
pub fn rms_normalised(x: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|v| *v as f64 * *v as f64).sum::<f64>() / x.len().max(1) as f64;
    let inv = 1.0 / (ms + INPUT_EPS as f64).sqrt();
    x.iter().map(|v| (*v as f64 * inv) as f32).collect()
}

impl Controller {
    /// A seeded random controller for `model` (for tests until one is trained).
    pub fn random(fingerprint: &str, hidden: usize, d_c: usize, buckets: usize, seed: u64) -> Result<Self> {
        if d_c == 0 || d_c > 256 || !(2..=1024).contains(&buckets) || hidden == 0 {
            return Err(Error::arg(format!("controller width {d_c} (1..=256) or {buckets} buckets (2..=1024) out of range")));
        }
        let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
        let mut next = move |scale: f32| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        };
        let mut v = |n: usize, scale: f32| (0..n).map(|_| next(scale)).collect::<Vec<f32>>();
        let (a, b) = (1.0 / (hidden as f32).sqrt(), 1.0 / (d_c as f32).sqrt());
        Ok(Controller {
            d_c,
            hidden,
            buckets,
            max_distance: 8192,
            fingerprint: fingerprint.to_string(),
            training: format!("random initialisation, seed {seed} (untrained)"),
            input_layer: 0,
            proj: v(d_c * hidden, a),
            w_ih: v(3 * d_c * d_c, b),
            w_hh: v(3 * d_c * d_c, b),
            b_ih: v(3 * d_c, b),
            b_hh: v(3 * d_c, b),
            w_k: v(d_c * d_c, b),
            w_q: v(d_c * d_c, b),
            bucket_bias: v(buckets, 0.5),
        })
    }

    fn tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let (d, h) = (self.d_c, self.hidden);
        vec![
            ("proj", vec![d, h], &self.proj[..]),
            ("gru.w_ih", vec![3 * d, d], &self.w_ih[..]),
            ("gru.w_hh", vec![3 * d, d], &self.w_hh[..]),
            ("gru.b_ih", vec![3 * d], &self.b_ih[..]),
            ("gru.b_hh", vec![3 * d], &self.b_hh[..]),
            ("w_k", vec![d, d], &self.w_k[..]),
            ("w_q", vec![d, d], &self.w_q[..]),
            ("bucket_bias", vec![self.buckets], &self.bucket_bias[..]),
        ]
    }

    /// The controller as a safetensors file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = [
            ("d_c", self.d_c.to_string()),
            ("hidden", self.hidden.to_string()),
            ("buckets", self.buckets.to_string()),
            ("max_distance", self.max_distance.to_string()),
            ("training", self.training.clone()),
            ("input_layer", self.input_layer.to_string()),
        ];
        model_file::write(&KIND, &self.fingerprint, &self.tensors(), &meta)
    }

    /// Reads a controller file, checking that it was made for the model with `fingerprint`.
    pub fn from_bytes(file: &str, bytes: &[u8], fingerprint: &str) -> Result<Self> {
        let f = model_file::Opened::open(file, bytes, &KIND, fingerprint)?;
        let meta = &f.meta;
        let (bad, num) = (|what: String| meta.bad(what), |k: &str| meta.num(k));
        let (d_c, hidden, buckets) = (num("d_c")?, num("hidden")?, num("buckets")?);
        // The projection alone holds hidden x d_c floats: sizes the file cannot hold are lies,
        // refused before anything is allocated for them.
        if hidden.checked_mul(d_c).and_then(|n| n.checked_mul(4)).is_none_or(|n| n > bytes.len()) {
            return Err(bad(format!("hidden {hidden} x d_c {d_c} floats do not fit in a file of {} bytes", bytes.len())));
        }
        let mut c = Controller::random(fingerprint, hidden, d_c, buckets, 0)?;
        c.max_distance = num("max_distance")?.max(1);
        c.training = meta.values.get("training").cloned().unwrap_or_default();
        // Files from before the choice read the embedding.
        c.input_layer = match meta.values.get("input_layer") {
            Some(_) => num("input_layer")?,
            None => 0,
        };
        let shapes: Vec<(&'static str, Vec<usize>)> = c.tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
        for (name, shape) in shapes {
            let (found, v) = f.tensor(name)?;
            if found != shape {
                return Err(Error::ShapeMismatch { tensor: format!("{file}: {name}"), expected: shape, found });
            }
            *match name {
                "proj" => &mut c.proj,
                "gru.w_ih" => &mut c.w_ih,
                "gru.w_hh" => &mut c.w_hh,
                "gru.b_ih" => &mut c.b_ih,
                "gru.b_hh" => &mut c.b_hh,
                "w_k" => &mut c.w_k,
                "w_q" => &mut c.w_q,
                _ => &mut c.bucket_bias,
            } = v;
        }
        Ok(c)
    }

    /// The trained controller shipped for the model with `fingerprint`, if there is one (the
    /// default model's, trained as docs/training.md describes).
    pub fn builtin(fingerprint: &str) -> Option<Self> {
        BUILTIN.iter().find_map(|(name, bytes)| Controller::from_bytes(name, bytes, fingerprint).ok())
    }

    /// Reference: what the GRU reads for a token from the residual-stream row `x` at
    /// `input_layer` (the embedding itself at 0, otherwise divided by its root mean square).
    pub fn input(&self, x: &[f32]) -> Vec<f32> {
        if self.input_layer == 0 {
            return x.to_vec();
        }
        rms_normalised(x)
    }

    /// Reference: one GRU step from input `e` (see [`Controller::input`]), updating `h`.
    pub fn gru_step(&self, e: &[f32], h: &mut [f32]) {
        let d = self.d_c;
        let u: Vec<f64> = (0..d).map(|i| (0..self.hidden).map(|k| self.proj[i * self.hidden + k] as f64 * e[k] as f64).sum()).collect();
        let lin = |w: &[f32], b: &[f32], x: &dyn Fn(usize) -> f64, row: usize| -> f64 {
            b[row] as f64 + (0..d).map(|k| w[row * d + k] as f64 * x(k)).sum::<f64>()
        };
        let hv: Vec<f64> = h.iter().map(|v| *v as f64).collect();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let new: Vec<f32> = (0..d)
            .map(|i| {
                let r = sig(lin(&self.w_ih, &self.b_ih, &|k| u[k], i) + lin(&self.w_hh, &self.b_hh, &|k| hv[k], i));
                let z = sig(lin(&self.w_ih, &self.b_ih, &|k| u[k], d + i) + lin(&self.w_hh, &self.b_hh, &|k| hv[k], d + i));
                let n = (lin(&self.w_ih, &self.b_ih, &|k| u[k], 2 * d + i) + r * lin(&self.w_hh, &self.b_hh, &|k| hv[k], 2 * d + i)).tanh();
                ((1.0 - z) * n + z * hv[i]) as f32
            })
            .collect();
        h.copy_from_slice(&new);
    }

    /// Reference: `w` (d_c, d_c) times `h`.
    pub fn project(&self, w: &[f32], h: &[f32]) -> Vec<f32> {
        let d = self.d_c;
        (0..d).map(|i| (0..d).map(|k| w[i * d + k] as f64 * h[k] as f64).sum::<f64>() as f32).collect()
    }

    /// Reference: score of key `k` (of the token at `pos`) for query `q` of the token at `t`.
    pub fn score(&self, q: &[f32], k: &[f32], t: u32, pos: u32) -> f32 {
        let dot: f64 = q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
        (dot / (self.d_c as f64).sqrt()) as f32 + self.bucket_bias[bucket(t.saturating_sub(pos), self.buckets, self.max_distance)]
    }
}
