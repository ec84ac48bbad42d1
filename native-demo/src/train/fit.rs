//! Training the ADORE controller on teacher data (candle, CPU): listwise cross-entropy between
//! the controller's softmax over keys and the teacher's attention distribution, at the sampled
//! query positions; then recall of the teacher's top-m on held-out sequences, for the trained
//! controller beside H2O's accumulated attention and sinks + recent window, each keeping m keys
//! the way its policy does.

use anyhow::{bail, Result};
use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use adore::controller::{bucket, Controller};
use adore::eval::{policy_keep, recall, replay_keep, top_m};

use super::data::{Rng, Sequence};

pub struct FitOptions {
    pub d_c: usize,
    pub buckets: usize,
    pub epochs: usize,
    pub seed: u64,
    pub lr: f64,
    pub batch: usize,
    pub sinks: usize,
    pub recent: usize,
    pub budgets: Vec<usize>,
    /// Train on the keys the policy decides on only: the protected sinks and recent tokens are
    /// left out of the softmax and the teacher renormalised over the rest.
    pub unprotected_only: bool,
    pub target: Target,
    /// 0: the GRU reads token embeddings; L: the residual stream after layer L, stored by
    /// `collect --features-after L`.
    pub input_layer: usize,
}

/// What the controller's softmax over keys is trained to match, per query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The teacher's attention distribution (ADORE.md's first design).
    Distribution,
    /// Uniform over the teacher's top m keys: membership in the set a budget of m should keep,
    /// which is what recall@m and the policy's decision measure. Queries with at most m keys
    /// keep everything whatever the ranking, and leave the loss.
    TopM(usize),
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "distribution" {
            return Ok(Target::Distribution);
        }
        match s.strip_prefix("top-").map(str::parse::<usize>) {
            Some(Ok(m)) if m > 0 => Ok(Target::TopM(m)),
            _ => bail!("--target is `distribution` or `top-M` with M a budget of at least 1 (such as top-128), not {s:?}"),
        }
    }
}

#[derive(serde::Serialize, Clone, Debug)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub heldout_loss: f64,
}

#[derive(serde::Serialize, Clone, Debug)]
pub struct RecallRow {
    pub m: usize,
    /// Held-out queries with more than m keys (the others keep everything).
    pub queries: usize,
    pub adore: f64,
    /// The controller's recall when its releases are final, as in generation: the cache it
    /// built token by token over the sequence, at each query.
    pub adore_final: f64,
    pub h2o: f64,
    pub sink_window: f64,
}

#[derive(serde::Serialize, Clone, Debug)]
pub struct Report {
    pub epochs: Vec<EpochStats>,
    pub recall: Vec<RecallRow>,
}

/// The trainable weights, shapes as in `Controller`.
struct Params {
    proj: Var,
    w_ih: Var,
    w_hh: Var,
    b_ih: Var,
    b_hh: Var,
    w_k: Var,
    w_q: Var,
    bias: Var,
}

impl Params {
    fn new(c: &Controller) -> Result<Self> {
        let dev = Device::Cpu;
        let (d, hid) = (c.d_c, c.hidden);
        let v = |x: &[f32], shape: &[usize]| Var::from_vec(x.to_vec(), shape, &dev);
        Ok(Params {
            proj: v(&c.proj, &[d, hid])?,
            w_ih: v(&c.w_ih, &[3 * d, d])?,
            w_hh: v(&c.w_hh, &[3 * d, d])?,
            b_ih: v(&c.b_ih, &[3 * d])?,
            b_hh: v(&c.b_hh, &[3 * d])?,
            w_k: v(&c.w_k, &[d, d])?,
            w_q: v(&c.w_q, &[d, d])?,
            bias: v(&c.bucket_bias, &[c.buckets])?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        [&self.proj, &self.w_ih, &self.w_hh, &self.b_ih, &self.b_hh, &self.w_k, &self.w_q, &self.bias].into_iter().cloned().collect()
    }

    fn write(&self, c: &mut Controller) -> Result<()> {
        let flat = |v: &Var| -> Result<Vec<f32>> { Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?) };
        c.proj = flat(&self.proj)?;
        c.w_ih = flat(&self.w_ih)?;
        c.w_hh = flat(&self.w_hh)?;
        c.b_ih = flat(&self.b_ih)?;
        c.b_hh = flat(&self.b_hh)?;
        c.w_k = flat(&self.w_k)?;
        c.w_q = flat(&self.w_q)?;
        c.bucket_bias = flat(&self.bias)?;
        Ok(())
    }
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    // (tanh(x / 2) + 1) / 2: the logistic function through differentiable primitives.
    Ok((((x * 0.5)?.tanh()? + 1.0)? * 0.5)?)
}

struct Model<'a> {
    p: &'a Params,
    embed: &'a Tensor,
    d: usize,
    buckets: usize,
    max_distance: usize,
    /// (sinks, recent) left out of the loss.
    protected: Option<(usize, usize)>,
    target: Target,
    input_layer: usize,
}

