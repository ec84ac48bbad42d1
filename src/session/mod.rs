//! A session: one sequence's run state (`state`: activations and the slot-based KV cache,
//! allocated once), its recorded plans (`plan`: the forward pass and what the policy adds), and
//! the prefill / decode steps here. Each step writes a small uniform, replays one recorded plan
//! in one submit, and reads back one token id. `inspect` reads internal state back for tests.

mod inspect;
mod plan;
mod state;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Dispatch;
use crate::model::Model;
use crate::ops::{attention::INVALID_SLOT, sample::Sampling, Step};
use crate::policy::{PolicyKind, SlotMap};
use crate::profile::{self, StepProfile, Timed, Timing};

pub use inspect::Inspect;
use state::RunState;
pub use state::{SessionOptions, DEFAULT_CONTEXT};

pub struct Session {
    pub model: Arc<Model>,
    pub options: SessionOptions,
    state: RunState,
    /// Recorded plans by (row capacity: powers of two up to max_rows, rebuild rows, prompt
    /// rows attending densely).
    plans: HashMap<(usize, usize, bool), Vec<Dispatch>>,
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
    /// Submitted steps whose token has not been read yet, oldest first: their readback buffers.
    unread: VecDeque<usize>,
    /// The readback buffer the next step's token is copied to.
    next_readback: usize,
    /// The logits as they were before the last decode step, where it could be undone
    /// ([`Session::rewind_step`] puts them back); made with the first such step.
    logits_before: Option<wgpu::Buffer>,
}

