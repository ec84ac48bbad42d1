//! A session: one sequence's run state (activations and the slot-based KV cache, allocated
//! once), the recorded per-step plans, and the prefill / decode steps. Each step writes a
//! small uniform, replays one recorded plan in one submit, and reads back one token id.

use std::collections::HashMap;
use std::sync::Arc;

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::gpu::Dispatch;
use crate::kv::{CacheUpdate, Policy, PolicyKind, SlotMap};
use crate::model::Model;
use crate::ops::{self, attention::Heads, attention::Mass, attention::INVALID_SLOT, sample::Sampling, Step};

/// Sizes fixed when a session is created.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The longest sequence this session can hold (prompt + generated tokens).
    pub context: usize,
    /// Most prompt tokens processed per submit.
    pub chunk: usize,
    /// Compute logits for every row (perplexity) instead of only the last one.
    pub all_logits: bool,
    /// Which tokens the KV cache keeps.
    pub policy: Policy,
    /// The ADORE controller (required by the `adore` policy).
    pub controller: Option<Arc<Controller>>,
    /// How kept rows reach their slots (the selection-matrix variant is an ablation).
    pub cache_update: CacheUpdate,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { context: 2048, chunk: 256, all_logits: false, policy: Policy::full(), controller: None, cache_update: CacheUpdate::Scatter }
    }
}

impl SessionOptions {
    /// Most rows one step processes: a prompt chunk, or a token with its rebuild rows.
    pub fn max_rows(&self) -> usize {
        self.chunk.max(self.policy.rebuild + 1).min(self.context)
    }

    /// KV slots needed: the whole context for `full` and `oracle`; otherwise the budget plus
    /// the rows of one step in flight (the session caps the chunk at the budget).
    pub fn capacity(&self) -> usize {
        if self.policy.kind.keeps_everything() {
            self.context
        } else {
            self.context.min(self.policy.budget + self.max_rows())
        }
    }
}

/// Activations, KV cache and step buffers: everything a step touches, allocated once.
struct RunState {
    step: wgpu::Buffer,          // Step uniform
    sample_params: wgpu::Buffer, // sample::Params uniform
    tokens: wgpu::Buffer,        // (rows) u32 input ids; [0] <- sampled id
    positions: wgpu::Buffer,     // (rows) u32 absolute positions
    slots: wgpu::Buffer,         // (rows) u32 KV slot of each row
    x: wgpu::Buffer,             // (rows, hidden) residual stream
    xn: wgpu::Buffer,            // (rows, hidden) normalised
    q: wgpu::Buffer,             // (rows, n_heads, head_dim)
    k: wgpu::Buffer,             // (rows, n_kv_heads, head_dim)
    v: wgpu::Buffer,             // (rows, n_kv_heads, head_dim)
    att: wgpu::Buffer,           // (rows, n_heads, head_dim)
    proj: wgpu::Buffer,          // (rows, hidden) attention / FFN output
    gate: wgpu::Buffer,          // (rows, ffn)
    up: wgpu::Buffer,            // (rows, ffn)
    last: wgpu::Buffer,          // (1, hidden) normalised last row
    logits: wgpu::Buffer,        // (1 or chunk, vocab)
    k_cache: Vec<wgpu::Buffer>,  // per layer (capacity, n_kv_heads, head_dim)
    v_cache: Vec<wgpu::Buffer>,  // per layer (capacity, n_kv_heads, head_dim)
    slot_pos: wgpu::Buffer,      // (capacity) u32 position held by each slot, or INVALID_SLOT
    attend: wgpu::Buffer,        // (capacity) the oracle's selection: slot_pos less what this step skips
    mass: wgpu::Buffer,          // (rows, n_heads, capacity) attention probabilities (h2o, tova, oracle)
    ctrl_state: wgpu::Buffer,    // (2, d_c) controller state h, then query q (adore)
    ctrl_keys: wgpu::Buffer,     // (context, d_c) controller key of every token by position (adore)
    slot_score: wgpu::Buffer,    // (capacity) per-slot score the GPU policies release by
    ids: wgpu::Buffer,           // (context) u32 token id by position (rebuild)
    pos_score: wgpu::Buffer,     // (context) controller score by position, cached ones masked (rebuild)
    selected: wgpu::Buffer,      // (context) u32 top-k mask (rebuild)
    rebuild_idx: wgpu::Buffer,   // (R) u32 positions to rebuild, ascending
    moves: wgpu::Buffer,         // (capacity) u32 source slot of each cache slot (matmul update)
    select: wgpu::Buffer,        // (budget, capacity) one-hot selection matrix (matmul update)
    selected_kv: wgpu::Buffer,   // (2, budget, kv_dim) one layer's selected K and V (matmul update)
    readback: wgpu::Buffer,      // 4 bytes, MAP_READ
}