impl Model<'_> {
    /// Scores (B, Q, n) of a batch of equal-length sequences: q_t · k_i / sqrt(d) + bias, with
    /// keys after the query masked to -1e9.
    fn scores(&self, batch: &[&Sequence]) -> Result<Tensor> {
        let dev = Device::Cpu;
        let (b, n, nq, d) = (batch.len(), batch[0].len(), batch[0].queries.len(), self.d);
        // Embeddings time-major, (n, B, hidden): step t's rows are one contiguous block. They
        // carry no gradient, so taking a step's rows costs nothing in the backward pass (a slice
        // of a tensor that does, such as the projected inputs, would be padded back to its whole
        // size at every step).
        let e = if self.input_layer == 0 {
            let ids: Vec<u32> = (0..n).flat_map(|t| batch.iter().map(move |s| s.ids[t])).collect();
            self.embed.index_select(&Tensor::from_vec(ids, n * b, &dev)?, 0)?.reshape((n, b, ()))?
        } else {
            // The residual stream at the chosen layer, each row divided by its RMS.
            let rows: Vec<&[f32]> = batch.iter().map(|s| features(s, self.input_layer)).collect::<Result<_>>()?;
            let hidden = rows[0].len() / n;
            let mut x = Vec::with_capacity(n * b * hidden);
            for t in 0..n {
                for r in &rows {
                    x.extend(adore::controller::rms_normalised(&r[t * hidden..(t + 1) * hidden]));
                }
            }
            Tensor::from_vec(x, (n, b, hidden), &dev)?
        };
        let (proj, w_ih, w_hh) = (self.p.proj.t()?, self.p.w_ih.t()?, self.p.w_hh.t()?);
        let mut h = Tensor::zeros((b, d), DType::F32, &dev)?;
        let mut hs = Vec::with_capacity(n);
        for t in 0..n {
            let g = e.i(t)?.matmul(&proj)?.matmul(&w_ih)?.broadcast_add(&self.p.b_ih)?;
            let gh = h.matmul(&w_hh)?.broadcast_add(&self.p.b_hh)?;
            let r = sigmoid(&(g.narrow(1, 0, d)? + gh.narrow(1, 0, d)?)?)?;
            let z = sigmoid(&(g.narrow(1, d, d)? + gh.narrow(1, d, d)?)?)?;
            let cand = (g.narrow(1, 2 * d, d)? + (r * gh.narrow(1, 2 * d, d)?)?)?.tanh()?;
            h = (&cand + (z * (&h - &cand)?)?)?;
            hs.push(h.clone());
        }
        let hs = Tensor::stack(&hs, 1)?; // (B, n, d)
        let keys = hs.reshape((b * n, d))?.matmul(&self.p.w_k.t()?)?.reshape((b, n, d))?;
        let qidx: Vec<u32> = batch.iter().enumerate().flat_map(|(bi, s)| s.queries.iter().map(move |&t| (bi * n) as u32 + t)).collect();
        let q = hs.reshape((b * n, d))?.index_select(&Tensor::from_vec(qidx, b * nq, &dev)?, 0)?.matmul(&self.p.w_q.t()?)?;
        let s = (q.reshape((b, nq, d))?.matmul(&keys.transpose(1, 2)?.contiguous()?)? / (d as f64).sqrt())?;
        let mut bidx = Vec::with_capacity(b * nq * n);
        let mut mask = Vec::with_capacity(b * nq * n);
        for s in batch {
            for &t in &s.queries {
                for i in 0..n as u32 {
                    let ok = i <= t;
                    bidx.push(if ok { bucket(t - i, self.buckets, self.max_distance) as u32 } else { 0 });
                    mask.push(if ok { 0f32 } else { -1e9 });
                }
            }
        }
        let bias = self.p.bias.index_select(&Tensor::from_vec(bidx, b * nq * n, &dev)?, 0)?.reshape((b, nq, n))?;
        Ok(((s + bias)? + Tensor::from_vec(mask, (b, nq, n), &dev)?)?)
    }

    /// Mean over queries of the cross-entropy between the teacher and the controller.
    fn loss(&self, batch: &[&Sequence]) -> Result<Tensor> {
        let (b, n, nq) = (batch.len(), batch[0].len(), batch[0].queries.len());
        let mut scores = self.scores(batch)?;
        let mut teacher: Vec<f32> = batch.iter().flat_map(|s| s.teacher.iter().copied()).collect();
        if let Target::TopM(m) = self.target {
            for (bi, s) in batch.iter().enumerate() {
                for (qi, &t) in s.queries.iter().enumerate() {
                    let row = &mut teacher[(bi * nq + qi) * n..][..n];
                    let t = t as usize;
                    let members = if t + 1 > m { top_m(&row[..=t], m) } else { Vec::new() };
                    row.fill(0.0);
                    for i in members {
                        row[i] = 1.0 / m as f32;
                    }
                }
            }
        }
        if let Some((sinks, recent)) = self.protected {
            // Keys a policy keeps anyway leave the loss; the target is renormalised over the
            // rest (with the distribution target, queries with nothing left keep it whole).
            let mut mask = vec![0f32; b * nq * n];
            for (bi, s) in batch.iter().enumerate() {
                for (qi, &t) in s.queries.iter().enumerate() {
                    let row = (bi * nq + qi) * n;
                    let t = t as usize;
                    let free = |i: usize| i >= sinks && i + recent <= t;
                    let z: f32 = (0..=t).filter(|&i| free(i)).map(|i| teacher[row + i]).sum();
                    if z <= 0.0 && self.target == Target::Distribution {
                        continue;
                    }
                    // (A membership query with no member left: zero, out of the loss.)
                    let inv = if z > 0.0 { 1.0 / z } else { 0.0 };
                    for i in 0..n {
                        if i <= t && free(i) {
                            teacher[row + i] *= inv;
                        } else {
                            teacher[row + i] = 0.0;
                            mask[row + i] = -1e9;
                        }
                    }
                }
            }
            scores = (scores + Tensor::from_vec(mask, (b, nq, n), &Device::Cpu)?)?;
        }
        let logp = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
        let teacher = Tensor::from_vec(teacher, (b, nq, n), &Device::Cpu)?;
        Ok(((teacher * logp)?.sum_all()? / -((b * nq) as f64))?)
    }
}

