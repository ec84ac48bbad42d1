//! Model hyper-parameters, read from GGUF metadata or a Hugging Face config.json, and checked.

use serde::Deserialize;

use super::gguf::Gguf;
use crate::error::{Error, Result};

/// Llama-family hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Trained context length.
    pub context: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// RoPE pairs (2i, 2i+1) (llama.cpp's GGUF row layout) rather than (i, i + d/2).
    pub rope_interleaved: bool,
    /// How the family's forward pass differs from Llama's.
    pub family: Family,
    /// RoPE scaling: pair i's frequency divided by rope_factors[i] (head_dim / 2 values) in the
    /// layers that use `rope_theta` (Llama 3's per-frequency factors, or linear scaling's one
    /// factor repeated); empty: none.
    pub rope_factors: Vec<f32>,
}

/// The differences of a model family from Llama's forward pass, as data. The default is Llama.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// Biases added to the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// The embedding rows scaled by this (Gemma 3: sqrt(hidden)).
    pub embed_scale: f32,
    /// RMSNorm of each head's q and k before RoPE, with weights of head_dim (Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and feed-forward outputs before they are added (Gemma 3).
    pub post_norms: bool,
    /// GELU (tanh approximation) gating the feed-forward instead of SiLU (Gemma 3).
    pub gelu: bool,
    /// Sliding window of the local layers (0: every layer attends to all earlier tokens).
    pub sliding_window: usize,
    /// With a sliding window, every `global_every`-th layer (the layers l with (l + 1) a multiple
    /// of it) is global; 0: every layer is local.
    pub global_every: usize,
    /// RoPE base of the local layers.
    pub rope_theta_local: f32,
}

impl Default for Family {
    fn default() -> Self {
        Self {
            qkv_bias: false,
            embed_scale: 1.0,
            qk_norm: false,
            post_norms: false,
            gelu: false,
            sliding_window: 0,
            global_every: 0,
            rope_theta_local: 0.0,
        }
    }
}

/// The architectures read: Llama (and Mistral, the same computation); Qwen2 (q/k/v biases,
/// rotate-half RoPE: its GGUF rows are not permuted for RoPE pairs); Qwen3 (Qwen2's RoPE, no
/// biases, an RMSNorm of each head's q and k); Gemma 3 (see [`Family`]).
const ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma3"];

/// Gemma 3's local layers: 5 of every 6, RoPE base 10000 (llama.cpp's values; GGUF files do
/// not carry them).
const GEMMA3_GLOBAL_EVERY: usize = 6;
const GEMMA3_LOCAL_THETA: f32 = 10000.0;

impl Config {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Whether layer `l` attends through a sliding window.
    pub fn is_local(&self, l: usize) -> bool {
        let f = &self.family;
        f.sliding_window > 0 && (f.global_every == 0 || !(l + 1).is_multiple_of(f.global_every))
    }

    /// Layer `l`'s sliding window (0: none).
    pub fn window(&self, l: usize) -> usize {
        if self.is_local(l) {
            self.family.sliding_window
        } else {
            0
        }
    }

    /// Layer `l`'s RoPE base.
    pub fn rope_theta(&self, l: usize) -> f32 {
        if self.uses_local_theta(l) {
            self.family.rope_theta_local
        } else {
            self.rope_theta
        }
    }

    fn uses_local_theta(&self, l: usize) -> bool {
        self.is_local(l) && self.family.rope_theta_local > 0.0
    }

    /// Layer `l`'s RoPE frequency divisors (empty: none). Layers with the local base are not
    /// scaled (as in Gemma 3, whose linear scaling is for its global layers).
    pub fn rope_factors(&self, l: usize) -> &[f32] {
        if self.uses_local_theta(l) {
            &[]
        } else {
            &self.rope_factors
        }
    }