pub struct Session {
    pub model: Arc<Model>,
    pub options: SessionOptions,
    state: RunState,
    /// Recorded plans by (row capacity: powers of two up to max_rows, rebuild rows).
    plans: HashMap<(usize, usize), Vec<Dispatch>>,
    sampling: Sampling,
    /// Tokens in the sequence so far.
    n_past: usize,
    counter: u32,
    /// CPU mirror of the slot table (policies without scores are decided on it).
    slots: SlotMap,
    capacity: usize,
    max_rows: usize,
    /// Rows and new rows of the last step.
    last_rows: (usize, usize),
    controller: Option<ops::controller::GpuController>,
}

impl Session {
    pub fn new(model: Arc<Model>, options: SessionOptions) -> Result<Self> {
        let c = &model.config;
        if options.context == 0 || options.chunk == 0 {
            return Err(Error::arg("context and chunk sizes must be at least 1"));
        }
        options.policy.validate()?;
        let staged = options.cache_update == CacheUpdate::Matmul;
        if staged && !options.policy.kind.on_gpu() {
            return Err(Error::arg(format!(
                "--cache-update matmul applies to the policies whose releases the GPU decides (h2o, tova, adore), not {}",
                options.policy.name()
            )));
        }
        let ctx = &model.ctx;
        let f = |n: usize| (n * 4) as u64;
        // A budgeted cache holds the budget plus one chunk of rows in flight; chunks no larger
        // than the budget keep that under twice the budget.
        let chunk = match options.policy.kind {
            PolicyKind::Full => options.chunk,
            _ => options.chunk.min(options.policy.budget),
        }
        .min(options.context);
        let options = SessionOptions { chunk, ..options };
        let capacity = options.capacity();
        let rows = options.max_rows();
        let rebuild = options.policy.rebuild;
        // The adore policy takes the controller given, or the one shipped for this model.
        let shipped = match (options.policy.kind, &options.controller) {
            (PolicyKind::Adore, None) => Controller::builtin(&model.fingerprint).map(Arc::new),
            _ => None,
        };
        let options = SessionOptions { controller: options.controller.clone().or(shipped), ..options };
        let controller = match (options.policy.kind, &options.controller) {
            (PolicyKind::Adore, None) => {
                return Err(Error::arg(
                    "the adore policy needs a controller for this model: none is shipped for it, so pass --controller FILE (train one as the README says; `adore controller init` makes a random one)",
                ))
            }
            (PolicyKind::Adore, Some(cl)) => {
                if cl.fingerprint != model.fingerprint || cl.hidden != c.hidden {
                    return Err(Error::Config(format!(
                        "the controller was made for another model (fingerprint {}, this model's is {})",
                        cl.fingerprint, model.fingerprint
                    )));
                }
                if cl.input_layer > c.layers {
                    return Err(Error::Config(format!(
                        "the controller reads the residual stream after layer {}, but the model has {} layers",
                        cl.input_layer, c.layers
                    )));
                }
                if cl.input_layer > 0 && rebuild > 0 {
                    // Rebuild ranks released tokens before the forward pass, which is where
                    // such a controller's input for the new token is made.
                    return Err(Error::arg(format!(
                        "rebuild needs a controller that reads token embeddings; this one reads the residual stream after layer {}: use --rebuild 0",
                        cl.input_layer
                    )));
                }
                Some(ops::controller::GpuController::upload(ctx, cl, capacity)?)
            }
            _ => None,
        };
        let d_c = controller.as_ref().map_or(1, |g| g.params.d_c as usize);
        let logit_rows = if options.all_logits { rows } else { 1 };
        let kv_bytes = f(capacity * c.kv_dim());
        let oracle = options.policy.kind == PolicyKind::Oracle;
        let cache = |kind: &str| -> Result<Vec<wgpu::Buffer>> {
            (0..c.layers).map(|l| ctx.storage(&format!("{kind}_cache.{l}"), kv_bytes)).collect()
        };
        let state = RunState {
            step: ctx.uniform("step", &Step::default()),
            sample_params: ops::sample::params_buffer(ctx, &Sampling::default(), c.vocab),
            tokens: ctx.storage("tokens", f(rows))?,
            positions: ctx.storage("positions", f(rows))?,
            slots: ctx.storage("slots", f(rows))?,
            x: ctx.storage("x", f(rows * c.hidden))?,
            xn: ctx.storage("xn", f(rows * c.hidden))?,
            q: ctx.storage("q", f(rows * c.q_dim()))?,
            k: ctx.storage("k", f(rows * c.kv_dim()))?,
            v: ctx.storage("v", f(rows * c.kv_dim()))?,
            att: ctx.storage("att", f(rows * c.q_dim()))?,
            proj: ctx.storage("proj", f(rows * c.hidden))?,
            gate: ctx.storage("gate", f(rows * c.ffn))?,
            up: ctx.storage("up", f(rows * c.ffn))?,
            last: ctx.storage("last", f(c.hidden))?,
            logits: ctx.storage("logits", f(logit_rows * c.vocab))?,
            k_cache: cache("k")?,
            v_cache: cache("v")?,
            slot_pos: ctx.storage_init("slot_pos", bytemuck::cast_slice(&vec![INVALID_SLOT; capacity]))?,
            attend: ctx.storage("attend", if oracle { f(capacity) } else { 4 })?,
            mass: ctx.storage("mass", if options.policy.kind.needs_mass() { f(rows * c.n_heads * capacity) } else { 4 })?,
            ctrl_state: ctx.storage("controller.state", f(2 * d_c))?,
            ctrl_keys: ctx.storage("controller.keys", if controller.is_some() { f(options.context * d_c) } else { 4 })?,
            slot_score: ctx.storage("slot_score", if options.policy.kind.on_gpu() || oracle { f(capacity) } else { 4 })?,
            ids: ctx.storage("ids", if rebuild > 0 { f(options.context) } else { 4 })?,
            pos_score: ctx.storage("pos_score", if rebuild > 0 { f(options.context) } else { 4 })?,
            selected: ctx.storage("selected", if rebuild > 0 { f(options.context) } else { 4 })?,
            rebuild_idx: ctx.storage("rebuild_idx", f(rebuild.max(1)))?,
            moves: ctx.storage("moves", if staged { f(capacity) } else { 4 })?,
            select: ctx.storage("select", if staged { f(options.policy.budget * capacity) } else { 4 })?,
            selected_kv: ctx.storage("selected_kv", if staged { f(2 * options.policy.budget * c.kv_dim()) } else { 4 })?,
            readback: ctx.staging(4),
        };
        ctx.take_error()?;
        Ok(Self {
            model,
            options,
            state,
            plans: HashMap::new(),
            sampling: Sampling::default(),
            n_past: 0,
            counter: 0,
            slots: SlotMap::new(capacity),
            capacity,
            max_rows: rows,
            last_rows: (0, 0),
            controller,
        })
    }

