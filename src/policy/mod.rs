//! Release policies: which tokens a fixed-budget KV cache keeps (`Policy`, made from its
//! parts by `Policy::new`, the one place defaults are filled in and the parts checked), how
//! kept rows reach their slots (`CacheUpdate`), and the CPU mirror of the slot table
//! (`SlotMap`) on which the policies decided without scores are decided.
//!
//! Every layer's K/V buffers have `capacity` slots; the GPU slot table holds each slot's token
//! position (or INVALID). New rows take the lowest free slots, attention masks by position, and
//! after each step the policy frees slots until at most `budget` remain. Slots never move.
//! Policies whose decision needs no GPU data (full, window, sink) are decided here, on the
//! CPU mirror of the table, so no step reads anything back but the sampled token.

use crate::error::{Error, Result};

/// Protected first tokens when none are asked for (sink, h2o, tova, adore).
pub const DEFAULT_SINKS: usize = 4;
/// KV slots a budgeted policy keeps when no budget is asked for.
pub const DEFAULT_BUDGET: usize = 256;

/// Which tokens a budgeted cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PolicyKind {
    /// Everything: the cache grows with the sequence.
    Full,
    /// The `budget` most recent tokens.
    Window,
    /// StreamingLLM: the first `sinks` tokens and the `budget - sinks` most recent.
    #[cfg_attr(feature = "clap", value(alias = "streamingllm"))]
    Sink,
    /// Heavy hitters: sinks and recent window protected, the rest by attention mass
    /// accumulated over steps (summed over heads and layers). Decided on the GPU.
    H2o,
    /// Sinks and recent window protected, the rest by the current query's attention.
    /// Decided on the GPU.
    Tova,
    /// ADORE: sinks and recent window protected, the rest ranked by each layer's attention over
    /// short keys (the key index; or the learned controller's score, `Ranking`). By default
    /// every token's K/V stays in a store and each step attends to the `budget` ranked highest
    /// among all past tokens, so a release is undone exactly; with `RebuildFrom::Recompute`
    /// released tokens are dropped and each single-token step recomputes the `rebuild`
    /// best-scored of them (ranked by the controller). Decided on the GPU.
    Adore,
    /// Quest (Tang et al., 2024), a baseline that keeps the whole sequence: every layer
    /// attends to the `budget` tokens of the pages (16 tokens) whose min/max keys bound its
    /// current query's logits highest, re-chosen every step.
    Quest,
    /// Evaluation only: keeps the whole sequence, and each step attends to the `budget` tokens
    /// that its last row's full attention (summed over heads and layers) ranks highest: the
    /// upper bound the other policies approximate. Costs two forward passes per step.
    Oracle,
}

impl PolicyKind {
    /// Whether the GPU decides releases (from attention scores) rather than the CPU.
    pub fn on_gpu(self) -> bool {
        matches!(self, PolicyKind::H2o | PolicyKind::Tova | PolicyKind::Adore)
    }

    /// Whether attention must record per-slot probabilities.
    pub fn needs_mass(self) -> bool {
        matches!(self, PolicyKind::H2o | PolicyKind::Tova | PolicyKind::Oracle)
    }

    /// Whether the KV cache holds the whole sequence (no memory saving).
    pub fn keeps_everything(self) -> bool {
        matches!(self, PolicyKind::Full | PolicyKind::Oracle | PolicyKind::Quest)
    }

    /// Whether the policy can rebuild released tokens (only adore: rebuild ranks them with
    /// the controller). Comparisons across policies give rebuild rows to these alone.
    pub fn rebuilds(self) -> bool {
        self == PolicyKind::Adore
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Full => "full",
            PolicyKind::Window => "window",
            PolicyKind::Sink => "sink",
            PolicyKind::H2o => "h2o",
            PolicyKind::Tova => "tova",
            PolicyKind::Adore => "adore",
            PolicyKind::Quest => "quest",
            PolicyKind::Oracle => "oracle",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(PolicyKind::Full),
            "window" => Ok(PolicyKind::Window),
            "sink" | "streamingllm" => Ok(PolicyKind::Sink),
            "h2o" => Ok(PolicyKind::H2o),
            "tova" => Ok(PolicyKind::Tova),
            "adore" => Ok(PolicyKind::Adore),
            "quest" => Ok(PolicyKind::Quest),
            "oracle" => Ok(PolicyKind::Oracle),
            _ => Err(Error::arg(format!("unknown policy {s:?} (available: full, window, sink, h2o, tova, adore, quest, oracle)"))),
        }
    }
}

