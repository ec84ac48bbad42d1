//! A tiny random Llama model, written both as a quantized GGUF file and as a Hugging Face
//! safetensors directory holding the same (dequantized) weights, with an f64 reference forward.

use std::collections::HashMap;
use std::path::Path;

use adore::model::gguf::{self, Value};
use adore::tensor::{dequantize, quantize, DType, HostTensor};

use super::Rng;

pub const HIDDEN: usize = 64;
pub const FFN: usize = 96;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const VOCAB: usize = 320;
pub const CONTEXT: usize = 256;
pub const EPS: f32 = 1e-5;
pub const THETA: f32 = 10000.0;

/// GPT-2's byte -> printable character table.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

/// Token strings and merges of a small byte-level BPE vocabulary.
pub fn vocab() -> (Vec<String>, Vec<String>) {
    let bc = byte_chars();
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string(), "<|im_end|>".to_string()];
    tokens.extend(bc.iter().map(|c| c.to_string()));
    let merges: Vec<(String, String)> =
        [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
    }
    (tokens, merges.iter().map(|(a, b)| format!("{a} {b}")).collect())
}

/// The model's weights in Hugging Face layout (as dequantized f32), and each tensor's file type.
pub struct Tiny {
    pub w: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub dtypes: HashMap<String, DType>,
    /// Qwen2: q/k/v biases, rotate-half RoPE in GGUF too (no row permutation), architecture
    /// `qwen2`, and Q5_0 / Q5_1 matrices where the Llama model has Q4_0 / Q4_1.
    pub qwen2: bool,
    /// Qwen3: rotate-half RoPE (no row permutation), an RMSNorm of each head's q and k, no
    /// biases, architecture `qwen3`.
    pub qwen3: bool,
    /// Gemma 3: embeddings scaled by sqrt(HIDDEN), q/k norms, post-norms, GeGLU, both layers
    /// local with a sliding window of [`GEMMA_WINDOW`] (GGUF only; rotate-half RoPE).
    pub gemma3: bool,
    /// Gemma 3's sliding window (0: none), [`GEMMA_WINDOW`] as built.
    pub window: usize,
    /// Keys (after RoPE) and values rounded to f16, as an f16 KV cache holds them.
    pub kv_f16: bool,
    /// Llama 3's RoPE scaling (factor, low_freq_factor, high_freq_factor,
    /// original_max_position_embeddings): `rope_freqs.weight` in GGUF, `rope_scaling` in
    /// config.json; the reference follows Hugging Face's formula for the scaled frequencies.
    pub llama3_rope: Option<[f64; 4]>,
}

/// The tiny Gemma 3's sliding window: shorter than the test sequences.
pub const GEMMA_WINDOW: usize = 24;

fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// RoPE's unscaled frequency of pair i: θ^(-2i / HEAD_DIM).
fn rope_freq(i: usize) -> f64 {
    (THETA as f64).powf(-2.0 * i as f64 / HEAD_DIM as f64)
}

impl Tiny {
    pub fn new(seed: u64) -> Self {
        Self::build(seed, false, false)
    }

    /// The Qwen3 variant (see [`Tiny::qwen3`]).
    pub fn qwen3(seed: u64) -> Self {
        let mut t = Self::build(seed, false, false);
        let mut rng = Rng::new(seed ^ 0x5157_3e33);
        for l in 0..LAYERS {
            for s in ["attn_q_norm", "attn_k_norm"] {
                let name = format!("blk.{l}.{s}.weight");
                let vals = rng.vec(HEAD_DIM, 0.5).iter().map(|v| round_bf16(1.0 + v)).collect();
                t.dtypes.insert(name.clone(), DType::F32);
                t.w.insert(name, (vec![HEAD_DIM], vals));
            }
        }
        t.qwen3 = true;
        t
    }

    /// The Qwen2 variant (see [`Tiny::qwen2`]).
    pub fn qwen2(seed: u64) -> Self {
        Self::build(seed, true, false)
    }

    /// The Gemma 3 variant (see [`Tiny::gemma3`]).
    pub fn gemma3(seed: u64) -> Self {
        Self::build(seed, false, true)
    }

