//! The run state: every buffer a step touches, allocated once when a session is made. The
//! buffers every policy needs are plain fields; those of one policy or variant are optional
//! groups, present only when the session's options ask for them.

use std::sync::Arc;

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::index::KeyIndex;
use crate::model::{Config, Model};
use crate::ops::{self, attention::INVALID_SLOT, controller::GpuController, sample::Sampling, Step};
use crate::policy::{CacheUpdate, Oracle, OracleRanking, Policy, PolicyKind};

/// The context a session gets when none is asked for: the model's, at most this many tokens.
pub const DEFAULT_CONTEXT: usize = 4096;

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
    /// The ADORE controller for the `adore` policy (the one shipped for the model when None).
    pub controller: Option<Arc<Controller>>,
    /// How kept rows reach their slots (the selection-matrix variant is an ablation).
    pub cache_update: CacheUpdate,
    /// What the `oracle` policy ranks by (a diagnostic; ignored by the other policies).
    pub oracle: Oracle,
    /// The key index a ranking by keys uses (the one shipped for the model when None).
    pub index: Option<Arc<KeyIndex>>,
    /// Keep every layer's rotated queries by slot, for fitting a key index (`Inspect::queries`).
    pub record_queries: bool,
    /// How the KV cache stores K and V: f16 holds twice the tokens in the same bytes.
    pub kv_cache: ops::KvType,
    /// adore ranked by keys: the prompt's rows attend to every token held (as full attention's
    /// do) and only generated tokens attend to the budget. Its store keeps every token's K/V
    /// anyway, and a prompt chunk's rows would otherwise share one choice, made for its last
    /// row. Sessions that compute every row's logits (perplexity) keep the budget for the
    /// prompt too, since that is what they measure.
    pub dense_prefill: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            context: 2048,
            chunk: 256,
            all_logits: false,
            policy: Policy::full(),
            controller: None,
            cache_update: CacheUpdate::Scatter,
            oracle: Oracle::default(),
            index: None,
            record_queries: false,
            kv_cache: ops::KvType::F32,
            dense_prefill: true,
        }
    }
}

impl SessionOptions {
    /// The default context for a model: its own, capped at [`DEFAULT_CONTEXT`].
    pub fn default_context(config: &Config) -> usize {
        config.context.min(DEFAULT_CONTEXT)
    }

    /// Most rows one step processes: a prompt chunk, or a token with its rebuild rows.
    pub fn max_rows(&self) -> usize {
        self.chunk.max(self.policy.rebuild + 1).min(self.context)
    }

    /// KV slots needed: the whole context for `full`, `oracle` and adore with its store;
    /// otherwise the budget plus the rows of one step in flight (the session caps the chunk at
    /// the budget).
    pub fn capacity(&self) -> usize {
        if self.policy.keeps_everything() {
            self.context
        } else {
            self.context.min(self.policy.budget + self.max_rows())
        }
    }

    /// How a policy that re-chooses what it attends to among all past tokens at every step
    /// ranks them: the oracle's ranking, or for adore with its store the controller's score
    /// with the sinks and recent window protected. None for the policies that release.
    pub fn rechoice(&self) -> Option<Oracle> {
        match self.policy.kind {
            PolicyKind::Oracle => Some(self.oracle),
            PolicyKind::Quest => Some(Oracle { ranking: OracleRanking::Quest(0), protect: false }),
            PolicyKind::Adore if self.policy.ranks_by_keys() => Some(Oracle { ranking: OracleRanking::Keys, protect: true }),
            PolicyKind::Adore if self.policy.stores() => Some(Oracle { ranking: OracleRanking::Controller, protect: true }),
            _ => None,
        }
    }

    /// Whether the session ranks by the key index.
    pub fn ranks_by_keys(&self) -> bool {
        self.rechoice().is_some_and(|o| o.ranking == OracleRanking::Keys)
    }

