//! The plan: the dispatches of one forward pass, recorded once per (row capacity, rebuild
//! rows) and replayed every step. `forward` is the model, one list per layer; what a policy
//! adds (the slot assignment, the controller, rebuild, the oracle's second pass, the cache
//! update) is recorded around it, each by a function of its own.

use crate::error::Result;
use crate::gpu::{Context, Dispatch};
use crate::index::SHORT_KEYS;
use crate::model::{Config, Model, Weights};
use crate::ops::{self, attention::Heads, attention::Mass, matmul::Output};
use crate::policy::{Oracle, OracleRanking, Policy, PolicyKind};
use crate::tensor::GpuWeight;

use super::state::{ControllerState, IndexState, RunState, SessionOptions};

/// The entry among the attended list's hints ([`ops::cache_update::list_len`]) of the choice
/// made at layer `l` (`layers` for a choice before or after all of them); the one after it is
/// the same layer's second choice (the budget among nominees).
fn hint_of(l: usize) -> usize {
    2 * l
}

/// Hints a step's choices keep, for a model of `layers` layers.
pub(super) fn hints(layers: usize) -> usize {
    hint_of(layers) + 2
}

/// Where a layer's q, k and v of the new rows are made, and the rows' slots.
struct Rows<'b> {
    qkv: &'b wgpu::Buffer,
    q: &'b wgpu::Buffer,
    k: &'b wgpu::Buffer,
    slots: &'b wgpu::Buffer,
}

/// How a forward pass attends.
#[derive(Clone, Copy)]
enum Attend<'b> {
    /// To the slots valid in the table; with Some(first), recording per-slot probabilities
    /// summed over the layers from `first` on.
    Table(&'b wgpu::Buffer, Option<usize>),
    /// To the re-chosen slots (`attend`, through its compact list: the K/V a step reads, and
    /// the slots it visits, stay at the budget however long the sequence).
    Chosen,
    /// Each layer to the `budget` slots its own dense attention ranks highest (the per-layer
    /// oracle; with true, the policy's sinks and recent window protected).
    ChosenPerLayer(bool),
    /// Each layer to the `budget` slots of the pages whose key bounds score its query highest
    /// (with true, the policy's sinks and recent window protected); the first N layers to
    /// every slot.
    Quest(bool, usize),
    /// Each layer from the key index's first to the `budget` slots its attention over the
    /// short keys ranks highest (with true, the policy's sinks and recent window protected);
    /// the layers before it to every slot. With `dense` (prompt rows), every layer attends to
    /// every slot, the new rows' short keys stored all the same.
    Keys { protect: bool, dense: bool },
}

/// What a plan is recorded from.
pub(crate) struct Planner<'a> {
    pub ctx: &'a Context,
    pub c: &'a Config,
    pub w: &'a Weights,
    pub s: &'a RunState,
    pub options: &'a SessionOptions,
    pub capacity: usize,
}

impl<'a> Planner<'a> {
    pub fn new(model: &'a Model, s: &'a RunState, options: &'a SessionOptions, capacity: usize) -> Self {
        Planner { ctx: &model.ctx, c: &model.config, w: &model.weights, s, options, capacity }
    }

    fn policy(&self) -> Policy {
        self.options.policy
    }