/// Where adore gets the K/V of a released token back when the controller chooses it again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RebuildFrom {
    /// Every token's K/V stays on the GPU; each step re-chooses the attended `budget` among all
    /// past tokens and reads them where they are, exactly. Memory grows with the sequence; the
    /// K/V a step reads does not.
    #[default]
    Store,
    /// Released K/V are dropped (memory stays at the budget); each single-token step
    /// recomputes up to `rebuild` released tokens, from their embeddings, against the cache as
    /// it is (ADORE's original rebuild).
    Recompute,
}

impl RebuildFrom {
    pub fn name(self) -> &'static str {
        match self {
            RebuildFrom::Store => "store",
            RebuildFrom::Recompute => "recompute",
        }
    }
}

impl std::str::FromStr for RebuildFrom {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "store" => Ok(RebuildFrom::Store),
            "recompute" => Ok(RebuildFrom::Recompute),
            _ => Err(Error::arg(format!("unknown rebuild source {s:?} (available: store, recompute)"))),
        }
    }
}

/// What adore ranks past tokens by when it re-chooses its attended budget from its store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Ranking {
    /// Each layer by its own attention over short keys fitted to the model's rotated queries
    /// and keys (the key index, `crate::index`): a choice per layer, from the model's own view
    /// of which tokens matter.
    #[default]
    Keys,
    /// The learned controller's score over token embeddings: one choice for every layer.
    /// adore recomputing released tokens always ranks by the controller.
    Controller,
}

impl Ranking {
    pub fn name(self) -> &'static str {
        match self {
            Ranking::Keys => "keys",
            Ranking::Controller => "controller",
        }
    }
}

impl std::str::FromStr for Ranking {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keys" => Ok(Ranking::Keys),
            "controller" => Ok(Ranking::Controller),
            _ => Err(Error::arg(format!("unknown ranking {s:?} (available: keys, controller)"))),
        }
    }
}

/// How kept rows reach their cache slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum CacheUpdate {
    /// Each new row is written straight into a free slot (an index-driven scatter, at write
    /// time); a release only marks slots free. Nothing moves afterwards.
    #[default]
    Scatter,
    /// The paper's technique: rows are staged after the cache's `budget` slots, and after the
    /// release decision a one-hot selection matrix multiplied with every layer's K and V moves
    /// the surviving ones into freed slots. For the policies decided on the GPU.
    Matmul,
}

impl CacheUpdate {
    pub fn name(self) -> &'static str {
        match self {
            CacheUpdate::Scatter => "scatter",
            CacheUpdate::Matmul => "matmul",
        }
    }
}

impl std::str::FromStr for CacheUpdate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "scatter" => Ok(CacheUpdate::Scatter),
            "matmul" => Ok(CacheUpdate::Matmul),
            _ => Err(Error::arg(format!("unknown cache update {s:?} (available: scatter, matmul)"))),
        }
    }
}

/// What the oracle ranks past tokens by at each step, re-choosing its `budget` among all of
/// them: diagnostics of how much of the oracle's lead a real policy could take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OracleRanking {
    /// The last row's full attention summed over heads and layers (a first, dense pass).
    #[default]
    Attention,
    /// The attention of layer ℓ alone: layers 0..=ℓ attend to every token, the later ones to
    /// the chosen set (one pass).
    Layer(usize),
    /// The adore controller's score (one pass, every layer attending to the chosen set).
    Controller,
    /// Each layer chooses its own set by its own attention (summed over its heads): what one
    /// choice for all layers costs.
    PerLayer,
    /// Each layer chooses by Quest's page bounds on its current query's logits (the `quest`
    /// policy, with 0): the first N layers attend to every token, as the Quest paper runs it
    /// with N = 2 (`quest-dense-N`).
    Quest(usize),
    /// Each layer chooses by its own attention over the key index's short keys
    /// (`crate::index`), the index's dense layers attending to every token.
    Keys,
}

/// The oracle's ranking, and whether it protects the policy's sinks and recent window as the
/// releasing policies do (otherwise every token competes for the budget).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Oracle {
    pub ranking: OracleRanking,
    pub protect: bool,
}