/// A sequence's residual stream after `layer`, (n, hidden).
fn features(s: &Sequence, layer: usize) -> Result<&[f32]> {
    match s.features.iter().find(|(l, _)| *l == layer) {
        Some((_, x)) => Ok(x),
        None => bail!("{}: no residual stream after layer {layer} in the data (collect it with --features-after {layer})", s.name),
    }
}

/// Batches of equal-length sequences with equal query counts.
fn batches<'a>(seqs: &'a [Sequence], size: usize, rng: Option<&mut Rng>) -> Vec<Vec<&'a Sequence>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    if let Some(rng) = rng {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    let mut groups: Vec<Vec<&Sequence>> = Vec::new();
    for i in order {
        let s = &seqs[i];
        match groups.iter_mut().find(|g| g.len() < size && g[0].len() == s.len() && g[0].queries.len() == s.queries.len()) {
            Some(g) => g.push(s),
            None => groups.push(vec![s]),
        }
    }
    groups
}

pub fn fit(
    embed: &[f32],
    hidden: usize,
    fingerprint: &str,
    train: &[Sequence],
    heldout: &[Sequence],
    o: &FitOptions,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<(Controller, Report)> {
    if train.is_empty() || heldout.is_empty() {
        bail!("training needs both training and held-out sequences");
    }
    if o.epochs == 0 || o.batch == 0 || !(o.lr > 0.0) {
        bail!("--epochs and --batch must be at least 1 and --lr positive");
    }
    let vocab = embed.len() / hidden.max(1);
    if let Some(bad) = train.iter().chain(heldout).flat_map(|s| &s.ids).find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} in the data is outside this model's vocabulary of {vocab}: the data was collected for another model");
    }
    if o.input_layer > 0 {
        for s in train.iter().chain(heldout) {
            let x = features(s, o.input_layer)?;
            if x.len() != s.len() * hidden {
                bail!("{}: the stored residual stream is not ({}, {hidden}): collected for another model", s.name, s.len());
            }
        }
    }
    let mut c = Controller::random(fingerprint, hidden, o.d_c, o.buckets, o.seed)?;
    c.input_layer = o.input_layer;
    // Start from recency: the distance bias falls with the log of each bucket's nearest
    // distance and the query is zero, so the first ranking is the most recent first (what
    // sinks + window keeps, this model's strongest simple baseline); training then moves
    // tokens by their content.
    let mut nearest: Vec<Option<u32>> = vec![None; c.buckets];
    for d in 0..=c.max_distance as u32 {
        nearest[bucket(d, c.buckets, c.max_distance)].get_or_insert(d);
    }
    for (b, d) in c.bucket_bias.iter_mut().zip(nearest) {
        *b = -(1.0 + d.unwrap_or(c.max_distance as u32) as f32).ln();
    }
    c.w_q.fill(0.0);
    let p = Params::new(&c)?;
    let embed = Tensor::from_slice(embed, (vocab, hidden), &Device::Cpu)?;
    let protected = o.unprotected_only.then_some((o.sinks, o.recent));
    let model = Model {
        p: &p,
        embed: &embed,
        d: o.d_c,
        buckets: o.buckets,
        max_distance: c.max_distance,
        protected,
        target: o.target,
        input_layer: o.input_layer,
    };
    let mut opt = AdamW::new(p.vars(), ParamsAdamW { lr: o.lr, weight_decay: 0.0, ..Default::default() })?;
    let mut rng = Rng(o.seed ^ 0xA5A5_5A5A_1234_5678);
    let held = batches(heldout, o.batch, None);
    let heldout_loss = |model: &Model| -> Result<f64> {
        let mut sum = 0.0;
        for b in &held {
            sum += model.loss(b)?.to_scalar::<f32>()? as f64 * b.len() as f64;
        }
        Ok(sum / heldout.len() as f64)
    };
    let mut epochs = Vec::new();
    for epoch in 1..=o.epochs {
        let mut sum = 0.0;
        for b in batches(train, o.batch, Some(&mut rng)) {
            let loss = model.loss(&b)?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()? as f64 * b.len() as f64;
        }
        let stats = EpochStats { epoch, train_loss: sum / train.len() as f64, heldout_loss: heldout_loss(&model)? };
        progress(&stats);
        epochs.push(stats);
    }
    p.write(&mut c)?;
    let recall = recall_table(&model, heldout, o)?;
    Ok((c, Report { epochs, recall }))
}

