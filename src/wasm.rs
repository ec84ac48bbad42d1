//! The browser facade (wasm-bindgen): the only module that knows about JavaScript.
//!
//! The npm package's wrapper (`web/src/`) builds the public API on these calls. Options and
//! results cross as JSON text, model files as `Uint8Array`s, and every error as a plain
//! `{ kind, message }` object (kind = [`Error::kind`]) that the wrapper turns into a named
//! `Error` subclass. Nothing here panics on user input; a panic would abort the module, so
//! the hook below at least prints its message to the console.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::error::{Error, Result};
use crate::generate::{apply_chat_template, reuse_prefix, GenerateOptions, Generation, Message, Stats};
use crate::gpu::{Context, ContextOptions};
use crate::index::{KeyIndex, FIT_MIN_TOKENS};
use crate::model::{Model, ModelSpec, Source};
use crate::ops::sample::Sampling;
use crate::ops::KvType;
use crate::policy::{Policy, PolicyKind, PolicyParts};
use crate::session::{Session, SessionOptions};

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("adore: internal error (please report): {info}").into());
    }));
}

fn js_error(e: &Error) -> JsValue {
    let obj = js_sys::Object::new();
    // Setting fields on a fresh plain object cannot fail.
    let _ = js_sys::Reflect::set(&obj, &"kind".into(), &e.kind().into());
    let _ = js_sys::Reflect::set(&obj, &"message".into(), &e.to_string().into());
    obj.into()
}

fn busy() -> JsValue {
    js_error(&Error::arg("the engine is busy with another call: wait for it to finish (one generation at a time per engine)"))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::arg(format!("cannot encode a result: {e}")))
}