    /// Whether prompt rows attend to every token held (see `dense_prefill`).
    pub fn prefills_densely(&self) -> bool {
        self.dense_prefill && self.ranks_by_keys() && !self.all_logits
    }

    /// Whether the session runs the ADORE controller: the adore policy (unless it ranks by
    /// keys), or the oracle ranked by it.
    pub fn runs_controller(&self) -> bool {
        match self.policy.kind {
            PolicyKind::Adore => !self.policy.ranks_by_keys(),
            PolicyKind::Oracle => self.oracle.ranking == OracleRanking::Controller,
            _ => false,
        }
    }

    /// Checks the options against each other and settles what they leave open: a budgeted
    /// cache takes chunks no larger than its budget (which keeps its capacity under twice the
    /// budget), and the adore policy takes the controller shipped for the model when none is
    /// given. Errors name options, not command-line flags.
    pub(crate) fn settle(self, model: &Model) -> Result<Self> {
        if self.context == 0 || self.chunk == 0 {
            return Err(Error::arg("context and chunk sizes must be at least 1"));
        }
        self.policy.validate()?;
        if self.cache_update == CacheUpdate::Matmul && !self.policy.releases_on_gpu() {
            return Err(Error::arg(format!(
                "cache update matmul applies to the policies whose releases the GPU decides (h2o, tova, adore-recompute), not {}",
                self.policy.name()
            )));
        }
        let chunk = match self.policy.kind {
            PolicyKind::Full => self.chunk,
            // Exact choice from candidates is per row: a chunk's rows would share the last
            // row's choice, so each prompt token is its own step (unless the prompt attends
            // densely).
            _ if self.policy.candidates > 0 && !self.prefills_densely() => 1,
            _ => self.chunk.min(self.policy.budget),
        }
        .min(self.context);
        // Every row's logits must fit one binding: a large vocabulary takes shorter chunks.
        let chunk = match self.all_logits {
            true => chunk.min((model.ctx.binding_limit() / (4 * model.config.vocab as u64)).max(1) as usize),
            false => chunk,
        };
        if let (PolicyKind::Oracle, OracleRanking::Layer(l)) = (self.policy.kind, self.oracle.ranking) {
            if l >= model.config.layers {
                return Err(Error::arg(format!("oracle ranking layer-{l}: the model has layers 0 to {}", model.config.layers - 1)));
            }
        }
        if let (PolicyKind::Oracle, OracleRanking::Quest(n)) = (self.policy.kind, self.oracle.ranking) {
            if n > model.config.layers {
                return Err(Error::arg(format!("oracle ranking quest-dense-{n}: the model has {} layers", model.config.layers)));
            }
        }
        // What ranks with the controller before the layers run, where a controller that reads
        // the residual stream has no input for the new rows yet.
        let before_layers = match self.policy.kind {
            PolicyKind::Oracle => Some("the oracle ranked by the controller"),
            PolicyKind::Adore if self.policy.stores() => Some("adore choosing from its store"),
            _ if self.policy.rebuild > 0 => Some("rebuild"),
            _ => None,
        };
        let controller = match self.runs_controller() {
            true => Some(check_controller(model, self.controller.clone(), before_layers)?),
            false => self.controller.clone(),
        };
        let index = match self.ranks_by_keys() {
            true => {
                let Some(index) = self.index.clone().or_else(|| KeyIndex::builtin(&model.fingerprint).map(Arc::new)) else {
                    return Err(Error::arg(
                        "ranking by keys needs a key index for this model and none is shipped for it: fit one (`adore index fit`) and give it",
                    ));
                };
                if index.fingerprint != model.fingerprint {
                    return Err(Error::Config(format!(
                        "the key index was fitted for another model (fingerprint {}, this model's is {})",
                        index.fingerprint, model.fingerprint
                    )));
                }
                index.check(&model.config)?;
                Some(index)
            }
            false => self.index.clone(),
        };
        Ok(SessionOptions { chunk, controller, index, ..self })
    }
}

