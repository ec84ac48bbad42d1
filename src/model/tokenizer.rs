//! Text <-> token ids, with the `tokenizers` crate: from tokenizer.json, or built from GGUF
//! metadata (byte-level BPE with the pre-tokenizer the file names). Special tokens written in
//! the text (`<|im_start|>`) are recognised.

use serde_json::json;

use super::gguf::Gguf;
use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// The end of a turn where the file names one (`tokenizer.ggml.eot_token_id`).
    pub eot: Option<u32>,
}

/// The byte-level BPE pre-tokenizers read from GGUF files, by the names llama.cpp gives them
/// (`tokenizer.ggml.pre`; models converted from the same tokenizer share one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreTokenizer {
    /// GPT-2's split.
    Gpt2,
    /// Digits one by one, then GPT-2's split (SmolLM, StarCoder).
    Digits,
    /// Llama 3's split, pieces that are tokens taken whole.
    Llama3,
    /// Llama 3's split with every piece merged (DBRX, Smaug).
    Llama3Merged,
    /// Llama 3's split with single digits, the text composed first (Qwen2).
    Qwen2,
}

impl PreTokenizer {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "default" | "gpt2" | "gpt-2" | "phi-2" | "gigachat" | "mellum" | "exaone4" | "a.x-4.0" | "mpt" | "olmo" | "jais"
            | "trillion" | "granite-docling" => Self::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => Self::Digits,
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => Self::Llama3,
            "dbrx" | "smaug-bpe" => Self::Llama3Merged,
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "kormo" | "stablelm2" => Self::Qwen2,
            _ => return None,
        })
    }
}

