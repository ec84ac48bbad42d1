//! The teacher: the model with full attention, on the CPU (candle), reporting each query's
//! attention distribution over keys averaged over every head and layer, and the keys'
//! contributions to the attention outputs (each head's weight on a key times the norm of what
//! that key's value adds through the output projection), summed the same way. The LM head is
//! not needed. Same arithmetic as the engine (RMSNorm, RoPE in the file's layout, grouped-query
//! attention, SwiGLU), in f32.

use anyhow::{Context as _, Result};
use candle_core::{DType, Device, Tensor, D};

use adore::model::config::Config;
use adore::ModelSpec;

struct Layer {
    attn_norm: Tensor,
    q: Tensor, // (hidden, q_dim): transposed for x · W
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// What [`Teacher::attention`] reports, (T, T) row-major each.
pub struct Views {
    /// Attention averaged over heads and layers.
    pub attention: Vec<f32>,
    /// Contributions to the attention outputs, summed over heads and layers and normalised per
    /// query (when asked for).
    pub contribution: Option<Vec<f32>>,
    /// The residual stream after each layer asked for (1 = after the first block), (T, hidden)
    /// row-major: what a controller reading the model's state takes as input.
    pub features: Vec<(usize, Vec<f32>)>,
}

pub struct Teacher {
    pub config: Config,
    /// (vocab, hidden) token embeddings, dequantized.
    pub embed: Tensor,
    layers: Vec<Layer>,
}

fn tensor(spec: &ModelSpec, name: &str, transpose: bool) -> Result<Tensor> {
    let t = spec.get(name)?;
    let x = Tensor::from_vec(t.to_f32(), t.shape.as_slice(), &Device::Cpu)?;
    Ok(if transpose { x.t()?.contiguous()? } else { x })
}

impl Teacher {
    pub fn new(spec: &ModelSpec) -> Result<Self> {
        if spec.config.family != adore::model::config::Family::default() {
            anyhow::bail!("the training teacher runs Llama-architecture models only, not {:?}", spec.config.family);
        }
        let embed = tensor(spec, "token_embd.weight", false)?;
        let layers = (0..spec.config.layers)
            .map(|l| {
                let w = |s: &str, tr: bool| tensor(spec, &format!("blk.{l}.{s}.weight"), tr);
                Ok(Layer {
                    attn_norm: w("attn_norm", false)?,
                    q: w("attn_q", true)?,
                    k: w("attn_k", true)?,
                    v: w("attn_v", true)?,
                    o: w("attn_output", true)?,
                    ffn_norm: w("ffn_norm", false)?,
                    gate: w("ffn_gate", true)?,
                    up: w("ffn_up", true)?,
                    down: w("ffn_down", true)?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .context("reading the model's weights for the teacher")?;
        Ok(Teacher { config: spec.config.clone(), embed, layers })
    }

    fn rmsnorm(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(ms + self.config.rms_eps as f64)?.sqrt()?)?.broadcast_mul(g)?)
    }

    /// Rotates (1, heads, T, head_dim) at positions 0..T.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(if self.config.rope_interleaved {
            candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?
        })
    }

    /// Every query's view of the keys, (T, T) row-major each: row t holds a distribution over
    /// keys 0..=t (zeros after). The contributions cost a product per head and layer, so they
    /// are computed only `with_contribution`; the residual stream is kept after the layers in
    /// `features_after` (numbered from 1).
    pub fn attention(&self, ids: &[u32], with_contribution: bool, features_after: &[usize]) -> Result<Views> {
        if let Some(bad) = features_after.iter().find(|&&l| l == 0 || l > self.layers.len()) {
            anyhow::bail!("layer {bad} is not one of this model's layers 1..={}", self.layers.len());
        }
        let c = &self.config;
        let n = ids.len();
        let dev = Device::Cpu;
        let (h, kvh, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let factor = |i: usize| c.rope_factors.get(i).copied().unwrap_or(1.0);
        let inv: Vec<f32> = (0..hd / 2).map(|i| c.rope_theta.powf(-2.0 * i as f32 / hd as f32) / factor(i)).collect();
        let ang: Vec<f32> = (0..n).flat_map(|p| inv.iter().map(move |f| p as f32 * f)).collect();
        let ang = Tensor::from_vec(ang, (n, hd / 2), &dev)?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (n, n), &dev)?;
        let ids_t = Tensor::from_slice(ids, n, &dev)?;
        let mut x = self.embed.index_select(&ids_t, 0)?;
        let mut total = Tensor::zeros((n, n), DType::F32, &dev)?;
        let mut contribution = Tensor::zeros((n, n), DType::F32, &dev)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut features = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = self.rmsnorm(&x, &layer.attn_norm)?;
            let heads = |w: &Tensor, k: usize| -> Result<Tensor> { Ok(xn.matmul(w)?.reshape((1, n, k, hd))?.transpose(1, 2)?) };
            let q = self.rope(&heads(&layer.q, h)?, &cos, &sin)?;
            let k = self.rope(&heads(&layer.k, kvh)?, &cos, &sin)?;
            let v = heads(&layer.v, kvh)?.contiguous()?;
            // Grouped-query attention: each KV head serves h / kvh query heads.
            let rep = |t: &Tensor| -> Result<Tensor> {
                Ok(t.unsqueeze(2)?.expand((1, kvh, h / kvh, n, hd))?.reshape((1, h, n, hd))?.contiguous()?)
            };
            let (k, v) = (rep(&k)?, rep(&v)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            total = (total + p.sum(1)?.squeeze(0)?)?;
            // Head j's output is sum_i p_j(t, i) v_i; through the output projection key i adds
            // p_j(t, i) (v_i W_o,j), whose size is p_j(t, i) |v_i W_o,j|.
            if with_contribution {
                for j in 0..h {
                    let norms =
                        v.narrow(1, j, 1)?.squeeze(0)?.squeeze(0)?.matmul(&layer.o.narrow(0, j * hd, hd)?)?.sqr()?.sum(1)?.sqrt()?;
                    contribution = (contribution + p.narrow(1, j, 1)?.squeeze(0)?.squeeze(0)?.broadcast_mul(&norms.unsqueeze(0)?)?)?;
                }
            }
            let att = p.matmul(&v)?.transpose(1, 2)?.reshape((n, h * hd))?;
            x = (x + att.matmul(&layer.o)?)?;
            let xn = self.rmsnorm(&x, &layer.ffn_norm)?;
            let g = xn.matmul(&layer.gate)?.silu()?;
            let u = xn.matmul(&layer.up)?;
            x = (x + (g * u)?.matmul(&layer.down)?)?;
            if features_after.contains(&(li + 1)) {
                features.push((li + 1, x.flatten_all()?.to_vec1::<f32>()?));
            }
        }
        let total = (total / (h * self.layers.len()) as f64)?;
        let contribution = match with_contribution {
            true => Some(contribution.broadcast_div(&contribution.sum_keepdim(1)?)?.flatten_all()?.to_vec1::<f32>()?),
            false => None,
        };
        Ok(Views { attention: total.flatten_all()?.to_vec1::<f32>()?, contribution, features })
    }
}