    fn build(seed: u64, qwen2: bool, gemma3: bool) -> Self {
        let mut rng = Rng::new(seed);
        let (q4_0, q4_1) = if qwen2 { (DType::Q5_0, DType::Q5_1) } else { (DType::Q4_0, DType::Q4_1) };
        let mut w = HashMap::new();
        let mut dtypes = HashMap::new();
        let mut add = |name: String, shape: Vec<usize>, dtype: DType, scale: f32, rng: &mut Rng| {
            let n: usize = shape.iter().product();
            let raw = rng.vec(n, scale);
            let vals = match dtype {
                DType::F32 if shape.len() == 1 => raw.iter().map(|v| round_bf16(1.0 + v)).collect(),
                _ => dequantize(dtype, &quantize(dtype, &raw), n),
            };
            dtypes.insert(name.clone(), dtype);
            w.insert(name, (shape, vals));
        };
        add("token_embd.weight".into(), vec![VOCAB, HIDDEN], DType::F16, 1.0, &mut rng);
        add("output_norm.weight".into(), vec![HIDDEN], DType::F32, 0.2, &mut rng);
        let qd = HEADS * HEAD_DIM;
        let kvd = KV_HEADS * HEAD_DIM;
        for l in 0..LAYERS {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            add(n("attn_norm"), vec![HIDDEN], DType::F32, 0.2, &mut rng);
            add(n("attn_q"), vec![qd, HIDDEN], q4_0, 0.3, &mut rng);
            add(n("attn_k"), vec![kvd, HIDDEN], q4_1, 0.3, &mut rng);
            add(n("attn_v"), vec![kvd, HIDDEN], DType::Q8_0, 0.3, &mut rng);
            add(n("attn_output"), vec![HIDDEN, qd], q4_1, 0.2, &mut rng);
            add(n("ffn_norm"), vec![HIDDEN], DType::F32, 0.2, &mut rng);
            add(n("ffn_gate"), vec![FFN, HIDDEN], DType::Q8_0, 0.3, &mut rng);
            add(n("ffn_up"), vec![FFN, HIDDEN], q4_0, 0.3, &mut rng);
            add(n("ffn_down"), vec![HIDDEN, FFN], DType::Q8_0, 0.2, &mut rng);
            if gemma3 {
                add(n("attn_q_norm"), vec![HEAD_DIM], DType::F32, 0.3, &mut rng);
                add(n("attn_k_norm"), vec![HEAD_DIM], DType::F32, 0.3, &mut rng);
                add(n("post_attention_norm"), vec![HIDDEN], DType::F32, 0.3, &mut rng);
                add(n("post_ffw_norm"), vec![HIDDEN], DType::F32, 0.3, &mut rng);
            }
            if qwen2 {
                // Biases (F32, around 1 as `add` makes 1-D tensors): large enough to matter.
                let b = |s: &str| format!("blk.{l}.{s}.bias");
                add(b("attn_q"), vec![qd], DType::F32, 0.5, &mut rng);
                add(b("attn_k"), vec![kvd], DType::F32, 0.5, &mut rng);
                add(b("attn_v"), vec![kvd], DType::F32, 0.5, &mut rng);
            }
        }
        Tiny { w, dtypes, qwen2, qwen3: false, gemma3, window: if gemma3 { GEMMA_WINDOW } else { 0 }, kv_f16: false, llama3_rope: None }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.w[name].1
    }

    /// llama.cpp's row order for q/k: within each head, rows (i, i + d/2) become (2i, 2i + 1).
    fn permute_rows(vals: &[f32], heads: usize, cols: usize) -> Vec<f32> {
        let rows = vals.len() / cols;
        let hd = rows / heads;
        let mut out = vec![0f32; vals.len()];
        for h in 0..heads {
            for i in 0..hd / 2 {
                for (j, src) in [i, i + hd / 2].into_iter().enumerate() {
                    let dst = h * hd + 2 * i + j;
                    out[dst * cols..(dst + 1) * cols].copy_from_slice(&vals[(h * hd + src) * cols..(h * hd + src + 1) * cols]);
                }
            }
        }
        out
    }