/// The controller given, or the one shipped for the model, checked against the model (and,
/// when `before_layers` names a use before the layers run, that it reads token embeddings).
fn check_controller(model: &Model, given: Option<Arc<Controller>>, before_layers: Option<&str>) -> Result<Arc<Controller>> {
    let c = &model.config;
    let Some(cl) = given.or_else(|| Controller::builtin(&model.fingerprint).map(Arc::new)) else {
        return Err(Error::arg(
            "the adore policy needs a controller for this model and none is shipped for it: give a controller file trained for it (see docs/training.md; `adore controller init` makes a random one)",
        ));
    };
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
    if let Some(what) = before_layers.filter(|_| cl.input_layer > 0) {
        return Err(Error::arg(format!(
            "{what} needs a controller that reads token embeddings; this one reads the residual stream after layer {}",
            cl.input_layer
        )));
    }
    Ok(cl)
}

/// Activations, KV cache and step buffers: everything a step touches, allocated once.
pub(crate) struct RunState {
    pub step: wgpu::Buffer,          // Step uniform
    pub sample_params: wgpu::Buffer, // sample::Params uniform
    pub tokens: wgpu::Buffer,        // (rows) u32 input ids; [0] <- sampled id
    pub positions: wgpu::Buffer,     // (rows) u32 absolute positions
    pub slots: wgpu::Buffer,         // (rows) u32 KV slot of each row
    pub x: wgpu::Buffer,             // (rows, hidden) residual stream
    pub xn: wgpu::Buffer,            // (rows, hidden) normalised
    pub q: wgpu::Buffer,             // (rows, n_heads, head_dim)
    pub k: wgpu::Buffer,             // (rows, n_kv_heads, head_dim)
    pub qkv: wgpu::Buffer,           // (rows, q_dim + 2 kv_dim) the q, k and v products, stacked
    pub att: wgpu::Buffer,           // (rows, n_heads, head_dim)
    /// Split attention's partial softmaxes (decode rows on GPUs at long capacities).
    pub attn_part: Option<wgpu::Buffer>,
    pub gate: wgpu::Buffer,          // (rows, ffn)
    pub gate_up: wgpu::Buffer,       // (rows, 2 ffn) the gate and up products, stacked
    pub last: wgpu::Buffer,          // (1, hidden) normalised last row
    pub logits: wgpu::Buffer,        // (1 or chunk, vocab)
    pub k_cache: Vec<wgpu::Buffer>,  // per layer (capacity, n_kv_heads, head_dim)
    pub v_cache: Vec<wgpu::Buffer>,  // per layer (capacity, n_kv_heads, head_dim)
    pub slot_pos: wgpu::Buffer,      // (capacity) u32 position held by each slot, or INVALID_SLOT
    pub readback: [wgpu::Buffer; 2], // 4 bytes each, MAP_READ: a step's token while the next runs
    /// 4 bytes, bound where a kernel's binding is unused by this plan (attention's mass when
    /// nothing records it).
    pub unused: wgpu::Buffer,
    /// (rows, n_heads, capacity) attention probabilities, summed over layers (h2o, tova, oracle).
    pub mass: Option<wgpu::Buffer>,
    /// (capacity) per-slot score the GPU policies release by, and the oracle ranks by.
    pub slot_score: Option<wgpu::Buffer>,
    /// (capacity) the re-chosen selection (oracle, adore's store): slot_pos less what this step skips.
    pub attend: Option<wgpu::Buffer>,
    /// (1 + capacity) the valid slots of `attend` as a compact list, count first; then the
    /// choices' hints (`ops::cache_update::list_len`).
    pub attend_list: Option<wgpu::Buffer>,
    pub controller: Option<ControllerState>,
    pub rebuild: Option<RebuildState>,
    pub staged: Option<StagedState>,
    /// Per layer (pages, 2, kv_dim): each page's elementwise min and max key (Quest).
    pub quest_bounds: Vec<wgpu::Buffer>,
    pub index: Option<IndexState>,
    /// Per layer (capacity, q_dim): rotated queries by slot, when recorded.
    pub q_record: Vec<wgpu::Buffer>,
}