const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// Qwen2's split: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// From the contents of a tokenizer.json.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self> {
        // The JSON is read whole first (strings decoded too): the tokenizers crate panics instead
        // of returning an error on malformed JSON inside the decoder (a control character, a
        // lone surrogate escape).
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| Error::Tokenizer(format!("{file}: not valid JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer(format!("{file}: {e}")))?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = find(&["<|im_start|>", "<s>", "<|begin_of_text|>"]);
        let eos = find(&["<|im_end|>", "</s>", "<|eot_id|>", "<|endoftext|>"]);
        Ok(Self { inner, bos, eos, add_bos: false, eot: None })
    }

    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let err = |m: String| Error::Tokenizer(format!("{}: {m}", g.file));
        let model =
            g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).ok_or_else(|| err("no tokenizer.ggml.model in the metadata".into()))?;
        if model != "gpt2" && model != "llama" {
            return Err(err(format!(
                "tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" and SentencePiece \"llama\" are); convert the model with a tokenizer.json"
            )));
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            let arr = g.get(key).and_then(|v| v.as_array()).ok_or_else(|| err(format!("{key} is missing or not an array")))?;
            arr.iter().map(|v| v.as_str().ok_or_else(|| err(format!("{key} holds a non-string")))).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, t) in tokens.iter().enumerate() {
            vocab.insert(t.to_string(), json!(id));
            // 3 = control, 4 = user-defined: matched whole in the input text.
            if matches!(types.get(id), Some(3) | Some(4)) {
                added.push(json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                                  "normalized": false, "special": types.get(id) == Some(&3)}));
            }
        }
        // The byte-level BPE's split, as the file names it (read for BPE files only).
        let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let split_kind = PreTokenizer::named(pre);
        let spec = if model == "llama" {
            let scores = match g.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                Some(a) if a.len() == tokens.len() => a
                    .iter()
                    .map(|v| v.as_f64().ok_or_else(|| err("tokenizer.ggml.scores holds a non-number".into())))
                    .collect::<Result<Vec<f64>>>()?,
                _ => return Err(err("a SentencePiece tokenizer needs tokenizer.ggml.scores, one per token".into())),
            };
            let prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
            let unk = g.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.as_u64()).and_then(|i| tokens.get(i as usize));
            sentencepiece_spec(&tokens, &scores, vocab, added, prefix, unk.copied())
        } else {
            let merges = strings("tokenizer.ggml.merges")?;
            let byte_level =
                |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
            let split = |regex: &str| {
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false}, byte_level(false)]})
            };
            let pre_tokenizer = match split_kind {
                Some(PreTokenizer::Gpt2) => byte_level(true),
                Some(PreTokenizer::Digits) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                Some(PreTokenizer::Llama3 | PreTokenizer::Llama3Merged) => split(LLAMA3_SPLIT),
                Some(PreTokenizer::Qwen2) => split(QWEN2_SPLIT),
                None => return Err(err(format!(
                    "pre-tokenizer {pre:?} is not supported (those of GPT-2, SmolLM, Llama 3 and Qwen2 are, under the names llama.cpp gives them)"
                ))),
            };
            // Llama 3's tokenizer takes a piece that is a token whole, merges or not (as
            // llama.cpp and tokenizer.json do).
            let ignore_merges = split_kind == Some(PreTokenizer::Llama3);
            // Qwen2 composes the text (NFC) before splitting it.
            let normalizer = if split_kind == Some(PreTokenizer::Qwen2) { json!({"type": "NFC"}) } else { serde_json::Value::Null };
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": normalizer,
                "pre_tokenizer": pre_tokenizer, "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                          "vocab": vocab, "merges": merges},
            })
        };
        let text = serde_json::to_vec(&spec).map_err(|e| err(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&text).map_err(|e| err(format!("building the {model} tokenizer: {e}")))?;
        let id = |key: &str| g.get(key).and_then(|v| v.as_u64()).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            // Without the key, as llama.cpp: SentencePiece and Llama 3's tokenizer add BOS.
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(model == "llama" || (model == "gpt2" && split_kind == Some(PreTokenizer::Llama3))),
            eot: id("tokenizer.ggml.eot_token_id"),
        })
    }

    /// The tokens that end a generation: end-of-sequence, and the chat formats' end of a turn
    /// (Gemma's `<end_of_turn>`, whose files name `<eos>` as end-of-sequence).
    pub fn stop_ids(&self) -> Vec<u32> {
        let turns = ["<end_of_turn>", "<|im_end|>", "<|eot_id|>"].into_iter().filter_map(|t| self.inner.token_to_id(t));
        let mut ids: Vec<u32> = self.eos.into_iter().chain(self.eot).chain(turns).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` (with the BOS token first when the model asks for it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The tokenizer as tokenizer.json text (for converting a GGUF model's tokenizer).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// A SentencePiece BPE model (llama.cpp's "llama" tokenizer: Gemma, Llama 2) as the tokenizers
/// crate's BPE: spaces written as ▁ (and one before the text with `prefix`), no pre-splitting, and
/// merges derived from the scores as llama.cpp applies them: any two adjacent pieces whose
/// concatenation is a token merge into it, the highest-scoring such token first; characters
/// no piece covers fall back to byte tokens <0xXX>.
fn sentencepiece_spec(
    tokens: &[&str],
    scores: &[f64],
    vocab: serde_json::Map<String, serde_json::Value>,
    added: Vec<serde_json::Value>,
    prefix: bool,
    unk: Option<&str>,
) -> serde_json::Value {
    let ids: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    // (score of the merged token, its id, the split) for every way of splitting every token in two.
    let mut merges: Vec<(f64, usize, &str, &str)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if ids.contains_key(a) && ids.contains_key(b) {
                merges.push((scores[id], id, a, b));
            }
        }
    }
    // Highest score first; for one token, splits with the more frequent (lower-id) left piece first.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(ids[x.2].cmp(&ids[y.2])));
    let merges: Vec<serde_json::Value> = merges.into_iter().map(|(_, _, a, b)| json!([a, b])).collect();
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    })
}

/// Streams text from tokens as they arrive, holding back incomplete characters. Byte-level
/// tokens decode independently, so only the tokens not yet emitted are decoded each time.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
}

impl TextStream {
    /// Adds a token; returns the new text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') && self.ids.len() < 8 {
            return Ok(String::new());
        }
        self.ids.clear();
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::{self, Value};

    /// A byte-level BPE tokenizer over `pre` whose vocabulary holds every character of the
    /// texts below and "ab", "abc", "Ġab", "12", "!ab" (merges: only "a b", "Ġ ab", "1 2" and
    /// "! ab").
    fn bpe(pre: &str, extra: &[(&str, Value)]) -> Result<Tokenizer> {
        let mut tokens: Vec<String> = "abcdefghijklmnopqrstuvwxyz0123456789'.,!ĠĊ".chars().map(String::from).collect();
        tokens.extend(["ab", "abc", "Ġab", "12", "!ab", "<|eot|>"].map(String::from));
        let n = tokens.len();
        let mut types = vec![Value::I32(1); n];
        types[n - 1] = Value::I32(3);
        let mut meta = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.merges", Value::Array(["a b", "Ġ ab", "1 2", "! ab"].map(|m| Value::String(m.into())).to_vec())),
        ];
        meta.extend(extra.iter().cloned());
        let bytes = gguf::write(&meta, &[]);
        Tokenizer::from_gguf(&gguf::Gguf::parse("t.gguf", &bytes)?)
    }

    const TEXT: &str = "abc it's 12345 ab, abc!ab\n\n ab  abc's 7";

    #[test]
    fn pre_tokenizers_named_alike_split_alike() {
        let groups: &[&[&str]] = &[
            &["gpt-2", "default", "phi-2", "olmo", "mpt"],
            &["smollm", "starcoder", "refact", "command-r", "exaone"],
            &["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"],
            &["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"],
        ];
        let mut seen = Vec::new();
        for group in groups {
            let first = bpe(group[0], &[]).unwrap().encode(TEXT).unwrap();
            for name in &group[1..] {
                assert_eq!(bpe(name, &[]).unwrap().encode(TEXT).unwrap(), first, "{name} against {}", group[0]);
            }
            seen.push(first);
        }
        // The groups split differently: digits alone, in threes or together; punctuation
        // joined to the word after it or not; a piece that is a token taken whole or not.
        for i in 0..seen.len() {
            for j in i + 1..seen.len() {
                assert_ne!(seen[i], seen[j], "{:?} and {:?} split alike", groups[i], groups[j]);
            }
        }
    }

    #[test]
    fn llama3_takes_a_piece_that_is_a_token_whole() {
        let id = |t: &Tokenizer, s: &str| t.inner.token_to_id(s).unwrap();
        let whole = bpe("llama-bpe", &[]).unwrap();
        assert_eq!(whole.encode("abc").unwrap(), [id(&whole, "abc")]);
        // DBRX's and Smaug's files merge every piece ("abc" has no merge path).
        let merged = bpe("smaug-bpe", &[]).unwrap();
        assert_eq!(merged.encode("abc").unwrap(), [id(&merged, "ab"), id(&merged, "c")]);
    }

    #[test]
    fn bos_and_end_of_turn_as_llama_cpp_reads_them() {
        // Without tokenizer.ggml.add_bos_token: Llama 3's tokenizer adds BOS, GPT-2's does not.
        let bos = [("tokenizer.ggml.bos_token_id", Value::U32(0))];
        assert_eq!(bpe("llama-bpe", &bos).unwrap().encode("b").unwrap(), [0, 1]);
        assert_eq!(bpe("gpt-2", &bos).unwrap().encode("b").unwrap(), [1]);
        let no = [bos[0].clone(), ("tokenizer.ggml.add_bos_token", Value::Bool(false))];
        assert_eq!(bpe("llama-bpe", &no).unwrap().encode("b").unwrap(), [1]);
        // An end-of-turn token named by the file stops a generation.
        let t = bpe("gpt-2", &[("tokenizer.ggml.eos_token_id", Value::U32(2)), ("tokenizer.ggml.eot_token_id", Value::U32(47))]).unwrap();
        assert_eq!(t.stop_ids(), [2, 47]);
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_refused_by_name() {
        let e = bpe("tekken", &[]).err().expect("refused").to_string();
        assert!(e.contains("\"tekken\"") && e.contains("not supported"), "{e}");
    }
}