impl Oracle {
    /// `attention`, `controller` or `layer-L`, with `-protected` when it protects.
    pub fn name(&self) -> String {
        let base = match self.ranking {
            OracleRanking::Attention => "attention".to_string(),
            OracleRanking::Layer(l) => format!("layer-{l}"),
            OracleRanking::Controller => "controller".to_string(),
            OracleRanking::PerLayer => "per-layer".to_string(),
            OracleRanking::Quest(0) => "quest".to_string(),
            OracleRanking::Quest(n) => format!("quest-dense-{n}"),
            OracleRanking::Keys => "keys".to_string(),
        };
        if self.protect {
            base + "-protected"
        } else {
            base
        }
    }
}

impl std::str::FromStr for Oracle {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (base, protect) = match s.strip_suffix("-protected") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let ranking = match base {
            "attention" => OracleRanking::Attention,
            "controller" => OracleRanking::Controller,
            "per-layer" => OracleRanking::PerLayer,
            "quest" => OracleRanking::Quest(0),
            "keys" => OracleRanking::Keys,
            _ => match (base.strip_prefix("layer-").map(str::parse::<usize>), base.strip_prefix("quest-dense-").map(str::parse::<usize>)) {
                (Some(Ok(l)), _) => OracleRanking::Layer(l),
                (_, Some(Ok(n))) => OracleRanking::Quest(n),
                _ => {
                    return Err(Error::arg(format!(
                    "unknown oracle ranking {s:?} (available: attention, controller, per-layer, quest, quest-dense-N, keys, layer-L with L a layer index; each with -protected)"
                )))
                }
            },
        };
        Ok(Oracle { ranking, protect })
    }
}

/// A release policy with its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    /// KV slots kept between steps (ignored by `full`).
    pub budget: usize,
    /// Protected first tokens (`sink`, `h2o`, `tova`).
    pub sinks: usize,
    /// Protected most recent tokens (`h2o`, `tova`, `adore`).
    pub recent: usize,
    /// Released tokens recomputed with each single-token step (`adore` recomputing; 0
    /// disables rebuild).
    pub rebuild: usize,
    /// Where `adore` gets released tokens back from (ignored by the other policies).
    pub rebuild_from: RebuildFrom,
    /// What `adore` from its store ranks by (ignored by the other policies).
    pub ranking: Ranking,
    /// adore ranked by keys: with C > 0, each layer's short keys nominate C past tokens and
    /// its exact attention over them chooses the budget (0: the short keys choose).
    pub candidates: usize,
    /// adore ranked by keys: indexed layers per choice. 1 (the default): every layer ranks by
    /// its own short keys; N: the first of every N indexed layers ranks and the N - 1 after it
    /// attend to its choice (fewer dispatches and short keys, at a cost in fidelity).
    pub layers_per_choice: usize,
    /// adore ranked by keys: each ranking layer after the first ranks with a query predicted
    /// from the residual stream before the previous layer's feed-forward (that layer's norm
    /// and query projection applied to it), so that its ranking no longer waits on the
    /// previous layer's end. Today it costs a query product more a layer; it is the ranking
    /// that a plan overlapping it with the previous layer needs (see docs/results.md).
    pub rank_ahead: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            kind: PolicyKind::Full,
            budget: 0,
            sinks: DEFAULT_SINKS,
            recent: 16,
            rebuild: 0,
            rebuild_from: RebuildFrom::Store,
            ranking: Ranking::Keys,
            candidates: 0,
            layers_per_choice: 1,
            rank_ahead: false,
        }
    }
}

/// The parts a policy is made from, as a user gives them: `recent` None takes the policy's
/// default window for its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyParts {
    pub budget: usize,
    pub sinks: usize,
    pub recent: Option<usize>,
    pub rebuild: usize,
    pub rebuild_from: RebuildFrom,
    pub ranking: Ranking,
    pub candidates: usize,
    pub layers_per_choice: usize,
    pub rank_ahead: bool,
}

impl Default for PolicyParts {
    fn default() -> Self {
        PolicyParts {
            budget: DEFAULT_BUDGET,
            sinks: DEFAULT_SINKS,
            recent: None,
            rebuild: 0,
            rebuild_from: RebuildFrom::Store,
            ranking: Ranking::Keys,
            candidates: 0,
            layers_per_choice: 1,
            rank_ahead: false,
        }
    }
}

impl Policy {
    pub fn full() -> Self {
        Self::default()
    }