/// The key index on the GPU: per indexed layer its maps and its short keys by slot; the step's
/// short queries.
pub(crate) struct IndexState {
    /// The first layer indexed (those before it attend densely).
    pub first: usize,
    /// Indexed layers per choice (`Policy::layers_per_choice`): the first of every `every`
    /// ranks by its short keys, the others attend to its choice and hold no short keys.
    pub every: usize,
    /// Floats per KV head.
    pub rank: usize,
    pub maps: Vec<wgpu::Buffer>, // per layer (2, n_kv, head_dim, rank): `KeyIndex::maps`
    pub keys: Vec<wgpu::Buffer>, // per layer (n_kv, capacity, rank), stored as SHORT_KEYS, padded to 16 bytes (16 bytes where the layer does not rank)
    pub q: wgpu::Buffer,         // (rows, n_heads·rank)
    /// Ranking ahead (`Policy::rank_ahead`): where a layer's predicted query is made.
    pub ahead: Option<Ahead>,
    /// Slot ranges of the short-key scan (`ops::key_score::chunks`).
    pub chunks: usize,
    pub stats: wgpu::Buffer,  // the ranges' softmax statistics (`ops::key_score::stats_len`)
    pub logits: wgpu::Buffer, // the last row's short-key logits (`ops::key_score::logits_len`)
}

/// A layer's query predicted ahead of it, made as the layer makes its own (norm, product,
/// rotation, short query) into buffers of its own: `nowhere` gives every row a slot beyond the
/// cache, so that neither the rotation nor the short rows store a key or value.
pub(crate) struct Ahead {
    pub qkv: wgpu::Buffer,     // (rows, q_dim + 2 kv_dim)
    pub q: wgpu::Buffer,       // (rows, q_dim) rotated
    pub k: wgpu::Buffer,       // (rows, kv_dim) rotated, unread
    pub nowhere: wgpu::Buffer, // (rows) u32::MAX
}

impl IndexState {
    fn new(ctx: &Context, c: &Config, index: &KeyIndex, policy: &crate::policy::Policy, capacity: usize, rows: usize) -> Result<Self> {
        let every = policy.layers_per_choice;
        let r = index.rank;
        let layers = index.dense_layers..c.layers;
        let chunks = crate::ops::key_score::chunks(ctx, capacity);
        Ok(IndexState {
            first: index.dense_layers,
            every,
            rank: r,
            maps: layers
                .clone()
                .map(|l| ctx.storage_init(&format!("index.maps.{l}"), bytemuck::cast_slice(&index.maps(l))))
                .collect::<Result<_>>()?,
            keys: layers
                .map(|l| {
                    let words = match Self::ranking(index.dense_layers, every, l) {
                        true => crate::ops::key_score::keys_words(crate::index::SHORT_KEYS, capacity, c.n_kv_heads, r),
                        false => 4,
                    };
                    ctx.storage(&format!("index.keys.{l}"), f(words))
                })
                .collect::<Result<_>>()?,
            q: ctx.storage("index.q", f(rows * c.n_heads * r))?,
            ahead: match policy.rank_ahead {
                true => Some(Ahead {
                    qkv: ctx.storage("ahead.qkv", f(rows * (c.q_dim() + 2 * c.kv_dim())))?,
                    q: ctx.storage("ahead.q", f(rows * c.q_dim()))?,
                    k: ctx.storage("ahead.k", f(rows * c.kv_dim()))?,
                    nowhere: ctx.storage_init("ahead.nowhere", bytemuck::cast_slice(&vec![u32::MAX; rows]))?,
                }),
                false => None,
            },
            chunks,
            stats: ctx.storage("index.stats", f(crate::ops::key_score::stats_len(ctx, c.n_heads, chunks, rows)))?,
            logits: ctx.storage("index.logits", f(crate::ops::key_score::logits_len(c.n_heads, c.n_kv_heads, capacity)))?,
        })
    }