    /// One step for up to `rows` rows, `rebuild` of them rebuild rows, in order.
    pub fn build(&self, rows: usize, rebuild: usize, dense: bool) -> Result<Vec<Dispatch>> {
        let (ctx, s) = (self.ctx, self.s);
        let mut plan = Vec::with_capacity(12 + self.c.layers * 16);
        let kind = self.policy().kind;
        let releases_on_gpu = self.policy().releases_on_gpu();
        if releases_on_gpu {
            // The GPU decides releases, so it also places the new rows in free slots.
            plan.push(ops::cache_update::build_assign(ctx, &s.slot_pos, &s.slots, &s.step, self.capacity, rows)?);
        }
        // Token embeddings into the residual stream.
        plan.extend(self.embed(rows)?);
        let reads_embeddings = s.controller.as_ref().filter(|cl| cl.gpu.input_layer == 0);
        if let Some(cl) = reads_embeddings {
            // The controller reads the new rows' embeddings before the first layer changes them.
            plan.push(self.controller_step(cl, rows)?);
            self.rebuild_rows(&mut plan, cl, rows, rebuild)?;
        }
        if let Some(rechoice) = self.options.rechoice() {
            self.rechoose(&mut plan, rows, rechoice, dense)?;
        } else {
            let (table, mass) = (&s.slot_pos, kind.needs_mass().then_some(0));
            match s.controller.as_ref().filter(|cl| cl.gpu.input_layer > 0) {
                // A controller that reads the residual stream runs between the layers before
                // and after its input layer.
                Some(cl) => {
                    let after = cl.gpu.input_layer;
                    self.forward(&mut plan, rows, 0..after, Attend::Table(table, mass))?;
                    plan.push(self.controller_step(cl, rows)?);
                    self.forward(&mut plan, rows, after..self.c.layers, Attend::Table(table, mass))?;
                }
                None => self.forward(&mut plan, rows, 0..self.c.layers, Attend::Table(table, mass))?,
            }
        }
        if releases_on_gpu {
            self.cache_update(&mut plan, rows)?;
        }
        self.head(&mut plan, rows)?;
        Ok(plan)
    }

    fn embed(&self, rows: usize) -> Result<Vec<Dispatch>> {
        let s = self.s;
        ops::embed::build_split(self.ctx, &self.w.embed, self.c.family.embed_scale, &s.tokens, &s.x, &s.step, rows)
    }