    /// Tokens held so far.
    pub fn len(&self) -> usize {
        self.n_past
    }

    pub fn is_empty(&self) -> bool {
        self.n_past == 0
    }

    /// Bytes of KV cache this session holds.
    pub fn kv_bytes(&self) -> u64 {
        self.state.k_cache.iter().chain(&self.state.v_cache).map(|b| b.size()).sum()
    }

    /// Positions the KV cache holds now, ascending (read back from the GPU).
    pub async fn kept_positions(&self) -> Result<Vec<u32>> {
        let mut p: Vec<u32> = self.slot_table().await?.into_iter().filter(|&p| p != INVALID_SLOT).collect();
        p.sort_unstable();
        Ok(p)
    }

    /// The GPU slot table (position per slot, INVALID_SLOT when free), read back.
    pub async fn slot_table(&self) -> Result<Vec<u32>> {
        self.model.ctx.read_u32(&self.state.slot_pos, self.capacity).await
    }

    /// The per-slot scores the GPU policies release by, read back.
    pub async fn slot_scores(&self) -> Result<Vec<f32>> {
        self.model.ctx.read_f32(&self.state.slot_score, self.capacity).await
    }

    /// The last step's rows, read back: (positions, slots). New rows come first, then the
    /// rebuilt ones (whose positions the GPU chose).
    pub async fn last_rows(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let ctx = &self.model.ctx;
        let rows = self.last_rows.0;
        Ok((ctx.read_u32(&self.state.positions, rows).await?, ctx.read_u32(&self.state.slots, rows).await?))
    }