    /// Rejects configurations the engine cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let limits = [
            ("hidden size", self.hidden, 1 << 16),
            ("feed-forward size", self.ffn, 1 << 18),
            ("layer count", self.layers, 1024),
            ("head count", self.n_heads, 1024),
            ("KV head count", self.n_kv_heads, 1024),
            ("head dimension", self.head_dim, 256),
            ("vocabulary size", self.vocab, 1 << 22),
            ("context length", self.context, 1 << 24),
        ];
        for (name, v, max) in limits {
            if v == 0 || v > max {
                return bad(format!("{name} is {v}; it must be between 1 and {max}"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} query heads are not a multiple of {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if !self.head_dim.is_multiple_of(4) {
            return bad(format!(
                "head dimension {} is not a multiple of 4 (RoPE needs pairs, the attention kernel reads vec4)",
                self.head_dim
            ));
        }
        if !(self.rms_eps >= 0.0 && self.rms_eps < 1.0) {
            return bad(format!("RMSNorm epsilon {} is outside [0, 1)", self.rms_eps));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return bad(format!("RoPE base {} must be a finite number above 1", self.rope_theta));
        }
        let f = &self.rope_factors;
        if !f.is_empty() && f.len() != self.head_dim / 2 {
            return bad(format!("{} RoPE frequency factors for a head dimension of {} (one per pair expected)", f.len(), self.head_dim));
        }
        if let Some(x) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            return bad(format!("RoPE frequency factor {x} must be a finite number above 0"));
        }
        Ok(())
    }

    /// Applies a GGUF file's `rope_freqs.weight` (one divisor per RoPE pair, Llama 3's scaling),
    /// on top of any linear scaling the metadata gave.
    pub fn scale_rope(&mut self, file: &str, t: &crate::tensor::HostTensor) -> Result<()> {
        let pairs = self.head_dim / 2;
        if t.shape != [pairs] || t.dtype.is_quantized() {
            return Err(Error::malformed(
                file,
                format!("{} is {:?} of shape {:?}; {pairs} F32, F16 or BF16 values expected", t.name, t.dtype, t.shape),
            ));
        }
        let factors = t.to_f32();
        self.rope_factors = match self.rope_factors.is_empty() {
            true => factors,
            false => self.rope_factors.iter().zip(&factors).map(|(a, b)| a * b).collect(),
        };
        self.validate()
    }

    /// From GGUF metadata (`<arch>.*` keys).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("llama").to_string();
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::Config(format!(
                "{}: architecture {arch:?} is not one this engine runs ({})",
                g.file,
                ARCHITECTURES.join(", ")
            )));
        }
        let (qwen2, qwen3, gemma3) = (arch == "qwen2", arch == "qwen3", arch == "gemma3");
        let int = |key: &str| -> Result<usize> {
            let full = format!("{arch}.{key}");
            g.get(&full)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("{}: metadata {full} is missing or not an unsigned integer", g.file)))
        };
        let float = |key: &str, default: f64| -> f32 { g.get(&format!("{arch}.{key}")).and_then(|v| v.as_f64()).unwrap_or(default) as f32 };
        let hidden = int("embedding_length")?;
        let n_heads = int("attention.head_count")?;
        let n_kv_heads = int("attention.head_count_kv").unwrap_or(n_heads);
        // The head size, where the file gives it (Gemma 3's is not hidden / heads).
        let head_dim = match int("attention.key_length") {
            Ok(k) => k,
            Err(_) if n_heads > 0 => hidden / n_heads,
            Err(_) => 0,
        };
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map_or(0, |a| a.len()),
        };
        let mut cfg = Self {
            hidden,
            ffn: int("feed_forward_length")?,
            layers: int("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            context: int("context_length")?,
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("rope.freq_base", 10000.0),
            rope_interleaved: !(qwen2 || qwen3 || gemma3),
            family: Family {
                qkv_bias: qwen2,
                embed_scale: if gemma3 { (hidden as f32).sqrt() } else { 1.0 },
                qk_norm: gemma3 || qwen3,
                post_norms: gemma3,
                gelu: gemma3,
                sliding_window: if gemma3 { int("attention.sliding_window").unwrap_or(0) } else { 0 },
                global_every: if gemma3 { GEMMA3_GLOBAL_EVERY } else { 0 },
                rope_theta_local: if gemma3 { GEMMA3_LOCAL_THETA } else { 0.0 },
            },
            rope_factors: Vec::new(),
        };
        // Metadata that changes the computation in ways this engine does not implement.
        let key = |k: &str| format!("{arch}.{k}");
        match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => {}
            Some("linear") => {
                // Positions divided by the factor: every frequency divided by it.
                let factor = g
                    .get(&key("rope.scaling.factor"))
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| Error::Config(format!("{}: linear RoPE scaling without {}", g.file, key("rope.scaling.factor"))))?;
                if factor != 1.0 {
                    cfg.rope_factors = vec![factor as f32; cfg.head_dim / 2];
                }
            }
            Some(t) => return Err(Error::unsupported(&g.file, format!("RoPE scaling type {t:?} ({})", key("rope.scaling.type")))),
        }
        if let Ok(n) = int("expert_count") {
            if n > 0 {
                return Err(Error::unsupported(&g.file, format!("a mixture of {n} experts ({})", key("expert_count"))));
            }
        }
        if let (Ok(w), false) = (int("attention.sliding_window"), gemma3) {
            if w < cfg.context {
                return Err(Error::unsupported(
                    &g.file,
                    format!(
                        "sliding-window attention of {w} tokens ({}) in a model of context {}",
                        key("attention.sliding_window"),
                        cfg.context
                    ),
                ));
            }
        }
        if let Ok(n) = int("attention.value_length") {
            if n != head_dim {
                return Err(Error::unsupported(
                    &g.file,
                    format!("{} = {n}, a value head size other than the key's {head_dim}", key("attention.value_length")),
                ));
            }
        }
        for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if g.get(&key(k)).and_then(|v| v.as_f64()).is_some_and(|c| c > 0.0) {
                return Err(Error::unsupported(&g.file, format!("logit soft-capping ({})", key(k))));
            }
        }
        if let Ok(rope_dims) = int("rope.dimension_count") {
            if rope_dims != head_dim {
                return Err(Error::Config(format!(
                    "{}: partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported",
                    g.file
                )));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// From a Hugging Face config.json.
    pub fn from_hf_json(file: &str, text: &str) -> Result<Self> {
        // Integers as u64, so that a value too large for this platform's usize (wasm32) is a
        // configuration error like any absurd size, not a parse failure.
        #[derive(Deserialize)]
        struct Hf {
            hidden_size: u64,
            intermediate_size: u64,
            num_hidden_layers: u64,
            num_attention_heads: u64,
            num_key_value_heads: Option<u64>,
            head_dim: Option<u64>,
            vocab_size: u64,
            max_position_embeddings: Option<u64>,
            rms_norm_eps: Option<f64>,
            rope_theta: Option<f64>,
            model_type: Option<String>,
            rope_scaling: Option<serde_json::Value>,
            attention_bias: Option<bool>,
            mlp_bias: Option<bool>,
            hidden_act: Option<String>,
            sliding_window: Option<u64>,
            use_sliding_window: Option<bool>,
            num_local_experts: Option<u64>,
        }
        let hf: Hf = serde_json::from_str(text).map_err(|e| Error::malformed(file, format!("not a usable config.json: {e}")))?;
        if let Some(t) = &hf.model_type {
            // Gemma 3 is read from GGUF only: its Hugging Face layout (names, norms stored as
            // weight - 1) is not mapped.
            if t.starts_with("gemma") {
                return Err(Error::unsupported(
                    file,
                    format!("model_type {t:?} from a Hugging Face directory (Gemma 3 is read from GGUF files)"),
                ));
            }
            if !ARCHITECTURES.contains(&t.as_str()) {
                return Err(Error::Config(format!("{file}: model_type {t:?} is not one this engine runs ({})", ARCHITECTURES.join(", "))));
            }
        }
        let qwen2 = hf.model_type.as_deref() == Some("qwen2");
        let qwen3 = hf.model_type.as_deref() == Some("qwen3");
        // Settings that change the computation in ways this engine does not implement.
        for (name, on) in [("attention_bias", hf.attention_bias), ("mlp_bias", hf.mlp_bias)] {
            if on == Some(true) {
                return Err(Error::unsupported(file, format!("biases in the projections ({name}: true)")));
            }
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(Error::unsupported(file, format!("the activation {act:?} (hidden_act; SwiGLU's silu is implemented)")));
        }
        if let Some(n) = hf.num_local_experts.filter(|&n| n > 0) {
            return Err(Error::unsupported(file, format!("a mixture of {n} experts (num_local_experts)")));
        }
        if let (Some(w), Some(ctx), true) = (hf.sliding_window, hf.max_position_embeddings, hf.use_sliding_window != Some(false)) {
            if w < ctx {
                return Err(Error::unsupported(
                    file,
                    format!("sliding-window attention of {w} tokens (sliding_window) in a model of context {ctx}"),
                ));
            }
        }
        let size = |name: &str, v: u64| -> Result<usize> {
            usize::try_from(v).map_err(|_| Error::Config(format!("{file}: {name} = {v} is more than this platform can address")))
        };
        let n_heads = size("num_attention_heads", hf.num_attention_heads)?;
        let hidden = size("hidden_size", hf.hidden_size)?;
        let mut cfg = Self {
            hidden,
            ffn: size("intermediate_size", hf.intermediate_size)?,
            layers: size("num_hidden_layers", hf.num_hidden_layers)?,
            n_heads,
            n_kv_heads: size("num_key_value_heads", hf.num_key_value_heads.unwrap_or(hf.num_attention_heads))?,
            head_dim: match hf.head_dim {
                Some(d) => size("head_dim", d)?,
                None if n_heads > 0 => hidden / n_heads,
                None => 0,
            },
            vocab: size("vocab_size", hf.vocab_size)?,
            context: size("max_position_embeddings", hf.max_position_embeddings.unwrap_or(2048))?,
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: hf.rope_theta.unwrap_or(10000.0) as f32,
            rope_interleaved: false,
            family: Family { qkv_bias: qwen2, qk_norm: qwen3, ..Family::default() },
            rope_factors: Vec::new(),
        };
        // Scaling of a type this engine does not implement is refused there, by name.
        if let Some(r) = hf.rope_scaling.as_ref().filter(|r| !r.is_null()) {
            cfg.rope_factors = hf_rope_factors(file, r, cfg.head_dim, cfg.rope_theta)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The frequency divisors of a Hugging Face `rope_scaling` entry of type "linear" or "llama3"
/// (none for "default"). Llama 3's: pairs whose wavelength (2π / frequency) is shorter than
/// original_max_position_embeddings / high_freq_factor keep their frequency, those longer than
/// it / low_freq_factor are divided by `factor`, and those between are interpolated
/// (smooth = (original / wavelength - low) / (high - low); frequency · ((1 - smooth) / factor +
/// smooth)).
pub fn hf_rope_factors(file: &str, r: &serde_json::Value, head_dim: usize, theta: f32) -> Result<Vec<f32>> {
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str()).unwrap_or("unnamed");
    let num = |k: &str| -> Result<f64> {
        r.get(k)
            .and_then(|v| v.as_f64())
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| Error::Config(format!("{file}: rope_scaling of type {kind:?} needs {k}, a number above 0")))
    };
    match kind {
        "default" => Ok(Vec::new()),
        "linear" => Ok(vec![num("factor")? as f32; head_dim / 2]),
        "llama3" => {
            let (factor, low, high) = (num("factor")?, num("low_freq_factor")?, num("high_freq_factor")?);
            let original = num("original_max_position_embeddings")?;
            if high <= low {
                return Err(Error::Config(format!("{file}: rope_scaling's high_freq_factor {high} is not above low_freq_factor {low}")));
            }
            Ok((0..head_dim / 2)
                .map(|i| {
                    let freq = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                    let wavelength = 2.0 * std::f64::consts::PI / freq;
                    if wavelength < original / high {
                        1.0
                    } else if wavelength > original / low {
                        factor as f32
                    } else {
                        let smooth = (original / wavelength - low) / (high - low);
                        (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                    }
                })
                .collect())
        }
        other => Err(Error::unsupported(file, format!("RoPE scaling {other:?} (rope_scaling)"))),
    }
}