    /// RoPE's frequency of pair i ([`rope_freq`]), or with Llama 3's scaling as Hugging Face's
    /// `_compute_llama3_parameters` scales it.
    pub fn inv_freq(&self, i: usize) -> f64 {
        let f = rope_freq(i);
        let Some([factor, low, high, original]) = self.llama3_rope else { return f };
        let wavelen = 2.0 * std::f64::consts::PI / f;
        if wavelen < original / high {
            f
        } else if wavelen > original / low {
            f / factor
        } else {
            let smooth = (original / wavelen - low) / (high - low);
            (1.0 - smooth) * f / factor + smooth * f
        }
    }

    /// The model as a GGUF file (quantized as the types say; q/k rows in llama.cpp's order).
    pub fn gguf_bytes(&self) -> Vec<u8> {
        let (tokens, merges) = vocab();
        let mut types = vec![Value::I32(1); tokens.len()];
        for t in types.iter_mut().take(3) {
            *t = Value::I32(3);
        }
        let arch = if self.qwen2 {
            "qwen2"
        } else if self.qwen3 {
            "qwen3"
        } else if self.gemma3 {
            "gemma3"
        } else {
            "llama"
        };
        // Keys live for the test binary (GGUF metadata keys are &'static str here).
        let key = |k: &str| -> &'static str { Box::leak(format!("{arch}.{k}").into_boxed_str()) };
        let meta = vec![
            ("general.architecture", Value::String(arch.into())),
            (key("block_count"), Value::U32(LAYERS as u32)),
            (key("context_length"), Value::U32(CONTEXT as u32)),
            (key("embedding_length"), Value::U32(HIDDEN as u32)),
            (key("feed_forward_length"), Value::U32(FFN as u32)),
            (key("attention.head_count"), Value::U32(HEADS as u32)),
            (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
            (key("rope.freq_base"), Value::F32(THETA)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(EPS)),
            (key("vocab_size"), Value::U32(VOCAB as u32)),
            (key("attention.key_length"), Value::U32(HEAD_DIM as u32)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ];
        let mut meta = meta;
        if self.gemma3 {
            meta.push((key("attention.sliding_window"), Value::U32(self.window as u32)));
        }
        let mut names: Vec<&String> = self.w.keys().collect();
        names.sort();
        let mut tensors: Vec<HostTensor> = names
            .into_iter()
            .map(|name| {
                let (shape, vals) = &self.w[name];
                let vals = if self.qwen2 || self.qwen3 || self.gemma3 {
                    vals.clone()
                } else if name.ends_with("attn_q.weight") {
                    Self::permute_rows(vals, HEADS, HIDDEN)
                } else if name.ends_with("attn_k.weight") {
                    Self::permute_rows(vals, KV_HEADS, HIDDEN)
                } else {
                    vals.clone()
                };
                let dtype = self.dtypes[name];
                HostTensor { name: name.clone(), dtype, shape: shape.clone(), data: quantize(dtype, &vals).into() }
            })
            .collect();
        if self.llama3_rope.is_some() {
            // As llama.cpp's converter writes them: each frequency's divisor.
            let factors: Vec<f32> = (0..HEAD_DIM / 2).map(|i| (rope_freq(i) / self.inv_freq(i)) as f32).collect();
            tensors.push(HostTensor {
                name: "rope_freqs.weight".into(),
                dtype: DType::F32,
                shape: vec![HEAD_DIM / 2],
                data: quantize(DType::F32, &factors).into(),
            });
        }
        gguf::write(&meta, &tensors)
    }

    /// Writes the model as a Hugging Face directory (F32 matrices, F16 embedding, BF16 norms).
    pub fn write_hf_dir(&self, dir: &Path, tokenizer_json: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let config = serde_json::json!({
            "model_type": if self.qwen2 { "qwen2" } else if self.qwen3 { "qwen3" } else { "llama" }, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
            "max_position_embeddings": CONTEXT, "rms_norm_eps": EPS, "rope_theta": THETA, "tie_word_embeddings": true,
        });
        let mut config = config;
        if let Some([factor, low, high, original]) = self.llama3_rope {
            config["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": original,
            });
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
        let hf_name = |g: &str| -> String {
            match g {
                "token_embd.weight" => "model.embed_tokens.weight".into(),
                "output_norm.weight" => "model.norm.weight".into(),
                _ => {
                    let rest = g.strip_prefix("blk.").unwrap();
                    let (l, part) = rest.split_once('.').unwrap();
                    let p = match part {
                        "attn_norm.weight" => "input_layernorm.weight",
                        "attn_q.weight" => "self_attn.q_proj.weight",
                        "attn_k.weight" => "self_attn.k_proj.weight",
                        "attn_v.weight" => "self_attn.v_proj.weight",
                        "attn_q.bias" => "self_attn.q_proj.bias",
                        "attn_k.bias" => "self_attn.k_proj.bias",
                        "attn_v.bias" => "self_attn.v_proj.bias",
                        "attn_output.weight" => "self_attn.o_proj.weight",
                        "attn_q_norm.weight" => "self_attn.q_norm.weight",
                        "attn_k_norm.weight" => "self_attn.k_norm.weight",
                        "ffn_norm.weight" => "post_attention_layernorm.weight",
                        "ffn_gate.weight" => "mlp.gate_proj.weight",
                        "ffn_up.weight" => "mlp.up_proj.weight",
                        "ffn_down.weight" => "mlp.down_proj.weight",
                        other => panic!("unexpected {other}"),
                    };
                    format!("model.layers.{l}.{p}")
                }
            }
        };
        // Two shards, to exercise multi-file directories.
        let mut shards: [Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>; 2] = Default::default();
        let mut names: Vec<&String> = self.w.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let (shape, vals) = &self.w[name];
            let (dt, bytes) = if shape.len() == 1 {
                (safetensors::Dtype::BF16, quantize(DType::BF16, vals))
            } else if name == "token_embd.weight" {
                (safetensors::Dtype::F16, quantize(DType::F16, vals))
            } else {
                (safetensors::Dtype::F32, quantize(DType::F32, vals))
            };
            shards[i % 2].push((hf_name(name), dt, shape.clone(), bytes));
        }
        for (i, shard) in shards.iter().enumerate() {
            let views: Vec<(String, safetensors::tensor::TensorView)> = shard
                .iter()
                .map(|(n, dt, shape, bytes)| (n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).unwrap()))
                .collect();
            let data = safetensors::serialize(views, None).unwrap();
            std::fs::write(dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)), data).unwrap();
        }
    }

    /// Reference forward pass in f64 over the whole sequence: logits (tokens, VOCAB).
    pub fn forward(&self, tokens: &[u32]) -> Vec<f32> {
        self.forward_masked(tokens, &|_, _| true)
    }

    /// As [`Tiny::forward`], with row t attending only to the keys j <= t with `visible(t, j)`.
    pub fn forward_masked(&self, tokens: &[u32], visible: &dyn Fn(usize, usize) -> bool) -> Vec<f32> {
        let positions: Vec<u32> = (0..tokens.len() as u32).collect();
        self.run(tokens, &positions, &[], &|t, j| j <= t && visible(t, j)).logits
    }

    /// The general f64 forward: `rows` tokens at `positions`, attending to the keys
    /// `cache` entries followed by the rows themselves, where row r sees key j when
    /// `visible(r, j)`. `cache` holds per layer (K, V) of its entries in this model's
    /// (Hugging Face, rotate-half) layout, already rotated at their positions.
    pub fn run(&self, tokens: &[u32], positions: &[u32], cache: &[(Vec<f64>, Vec<f64>)], visible: &dyn Fn(usize, usize) -> bool) -> Run {
        let n = tokens.len();
        let (qd, kvd) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        let n_cache = cache.first().map_or(0, |(k, _)| k.len() / kvd);
        let matmul = |x: &[f64], w: &[f32], k: usize| -> Vec<f64> {
            let out = w.len() / k;
            x.chunks(k).flat_map(|row| (0..out).map(move |o| (0..k).map(|i| row[i] * w[o * k + i] as f64).sum::<f64>())).collect()
        };
        let rmsnorm = |x: &[f64], g: &[f32]| -> Vec<f64> {
            x.chunks(HIDDEN)
                .flat_map(|row| {
                    let ms = row.iter().map(|v| v * v).sum::<f64>() / HIDDEN as f64;
                    let s = 1.0 / (ms + EPS as f64).sqrt();
                    row.iter().zip(g).map(move |(v, w)| v * s * *w as f64)
                })
                .collect()
        };
        let rope = |x: &mut [f64], heads: usize| {
            for (row, &p) in x.chunks_mut(heads * HEAD_DIM).zip(positions) {
                for h in 0..heads {
                    for i in 0..HEAD_DIM / 2 {
                        let ang = p as f64 * self.inv_freq(i);
                        let (s, c) = ang.sin_cos();
                        let (a, b) = (h * HEAD_DIM + i, h * HEAD_DIM + i + HEAD_DIM / 2);
                        let (xa, xb) = (row[a], row[b]);
                        row[a] = xa * c - xb * s;
                        row[b] = xa * s + xb * c;
                    }
                }
            }
        };
        let embd = self.get("token_embd.weight");
        let scale = if self.gemma3 { (HIDDEN as f32).sqrt() as f64 } else { 1.0 };
        let mut x: Vec<f64> = tokens
            .iter()
            .flat_map(|&t| embd[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].iter().map(move |v| *v as f64 * scale))
            .collect();
        // Gemma 3: RMSNorm of each head (head_dim values) with weight g.
        let head_norm = |x: &mut [f64], g: &[f32]| {
            for head in x.chunks_mut(HEAD_DIM) {
                let ms = head.iter().map(|v| v * v).sum::<f64>() / HEAD_DIM as f64;
                let s = 1.0 / (ms + EPS as f64).sqrt();
                head.iter_mut().zip(g).for_each(|(v, w)| *v *= s * *w as f64);
            }
        };
        // Gemma 3's local layers see the keys less than the window before the query.
        // (Keys from `cache` have no known position here; the Gemma tests use none.)
        let window = |t: usize, j: usize| self.window == 0 || j < n_cache || positions[t] - positions[j - n_cache] < self.window as u32;
        let n_keys = n_cache + n;
        let mut attention = vec![vec![0f64; n_keys]; n];
        let mut contribution = vec![vec![0f64; n_keys]; n];
        let mut kv = Vec::new();
        let mut residuals = Vec::new();
        for l in 0..LAYERS {
            let g = |s: &str| self.get(&format!("blk.{l}.{s}.weight"));
            let xn = rmsnorm(&x, g("attn_norm"));
            let mut q = matmul(&xn, g("attn_q"), HIDDEN);
            let mut k = matmul(&xn, g("attn_k"), HIDDEN);
            let mut v = matmul(&xn, g("attn_v"), HIDDEN);
            if self.qwen2 {
                for (x, s) in [(&mut q, "attn_q"), (&mut k, "attn_k"), (&mut v, "attn_v")] {
                    let b = self.get(&format!("blk.{l}.{s}.bias"));
                    x.iter_mut().enumerate().for_each(|(i, v)| *v += b[i % b.len()] as f64);
                }
            }
            if self.gemma3 || self.qwen3 {
                head_norm(&mut q, g("attn_q_norm"));
                head_norm(&mut k, g("attn_k_norm"));
            }
            rope(&mut q, HEADS);
            rope(&mut k, KV_HEADS);
            if self.kv_f16 {
                for x in k.iter_mut().chain(v.iter_mut()) {
                    *x = half::f16::from_f64(*x).to_f64();
                }
            }
            let (ck, cv) = cache.get(l).map_or((&[][..], &[][..]), |(a, b)| (&a[..], &b[..]));
            let keys: Vec<f64> = ck.iter().chain(&k).copied().collect();
            let values: Vec<f64> = cv.iter().chain(&v).copied().collect();
            let mut att = vec![0f64; n * qd];
            // |v_j W_o,h|: the size of what key j's value adds to the output through head h.
            let w_o = g("attn_output");
            let sizes: Vec<Vec<f64>> = (0..HEADS)
                .map(|h| {
                    let kh = h / (HEADS / KV_HEADS);
                    (0..n_keys)
                        .map(|j| {
                            (0..HIDDEN)
                                .map(|o| {
                                    (0..HEAD_DIM)
                                        .map(|d| values[j * kvd + kh * HEAD_DIM + d] * w_o[o * qd + h * HEAD_DIM + d] as f64)
                                        .sum::<f64>()
                                        .powi(2)
                                })
                                .sum::<f64>()
                                .sqrt()
                        })
                        .collect()
                })
                .collect();
            for t in 0..n {
                for h in 0..HEADS {
                    let kh = h / (HEADS / KV_HEADS);
                    let scores: Vec<f64> = (0..n_keys)
                        .map(|j| {
                            if !visible(t, j) || !window(t, j) {
                                return f64::NEG_INFINITY;
                            }
                            (0..HEAD_DIM).map(|d| q[t * qd + h * HEAD_DIM + d] * keys[j * kvd + kh * HEAD_DIM + d]).sum::<f64>()
                                / (HEAD_DIM as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..n_keys {
                        attention[t][j] += e[j] / z / (HEADS * LAYERS) as f64;
                        contribution[t][j] += e[j] / z * sizes[h][j];
                    }
                    for d in 0..HEAD_DIM {
                        att[t * qd + h * HEAD_DIM + d] = (0..n_keys).map(|j| e[j] / z * values[j * kvd + kh * HEAD_DIM + d]).sum();
                    }
                }
            }
            kv.push((k, v));
            let mut o = matmul(&att, g("attn_output"), qd);
            if self.gemma3 {
                o = rmsnorm(&o, g("post_attention_norm"));
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rmsnorm(&x, g("ffn_norm"));
            let gate = matmul(&xn, g("ffn_gate"), HIDDEN);
            let up = matmul(&xn, g("ffn_up"), HIDDEN);
            let h: Vec<f64> = match self.gemma3 {
                true => gate.iter().zip(&up).map(|(g, u)| adore::ops::swiglu::gelu_tanh(*g) * u).collect(),
                false => gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect(),
            };
            let mut down = matmul(&h, g("ffn_down"), FFN);
            if self.gemma3 {
                down = rmsnorm(&down, g("post_ffw_norm"));
            }
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            residuals.push(x.clone());
        }
        let xn = rmsnorm(&x, self.get("output_norm.weight"));
        let logits = matmul(&xn, embd, HIDDEN).into_iter().map(|v| v as f32).collect();
        for row in &mut contribution {
            let z: f64 = row.iter().sum();
            row.iter_mut().for_each(|c| *c /= z);
        }
        Run { logits, kv, attention, contribution, residuals }
    }
}

/// What [`Tiny::run`] computes.
pub struct Run {
    /// (rows, VOCAB)
    pub logits: Vec<f32>,
    /// Per layer, the rows' K (rotated) and V, (rows, KV_HEADS * HEAD_DIM) each.
    pub kv: Vec<(Vec<f64>, Vec<f64>)>,
    /// Per row, its attention over the keys (cache entries, then rows), averaged over heads
    /// and layers.
    pub attention: Vec<Vec<f64>>,
    /// Per row, each key's contribution to the attention outputs (each head's weight on it
    /// times the norm of its value through that head's slice of the output projection), summed
    /// over heads and layers and normalised to sum to 1.
    pub contribution: Vec<Vec<f64>>,
    /// Per layer, the residual stream after it, (rows, HIDDEN).
    pub residuals: Vec<Vec<f64>>,
}

/// The GGUF file's K feature index of this model's feature `i` (llama.cpp's q/k row order).
pub fn gguf_k_dim(i: usize) -> usize {
    let (h, d) = (i / HEAD_DIM, i % HEAD_DIM);
    let half = HEAD_DIM / 2;
    h * HEAD_DIM + if d < half { 2 * d } else { 2 * (d - half) + 1 }
}