    /// A policy from its parts, with the default recent window where none is given, checked.
    pub fn new(kind: PolicyKind, parts: PolicyParts) -> Result<Self> {
        let by_keys = kind == PolicyKind::Adore && parts.rebuild_from == RebuildFrom::Store && parts.ranking == Ranking::Keys;
        let recent = parts.recent.unwrap_or_else(|| match by_keys {
            // Ranked by keys, each layer finds recent tokens it needs itself: a window of 16 (chosen
            // over 96 and over none on the validation play at m = 128).
            true => 16.min(parts.budget.saturating_sub(parts.sinks)),
            false => Self::default_recent(kind, parts.budget, parts.sinks),
        });
        let p = Policy {
            kind,
            budget: parts.budget,
            sinks: parts.sinks,
            recent,
            rebuild: parts.rebuild,
            rebuild_from: parts.rebuild_from,
            ranking: parts.ranking,
            candidates: if by_keys { parts.candidates } else { 0 },
            layers_per_choice: if by_keys { parts.layers_per_choice } else { 1 },
            rank_ahead: by_keys && parts.rank_ahead,
        };
        p.validate()?;
        Ok(p)
    }

    /// A policy from parts shared with other policies (several compared side by side, or a
    /// page whose rebuild setting stays when another policy is picked): rebuild rows go to the
    /// policies that rebuild, and the others run without (adore from its store refuses them).
    pub fn shared(kind: PolicyKind, parts: PolicyParts) -> Result<Self> {
        Self::new(kind, PolicyParts { rebuild: if kind.rebuilds() { parts.rebuild } else { 0 }, ..parts })
    }

    /// Whether released tokens stay in a store and every step re-chooses among all of them
    /// (adore from its store): the cache then holds the whole sequence.
    pub fn stores(&self) -> bool {
        self.kind == PolicyKind::Adore && self.rebuild_from == RebuildFrom::Store
    }

    /// Whether the KV buffers hold the whole sequence: full, the oracle, adore with its store.
    pub fn keeps_everything(&self) -> bool {
        self.kind.keeps_everything() || self.stores()
    }

    /// Whether the GPU releases tokens for good by score (h2o, tova, adore recomputing).
    pub fn releases_on_gpu(&self) -> bool {
        self.kind.on_gpu() && !self.stores()
    }

    /// The protected recent window a policy gets when none is asked for: half the budget for
    /// `h2o` (H2O's even split between heavy hitters and recent tokens), three quarters of it for
    /// `adore` (chosen over a half and over 16 on 2048 tokens of a validation play at budgets
    /// 128 and 256; adore ranked by keys takes 16, see `Policy::new`), 16 for `tova`; never more
    /// than the budget leaves after the sinks. Policies
    /// without a recent window ignore it.
    pub fn default_recent(kind: PolicyKind, budget: usize, sinks: usize) -> usize {
        let want = match kind {
            PolicyKind::H2o => budget / 2,
            PolicyKind::Adore => budget * 3 / 4,
            _ => 16,
        };
        want.min(budget.saturating_sub(sinks))
    }

    /// Whether the policy ranks by the key index (adore from its store, by default).
    pub fn ranks_by_keys(&self) -> bool {
        self.stores() && self.ranking == Ranking::Keys
    }