/// Generation options as the wrapper sends them (already checked there; checked again here).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options {
    max_tokens: usize,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    seed: u64,
    policy: String,
    budget: usize,
    sinks: usize,
    /// None: the policy's default for the budget.
    recent: Option<usize>,
    rebuild: usize,
    rebuild_from: String,
    /// What adore from its store ranks by: "keys" or "controller".
    ranking: String,
    /// adore ranked by keys: one choice for every this many layers.
    layers_per_choice: usize,
    /// How the KV cache stores K and V: "f16" or "f32".
    kv_cache: String,
    context: Option<usize>,
    /// Report the cache's kept and rebuilt positions with every token (costs a readback).
    trace: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Token {
    id: u32,
    text: String,
    /// Position of this token in the sequence.
    position: usize,
    /// Positions held in the KV cache after this token's step (when tracing a budgeted policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<Vec<u32>>,
    /// Positions the step recomputed (adore with rebuild, when tracing).
    #[serde(skip_serializing_if = "Option::is_none")]
    rebuilt: Option<Vec<u32>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FinalStats {
    prompt_tokens: usize,
    generated_tokens: usize,
    prefill_seconds: f64,
    decode_seconds: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    stop: crate::generate::StopReason,
    kv_bytes: u64,
    tokens: Vec<u32>,
}

impl FinalStats {
    fn new(s: Stats, kv_bytes: u64, tokens: &[u32]) -> Self {
        Self {
            prefill_tokens_per_s: s.prefill_tokens_per_s(),
            decode_tokens_per_s: s.decode_tokens_per_s(),
            prompt_tokens: s.prompt_tokens,
            generated_tokens: s.generated_tokens,
            prefill_seconds: s.prefill_seconds,
            decode_seconds: s.decode_seconds,
            stop: s.stop,
            kv_bytes,
            tokens: tokens.to_vec(),
        }
    }
}

struct Inner {
    model: Arc<Model>,
    /// The key index that adore ranks by: the one shipped for the model, or one fitted to the
    /// first prompt long enough (kept for the engine's life).
    index: Option<Arc<KeyIndex>>,
    /// The session, with the options it was made for and the tokens it holds.
    session: Option<(SessionOptions, Session, Vec<u32>)>,
    generation: Option<(Generation, bool)>,
}

impl Inner {
    fn session_options(&self, o: &Options) -> Result<SessionOptions> {
        let kind: PolicyKind = o.policy.parse()?;
        let parts = PolicyParts {
            budget: o.budget,
            sinks: o.sinks,
            recent: o.recent,
            rebuild: o.rebuild,
            rebuild_from: o.rebuild_from.parse()?,
            ranking: o.ranking.parse()?,
            candidates: 0,
            layers_per_choice: o.layers_per_choice,
            rank_ahead: false,
        };
        let policy = Policy::shared(kind, parts)?;
        let context = o.context.unwrap_or(SessionOptions::default_context(&self.model.config));
        let kv_cache = match o.kv_cache.as_str() {
            "f16" => KvType::F16,
            "f32" => KvType::F32,
            other => return Err(Error::arg(format!("kvCache must be f16 or f32, got {other:?}"))),
        };
        Ok(SessionOptions { context, chunk: 128, policy, kv_cache, index: self.index.clone(), ..Default::default() })
    }

    async fn start(&mut self, ids: Vec<u32>, o: Options) -> Result<()> {
        let mut options = self.session_options(&o)?;
        if ids.len() + 1 > options.context {
            return Err(Error::PromptTooLong { tokens: ids.len(), context: options.context });
        }
        if options.ranks_by_keys() && options.index.is_none() {
            // No key index ships for this model: fit one to this prompt, as `adore generate` does.
            if ids.len() < FIT_MIN_TOKENS {
                return Err(Error::arg(format!(
                    "adore ranks by a key index, none ships for this model, and one is fitted to a prompt of at least {FIT_MIN_TOKENS} tokens (this one has {}): give a longer prompt, or use another policy (sink)",
                    ids.len()
                )));
            }
            self.generation = None;
            self.session = None; // free the old buffers first
            let index = Arc::new(crate::index::fit_to_prompt(&self.model, &ids, 128, |_| {}).await?);
            self.index = Some(index.clone());
            options.index = Some(index);
        }
        let reuse = matches!(&self.session, Some((old, ..)) if old.context == options.context && old.policy == options.policy && old.kv_cache == options.kv_cache);
        if !reuse {
            self.session = None; // free the old buffers first
            let session = Session::new(self.model.clone(), options.clone())?;
            self.session = Some((options, session, Vec::new()));
        }
        let Some((_, session, held)) = self.session.as_mut() else { return Err(Error::arg("no session")) };
        let common = reuse_prefix(session, held, &ids).await;
        held.truncate(common);
        held.extend_from_slice(&ids[common..]);
        let gen_options = GenerateOptions {
            max_tokens: o.max_tokens,
            sampling: Sampling { temperature: o.temperature, top_k: o.top_k, top_p: o.top_p, seed: o.seed },
            stop_at_eos: true,
            // A trace reads the session after each token: no step may be queued ahead of it.
            overlap: !o.trace,
        };
        self.generation = None;
        let generation = Generation::start(session, &ids[common..], &gen_options).await;
        if generation.is_err() {
            session.reset();
            held.clear();
        }
        self.generation = Some((generation?, o.trace));
        Ok(())
    }

    async fn next(&mut self) -> Result<String> {
        let (Some((generation, trace)), Some((options, session, held))) = (self.generation.as_mut(), self.session.as_mut()) else {
            return Err(Error::arg("no generation is running: call generate first"));
        };
        let step = generation.next(session).await;
        let token = match step {
            Ok(t) => t,
            Err(e) => {
                // The sequence is in an unknown state: start the next generation afresh.
                session.reset();
                held.clear();
                self.generation = None;
                return Err(e);
            }
        };
        let Some((id, text)) = token else {
            held.truncate(session.len());
            let stats = generation.stats().ok_or_else(|| Error::arg("generation stopped without a reason"))?;
            let done = FinalStats::new(stats, session.kv_bytes(), generation.tokens());
            self.generation = None;
            return to_json(&serde_json::json!({ "done": true, "stats": done }));
        };
        held.push(id);
        let position = held.len() - 1;
        let traced = *trace && !options.policy.kind.keeps_everything();
        let kept = if traced { Some(session.attended_positions().await?) } else { None };
        let rebuilt = if traced && options.policy.rebuild > 0 { Some(session.rebuilt_positions().await?) } else { None };
        to_json(&serde_json::json!({ "done": false, "token": Token { id, text, position, kept, rebuilt } }))
    }
}

/// Every kernel's WGSL source that the browser engine can use, as JSON `[{ name, source }]`, so
/// that tests can compile them all with the browser's own WGSL compiler (stricter in places than
/// the native one). The subgroup kernels are native only (`Context::subgroups`).
#[wasm_bindgen(js_name = shaderSources)]
pub fn shader_sources() -> String {
    let all: Vec<_> = crate::shaders::ALL
        .iter()
        .filter(|s| s.name != crate::shaders::MATMUL_SG.name)
        .map(|s| serde_json::json!({ "name": s.name, "source": s.source() }))
        .collect();
    serde_json::Value::Array(all).to_string()
}

/// A model on the GPU and its current conversation.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<RefCell<Inner>>,
    info: String,
}