impl Session {
    pub fn new(model: Arc<Model>, options: SessionOptions) -> Result<Self> {
        let options = options.settle(&model)?;
        let state = RunState::new(&model.ctx, &model.config, &options)?;
        let (capacity, max_rows) = (options.capacity(), options.max_rows());
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
            max_rows,
            last_rows: (0, 0),
            unread: VecDeque::new(),
            next_readback: 0,
            logits_before: None,
        })
    }

    /// Readbacks of internal state, for tests and diagnostics.
    pub fn inspect(&self) -> Inspect<'_> {
        Inspect { session: self }
    }

    /// Tokens held so far.
    pub fn len(&self) -> usize {
        self.n_past
    }

    pub fn is_empty(&self) -> bool {
        self.n_past == 0
    }

    /// Bytes of KV cache this session holds (with the key index's short keys, when it ranks by them).
    pub fn kv_bytes(&self) -> u64 {
        let index = self.state.index.as_ref().map_or(0, |ix| ix.bytes());
        self.state.k_cache.iter().chain(&self.state.v_cache).map(|b| b.size()).sum::<u64>() + index
    }

    /// Bytes of K/V a decode step reads now: every layer's rows of the slots it attends to (the
    /// sequence for full attention, at most the budget and the new row otherwise).
    pub fn attended_kv_bytes(&self) -> u64 {
        let c = &self.model.config;
        let slots = match self.options.policy.kind {
            PolicyKind::Full => self.n_past,
            _ => self.n_past.min(self.options.policy.budget + 1),
        };
        let row = self.options.kv_cache.words(c.kv_dim()) * 4 * 2;
        match &self.state.index {
            // Ranked by keys: the dense layers read everything; each indexed layer its chosen
            // rows, and each that ranks (every `layers_per_choice`-th) the short keys of every
            // token.
            Some(ix) => {
                let indexed = c.layers - ix.first;
                let ranking = (ix.first..c.layers).filter(|&l| ix.ranks(l)).count();
                let short = self.n_past * crate::index::SHORT_KEYS.bytes_per_token(c.n_kv_heads, ix.rank);
                (ix.first * self.n_past * row + indexed * slots * row + ranking * short) as u64
            }
            None => (slots * row * c.layers) as u64,
        }
    }

    /// Positions the KV cache holds now, ascending (read back from the GPU).
    pub async fn kept_positions(&self) -> Result<Vec<u32>> {
        let mut p: Vec<u32> = self.inspect().slot_table().await?.into_iter().filter(|&p| p != INVALID_SLOT).collect();
        p.sort_unstable();
        Ok(p)
    }

    /// The positions the last step attended to, ascending: for the policies that re-choose
    /// among all past tokens (the oracle, adore with its store) its choice, otherwise what the
    /// cache holds.
    pub async fn attended_positions(&self) -> Result<Vec<u32>> {
        let Some(attend) = self.state.attend.as_ref().filter(|_| self.options.rechoice().is_some()) else {
            return self.kept_positions().await;
        };
        let mut p: Vec<u32> = self.model.ctx.read_u32(attend, self.capacity).await?.into_iter().filter(|&p| p != INVALID_SLOT).collect();
        p.sort_unstable();
        Ok(p)
    }

    /// The positions the last step rebuilt (ascending), read back.
    pub async fn rebuilt_positions(&self) -> Result<Vec<u32>> {
        let (rows, new) = self.last_rows;
        Ok(self.model.ctx.read_u32(&self.state.positions, rows).await?.split_off(new))
    }

    /// Forgets the sequence (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.n_past = 0;
        self.counter = 0;
        self.unread.clear();
        self.slots.clear();
        self.state.clear(&self.model.ctx, self.capacity);
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
        if self.state.controller.is_some() {
            return Err(Error::arg("the adore controller's state cannot be rewound: reset the session instead of truncating it"));
        }
        let freed = if self.options.policy.releases_on_gpu() {
            let table = self.inspect().slot_table().await?;
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

    /// Uploads the per-step values and submits the plan for `n` new rows (tokens already in
    /// place when `tokens` is None), with rebuild rows when the policy asks for them; with
    /// `read`, copies the sampled id to a readback buffer for [`Session::read_token`]. With
    /// `prompt`, the rows are a prompt's (`prefill`), which may attend densely
    /// ([`SessionOptions::prefills_densely`]).
    fn submit(&mut self, tokens: Option<&[u32]>, n: usize, read: bool, prompt: bool) -> Result<()> {
        let undoable = tokens.is_none() && n == 1 && self.can_rewind_step();
        if undoable && self.logits_before.is_none() {
            self.logits_before = Some(self.model.ctx.storage("logits before", self.state.logits.size())?);
        }
        let (key, rows) = self.prepare(tokens, n, prompt)?;
        let ctx = &self.model.ctx;
        let mut encoder = ctx.encoder();
        if let (true, Some(before)) = (undoable, &self.logits_before) {
            encoder.copy_buffer_to_buffer(&self.state.logits, 0, before, 0, self.state.logits.size());
        }
        ctx.record(&mut encoder, &self.plans[&key]);
        self.finish(encoder, rows, n, read)
    }

    /// Everything before recording a step: its plan built if new, slots and per-step values
    /// written. Returns the plan's key and the step's rows.
    fn prepare(&mut self, tokens: Option<&[u32]>, n: usize, prompt: bool) -> Result<((usize, usize, bool), usize)> {
        let policy = self.options.policy;
        // Rebuild runs with single-token steps, once tokens have been released.
        let rebuild = if n == 1 { policy.rebuild.min(self.n_past.saturating_sub(policy.budget)) } else { 0 };
        let rows = n + rebuild;
        let cap = rows.next_power_of_two().min(self.max_rows);
        let dense = prompt && self.options.prefills_densely();
        if !self.plans.contains_key(&(cap, rebuild, dense)) {
            let plan = plan::Planner::new(&self.model, &self.state, &self.options, self.capacity).build(cap, rebuild, dense)?;
            self.plans.insert((cap, rebuild, dense), plan);
        }
        let positions: Vec<u32> = (self.n_past..self.n_past + n).map(|p| p as u32).collect();
        let on_gpu = policy.releases_on_gpu();
        let ctx = &self.model.ctx;
        let s = &self.state;
        // Slots: chosen here for the policies decided on the CPU, by slot_assign otherwise
        // (attention then scans every slot).
        let n_slots = if on_gpu {
            self.capacity
        } else {
            let slots = self.slots.assign(&positions)?;
            ctx.queue.write_buffer(&s.slots, 0, bytemuck::cast_slice(&slots));
            if self.options.rechoice().is_some() {
                // The oracle and adore's store choose among the slot table's tokens, the new rows
                // included, before layer 0 writes them (ranked by the controller, before any layer).
                for (&slot, &pos) in slots.iter().zip(&positions) {
                    ctx.queue.write_buffer(&s.slot_pos, slot as u64 * 4, bytemuck::bytes_of(&pos));
                }
            }
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
        Ok(((cap, rebuild, dense), rows))
    }

    /// Submits a recorded step (with `read`, and the copy of its token id to the next readback
    /// buffer), and moves the sequence on.
    fn finish(&mut self, mut encoder: wgpu::CommandEncoder, rows: usize, n: usize, read: bool) -> Result<()> {
        let (ctx, s) = (&self.model.ctx, &self.state);
        let read = read && !self.options.all_logits;
        if read {
            encoder.copy_buffer_to_buffer(&s.tokens, 0, &s.readback[self.next_readback], 0, 4);
        }
        ctx.queue.submit([encoder.finish()]);
        ctx.take_error()?;
        if read {
            self.unread.push_back(self.next_readback);
            self.next_readback ^= 1;
        }
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
        self.prefill_rows(tokens, true).await
    }

    /// [`Session::prefill`]; with `prompt` false the rows attend as generated tokens do
    /// ([`Session::feed`]).
    async fn prefill_rows(&mut self, tokens: &[u32], prompt: bool) -> Result<u32> {
        if self.options.all_logits {
            return Err(Error::arg("this session computes all logits (perplexity); use prefill_logits"));
        }
        self.check_tokens(tokens)?;
        // A step whose token was never read (a generation dropped with a step queued) is
        // forgotten: this prompt's token is the one read next.
        self.unread.clear();
        let chunks = tokens.len().div_ceil(self.options.chunk);
        for (i, chunk) in tokens.chunks(self.options.chunk).enumerate() {
            self.submit(Some(chunk), chunk.len(), i + 1 == chunks, prompt)?;
        }
        self.read_token().await
    }

    /// Feeds the previously chosen token (still on the GPU) and returns the next one.
    pub async fn step(&mut self) -> Result<u32> {
        self.submit_step()?;
        self.read_token().await
    }

    /// [`Session::step`] without waiting: submits the step that feeds the previously chosen
    /// token (still on the GPU) and returns; [`Session::read_step`] returns its token. So the
    /// next step can be queued before this one's token is read, and the GPU does not wait for
    /// the CPU between them. At most two steps may wait to be read.
    pub fn submit_step(&mut self) -> Result<()> {
        self.check_step()?;
        if self.unread.len() >= 2 {
            return Err(Error::arg("two steps already wait to be read: read one before submitting another"));
        }
        self.submit(None, 1, true, false)
    }

    /// The token of the oldest submitted step not read yet (see [`Session::submit_step`]).
    pub async fn read_step(&mut self) -> Result<u32> {
        self.read_token().await
    }

    /// Whether [`Session::rewind_step`] can undo a step exactly: the cache keeps every token
    /// (full attention, the oracle, Quest, adore with its store) and nothing else carries state
    /// from step to step (no ADORE controller, rebuild or staged update).
    pub fn can_rewind_step(&self) -> bool {
        let s = &self.state;
        self.options.policy.keeps_everything()
            && !self.options.all_logits
            && s.controller.is_none()
            && s.rebuild.is_none()
            && s.staged.is_none()
    }

    /// Undoes the last step, a decode step (one token) that fed `fed`, the token the step before
    /// it chose: the session is as before it ran (its slot freed, the sampler's counter back,
    /// `fed` in place to be fed again, the logits the step before it left), and its token, if
    /// not read yet, is dropped. For
    /// generation that queued a step before learning that the token it feeds ends the sequence.
    /// Refused where [`Session::can_rewind_step`] is false, and with an older step's token still
    /// unread.
    pub fn rewind_step(&mut self, fed: u32) -> Result<()> {
        if !self.can_rewind_step() {
            return Err(Error::arg("this session's policy keeps state a step cannot be undone from"));
        }
        if self.last_rows.1 != 1 || self.unread.len() > 1 {
            return Err(Error::arg("the last step was not a decode step, was undone already, or an older step's token is still unread"));
        }
        self.unread.pop_back();
        self.last_rows = (0, 0);
        let n = self.n_past - 1;
        let freed = self.slots.truncate(n);
        self.free_slots(&freed);
        self.n_past = n;
        self.counter = self.counter.wrapping_sub(1);
        let ctx = &self.model.ctx;
        ctx.queue.write_buffer(&self.state.tokens, 0, bytemuck::bytes_of(&fed));
        // (Saved when the step was submitted: can_rewind_step held then as now.)
        if let Some(before) = &self.logits_before {
            let mut encoder = ctx.encoder();
            encoder.copy_buffer_to_buffer(before, 0, &self.state.logits, 0, self.state.logits.size());
            ctx.queue.submit([encoder.finish()]);
        }
        Ok(())
    }

    fn check_step(&self) -> Result<()> {
        if self.n_past == 0 {
            return Err(Error::arg("step() needs a prefill first"));
        }
        if self.n_past >= self.options.context {
            return Err(Error::PromptTooLong { tokens: self.n_past + 1, context: self.options.context });
        }
        Ok(())
    }

    /// [`Session::step`], timing each dispatch of the step as `timing` says (see [`profile`]).
    pub async fn profile_step(&mut self, timing: Timing) -> Result<(u32, StepProfile)> {
        self.check_step()?;
        // Refused before the step is prepared: preparing assigns its slots.
        if cfg!(target_arch = "wasm32") && timing == Timing::SingleSubmits {
            return Err(Error::arg("in the browser a profile needs the timestamp-query feature"));
        }
        if !self.unread.is_empty() {
            return Err(Error::arg("a profiled step needs the tokens of the steps before it read"));
        }
        let (key, rows) = self.prepare(None, 1, false)?;
        let ctx = self.model.ctx.clone();
        let plan = &self.plans[&key];
        let stamped: Vec<(Arc<str>, [u32; 3])> = plan.iter().map(|d| (d.kernel.clone(), d.workgroups)).collect();
        let mut encoder = ctx.encoder();
        let seconds = match timing {
            Timing::Timestamps => {
                let stamps = profile::record_timed(&ctx, &mut encoder, plan);
                self.finish(encoder, rows, 1, true)?;
                profile::read_stamps(&ctx, &stamps).await?
            }
            #[cfg(not(target_arch = "wasm32"))]
            Timing::SingleSubmits => {
                let seconds = profile::run_singly(&ctx, plan)?;
                self.finish(encoder, rows, 1, true)?;
                seconds
            }
            #[cfg(target_arch = "wasm32")]
            Timing::SingleSubmits => unreachable!("refused above"),
        };
        let token = self.read_token().await?;
        let dispatches =
            stamped.into_iter().zip(seconds).map(|((kernel, workgroups), seconds)| Timed { kernel, workgroups, seconds }).collect();
        Ok((token, StepProfile { timing, dispatches }))
    }

    /// Feeds a token chosen on the CPU (teacher forcing) and returns the next; it attends as a
    /// generated token does.
    pub async fn feed(&mut self, token: u32) -> Result<u32> {
        self.prefill_rows(&[token], false).await
    }

    async fn read_token(&mut self) -> Result<u32> {
        let Some(rb) = self.unread.pop_front() else {
            return Err(Error::arg("no submitted step has a token to read"));
        };
        let bytes = self.model.ctx.map_read(&self.state.readback[rb], 4).await?;
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
            self.submit(Some(chunk), chunk.len(), false, false)?;
            out.extend(self.model.ctx.read_f32(&self.state.logits, chunk.len() * vocab).await?);
        }
        Ok(out)
    }
}