    /// The kind's name; adore recomputing released tokens is `adore-recompute`, adore from its
    /// store ranked by the controller `adore-controller`.
    pub fn name(&self) -> &'static str {
        match (self.kind, self.rebuild_from, self.ranking) {
            (PolicyKind::Adore, RebuildFrom::Recompute, _) => "adore-recompute",
            (PolicyKind::Adore, RebuildFrom::Store, Ranking::Controller) => "adore-controller",
            (kind, _, _) => kind.name(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.kind == PolicyKind::Full {
            return Ok(());
        }
        if self.budget == 0 {
            return Err(Error::arg(format!("policy {} needs a budget of at least 1 KV slot", self.name())));
        }
        if self.kind == PolicyKind::Sink && self.sinks >= self.budget {
            return Err(Error::arg(format!("{} sink tokens leave no room in a budget of {}", self.sinks, self.budget)));
        }
        if self.rebuild > 0 && !self.kind.rebuilds() {
            return Err(Error::arg(format!("rebuild applies to the adore policy only, not {}", self.name())));
        }
        if self.rebuild > 0 && self.stores() {
            return Err(Error::arg(
                "rebuild rows apply to adore recomputing released tokens (rebuild from recompute); from its store adore gets back every token it chooses",
            ));
        }
        if self.candidates > 0 && !self.ranks_by_keys() {
            return Err(Error::arg(format!("candidates apply to adore ranked by keys, not {}", self.name())));
        }
        if self.layers_per_choice == 0 {
            return Err(Error::arg("layers per choice must be at least 1"));
        }
        if self.layers_per_choice > 1 && !self.ranks_by_keys() {
            return Err(Error::arg(format!("layers per choice apply to adore ranked by keys, not {}", self.name())));
        }
        if self.rank_ahead && !self.ranks_by_keys() {
            return Err(Error::arg(format!("ranking ahead applies to adore ranked by keys, not {}", self.name())));
        }
        if self.candidates > 0 && self.candidates <= self.budget {
            return Err(Error::arg(format!(
                "candidates ({}) must exceed the budget ({}) to leave the exact attention a choice",
                self.candidates, self.budget
            )));
        }
        if self.rebuild > self.budget {
            return Err(Error::arg(format!("rebuild rows ({}) cannot exceed the budget ({})", self.rebuild, self.budget)));
        }
        if self.kind.on_gpu() && self.sinks + self.recent > self.budget {
            return Err(Error::arg(format!(
                "{} sink and {} recent tokens do not fit in a budget of {}",
                self.sinks, self.recent, self.budget
            )));
        }
        Ok(())
    }

    /// Reference: the positions this policy keeps after `n` tokens (ascending); for the
    /// score-driven policies, see `ops::cache_update::reference`.
    pub fn reference_keep(&self, n: usize) -> Vec<u32> {
        let all = 0..n as u32;
        match self.kind {
            PolicyKind::Full | PolicyKind::H2o | PolicyKind::Tova | PolicyKind::Adore | PolicyKind::Quest | PolicyKind::Oracle => {
                all.collect()
            }
            _ if n <= self.budget => all.collect(),
            PolicyKind::Window => ((n - self.budget) as u32..n as u32).collect(),
            PolicyKind::Sink => (0..self.sinks as u32).chain((n - (self.budget - self.sinks)) as u32..n as u32).collect(),
        }
    }
}

/// CPU mirror of the GPU slot table.
#[derive(Clone, Debug)]
pub struct SlotMap {
    /// Position held by each slot.
    slots: Vec<Option<u32>>,
}

impl SlotMap {
    pub fn new(capacity: usize) -> Self {
        SlotMap { slots: vec![None; capacity] }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the highest slot in use: attention scans slots below it.
    pub fn high_water(&self) -> usize {
        self.slots.iter().rposition(Option::is_some).map_or(0, |i| i + 1)
    }

    /// Positions held, ascending.
    pub fn positions(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.slots.iter().flatten().copied().collect();
        p.sort_unstable();
        p
    }

    /// Places `positions` in the lowest free slots and returns those slots.
    pub fn assign(&mut self, positions: &[u32]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(positions.len());
        let mut free = self.slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect::<Vec<_>>().into_iter();
        for &p in positions {
            let slot = free.next().ok_or_else(|| Error::arg(format!("the KV cache's {} slots are full", self.slots.len())))?;
            self.slots[slot] = Some(p);
            out.push(slot as u32);
        }
        Ok(out)
    }

    /// Frees the slots of positions the policy does not keep once `n` tokens have been seen;
    /// returns the freed slots.
    pub fn release(&mut self, policy: &Policy, n: usize) -> Vec<u32> {
        if policy.keeps_everything() || policy.releases_on_gpu() || self.len() <= policy.budget {
            return Vec::new();
        }
        let recent_from = n.saturating_sub(policy.budget - if policy.kind == PolicyKind::Sink { policy.sinks } else { 0 }) as u32;
        let sinks = if policy.kind == PolicyKind::Sink { policy.sinks as u32 } else { 0 };
        let mut freed = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(p) = *s {
                if p >= sinks && p < recent_from {
                    *s = None;
                    freed.push(i as u32);
                }
            }
        }
        freed
    }

    /// Drops every position from `n` on (sequence truncation); returns the freed slots.
    pub fn truncate(&mut self, n: usize) -> Vec<u32> {
        let mut freed = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.is_some_and(|p| p as usize >= n) {
                *s = None;
                freed.push(i as u32);
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests;