    /// The forward pass of `layers` for up to `rows` rows, attention as `attend` says.
    fn forward(&self, plan: &mut Vec<Dispatch>, rows: usize, layers: std::ops::Range<usize>, attend: Attend) -> Result<()> {
        let (ctx, c, s) = (self.ctx, self.c, self.s);
        let step = &s.step;
        for l in layers {
            let layer = &self.w.layers[l];
            // Attention: norm and q/k/v projections, rotary positions, store k/v, attend, project, add.
            self.queries_and_keys(plan, l, rows, &self.own_rows(), l == 0)?;
            // The other writes into slots (queries recorded, short keys) take this one's buffers.
            let kv = ops::kv_write::KvWrite {
                k: &s.k,
                v: &s.k,
                k_cache: &s.k_cache[l],
                v_cache: Some(&s.v_cache[l]),
                slots: &s.slots,
                slot_pos: &s.slot_pos,
                positions: &s.positions,
            };
            if let Some(record) = s.q_record.get(l) {
                // Queries by slot, for fitting a key index: the KV write of q alone.
                let b = ops::kv_write::KvWrite { k: &s.q, k_cache: record, v_cache: None, ..kv };
                plan.push(ops::kv_write::build(ctx, &b, step, c.q_dim(), self.capacity, rows, false, ops::KvType::F32)?);
            }
            match attend {
                Attend::Table(table, mass) => {
                    let mass = match mass {
                        Some(first) if l == first => Mass::Write,
                        Some(first) if l > first => Mass::Add,
                        _ => Mass::None,
                    };
                    self.attention(plan, l, rows, table, mass, false)?;
                }
                Attend::Chosen => {
                    let Some(attend) = &s.attend else { unreachable!("a re-choosing session") };
                    self.attention(plan, l, rows, attend, Mass::None, true)?;
                }
                // The per-layer oracle: this layer's dense attention ranks, then it attends to its choice.
                Attend::ChosenPerLayer(protect) => {
                    let (Some(attend), Some(score)) = (&s.attend, &s.slot_score) else { unreachable!("an oracle session") };
                    self.attention(plan, l, rows, &s.slot_pos, Mass::Write, false)?;
                    self.score_from_mass(plan, rows, score)?;
                    self.choose(plan, attend, score, protect, hint_of(l))?;
                    self.attention(plan, l, rows, attend, Mass::None, true)?;
                }
                // The key index's dense layers attend to every slot.
                Attend::Keys { .. } if s.index.as_ref().is_some_and(|ix| l < ix.first) => {
                    self.attention(plan, l, rows, &s.slot_pos, Mass::None, false)?;
                }
                // A prompt's rows: every slot, as full attention; their short keys are stored
                // for the steps that choose (in the layers that rank).
                Attend::Keys { dense: true, .. } => {
                    let Some(ix) = &s.index else { unreachable!("a session ranked by keys") };
                    if ix.ranks(l) {
                        self.short_rows(plan, ix, l, rows, &self.own_rows(), true)?;
                    }
                    self.attention(plan, l, rows, &s.slot_pos, Mass::None, false)?;
                }
                // A layer sharing the choice of the last layer that ranked.
                Attend::Keys { .. } if s.index.as_ref().is_some_and(|ix| !ix.ranks(l)) => {
                    let Some(attend) = &s.attend else { unreachable!("a re-choosing session") };
                    self.attention(plan, l, rows, attend, Mass::None, true)?;
                }
                Attend::Keys { protect, .. } => {
                    let (Some(ix), Some(attend), Some(score)) = (&s.index, &s.attend, &s.slot_score) else {
                        unreachable!("a session ranked by keys")
                    };
                    let i = l - ix.first;
                    let shape = self.short_shape(ix, l);
                    // Ranked ahead, the short query is made already: only the new rows' keys.
                    self.short_rows(plan, ix, l, rows, &self.own_rows(), self.ranks_ahead(ix, l))?;
                    let kb = ops::key_score::Buffers {
                        q: &ix.q,
                        keys: &ix.keys[i],
                        kv: SHORT_KEYS,
                        slot_pos: &s.slot_pos,
                        positions: &s.positions,
                        logits: &ix.logits,
                        stats: &ix.stats,
                        score,
                    };
                    plan.extend(ops::key_score::build(ctx, &kb, step, shape, rows, self.score_params(false).scale)?);
                    let candidates = self.policy().candidates;
                    match candidates > 0 {
                        // The short keys nominate; the layer's exact attention over the
                        // nominees chooses the budget among them.
                        true => {
                            let nominate = self.choice(protect, candidates, hint_of(l));
                            self.chosen(plan, Some(&s.slot_pos), attend, score, nominate)?;
                            self.attention(plan, l, rows, attend, Mass::Write, true)?;
                            self.score_from_mass(plan, rows, score)?;
                            // The budget among the nominees, in place.
                            let budget = self.choice(protect, self.policy().budget, hint_of(l) + 1);
                            self.chosen(plan, None, attend, score, budget)?;
                        }
                        false => self.choose(plan, attend, score, protect, hint_of(l))?,
                    }
                    self.attention(plan, l, rows, attend, Mass::None, true)?;
                }
                Attend::Quest(_, dense) if l < dense => {
                    self.attention(plan, l, rows, &s.slot_pos, Mass::None, false)?;
                }
                Attend::Quest(protect, _) => {
                    let (Some(attend), Some(score)) = (&s.attend, &s.slot_score) else { unreachable!("a quest session") };
                    let qp = ops::quest::Params {
                        n_heads: c.n_heads as u32,
                        n_kv_heads: c.n_kv_heads as u32,
                        head_dim: c.head_dim as u32,
                        capacity: self.capacity as u32,
                    };
                    let bounds = &s.quest_bounds[l];
                    plan.push(ops::quest::build_bounds(
                        ctx,
                        &s.k_cache[l],
                        self.options.kv_cache,
                        &s.slot_pos,
                        &s.slots,
                        bounds,
                        step,
                        qp,
                        rows,
                    )?);
                    plan.push(ops::quest::build_score(ctx, &s.q, bounds, score, step, qp, rows)?);
                    self.choose(plan, attend, score, protect, hint_of(l))?;
                    self.attention(plan, l, rows, attend, Mass::None, true)?;
                }
            }
            // The output projection adds into the residual stream (through its norm, where the
            // model has one).
            self.residual(plan, &layer.o, &s.att, layer.post_norms.as_ref().map(|n| &n.0), rows)?;
            // Ranking ahead, the next layer's query from the stream as it stands now.
            if let (Attend::Keys { dense: false, .. }, Some(ix)) = (attend, &s.index) {
                if self.ranks_ahead(ix, l + 1) {
                    self.ahead(plan, ix, l + 1, rows)?;
                }
            }
            // Feed-forward: norm, gate and up projections and SwiGLU (GeGLU), down projection added in.
            self.normed(plan, &layer.ffn_norm, &layer.gate_up, &s.gate, true, rows)?;
            self.residual(plan, &layer.down, &s.gate, layer.post_norms.as_ref().map(|n| &n.1), rows)?;
        }
        Ok(())
    }