    /// Bytes of short keys held.
    pub fn bytes(&self) -> u64 {
        self.keys.iter().map(|b| b.size()).sum()
    }

    /// Whether layer `l` (indexed) ranks by its own short keys.
    pub fn ranks(&self, l: usize) -> bool {
        Self::ranking(self.first, self.every, l)
    }

    /// Whether indexed layer `l` ranks, the index starting at layer `first` with `every`
    /// layers per choice.
    fn ranking(first: usize, every: usize, l: usize) -> bool {
        (l - first).is_multiple_of(every)
    }
}

/// The ADORE controller: its packed weights, recurrent state and a key per token.
pub(crate) struct ControllerState {
    pub gpu: GpuController,
    pub state: wgpu::Buffer, // (2, d_c) controller state h, then query q
    pub keys: wgpu::Buffer,  // (context, d_c) controller key of every token by position
}

/// Rebuild: the id log and the ranking of released positions.
pub(crate) struct RebuildState {
    pub ids: wgpu::Buffer,       // (context) u32 token id by position
    pub pos_score: wgpu::Buffer, // (context) controller score by position, cached ones masked
    pub selected: wgpu::Buffer,  // (context) u32 top-k mask
    pub indices: wgpu::Buffer,   // (R) u32 positions to rebuild, ascending
}

/// The staged (selection-matrix) cache update.
pub(crate) struct StagedState {
    pub moves: wgpu::Buffer,       // (capacity) u32 source slot of each cache slot
    pub select: wgpu::Buffer,      // (budget, capacity) one-hot selection matrix
    pub selected_kv: wgpu::Buffer, // (2, budget, kv_dim) one layer's selected K and V
}

/// Bytes of `n` 4-byte values.
fn f(n: usize) -> u64 {
    (n * 4) as u64
}