/// Loads a model. `files` is an array of `[name, Uint8Array]` pairs; `progress(phase, done,
/// total)` is called while the files are parsed and uploaded (phases `parse`, `upload`).
#[wasm_bindgen(js_name = loadModel)]
pub async fn load_model(files: js_sys::Array, progress: Option<js_sys::Function>) -> std::result::Result<Engine, JsValue> {
    let report = |phase: &str, done: u64, total: u64| {
        if let Some(f) = &progress {
            // A throwing progress callback must not stop the load.
            let _ = f.call3(&JsValue::NULL, &phase.into(), &(done as f64).into(), &(total as f64).into());
        }
    };
    let mut named = Vec::with_capacity(files.length() as usize);
    for entry in files.iter() {
        let pair = js_sys::Array::from(&entry);
        let name = pair.get(0).as_string().ok_or_else(|| js_error(&Error::arg("each file must be a [name, Uint8Array] pair")))?;
        let bytes = pair
            .get(1)
            .dyn_into::<js_sys::Uint8Array>()
            .map_err(|_| js_error(&Error::arg(format!("{name}: the file's bytes must be a Uint8Array"))))?;
        if bytes.length() == 0 {
            return Err(js_error(&Error::EmptyFile { path: name }));
        }
        named.push((name, bytes.to_vec()));
    }
    let total: u64 = named.iter().map(|(_, b)| b.len() as u64).sum();
    report("parse", 0, total);
    // The files are checked before a device is requested: a bad file costs no GPU.
    let spec = Source::from_files(&named).and_then(ModelSpec::read).map_err(|e| js_error(&e))?;
    let ctx = Arc::new(Context::new(ContextOptions::default()).await.map_err(|e| js_error(&e))?);
    report("upload", 0, total);
    let model = Model::load(ctx, spec, &mut |done, total| report("upload", done, total)).map_err(|e| js_error(&e))?;
    drop(named);
    let c = &model.config;
    let index = KeyIndex::builtin(&model.fingerprint).map(Arc::new);
    let info = serde_json::json!({
        "name": model.name,
        "adapter": model.ctx.describe(),
        "layers": c.layers,
        "hidden": c.hidden,
        "heads": c.n_heads,
        "kvHeads": c.n_kv_heads,
        "vocab": c.vocab,
        "context": c.context,
        "weightBytes": total,
        "maxStorageBufferBindingSize": model.ctx.binding_limit(),
        "chatTemplate": model.chat_template.is_some(),
        // adore ranked by keys (the default) needs one: without it, one is fitted to the first
        // prompt of keyIndexMinTokens or more.
        "keyIndex": index.is_some(),
        "keyIndexMinTokens": FIT_MIN_TOKENS,
    })
    .to_string();
    let inner = Inner { model: Arc::new(model), index, session: None, generation: None };
    Ok(Engine { inner: Rc::new(RefCell::new(inner)), info })
}

#[wasm_bindgen]
impl Engine {
    /// The model's and device's description, as JSON.
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// The model's chat template applied to `messages` (JSON `[{role, content}]`), ending with
    /// the assistant's turn.
    #[wasm_bindgen(js_name = chatPrompt)]
    pub fn chat_prompt(&self, messages: &str) -> std::result::Result<String, JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        let messages: Vec<Message> = serde_json::from_str(messages)
            .map_err(|e| js_error(&Error::arg(format!("messages must be an array of {{ role, content }} strings: {e}"))))?;
        apply_chat_template(inner.model.chat_template.as_deref(), &messages).map_err(|e| js_error(&e))
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        inner.model.tokenizer.encode(text).map_err(|e| js_error(&e))
    }

    /// Starts generating from `prompt` with `options` (JSON); the promise resolves once the
    /// prompt has run. A session whose options match is reused, with the prefix it shares.
    pub fn start(&self, prompt: String, options: String) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut inner = inner.try_borrow_mut().map_err(|_| busy())?;
            let options: Options = serde_json::from_str(&options).map_err(|e| js_error(&Error::arg(format!("generation options: {e}"))))?;
            let ids = inner.model.tokenizer.encode(&prompt).map_err(|e| js_error(&e))?;
            if ids.is_empty() {
                return Err(js_error(&Error::EmptyPrompt));
            }
            inner.start(ids, options).await.map_err(|e| js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The next token as JSON `{done: false, token}`, or `{done: true, stats}` at the end.
    pub fn next(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut inner = inner.try_borrow_mut().map_err(|_| busy())?;
            inner.next().await.map(JsValue::from).map_err(|e| js_error(&e))
        })
    }

    /// Stops the running generation before its next token.
    pub fn cancel(&self) -> std::result::Result<(), JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| busy())?;
        if let Some((g, _)) = inner.generation.as_mut() {
            g.cancel();
        }
        Ok(())
    }

    /// The key index that adore ranks by (the one shipped for the model, or one fitted to a
    /// prompt), as the bytes of its file, or undefined before there is one: an application can
    /// keep a fitted index and give it to a later engine (`setKeyIndex`) instead of fitting again.
    #[wasm_bindgen(js_name = keyIndex)]
    pub fn key_index(&self) -> std::result::Result<Option<Vec<u8>>, JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        inner.index.as_ref().map(|i| i.to_bytes()).transpose().map_err(|e| js_error(&e))
    }

    /// Makes `bytes` (a key index file: from `keyIndex`, or written by `adore index fit`) the
    /// index that adore ranks by, after checking that it was fitted for this model; the
    /// conversation is forgotten.
    #[wasm_bindgen(js_name = setKeyIndex)]
    pub fn set_key_index(&self, bytes: &[u8]) -> std::result::Result<(), JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| busy())?;
        let index = KeyIndex::from_bytes("key index", bytes, &inner.model.fingerprint).map_err(|e| js_error(&e))?;
        index.check(&inner.model.config).map_err(|e| js_error(&e))?;
        inner.generation = None;
        inner.session = None;
        inner.index = Some(Arc::new(index));
        Ok(())
    }

    /// Forgets the conversation (the model stays loaded).
    pub fn reset(&self) -> std::result::Result<(), JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| busy())?;
        inner.generation = None;
        inner.session = None;
        Ok(())
    }
}
