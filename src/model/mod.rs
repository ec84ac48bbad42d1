//! Models: reading GGUF files and Hugging Face directories, checking every tensor against the
//! configuration, and uploading the weights (still quantized) to the GPU.

pub mod config;
pub mod gguf;
pub mod tokenizer;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

pub use config::Config;
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::tensor::{DType, GpuWeight, HostTensor, RowSplit};
use config::Family;

/// The bytes of a model, however they arrived (files on disk, a download, a browser upload).
pub enum Source<'a> {
    /// One GGUF file.
    Gguf { name: String, bytes: &'a [u8] },
    /// A Hugging Face directory: config.json, one or more *.safetensors, tokenizer.json.
    HfDir { config_json: (String, &'a [u8]), safetensors: Vec<(String, &'a [u8])>, tokenizer_json: (String, &'a [u8]) },
}

impl<'a> Source<'a> {
    /// Recognises a model among named files (a browser upload, a list of downloads): one GGUF
    /// file, or a Hugging Face directory's config.json, tokenizer.json and *.safetensors (matched
    /// by the last component of each name).
    pub fn from_files(files: &'a [(String, Vec<u8>)]) -> Result<Self> {
        let base = |n: &str| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string();
        if let [(name, bytes)] = files {
            if name.ends_with(".gguf") || bytes.starts_with(b"GGUF") {
                return Ok(Source::Gguf { name: name.clone(), bytes });
            }
        }
        let find = |want: &str| files.iter().find(|(n, _)| base(n) == want).map(|(n, b)| (n.clone(), &b[..]));
        let mut safetensors: Vec<(String, &[u8])> =
            files.iter().filter(|(n, _)| n.ends_with(".safetensors")).map(|(n, b)| (n.clone(), &b[..])).collect();
        safetensors.sort_by(|a, b| a.0.cmp(&b.0));
        match (find("config.json"), find("tokenizer.json")) {
            (Some(config_json), Some(tokenizer_json)) if !safetensors.is_empty() => {
                Ok(Source::HfDir { config_json, safetensors, tokenizer_json })
            }
            _ => Err(Error::arg(format!(
                "{} file(s) given ({}): give one .gguf file, or a Hugging Face model directory's config.json, tokenizer.json and *.safetensors files",
                files.len(),
                files.iter().map(|(n, _)| base(n)).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// A model read from its files and checked, not yet on the GPU. Tensors use GGUF names.
pub struct ModelSpec<'a> {
    pub name: String,
    pub config: Config,
    pub tensors: HashMap<String, HostTensor<'a>>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

/// Hugging Face tensor names -> GGUF names.
fn hf_to_gguf(name: &str) -> Option<String> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    // Biases keep their name; whether the model has them is the configuration's to say.
    matches!(kind, "weight" | "bias").then(|| format!("blk.{layer}.{short}.{kind}"))
}

/// Gemma's chat format (turns of user and model), used for Gemma 3 files without a template.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}\
{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// Llama 3's RoPE frequency factors in GGUF files (head_dim / 2 divisors).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// What a tensor the forward pass does not use is, for the error that refuses it.
fn unused_tensor(name: &str) -> &'static str {
    if name.ends_with(".bias") {
        "a bias, which the Llama forward pass does not add"
    } else {
        "a tensor the Llama forward pass does not use"
    }
}

impl<'a> ModelSpec<'a> {
    /// Parses and checks a model's files.
    pub fn read(source: Source<'a>) -> Result<Self> {
        let spec = match source {
            Source::Gguf { name, bytes } => {
                let g = gguf::Gguf::parse(&name, bytes)?;
                let mut config = Config::from_gguf(&g)?;
                let tokenizer = Tokenizer::from_gguf(&g)?;
                let mut tensors: HashMap<String, HostTensor> = g.tensors.iter().map(|t| (t.name.clone(), g.tensor(t))).collect();
                if let Some(t) = tensors.remove(ROPE_FREQS) {
                    config.scale_rope(&name, &t)?;
                }
                let chat_template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
                // Gemma's turns, for Gemma 3 files that carry no template.
                let gemma3 = g.get("general.architecture").and_then(|v| v.as_str()) == Some("gemma3");
                let chat_template = chat_template.or_else(|| gemma3.then(|| GEMMA_TEMPLATE.to_string()));
                ModelSpec { name, config, tensors, tokenizer, chat_template }
            }
            Source::HfDir { config_json, safetensors, tokenizer_json } => {
                let text = std::str::from_utf8(config_json.1).map_err(|_| Error::malformed(&config_json.0, "not UTF-8 text"))?;
                let config = Config::from_hf_json(&config_json.0, text)?;
                let tokenizer = Tokenizer::from_json(&tokenizer_json.0, tokenizer_json.1)?;
                if safetensors.is_empty() {
                    return Err(Error::MissingTensor { tensor: "any *.safetensors file".into() });
                }
                let mut tensors = HashMap::new();
                for (file, bytes) in safetensors {
                    if bytes.is_empty() {
                        return Err(Error::EmptyFile { path: file });
                    }
                    let st = safetensors::SafeTensors::deserialize(bytes)
                        .map_err(|e| Error::malformed(&file, format!("not a valid safetensors file: {e}")))?;
                    for (hf_name, view) in st.tensors() {
                        let Some(name) = hf_to_gguf(&hf_name) else {
                            // Buffers of RoPE's inverse frequencies, which the engine computes from rope_theta.
                            if hf_name.ends_with("rotary_emb.inv_freq") {
                                continue;
                            }
                            return Err(Error::unsupported(&file, format!("tensor {hf_name} ({})", unused_tensor(&hf_name))));
                        };
                        let dtype = match view.dtype() {
                            safetensors::Dtype::F32 => DType::F32,
                            safetensors::Dtype::F16 => DType::F16,
                            safetensors::Dtype::BF16 => DType::BF16,
                            other => {
                                return Err(Error::UnknownDtype {
                                    file: file.clone(),
                                    tensor: hf_name.clone(),
                                    dtype: format!("{other:?}"),
                                })
                            }
                        };
                        tensors.insert(
                            name.clone(),
                            HostTensor { name, dtype, shape: view.shape().to_vec(), data: Cow::Borrowed(view.data()) },
                        );
                    }
                }
                let chat_template = serde_json::from_slice::<serde_json::Value>(tokenizer_json.1)
                    .ok()
                    .and_then(|v| v.get("chat_template").and_then(|t| t.as_str()).map(str::to_string));
                ModelSpec {
                    name: config_json.0.trim_end_matches("config.json").trim_end_matches('/').to_string(),
                    config,
                    tensors,
                    tokenizer,
                    chat_template,
                }
            }
        };
        spec.check()?;
        Ok(spec)
    }

    /// Every tensor the forward pass needs is present with the shape the configuration implies,
    /// and the file holds no tensor it would leave unused.
    fn check(&self) -> Result<()> {
        let expected = self.expected_shapes();
        let mut unused: Vec<&String> = self.tensors.keys().filter(|n| !expected.iter().any(|(e, _)| e == *n)).collect();
        unused.sort();
        if let Some(name) = unused.first() {
            return Err(Error::unsupported(&self.name, format!("tensor {name} ({})", unused_tensor(name))));
        }
        for (name, shape) in expected {
            let Some(t) = self.tensors.get(&name) else {
                if name == "output.weight" {
                    continue; // tied to token_embd
                }
                return Err(Error::MissingTensor { tensor: name });
            };
            if t.shape != shape {
                return Err(Error::ShapeMismatch { tensor: name, expected: shape, found: t.shape.clone() });
            }
            if t.dtype.is_quantized() && shape.len() == 1 {
                return Err(Error::malformed(
                    &self.name,
                    format!("norm weight {name} is quantized ({:?}); F32, F16 or BF16 expected", t.dtype),
                ));
            }
        }
        if self.tokenizer.vocab_size() > self.config.vocab {
            return Err(Error::Config(format!(
                "the tokenizer has {} tokens but the model only {} embedding rows",
                self.tokenizer.vocab_size(),
                self.config.vocab
            )));
        }
        Ok(())
    }

    fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let c = &self.config;
        let mut v = vec![
            ("token_embd.weight".to_string(), vec![c.vocab, c.hidden]),
            ("output.weight".to_string(), vec![c.vocab, c.hidden]),
            ("output_norm.weight".to_string(), vec![c.hidden]),
        ];
        for l in 0..c.layers {
            let t = |s: &str| format!("blk.{l}.{s}.weight");
            v.extend([
                (t("attn_norm"), vec![c.hidden]),
                (t("attn_q"), vec![c.q_dim(), c.hidden]),
                (t("attn_k"), vec![c.kv_dim(), c.hidden]),
                (t("attn_v"), vec![c.kv_dim(), c.hidden]),
                (t("attn_output"), vec![c.hidden, c.q_dim()]),
                (t("ffn_norm"), vec![c.hidden]),
                (t("ffn_gate"), vec![c.ffn, c.hidden]),
                (t("ffn_up"), vec![c.ffn, c.hidden]),
                (t("ffn_down"), vec![c.hidden, c.ffn]),
            ]);
            if c.family.qkv_bias {
                let b = |s: &str| format!("blk.{l}.{s}.bias");
                v.extend([(b("attn_q"), vec![c.q_dim()]), (b("attn_k"), vec![c.kv_dim()]), (b("attn_v"), vec![c.kv_dim()])]);
            }
            if c.family.qk_norm {
                v.extend([(t("attn_q_norm"), vec![c.head_dim]), (t("attn_k_norm"), vec![c.head_dim])]);
            }
            if c.family.post_norms {
                v.extend([(t("post_attention_norm"), vec![c.hidden]), (t("post_ffw_norm"), vec![c.hidden])]);
            }
        }
        v
    }

    /// A tensor by its GGUF name.
    pub fn get(&self, name: &str) -> Result<&HostTensor<'a>> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor { tensor: name.into() })
    }

    /// sha256 of the configuration and the embedding table, which identifies the model for
    /// files made for it (ADORE controllers).
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let embd = self.get("token_embd.weight")?;
        let mut h = Sha256::new();
        // Fields added to Config after controllers were shipped are left out at their Llama
        // value, so that files made for a model still match it.
        let config =
            format!("{:?}", self.config).replace(&format!(", family: {:?}", Family::default()), "").replace(", rope_factors: []", "");
        h.update(config.as_bytes());
        h.update(&embd.data);
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Bytes that will be uploaded (for progress reports).
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.data.len() as u64).sum()
    }
}

/// One transformer block's weights on the GPU.
pub struct Layer {
    pub attn_norm: wgpu::Buffer,
    /// The q, k and v projections, rows stacked in one matrix when their types match (one
    /// product), otherwise apart in that order.
    pub qkv: Vec<GpuWeight>,
    /// The q, k and v biases stacked (f32), where the model has them.
    pub qkv_bias: Option<wgpu::Buffer>,
    /// The weights of the per-head RMSNorm of q, then of k (head_dim each), where the model has it.
    pub qk_norm: Option<wgpu::Buffer>,
    /// The norms of the attention and feed-forward outputs, where the model has them.
    pub post_norms: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub o: GpuWeight,
    pub ffn_norm: wgpu::Buffer,
    /// The gate and up projections, stacked likewise.
    pub gate_up: Vec<GpuWeight>,
    pub down: GpuWeight,
}

impl Layer {
    /// The matrices of the layer.
    pub fn matrices(&self) -> impl Iterator<Item = &GpuWeight> {
        self.qkv.iter().chain([&self.o]).chain(&self.gate_up).chain([&self.down])
    }
}

/// All weights on the GPU.
pub struct Weights {
    /// The embedding table, in row ranges where it exceeds one binding.
    pub embed: RowSplit,
    /// None: tied to `embed`.
    pub lm_head: Option<RowSplit>,
    pub output_norm: wgpu::Buffer,
    pub layers: Vec<Layer>,
}

impl Weights {
    pub fn lm_head(&self) -> &RowSplit {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of the matrices one decode step reads whole: every layer's projections and the
    /// LM head (the embedding gives one row).
    pub fn matrix_bytes(&self) -> u64 {
        let layers: u64 = self.layers.iter().map(|l| l.matrices().map(|w| w.buffer.size()).sum::<u64>()).sum();
        layers + self.lm_head().size()
    }
}

/// A model on the GPU, ready for sessions.
pub struct Model {
    pub ctx: Arc<Context>,
    pub name: String,
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    /// sha256 of the configuration and the embedding table: what a controller is made for.
    pub fingerprint: String,
}

impl Model {
    /// Uploads `spec` to the GPU; `progress(bytes_done, bytes_total)` is called after each tensor.
    pub fn load(ctx: Arc<Context>, spec: ModelSpec, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let fingerprint = spec.fingerprint()?;
        let total = spec.total_bytes();
        let mut done = 0u64;
        let mut step = |t: &HostTensor| {
            done += t.data.len() as u64;
            progress(done, total);
        };
        // Small f32 vectors (norm weights, biases), several joined end to end into one buffer.
        let joined = |label: &str, names: &[String]| -> Result<wgpu::Buffer> {
            let mut all = Vec::new();
            for name in names {
                all.extend(spec.get(name)?.to_f32());
            }
            ctx.storage_init(label, bytemuck::cast_slice(&all))
        };
        let norm = |name: &str| joined(name, &[name.to_string()]);
        let mut split = |name: &str| -> Result<RowSplit> {
            let t = spec.get(name)?;
            let w = RowSplit::upload(&ctx, t)?;
            step(t);
            Ok(w)
        };
        let embed = split("token_embd.weight")?;
        let lm_head = match spec.tensors.contains_key("output.weight") {
            true => Some(split("output.weight")?),
            false => None,
        };
        let mut stacked = |name: &str, parts: &[String]| -> Result<Vec<GpuWeight>> {
            let tensors = parts.iter().map(|p| spec.get(p)).collect::<Result<Vec<_>>>()?;
            let w = GpuWeight::upload_stacked(&ctx, name, &tensors)?;
            tensors.iter().for_each(|t| step(t));
            Ok(w)
        };
        let mut layers = Vec::with_capacity(spec.config.layers);
        for l in 0..spec.config.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let qkv = stacked(&format!("blk.{l}.attn_qkv"), &[n("attn_q"), n("attn_k"), n("attn_v")])?;
            let o = stacked(&n("attn_output"), &[n("attn_output")])?.remove(0);
            let gate_up = stacked(&format!("blk.{l}.ffn_gate_up"), &[n("ffn_gate"), n("ffn_up")])?;
            let down = stacked(&n("ffn_down"), &[n("ffn_down")])?.remove(0);
            let f = &spec.config.family;
            let bias = |s: &str| format!("blk.{l}.{s}.bias");
            let qkv_bias = match f.qkv_bias {
                true => Some(joined(&bias("attn_qkv"), &[bias("attn_q"), bias("attn_k"), bias("attn_v")])?),
                false => None,
            };
            let qk_norm = match f.qk_norm {
                true => Some(joined(&format!("blk.{l}.attn_qk_norm"), &[n("attn_q_norm"), n("attn_k_norm")])?),
                false => None,
            };
            let post_norms = match f.post_norms {
                true => Some((norm(&n("post_attention_norm"))?, norm(&n("post_ffw_norm"))?)),
                false => None,
            };
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm"))?,
                qkv,
                qkv_bias,
                qk_norm,
                o,
                post_norms,
                ffn_norm: norm(&n("ffn_norm"))?,
                gate_up,
                down,
            });
        }
        let output_norm = norm("output_norm.weight")?;
        ctx.take_error()?;
        progress(total, total);
        Ok(Self {
            ctx,
            name: spec.name,
            config: spec.config,
            weights: Weights { embed, lm_head, output_norm, layers },
            tokenizer: spec.tokenizer,
            chat_template: spec.chat_template,
            fingerprint,
        })
    }
}

/// Reads a model from disk: a .gguf file, or a Hugging Face directory.
#[cfg(not(target_arch = "wasm32"))]
pub mod files {
    use std::path::{Path, PathBuf};

    use super::Source;
    use crate::error::{Error, Result};

    /// The raw bytes of a model on disk, kept alive while a [`Source`] borrows them.
    pub enum Files {
        Gguf(String, Vec<u8>),
        HfDir { config: (String, Vec<u8>), safetensors: Vec<(String, Vec<u8>)>, tokenizer: (String, Vec<u8>) },
    }

    fn read(path: &Path) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), error: e })?;
        if bytes.is_empty() {
            return Err(Error::EmptyFile { path: path.display().to_string() });
        }
        Ok(bytes)
    }

    impl Files {
        pub fn read(path: &Path) -> Result<Self> {
            let meta = std::fs::metadata(path).map_err(|e| Error::Io { path: path.to_path_buf(), error: e })?;
            if !meta.is_dir() {
                return Ok(Files::Gguf(path.display().to_string(), read(path)?));
            }
            let named = |f: &str| -> Result<(String, Vec<u8>)> {
                let p: PathBuf = path.join(f);
                Ok((p.display().to_string(), read(&p)?))
            };
            let mut st: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::Io { path: path.to_path_buf(), error: e })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            st.sort();
            let safetensors = st.iter().map(|p| Ok((p.display().to_string(), read(p)?))).collect::<Result<_>>()?;
            Ok(Files::HfDir { config: named("config.json")?, safetensors, tokenizer: named("tokenizer.json")? })
        }

        pub fn source(&self) -> Source<'_> {
            match self {
                Files::Gguf(name, bytes) => Source::Gguf { name: name.clone(), bytes },
                Files::HfDir { config, safetensors, tokenizer } => Source::HfDir {
                    config_json: (config.0.clone(), &config.1),
                    safetensors: safetensors.iter().map(|(n, b)| (n.clone(), &b[..])).collect(),
                    tokenizer_json: (tokenizer.0.clone(), &tokenizer.1),
                },
            }
        }
    }

    /// Reads, checks and uploads the model at `path`.
    pub fn load(ctx: std::sync::Arc<crate::gpu::Context>, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<super::Model> {
        let files = Files::read(path)?;
        let spec = super::ModelSpec::read(files.source())?;
        super::Model::load(ctx, spec, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<(String, Vec<u8>)> {
        names.iter().map(|n| (n.to_string(), b"data".to_vec())).collect()
    }

    #[test]
    fn files_are_recognised_by_name_or_magic() {
        let one = named(&["dir/m.gguf"]);
        assert!(matches!(Source::from_files(&one), Ok(Source::Gguf { name, .. }) if name == "dir/m.gguf"));
        let magic = vec![("blob".to_string(), b"GGUF\x03\0\0\0".to_vec())];
        assert!(matches!(Source::from_files(&magic), Ok(Source::Gguf { .. })));
        let hf = named(&["m/model-00002.safetensors", "m/tokenizer.json", "m/config.json", "m/model-00001.safetensors", "m/README.md"]);
        match Source::from_files(&hf) {
            Ok(Source::HfDir { config_json, safetensors, tokenizer_json }) => {
                assert_eq!(config_json.0, "m/config.json");
                assert_eq!(tokenizer_json.0, "m/tokenizer.json");
                let names: Vec<_> = safetensors.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, ["m/model-00001.safetensors", "m/model-00002.safetensors"]);
            }
            _ => panic!("a Hugging Face directory was not recognised"),
        }
    }

    #[test]
    fn incomplete_file_sets_say_what_is_needed() {
        for names in
            [&["config.json", "tokenizer.json"][..], &["model.safetensors", "config.json"], &["notes.txt"], &[], &["a.gguf", "b.gguf"]]
        {
            match Source::from_files(&named(names)) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("give one .gguf file"), "{m}"),
                _ => panic!("{names:?} accepted"),
            }
        }
    }
}