/// Recall of the teacher's top-m on held-out sequences, per budget.
fn recall_table(model: &Model, heldout: &[Sequence], o: &FitOptions) -> Result<Vec<RecallRow>> {
    let mut rows: Vec<RecallRow> =
        o.budgets.iter().map(|&m| RecallRow { m, queries: 0, adore: 0.0, adore_final: 0.0, h2o: 0.0, sink_window: 0.0 }).collect();
    for s in heldout {
        let n = s.len();
        // Every position's scores, for the replay of final releases.
        let every = Sequence {
            name: s.name.clone(),
            ids: s.ids.clone(),
            queries: (0..n as u32).collect(),
            teacher: Vec::new(),
            h2o: Vec::new(),
            features: s.features.clone(),
        };
        let all = model.scores(&[&every])?.flatten_all()?.to_vec1::<f32>()?;
        let at: Vec<usize> = s.queries.iter().map(|&t| t as usize).collect();
        for r in rows.iter_mut() {
            let replay = replay_keep(n, r.m, o.sinks, o.recent, &|t, i| all[t * n + i], &at);
            for (qi, &t) in at.iter().enumerate().filter(|(_, &t)| t + 1 > r.m) {
                let row = |v: &[f32]| v[qi * n..qi * n + t + 1].to_vec();
                let (teacher, h2o) = (row(&s.teacher), row(&s.h2o));
                let ctl = &all[t * n..t * n + t + 1];
                let truth = top_m(&teacher, r.m);
                r.queries += 1;
                r.adore += recall(&truth, &policy_keep(t, r.m, o.sinks, o.recent, Some(ctl)));
                r.adore_final += recall(&truth, &replay[qi]);
                r.h2o += recall(&truth, &policy_keep(t, r.m, o.sinks, o.recent, Some(&h2o)));
                r.sink_window += recall(&truth, &policy_keep(t, r.m, o.sinks, 0, None));
            }
        }
    }
    for r in &mut rows {
        let q = r.queries.max(1) as f64;
        r.adore /= q;
        r.adore_final /= q;
        r.h2o /= q;
        r.sink_window /= q;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets_parse_and_nonsense_is_refused() {
        assert_eq!("distribution".parse::<Target>().unwrap(), Target::Distribution);
        assert_eq!("top-128".parse::<Target>().unwrap(), Target::TopM(128));
        for bad in ["top-0", "top-", "top--3", "top-x", "top128", "", "Distribution"] {
            let e = bad.parse::<Target>().unwrap_err().to_string();
            assert!(e.contains("--target"), "{bad:?}: {e}");
        }
    }
}
