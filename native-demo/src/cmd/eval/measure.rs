//! The measurements of `adore eval`: every policy against full attention on the same text,
//! teacher-forced token by token in lockstep (top-1 agreement, KL divergence, perplexity), and
//! greedy generations from prompts (ROUGE-L, BLEU against full attention's output).

use std::sync::Arc;

use adore::controller::Controller;
use adore::eval::{argmax, kl_from_logits, logsumexp};
use adore::index::KeyIndex;
use adore::ops::KvType;
use adore::policy::{CacheUpdate, Oracle, Policy, PolicyKind};
use adore::{GenerateOptions, Model, Sampling, Session, SessionOptions};
use anyhow::{bail, Result};

use super::overlap::{bleu, rouge_l};
use crate::progress;

#[derive(serde::Serialize, Clone, Debug)]
pub struct Row {
    pub policy: String,
    pub budget: Option<usize>,
    pub rebuild: usize,
    /// Positions scored (next-token predictions).
    pub positions: usize,
    pub top1_agreement: f64,
    pub mean_kl: f64,
    pub ppl: f64,
    /// Per position, 1 where the policy's greedy next token equals full attention's, else 0
    /// (for paired comparisons between policies).
    pub agreement_by_position: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge_l: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bleu: Option<f64>,
}

/// Per position, '1' where the greedy token equals full attention's; KL and NLL summed.
#[derive(Default)]
struct Acc {
    hits: String,
    kl: f64,
    nll: f64,
}

impl Acc {
    fn positions(&self) -> usize {
        self.hits.len()
    }

    fn agreement(&self) -> f64 {
        self.hits.bytes().filter(|&b| b == b'1').count() as f64 / self.positions().max(1) as f64
    }
}

fn log_softmax_at(logits: &[f32], id: usize) -> f64 {
    logits[id] as f64 - logsumexp(logits)
}

/// One policy run: the policy and, for the oracle, what it ranks by.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub policy: Policy,
    pub oracle: Oracle,
}

impl Run {
    pub fn new(policy: Policy) -> Self {
        Run { policy, oracle: Oracle::default() }
    }

    /// The policy's name, with the oracle's ranking when it is not the default.
    pub fn label(&self) -> String {
        match self.policy.kind {
            PolicyKind::Oracle if self.oracle != Oracle::default() => format!("oracle/{}", self.oracle.name()),
            _ => self.policy.name().to_string(),
        }
    }
}

pub struct Eval<'a> {
    pub model: &'a Arc<Model>,
    pub runs: &'a [Run],
    pub controller: Option<Arc<Controller>>,
    pub index: Option<Arc<KeyIndex>>,
    pub cache_update: CacheUpdate,
    /// Every run's KV cache, full attention's included.
    pub kv_cache: KvType,
}