    /// The positions the last step rebuilt (ascending), read back.
    pub async fn rebuilt_positions(&self) -> Result<Vec<u32>> {
        let (rows, new) = self.last_rows;
        Ok(self.model.ctx.read_u32(&self.state.positions, rows).await?.split_off(new))
    }

    /// The controller's score of every position at the last rebuild selection (released
    /// positions; cached and later ones hold ops::rebuild::MASKED), read back.
    pub async fn position_scores(&self) -> Result<Vec<f32>> {
        if self.options.policy.rebuild == 0 {
            return Err(Error::arg("position scores exist only with rebuild"));
        }
        self.model.ctx.read_f32(&self.state.pos_score, self.options.context).await
    }

    /// One layer's K and V caches, (capacity, kv_dim) each, read back.
    pub async fn kv_cache(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = &self.state;
        let (k, v) = match (s.k_cache.get(layer), s.v_cache.get(layer)) {
            (Some(k), Some(v)) => (k, v),
            _ => return Err(Error::arg(format!("layer {layer} does not exist"))),
        };
        let n = self.capacity * self.model.config.kv_dim();
        Ok((self.model.ctx.read_f32(k, n).await?, self.model.ctx.read_f32(v, n).await?))
    }

    /// The slots the oracle's last step attended to (its slot table less what it skipped).
    pub async fn attended_table(&self) -> Result<Vec<u32>> {
        if self.options.policy.kind != PolicyKind::Oracle {
            return Err(Error::arg("only the oracle policy attends to a subset of its cache"));
        }
        self.model.ctx.read_u32(&self.state.attend, self.capacity).await
    }

