//! Readbacks of a session's internal state, for tests and diagnostics: each waits for the GPU
//! and copies a buffer back, so none belongs in a generation loop.

use crate::error::{Error, Result};

use super::Session;

/// A view of a session's GPU state (`Session::inspect`).
pub struct Inspect<'a> {
    pub(super) session: &'a Session,
}

impl Inspect<'_> {
    /// The GPU slot table (position per slot, INVALID_SLOT when free).
    pub async fn slot_table(&self) -> Result<Vec<u32>> {
        let s = self.session;
        s.model.ctx.read_u32(&s.state.slot_pos, s.capacity).await
    }

    /// The per-slot scores the GPU policies release by.
    pub async fn slot_scores(&self) -> Result<Vec<f32>> {
        let s = self.session;
        let Some(score) = &s.state.slot_score else {
            return Err(Error::arg(format!("policy {} keeps no per-slot scores", s.options.policy.name())));
        };
        s.model.ctx.read_f32(score, s.capacity).await
    }

    /// The last step's rows: (positions, slots). New rows come first, then the rebuilt ones
    /// (whose positions the GPU chose).
    pub async fn last_rows(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let s = self.session;
        let ctx = &s.model.ctx;
        let rows = s.last_rows.0;
        Ok((ctx.read_u32(&s.state.positions, rows).await?, ctx.read_u32(&s.state.slots, rows).await?))
    }

    /// The controller's score of every position at the last rebuild selection (released
    /// positions; cached and later ones hold ops::rebuild::MASKED).
    pub async fn position_scores(&self) -> Result<Vec<f32>> {
        let s = self.session;
        let Some(rb) = &s.state.rebuild else { return Err(Error::arg("position scores exist only with rebuild")) };
        s.model.ctx.read_f32(&rb.pos_score, s.options.context).await
    }

    /// One layer's K and V caches, (capacity, kv_dim) each (f16 caches read back as f32).
    pub async fn kv_cache(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.cache(&self.session.state.k_cache, layer).await?, self.cache(&self.session.state.v_cache, layer).await?))
    }

    /// One layer's K cache alone, (capacity, kv_dim).
    pub async fn keys(&self, layer: usize) -> Result<Vec<f32>> {
        self.cache(&self.session.state.k_cache, layer).await
    }

    async fn cache(&self, caches: &[wgpu::Buffer], layer: usize) -> Result<Vec<f32>> {
        let s = self.session;
        let Some(buf) = caches.get(layer) else { return Err(Error::arg(format!("layer {layer} does not exist"))) };
        let kv = s.options.kv_cache;
        Ok(kv.decode(&s.model.ctx.read_u32(buf, kv.words(s.capacity * s.model.config.kv_dim())).await?))
    }

    /// One layer's rotated queries by slot, (capacity, q_dim), in a session that records them.
    pub async fn queries(&self, layer: usize) -> Result<Vec<f32>> {
        let s = self.session;
        let Some(q) = s.state.q_record.get(layer) else {
            return Err(Error::arg(format!("queries of layer {layer} are not recorded (record_queries, and a layer of the model)")));
        };
        s.model.ctx.read_f32(q, s.capacity * s.model.config.q_dim()).await
    }

    /// The slots the oracle's last step attended to (its slot table less what it skipped).
    pub async fn attended_table(&self) -> Result<Vec<u32>> {
        let s = self.session;
        let Some(attend) = &s.state.attend else { return Err(Error::arg("only the oracle policy attends to a subset of its cache")) };
        s.model.ctx.read_u32(attend, s.capacity).await
    }
}