impl Eval<'_> {
    fn session(&self, run: Run, context: usize) -> Result<Session> {
        let policy = run.policy;
        let options = SessionOptions {
            context,
            chunk: 8,
            all_logits: false,
            policy,
            controller: self.controller.clone(),
            cache_update: if policy.releases_on_gpu() { self.cache_update } else { CacheUpdate::Scatter },
            oracle: run.oracle,
            index: self.index.clone(),
            kv_cache: self.kv_cache,
            ..Default::default()
        };
        Ok(Session::new(self.model.clone(), options)?)
    }

    /// Teacher forcing over `tokens`: full attention's logits in chunks, every other policy fed
    /// one token at a time, all in lockstep.
    pub fn teacher_forced(&self, tokens: &[u32]) -> Result<Vec<Row>> {
        let n = tokens.len();
        if n < 2 {
            bail!("the text must hold at least 2 tokens");
        }
        let vocab = self.model.config.vocab;
        let mut full = Session::new(
            self.model.clone(),
            SessionOptions {
                context: n,
                chunk: 256,
                all_logits: true,
                policy: Policy::full(),
                kv_cache: self.kv_cache,
                ..Default::default()
            },
        )?;
        let others: Vec<Run> = self.runs.iter().copied().filter(|r| r.policy.kind != PolicyKind::Full).collect();
        let mut sessions = others.iter().map(|&p| Ok((p, self.session(p, n)?, Acc::default()))).collect::<Result<Vec<_>>>()?;
        let mut full_acc = Acc::default();
        let bar = progress::count(((n - 1) * others.len().max(1)) as u64, "eval", "token steps");
        for a in (0..n - 1).step_by(256) {
            let b = (a + 256).min(n - 1);
            let reference = pollster::block_on(full.prefill_logits(&tokens[a..b]))?;
            for (r, t) in (a..b).enumerate() {
                let row = &reference[r * vocab..(r + 1) * vocab];
                full_acc.hits.push('1');
                full_acc.nll -= log_softmax_at(row, tokens[t + 1] as usize);
            }
            for (_, s, acc) in &mut sessions {
                for (r, t) in (a..b).enumerate() {
                    let row = &reference[r * vocab..(r + 1) * vocab];
                    pollster::block_on(s.feed(tokens[t]))?;
                    let got = pollster::block_on(s.last_logits())?;
                    acc.hits.push(if argmax(&got) == argmax(row) { '1' } else { '0' });
                    acc.kl += kl_from_logits(row, &got);
                    acc.nll -= log_softmax_at(&got, tokens[t + 1] as usize);
                    progress::advance(&bar, 1, "eval", "token steps");
                }
            }
        }
        bar.finish_and_clear();
        let row = |run: &Run, acc: &Acc| Row {
            policy: run.label(),
            budget: (run.policy.kind != PolicyKind::Full).then_some(run.policy.budget),
            rebuild: run.policy.rebuild,
            positions: acc.positions(),
            top1_agreement: acc.agreement(),
            mean_kl: acc.kl / acc.positions().max(1) as f64,
            ppl: (acc.nll / acc.positions().max(1) as f64).exp(),
            agreement_by_position: acc.hits.clone(),
            rouge_l: None,
            bleu: None,
        };
        let mut rows = vec![row(&Run::new(Policy::full()), &full_acc)];
        rows.extend(sessions.iter().map(|(p, _, acc)| row(p, acc)));
        Ok(rows)
    }

    /// Greedy generations from each prompt, per policy, scored against full attention's.
    pub fn generations(&self, prompts: &[Vec<u32>], max_tokens: usize, rows: &mut [Row]) -> Result<()> {
        let opts = GenerateOptions { max_tokens, sampling: Sampling::default(), stop_at_eos: true, overlap: true };
        let text = |ids: &[u32]| self.model.tokenizer.decode(ids);
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + max_tokens;
        let mut full = self.session(Run::new(Policy::full()), longest)?;
        let mut refs = Vec::new();
        for p in prompts {
            full.reset();
            let (out, _) = pollster::block_on(adore::generate(&mut full, p, &opts, |_, _| true))?;
            refs.push(text(&out)?);
        }
        for run in self.runs {
            let (policy, mut s) = (run.policy, self.session(*run, longest)?);
            let (mut r, mut b) = (0.0, 0.0);
            for (p, reference) in prompts.iter().zip(&refs) {
                s.reset();
                let (out, _) = pollster::block_on(adore::generate(&mut s, p, &opts, |_, _| true))?;
                let got = text(&out)?;
                r += rouge_l(&got, reference);
                b += bleu(&got, reference);
            }
            let k = prompts.len().max(1) as f64;
            let budget = (policy.kind != PolicyKind::Full).then_some(policy.budget);
            if let Some(row) = rows.iter_mut().find(|row| row.policy == run.label() && row.budget == budget) {
                row.rouge_l = Some(r / k);
                row.bleu = Some(b / k);
            }
        }
        Ok(())
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| policy | budget | rebuild | top-1 agreement | mean KL | perplexity | ROUGE-L | BLEU |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.4} | {:.2} | {} | {} |\n",
            r.policy,
            r.budget.map_or("-".to_string(), |b| b.to_string()),
            r.rebuild,
            r.top1_agreement,
            r.mean_kl,
            r.ppl,
            opt(r.rouge_l),
            opt(r.bleu)
        ));
    }
    s
}