    /// Forgets the sequence (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.n_past = 0;
        self.counter = 0;
        self.slots.clear();
        let invalid = vec![INVALID_SLOT; self.capacity];
        self.model.ctx.queue.write_buffer(&self.state.slot_pos, 0, bytemuck::cast_slice(&invalid));
        let zeros = vec![0u8; self.state.ctrl_state.size() as usize];
        self.model.ctx.queue.write_buffer(&self.state.ctrl_state, 0, &zeros);
    }

    /// Marks `freed` slots free in the GPU table (before the next submit).
    fn free_slots(&self, freed: &[u32]) {
        for &slot in freed {
            self.model.ctx.queue.write_buffer(&self.state.slot_pos, slot as u64 * 4, bytemuck::bytes_of(&INVALID_SLOT));
        }
    }

    /// Keeps only the first `n` tokens of the sequence (for example the part of a chat that a
    /// new turn shares with the previous one).
    pub async fn truncate(&mut self, n: usize) -> Result<()> {
        if n >= self.n_past {
            return Ok(());
        }
        if n == 0 {
            self.reset();
            return Ok(());
        }
        if self.controller.is_some() {
            return Err(Error::arg("the adore controller's state cannot be rewound: reset the session instead of truncating it"));
        }
        let freed = if self.options.policy.kind.on_gpu() {
            let table = self.slot_table().await?;
            (0..table.len() as u32).filter(|&j| table[j as usize] != INVALID_SLOT && table[j as usize] as usize >= n).collect()
        } else {
            self.slots.truncate(n)
        };
        self.free_slots(&freed);
        self.n_past = n;
        Ok(())
    }

    /// Sets how following steps choose tokens.
    pub fn set_sampling(&mut self, sampling: Sampling) -> Result<()> {
        sampling.validate()?;
        self.sampling = sampling;
        let params = sampling.params(self.model.config.vocab);
        self.model.ctx.queue.write_buffer(&self.state.sample_params, 0, bytemuck::bytes_of(&params));
        Ok(())
    }

    /// Records the dispatches of one step for up to `rows` rows, `rebuild` of them rebuild
    /// rows: the forward pass, in order.
    fn build_plan(&self, rows: usize, rebuild: usize) -> Result<Vec<Dispatch>> {
        let m = &self.model;
        let (ctx, c, w, s) = (&*m.ctx, &m.config, &m.weights, &self.state);
        let step = &s.step;
        let mut plan = Vec::with_capacity(12 + c.layers * 16);
        let policy = self.options.policy;
        // Per-slot attention mass, averaged over heads and layers: accumulated (H2O) or the
        // last new row's (TOVA, oracle).
        let score_params = |accumulate: bool| ops::cache_update::ScoreParams {
            capacity: self.capacity as u32,
            n_heads: c.n_heads as u32,
            accumulate: accumulate as u32,
            scale: 1.0 / (c.n_heads * c.layers) as f32,
        };
        if policy.kind.on_gpu() {
            // The GPU decides releases, so it also places the new rows in free slots.
            plan.push(ops::cache_update::build_assign(ctx, &s.slot_pos, &s.slots, step, self.capacity, rows)?);
        }
        // Token embeddings into the residual stream.
        plan.push(ops::embed::build(ctx, &w.embed, &s.tokens, &s.x, step, rows)?);
        if let Some(cl) = self.controller.as_ref().filter(|cl| cl.input_layer == 0) {
            // The controller reads the new rows' embeddings before the first layer changes them
            // (one that reads the residual stream runs inside the layers).
            plan.push(ops::controller::build_step(ctx, cl, &s.x, &s.positions, &s.ctrl_state, &s.ctrl_keys, step, rows)?);
            if policy.rebuild > 0 {
                if rebuild > 0 {
                    // Rebuild: score every earlier token, mask the cached ones, take the top R.
                    let context = self.options.context;
                    plan.push(ops::rebuild::build_rank(ctx, cl, &s.ctrl_state, &s.ctrl_keys, &s.pos_score, step, context)?);
                    plan.push(ops::rebuild::build_mask(ctx, &s.slot_pos, &s.pos_score, self.capacity)?);
                    plan.push(ops::topk::build(ctx, &s.pos_score, &s.selected, &s.rebuild_idx, context, rebuild, Some(step))?);
                }
                let b = ops::rebuild::Rows { tokens: &s.tokens, positions: &s.positions, ids: &s.ids, indices: &s.rebuild_idx };
                plan.push(ops::rebuild::build_rows(ctx, &b, step, rows)?);
                if rebuild > 0 {
                    // The rebuild rows' embeddings (the new row's again, unchanged).
                    plan.push(ops::embed::build(ctx, &w.embed, &s.tokens, &s.x, step, rows)?);
                }
            }
        }
        if policy.kind == PolicyKind::Oracle {
            // A first pass with full attention ranks the slots by the last row's attention; the
            // second attends to the top `budget` of them (and to the step's own rows).
            self.push_layers(&mut plan, rows, &s.slot_pos, true)?;
            plan.push(ops::cache_update::build_score(ctx, &s.mass, &s.slots, &s.slot_score, step, score_params(false), rows)?);
            plan.push(ops::rebuild::build_copy(ctx, &s.slot_pos, &s.attend, self.capacity)?);
            let up =
                ops::cache_update::Params { sinks: 0, recent: 0, in_flight: 1, ..ops::cache_update::Params::new(self.capacity, &policy) };
            plan.push(ops::cache_update::build(ctx, &s.attend, &s.slot_score, step, up)?);
            plan.push(ops::embed::build(ctx, &w.embed, &s.tokens, &s.x, step, rows)?);
            self.push_layers(&mut plan, rows, &s.attend, false)?;
        } else {
            self.push_layers(&mut plan, rows, &s.slot_pos, policy.kind.needs_mass())?;
        }
        if policy.kind.on_gpu() {
            // The cache update: per-slot scores, then release down to the budget.
            match &self.controller {
                Some(cl) => {
                    plan.push(ops::controller::build_score(ctx, cl, &s.ctrl_state, &s.ctrl_keys, &s.slot_pos, &s.slot_score, step)?)
                }
                None => {
                    let sp = score_params(policy.kind == PolicyKind::H2o);
                    plan.push(ops::cache_update::build_score(ctx, &s.mass, &s.slots, &s.slot_score, step, sp, rows)?)
                }
            }
            let up = ops::cache_update::Params::new(self.capacity, &policy);
            plan.push(ops::cache_update::build(ctx, &s.slot_pos, &s.slot_score, step, up)?);
            if self.options.cache_update == CacheUpdate::Matmul {
                // Surviving staged rows move into freed slots by a selection-matrix product.
                let p = ops::compact::Params {
                    capacity: self.capacity as u32,
                    budget: policy.budget as u32,
                    kv_dim: c.kv_dim() as u32,
                    pad: 0,
                };
                plan.push(ops::compact::build_compact(ctx, &s.slot_pos, &s.slot_score, &s.moves, p)?);
                plan.push(ops::compact::build_matrix(ctx, &s.moves, &s.select, p)?);
                for (k, v) in s.k_cache.iter().zip(&s.v_cache) {
                    plan.extend(ops::compact::build_apply(ctx, &s.select, k, v, &s.selected_kv, p)?);
                }
            }
        }
        if self.options.all_logits {
            // Final norm and LM head for every row.
            plan.push(ops::rmsnorm::build(ctx, &s.x, &w.output_norm, &s.xn, step, c.hidden, c.rms_eps, rows, false)?);
            plan.extend(ops::matmul::build(ctx, w.lm_head(), &s.xn, &s.logits, step, rows, 0)?);
        } else {
            // Final norm and LM head for the last new row only, then choose the next token.
            plan.push(ops::rmsnorm::build(ctx, &s.x, &w.output_norm, &s.last, step, c.hidden, c.rms_eps, rows, true)?);
            plan.extend(ops::matmul::build(ctx, w.lm_head(), &s.last, &s.logits, step, 1, 1)?);
            plan.push(ops::sample::build(ctx, &s.logits, &s.tokens, &s.sample_params, step, c.vocab)?);
        }
        Ok(plan)
    }

    /// Records every layer for up to `rows` rows; attention sees the slots valid in `table`
    /// and, with `mass`, records per-slot probabilities summed over layers.
    fn push_layers(&self, plan: &mut Vec<Dispatch>, rows: usize, table: &wgpu::Buffer, mass: bool) -> Result<()> {
        let m = &self.model;
        let (ctx, c, w, s) = (&*m.ctx, &m.config, &m.weights, &self.state);
        let step = &s.step;
        let heads = Heads { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim };
        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: norm, q/k/v projections, rotary positions, store k/v, attend, project, add.
            plan.push(ops::rmsnorm::build(ctx, &s.x, &layer.attn_norm, &s.xn, step, c.hidden, c.rms_eps, rows, false)?);
            plan.extend(ops::matmul::build(ctx, &layer.q, &s.xn, &s.q, step, rows, 0)?);
            plan.extend(ops::matmul::build(ctx, &layer.k, &s.xn, &s.k, step, rows, 0)?);
            plan.extend(ops::matmul::build(ctx, &layer.v, &s.xn, &s.v, step, rows, 0)?);
            plan.push(ops::rope::build(ctx, &s.q, &s.positions, step, c.n_heads, c.head_dim, c.rope_theta, c.rope_interleaved, rows)?);
            plan.push(ops::rope::build(ctx, &s.k, &s.positions, step, c.n_kv_heads, c.head_dim, c.rope_theta, c.rope_interleaved, rows)?);
            let kv = ops::kv_write::KvWrite {
                k: &s.k,
                v: &s.v,
                k_cache: &s.k_cache[l],
                v_cache: &s.v_cache[l],
                slots: &s.slots,
                slot_pos: &s.slot_pos,
                positions: &s.positions,
            };
            plan.push(ops::kv_write::build(ctx, &kv, step, c.kv_dim(), self.capacity, rows, l == 0)?);
            let ab = ops::attention::Buffers {
                q: &s.q,
                k_cache: &s.k_cache[l],
                v_cache: &s.v_cache[l],
                slot_pos: table,
                positions: &s.positions,
                out: &s.att,
                mass: &s.mass,
            };
            let mass = match (mass, l) {
                (false, _) => Mass::None,
                (true, 0) => Mass::Write,
                (true, _) => Mass::Add,
            };
            plan.push(ops::attention::build(ctx, &ab, step, heads, self.capacity, rows, mass)?);
            plan.extend(ops::matmul::build(ctx, &layer.o, &s.att, &s.proj, step, rows, 0)?);
            plan.push(ops::add::build(ctx, &s.x, &s.proj, step, c.hidden, rows)?);
            // Feed-forward: norm, gate and up projections, SwiGLU, down projection, add.
            plan.push(ops::rmsnorm::build(ctx, &s.x, &layer.ffn_norm, &s.xn, step, c.hidden, c.rms_eps, rows, false)?);
            plan.extend(ops::matmul::build(ctx, &layer.gate, &s.xn, &s.gate, step, rows, 0)?);
            plan.extend(ops::matmul::build(ctx, &layer.up, &s.xn, &s.up, step, rows, 0)?);
            plan.push(ops::swiglu::build(ctx, &s.gate, &s.up, step, c.ffn, rows)?);
            plan.extend(ops::matmul::build(ctx, &layer.down, &s.gate, &s.proj, step, rows, 0)?);
            plan.push(ops::add::build(ctx, &s.x, &s.proj, step, c.hidden, rows)?);
            if let Some(cl) = self.controller.as_ref().filter(|cl| cl.input_layer == l + 1) {
                // The controller reads the new rows' residual stream after this layer.
                plan.push(ops::controller::build_step(ctx, cl, &s.x, &s.positions, &s.ctrl_state, &s.ctrl_keys, step, rows)?);
            }
        }
        Ok(())
    }

    /// Uploads the per-step values and submits the plan for `n` new rows (tokens already in
    /// place when `tokens` is None), with rebuild rows when the policy asks for them; copies
    /// the sampled id to the readback buffer.
    fn submit(&mut self, tokens: Option<&[u32]>, n: usize) -> Result<()> {
        let policy = self.options.policy;
        // Rebuild runs with single-token steps, once tokens have been released.
        let rebuild = if n == 1 { policy.rebuild.min(self.n_past.saturating_sub(policy.budget)) } else { 0 };
        let rows = n + rebuild;
        let cap = rows.next_power_of_two().min(self.max_rows);
        if !self.plans.contains_key(&(cap, rebuild)) {
            let plan = self.build_plan(cap, rebuild)?;
            self.plans.insert((cap, rebuild), plan);
        }
        let positions: Vec<u32> = (self.n_past..self.n_past + n).map(|p| p as u32).collect();
        let on_gpu = policy.kind.on_gpu();
        let ctx = &self.model.ctx;
        let s = &self.state;
        // Slots: chosen here for the policies decided on the CPU, by slot_assign otherwise
        // (attention then scans every slot).
        let n_slots = if on_gpu {
            self.capacity
        } else {
            let slots = self.slots.assign(&positions)?;
            ctx.queue.write_buffer(&s.slots, 0, bytemuck::cast_slice(&slots));
            self.slots.high_water()
        };
        if let Some(t) = tokens {
            ctx.queue.write_buffer(&s.tokens, 0, bytemuck::cast_slice(t));
        }
        ctx.queue.write_buffer(&s.positions, 0, bytemuck::cast_slice(&positions));
        let step = Step {
            n_rows: rows as u32,
            n_slots: n_slots as u32,
            counter: self.counter,
            n_seen: (self.n_past + n) as u32,
            n_new: n as u32,
            pad: [0; 3],
        };
        ctx.queue.write_buffer(&s.step, 0, bytemuck::bytes_of(&step));
        let mut encoder = ctx.encoder();
        ctx.record(&mut encoder, &self.plans[&(cap, rebuild)]);
        if !self.options.all_logits {
            encoder.copy_buffer_to_buffer(&s.tokens, 0, &s.readback, 0, 4);
        }
        ctx.queue.submit([encoder.finish()]);
        ctx.take_error()?;
        self.n_past += n;
        self.last_rows = (rows, n);
        self.counter = self.counter.wrapping_add(1);
        // The cache update: the policy frees slots down to its budget.
        let freed = self.slots.release(&self.options.policy, self.n_past);
        self.free_slots(&freed);
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if self.n_past + tokens.len() > self.options.context {
            return Err(Error::PromptTooLong { tokens: self.n_past + tokens.len(), context: self.options.context });
        }
        let vocab = self.model.config.vocab as u32;
        if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::arg(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        Ok(())
    }

    /// Processes `tokens` in chunks and returns the next token chosen after the last one.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<u32> {
        if self.options.all_logits {
            return Err(Error::arg("this session computes all logits (perplexity); use prefill_logits"));
        }
        self.check_tokens(tokens)?;
        for chunk in tokens.chunks(self.options.chunk) {
            self.submit(Some(chunk), chunk.len())?;
        }
        self.read_token().await
    }

    /// Feeds the previously chosen token (still on the GPU) and returns the next one.
    pub async fn step(&mut self) -> Result<u32> {
        if self.n_past == 0 {
            return Err(Error::arg("step() needs a prefill first"));
        }
        if self.n_past >= self.options.context {
            return Err(Error::PromptTooLong { tokens: self.n_past + 1, context: self.options.context });
        }
        self.submit(None, 1)?;
        self.read_token().await
    }

    /// Feeds a token chosen on the CPU (for teacher forcing or chat turns) and returns the next.
    pub async fn feed(&mut self, token: u32) -> Result<u32> {
        self.prefill(&[token]).await
    }

    async fn read_token(&self) -> Result<u32> {
        let bytes = self.model.ctx.map_read(&self.state.readback, 4).await?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The logits that chose the last token (vocab values).
    pub async fn last_logits(&self) -> Result<Vec<f32>> {
        self.model.ctx.read_f32(&self.state.logits, self.model.config.vocab).await
    }

    /// Processes `tokens` and returns the logits of every row, (tokens.len(), vocab), row-major.
    pub async fn prefill_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if !self.options.all_logits {
            return Err(Error::arg("this session was created without all_logits"));
        }
        self.check_tokens(tokens)?;
        let vocab = self.model.config.vocab;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        for chunk in tokens.chunks(self.options.chunk) {
            self.submit(Some(chunk), chunk.len())?;
            out.extend(self.model.ctx.read_f32(&self.state.logits, chunk.len() * vocab).await?);
        }
        Ok(out)
    }
}