    /// The key index's geometry at layer l.
    fn short_shape(&self, ix: &IndexState, l: usize) -> ops::key_score::Shape {
        let c = self.c;
        ops::key_score::Shape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            rank: ix.rank,
            window: c.window(l),
            capacity: self.capacity,
            chunks: ix.chunks,
        }
    }

    /// The session's own buffers for the new rows' q, k and v.
    fn own_rows(&self) -> Rows<'a> {
        let s = self.s;
        Rows { qkv: &s.qkv, q: &s.q, k: &s.k, slots: &s.slots }
    }

    /// Layer l's q, k and v of the new rows into `at`: norm, q/k/v products (and head norm),
    /// rotary positions, k and v stored in the rows' slots (none where a slot is out of the
    /// cache); with `write_table`, the slot table too.
    fn queries_and_keys(&self, plan: &mut Vec<Dispatch>, l: usize, rows: usize, at: &Rows, write_table: bool) -> Result<()> {
        let (ctx, c, s) = (self.ctx, self.c, self.s);
        let layer = &self.w.layers[l];
        self.normed(plan, &layer.attn_norm, &layer.qkv, at.qkv, false, rows)?;
        if let Some(g) = &layer.qk_norm {
            plan.push(ops::head_norm::build(ctx, at.qkv, g, &s.step, (c.n_heads, c.n_kv_heads, c.head_dim), c.rms_eps, rows)?);
        }
        let qkv = ops::rope::Qkv {
            qkv: at.qkv,
            q: at.q,
            k: at.k,
            k_cache: &s.k_cache[l],
            v_cache: &s.v_cache[l],
            kv: self.options.kv_cache,
            slots: at.slots,
            slot_pos: &s.slot_pos,
            positions: &s.positions,
            bias: layer.qkv_bias.as_ref(),
        };
        plan.push(ops::rope::build(ctx, &qkv, &s.step, self.rope(l), self.capacity, rows, write_table)?);
        Ok(())
    }

    /// Layer l's short queries of the rows in `at` (unless `keys_only`) and their short keys,
    /// stored by slot as the KV write stores their keys.
    fn short_rows(&self, plan: &mut Vec<Dispatch>, ix: &IndexState, l: usize, rows: usize, at: &Rows, keys_only: bool) -> Result<()> {
        let (s, i) = (self.s, l - ix.first);
        let b = ops::key_score::ShortBuffers {
            q: at.q,
            k: at.k,
            maps: &ix.maps[i],
            qs: &ix.q,
            keys: &ix.keys[i],
            kv: SHORT_KEYS,
            slots: at.slots,
        };
        plan.push(ops::key_score::build_short(self.ctx, &b, &s.step, self.short_shape(ix, l), self.c.head_dim, rows, keys_only)?);
        Ok(())
    }

    /// Whether layer l ranks with a query predicted ahead of it: ranking ahead, a layer that
    /// ranks by its own short keys and has a layer before it.
    fn ranks_ahead(&self, ix: &IndexState, l: usize) -> bool {
        ix.ahead.is_some() && l > 0 && l < self.c.layers && l >= ix.first && ix.ranks(l)
    }

    /// Layer l's short queries of the new rows, predicted from the residual stream before the
    /// previous layer's feed-forward: layer l's norm, q/k/v product (and head norm) and
    /// rotation, into the ranking-ahead buffers, then the short queries into the index's (which
    /// nothing writes before layer l's scan reads them). No key or value is stored: the rows'
    /// slots are out of the cache here.
    fn ahead(&self, plan: &mut Vec<Dispatch>, ix: &IndexState, l: usize, rows: usize) -> Result<()> {
        let Some(ahead) = &ix.ahead else { unreachable!("ranking ahead allocates its buffers") };
        let at = Rows { qkv: &ahead.qkv, q: &ahead.q, k: &ahead.k, slots: &ahead.nowhere };
        self.queries_and_keys(plan, l, rows, &at, false)?;
        self.short_rows(plan, ix, l, rows, &at, false)
    }

    /// Layer l's rotary positions.
    fn rope(&self, l: usize) -> ops::rope::Rope<'_> {
        let c = self.c;
        ops::rope::Rope {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            theta: c.rope_theta(l),
            factors: c.rope_factors(l),
            interleaved: c.rope_interleaved,
        }
    }

    /// x += w · input, in the product's epilogue; with `post_norm`, x += RMSNorm(w · input) (the
    /// product into xn, then the norm adding into x).
    fn residual(
        &self,
        plan: &mut Vec<Dispatch>,
        w: &GpuWeight,
        input: &wgpu::Buffer,
        post_norm: Option<&wgpu::Buffer>,
        rows: usize,
    ) -> Result<()> {
        let (ctx, c, s) = (self.ctx, self.c, self.s);
        match post_norm {
            None => plan.extend(ops::matmul::build_into(ctx, w, input, None, &s.x, Output::ADD, &s.step, rows, 0)?),
            Some(g) => {
                plan.extend(ops::matmul::build_into(ctx, w, input, None, &s.xn, Output::default(), &s.step, rows, 0)?);
                plan.push(ops::rmsnorm::build_into(ctx, &s.xn, g, &s.x, &s.step, c.hidden, c.rms_eps, rows, false, true)?);
            }
        }
        Ok(())
    }

    /// RMSNorm of the residual stream with weight `g`, then the products of `parts` (which share
    /// that input) into the columns of `y`; with `glu`, SwiGLU of their gate and up halves
    /// into `y` instead. A matrix-vector product of one stacked matrix takes SwiGLU as its
    /// epilogue, and on GPUs the norm as its prologue (one dispatch for all three steps);
    /// otherwise each step is its own.
    fn normed(
        &self,
        plan: &mut Vec<Dispatch>,
        g: &wgpu::Buffer,
        parts: &[GpuWeight],
        y: &wgpu::Buffer,
        glu: bool,
        rows: usize,
    ) -> Result<()> {
        let (ctx, c, s) = (self.ctx, self.c, self.s);
        let one_product = parts.len() == 1 && ops::matmul::fuses(rows);
        let norm = (one_product && ops::matmul::fuses_norm(ctx, rows)).then_some(ops::matmul::Norm { weight: g, eps: c.rms_eps });
        let x = match norm {
            Some(_) => &s.x,
            None => {
                plan.push(ops::rmsnorm::build(ctx, &s.x, g, &s.xn, &s.step, c.hidden, c.rms_eps, rows, false)?);
                &s.xn
            }
        };
        if one_product {
            let out = if glu { Output { gelu: c.family.gelu, ..Output::GLU } } else { Output::default() };
            plan.extend(ops::matmul::build_into(ctx, &parts[0], x, norm, y, out, &s.step, rows, 0)?);
        } else if glu {
            self.stacked(plan, parts, x, &s.gate_up, rows)?;
            plan.push(ops::swiglu::build_act(ctx, &s.gate_up, y, &s.step, c.ffn, rows, c.family.gelu)?);
        } else {
            self.stacked(plan, parts, x, y, rows)?;
        }
        Ok(())
    }

    /// The products of matrices that share an input, into the columns of `y` in order: one
    /// product where the matrices are stacked, one each otherwise.
    fn stacked(&self, plan: &mut Vec<Dispatch>, parts: &[GpuWeight], x: &wgpu::Buffer, y: &wgpu::Buffer, rows: usize) -> Result<()> {
        let stride = parts.iter().map(|w| w.rows).sum();
        let mut offset = 0;
        for w in parts {
            plan.extend(ops::matmul::build_into(self.ctx, w, x, None, y, Output::columns(stride, offset), &self.s.step, rows, 0)?);
            offset += w.rows;
        }
        Ok(())
    }

    /// Layer `l`'s attention of the rows over the slots valid in `table`, into `att`; with
    /// `listed`, through the compact list of the re-chosen table.
    fn attention(&self, plan: &mut Vec<Dispatch>, l: usize, rows: usize, table: &wgpu::Buffer, mass: Mass, listed: bool) -> Result<()> {
        let (c, s) = (self.c, self.s);
        let heads = Heads { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim, window: c.window(l) };
        let ab = ops::attention::Buffers {
            q: &s.q,
            k_cache: &s.k_cache[l],
            v_cache: Some(&s.v_cache[l]),
            kv: self.options.kv_cache,
            slot_pos: table,
            positions: &s.positions,
            out: &s.att,
            mass: s.mass.as_ref().unwrap_or(&s.unused),
            list: if listed { s.attend_list.as_ref() } else { None },
        };
        match &s.attn_part {
            // Decode on a GPU at a long capacity: the slots split across workgroups, then merged.
            Some(part) if mass == Mass::None && ops::attention::splits(self.ctx, self.capacity, rows) => {
                plan.extend(ops::attention::build_split(self.ctx, &ab, part, &s.step, heads, self.capacity, rows)?);
            }
            _ => plan.push(ops::attention::build(self.ctx, &ab, &s.step, heads, self.capacity, rows, mass)?),
        }
        Ok(())
    }

    /// Final norm and LM head: for every row (perplexity), or for the last new row followed by
    /// the choice of the next token.
    fn head(&self, plan: &mut Vec<Dispatch>, rows: usize) -> Result<()> {
        let (ctx, c, w, s) = (self.ctx, self.c, self.w, self.s);
        let step = &s.step;
        if self.options.all_logits {
            plan.push(ops::rmsnorm::build(ctx, &s.x, &w.output_norm, &s.xn, step, c.hidden, c.rms_eps, rows, false)?);
            self.lm_head(plan, &s.xn, rows, 0)?;
        } else {
            plan.push(ops::rmsnorm::build(ctx, &s.x, &w.output_norm, &s.last, step, c.hidden, c.rms_eps, rows, true)?);
            self.lm_head(plan, &s.last, 1, 1)?;
            plan.push(ops::sample::build(ctx, &s.logits, &s.tokens, &s.sample_params, step, c.vocab)?);
        }
        Ok(())
    }

    /// Logits (rows, vocab) = x · LM headᵀ, one product per row range of the head.
    fn lm_head(&self, plan: &mut Vec<Dispatch>, x: &wgpu::Buffer, rows: usize, fixed_rows: u32) -> Result<()> {
        let head = self.w.lm_head();
        for (first, part) in &head.parts {
            let out = ops::matmul::Output { stride: head.rows, offset: *first, add: false, glu: false, gelu: false };
            plan.extend(ops::matmul::build_into(self.ctx, part, x, None, &self.s.logits, out, &self.s.step, rows, fixed_rows)?);
        }
        Ok(())
    }

    /// The controller's GRU over the step's new rows, from the residual stream `x` as it is at
    /// this point of the plan.
    fn controller_step(&self, cl: &ControllerState, rows: usize) -> Result<Dispatch> {
        let s = self.s;
        ops::controller::build_step(self.ctx, &cl.gpu, &s.x, &s.positions, &cl.state, &cl.keys, &s.step, rows)
    }

    /// Rebuild (adore with R > 0): log the new rows' ids; with `rebuild` rows in this plan,
    /// score every earlier token, mask the cached ones, take the top R into the rows and embed
    /// them (the new row's embedding is rewritten unchanged).
    fn rebuild_rows(&self, plan: &mut Vec<Dispatch>, cl: &ControllerState, rows: usize, rebuild: usize) -> Result<()> {
        let (ctx, s) = (self.ctx, self.s);
        let Some(rb) = &s.rebuild else { return Ok(()) };
        let context = self.options.context;
        if rebuild > 0 {
            plan.push(ops::rebuild::build_rank(ctx, &cl.gpu, &cl.state, &cl.keys, &rb.pos_score, &s.step, context)?);
            plan.push(ops::rebuild::build_mask(ctx, &s.slot_pos, &rb.pos_score, self.capacity)?);
            plan.push(ops::topk::build(ctx, &rb.pos_score, &rb.selected, &rb.indices, context, rebuild, Some(&s.step))?);
        }
        let b = ops::rebuild::Rows { tokens: &s.tokens, positions: &s.positions, ids: &rb.ids, indices: &rb.indices };
        plan.push(ops::rebuild::build_rows(ctx, &b, &s.step, rows)?);
        if rebuild > 0 {
            plan.extend(self.embed(rows)?);
        }
        Ok(())
    }

    /// The oracle and adore with its store: the step attends to the `budget` past tokens
    /// ranked highest (and to its own rows), re-chosen among all of them every step. The
    /// oracle's first pass with full attention ranks them by the last row's attention; its
    /// diagnostic rankings use one layer's attention (the layers up to it attending densely) or
    /// the controller's score, which is adore's ranking.
    fn rechoose(&self, plan: &mut Vec<Dispatch>, rows: usize, rechoice: Oracle, dense: bool) -> Result<()> {
        let (ctx, s) = (self.ctx, self.s);
        let (Some(attend), Some(score)) = (&s.attend, &s.slot_score) else {
            unreachable!("a re-choosing session allocates its table and scores")
        };
        let layers = self.c.layers;
        let protect = rechoice.protect;
        match rechoice.ranking {
            OracleRanking::Attention => {
                self.forward(plan, rows, 0..layers, Attend::Table(&s.slot_pos, Some(0)))?;
                self.score_from_mass(plan, rows, score)?;
                self.choose(plan, attend, score, protect, hint_of(layers))?;
                plan.extend(self.embed(rows)?);
                self.forward(plan, rows, 0..layers, Attend::Chosen)
            }
            OracleRanking::Layer(l) => {
                self.forward(plan, rows, 0..l + 1, Attend::Table(&s.slot_pos, Some(l)))?;
                self.score_from_mass(plan, rows, score)?;
                self.choose(plan, attend, score, protect, hint_of(layers))?;
                self.forward(plan, rows, l + 1..layers, Attend::Chosen)
            }
            OracleRanking::PerLayer => self.forward(plan, rows, 0..layers, Attend::ChosenPerLayer(protect)),
            OracleRanking::Quest(dense) => self.forward(plan, rows, 0..layers, Attend::Quest(protect, dense)),
            OracleRanking::Keys => self.forward(plan, rows, 0..layers, Attend::Keys { protect, dense }),
            OracleRanking::Controller => {
                // The controller step ran after the embedding; the session wrote the new rows
                // into the slot table before the submit.
                let Some(cl) = &s.controller else { unreachable!("a session ranked by the controller runs it") };
                plan.push(ops::controller::build_score(ctx, &cl.gpu, &cl.state, &cl.keys, &s.slot_pos, score, &s.step)?);
                self.choose(plan, attend, score, protect, hint_of(layers))?;
                self.forward(plan, rows, 0..layers, Attend::Chosen)
            }
        }
    }

    /// The last new row's attention mass, as scores.
    fn score_from_mass(&self, plan: &mut Vec<Dispatch>, rows: usize, score: &wgpu::Buffer) -> Result<()> {
        let s = self.s;
        let Some(mass) = &s.mass else { unreachable!("an oracle ranked by attention records it") };
        plan.push(ops::cache_update::build_score(self.ctx, mass, &s.slots, score, &s.step, self.score_params(false), rows)?);
        Ok(())
    }

    /// The re-choice: `attend` = the slot table less all but the `budget` best-scored past
    /// tokens (the step's rows stay; with `protect`, the policy's sinks and recent window too).
    /// `hint`: the choice's own entry among the list's hints ([`hint_of`]).
    fn choose(&self, plan: &mut Vec<Dispatch>, attend: &wgpu::Buffer, score: &wgpu::Buffer, protect: bool, hint: usize) -> Result<()> {
        self.chosen(plan, Some(&self.s.slot_pos), attend, score, self.choice(protect, self.policy().budget, hint))
    }

    /// The parameters of a choice of `n` past tokens (the step's rows stay; with `protect`, the
    /// policy's sinks and recent window too) keeping hint `hint`.
    fn choice(&self, protect: bool, n: usize, hint: usize) -> ops::cache_update::Params {
        let base = ops::cache_update::Params {
            budget: n as u32,
            hint: hint as u32,
            ..ops::cache_update::Params::new(self.capacity, &self.policy())
        };
        match protect {
            true => ops::cache_update::Params { in_flight: 1, ..base },
            false => ops::cache_update::Params { sinks: 0, recent: 0, in_flight: 1, ..base },
        }
    }

    /// The choice `up` into `attend` (copied from `src` when given, in place otherwise) and its
    /// list, in one dispatch.
    fn chosen(
        &self,
        plan: &mut Vec<Dispatch>,
        src: Option<&wgpu::Buffer>,
        attend: &wgpu::Buffer,
        score: &wgpu::Buffer,
        up: ops::cache_update::Params,
    ) -> Result<()> {
        let s = self.s;
        let Some(list) = &s.attend_list else { unreachable!("a re-choosing session lists its choice") };
        plan.push(ops::cache_update::build_chosen(self.ctx, src, attend, score, list, &s.step, up)?);
        Ok(())
    }

    /// Per-slot attention mass, averaged over heads and layers: accumulated (H2O) or the last
    /// new row's (TOVA, oracle).
    fn score_params(&self, accumulate: bool) -> ops::cache_update::ScoreParams {
        ops::cache_update::ScoreParams {
            capacity: self.capacity as u32,
            n_heads: self.c.n_heads as u32,
            accumulate: accumulate as u32,
            scale: 1.0 / (self.c.n_heads * self.c.layers) as f32,
        }
    }

    /// The cache update of the policies the GPU decides: per-slot scores, release down to the
    /// budget, and with the staged update the survivors' move into freed slots.
    fn cache_update(&self, plan: &mut Vec<Dispatch>, rows: usize) -> Result<()> {
        let (ctx, c, s) = (self.ctx, self.c, self.s);
        let policy = self.policy();
        let Some(score) = &s.slot_score else { unreachable!("a GPU-decided policy allocates slot scores") };
        match (&s.controller, &s.mass) {
            (Some(cl), _) => plan.push(ops::controller::build_score(ctx, &cl.gpu, &cl.state, &cl.keys, &s.slot_pos, score, &s.step)?),
            (None, Some(mass)) => {
                let sp = self.score_params(policy.kind == PolicyKind::H2o);
                plan.push(ops::cache_update::build_score(ctx, mass, &s.slots, score, &s.step, sp, rows)?)
            }
            (None, None) => unreachable!("h2o and tova record attention mass"),
        }
        let up = ops::cache_update::Params::new(self.capacity, &policy);
        plan.push(ops::cache_update::build(ctx, &s.slot_pos, score, &s.step, up)?);
        if let Some(st) = &s.staged {
            // Surviving staged rows move into freed slots by a selection-matrix product.
            let p = ops::staged_update::Params {
                capacity: self.capacity as u32,
                budget: policy.budget as u32,
                kv_dim: c.kv_dim() as u32,
                pad: 0,
            };
            plan.push(ops::staged_update::build_moves(ctx, &s.slot_pos, score, &st.moves, p)?);
            plan.push(ops::staged_update::build_selection(ctx, &st.moves, &st.select, p)?);
            for (k, v) in s.k_cache.iter().zip(&s.v_cache) {
                plan.extend(ops::staged_update::build_move_rows(ctx, &st.select, k, v, &st.selected_kv, p)?);
            }
        }
        Ok(())
    }
}