impl RunState {
    /// Allocates everything a session with these (settled) options needs.
    pub fn new(ctx: &Context, c: &Config, o: &SessionOptions) -> Result<Self> {
        let capacity = o.capacity();
        let rows = o.max_rows();
        let kind = o.policy.kind;
        let logit_rows = if o.all_logits { rows } else { 1 };
        let cache = |name: &str| -> Result<Vec<wgpu::Buffer>> {
            (0..c.layers).map(|l| ctx.storage(&format!("{name}_cache.{l}"), f(o.kv_cache.words(capacity * c.kv_dim())))).collect()
        };
        let controller = match (o.runs_controller(), &o.controller) {
            (true, Some(cl)) => {
                let d_c = cl.d_c;
                Some(ControllerState {
                    gpu: GpuController::upload(ctx, cl, capacity)?,
                    state: ctx.storage("controller.state", f(2 * d_c))?,
                    keys: ctx.storage("controller.keys", f(o.context * d_c))?,
                })
            }
            _ => None,
        };
        let rebuild = match o.policy.rebuild {
            0 => None,
            r => Some(RebuildState {
                ids: ctx.storage("rebuild.ids", f(o.context))?,
                pos_score: ctx.storage("rebuild.pos_score", f(o.context))?,
                selected: ctx.storage("rebuild.selected", f(o.context))?,
                indices: ctx.storage("rebuild.indices", f(r))?,
            }),
        };
        if o.kv_cache == ops::KvType::F16 && c.head_dim % 4 != 0 {
            return Err(Error::arg(format!("an f16 KV cache needs head_dim a multiple of 4 (this model's is {})", c.head_dim)));
        }
        let staged = match o.cache_update {
            CacheUpdate::Scatter => None,
            CacheUpdate::Matmul if o.kv_cache == ops::KvType::F16 => {
                return Err(Error::arg("the selection-matrix cache update moves f32 rows: it needs an f32 KV cache"));
            }
            CacheUpdate::Matmul => Some(StagedState {
                moves: ctx.storage("staged.moves", f(capacity))?,
                select: ctx.storage("staged.select", f(o.policy.budget * capacity))?,
                selected_kv: ctx.storage("staged.selected_kv", f(2 * o.policy.budget * c.kv_dim()))?,
            }),
        };
        let rechooses = o.rechoice().is_some();
        let quest_bounds = match o.rechoice() {
            Some(Oracle { ranking: OracleRanking::Quest(_), .. }) => {
                let pages = capacity.div_ceil(ops::quest::PAGE);
                (0..c.layers).map(|l| ctx.storage(&format!("quest.bounds.{l}"), f(pages * 2 * c.kv_dim()))).collect::<Result<_>>()?
            }
            _ => Vec::new(),
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
            qkv: ctx.storage("qkv", f(rows * (c.q_dim() + 2 * c.kv_dim())))?,
            att: ctx.storage("att", f(rows * c.q_dim()))?,
            attn_part: {
                let decode = rows.min(ops::matmul::MATVEC_MAX_ROWS);
                let heads = ops::attention::Heads { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim, window: 0 };
                let len = ops::attention::split_scratch_len(heads, capacity, decode);
                ops::attention::splits(ctx, capacity, decode).then(|| ctx.storage("attention.part", f(len))).transpose()?
            },
            gate: ctx.storage("gate", f(rows * c.ffn))?,
            gate_up: ctx.storage("gate_up", f(rows * 2 * c.ffn))?,
            last: ctx.storage("last", f(c.hidden))?,
            logits: ctx.storage("logits", f(logit_rows * c.vocab))?,
            k_cache: cache("k")?,
            v_cache: cache("v")?,
            // (Padded as the release decision reads them: `cache_update::table_len`.)
            slot_pos: ctx.storage_init("slot_pos", bytemuck::cast_slice(&vec![INVALID_SLOT; ops::cache_update::table_len(capacity)]))?,
            readback: [ctx.staging(4), ctx.staging(4)],
            unused: ctx.storage("unused", 4)?,
            // (Ranked by keys, the layers' attention over the nominees.)
            mass: (kind.needs_mass() || (o.ranks_by_keys() && o.policy.candidates > 0))
                .then(|| ctx.storage("mass", f(rows * c.n_heads * capacity)))
                .transpose()?,
            slot_score: (o.policy.releases_on_gpu() || rechooses)
                .then(|| ctx.storage("slot_score", f(ops::cache_update::table_len(capacity))))
                .transpose()?,
            attend: rechooses.then(|| ctx.storage("attend", f(ops::cache_update::table_len(capacity)))).transpose()?,
            attend_list: rechooses
                .then(|| ctx.storage("attend_list", f(ops::cache_update::list_len(capacity, super::plan::hints(c.layers)))))
                .transpose()?,
            controller,
            rebuild,
            staged,
            quest_bounds,
            index: match (&o.index, o.ranks_by_keys()) {
                (Some(index), true) => Some(IndexState::new(ctx, c, index, &o.policy, capacity, rows)?),
                _ => None,
            },
            q_record: match o.record_queries {
                true => (0..c.layers).map(|l| ctx.storage(&format!("q_record.{l}"), f(capacity * c.q_dim()))).collect::<Result<_>>()?,
                false => Vec::new(),
            },
        };
        ctx.take_error()?;
        Ok(state)
    }

    /// Clears what a new sequence must not inherit: the slot table and the controller's state.
    pub fn clear(&self, ctx: &Context, capacity: usize) {
        ctx.queue.write_buffer(&self.slot_pos, 0, bytemuck::cast_slice(&vec![INVALID_SLOT; capacity]));
        if let Some(cl) = &self.controller {
            ctx.queue.write_buffer(&cl.state, 0, &vec![0u8; cl.state.size() as usize]);
        }
    }
}
