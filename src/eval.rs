//! Fidelity measures for comparing a release policy with full attention: KL divergence of
//! next-token distributions, recall of an attention top-m, and the keep sets of the policies.

/// log Σ exp(x), in f64.
pub fn logsumexp(x: &[f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m
}

/// KL(p || q) of two distributions given as logits, in nats (softmax taken here, in f64).
pub fn kl_from_logits(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let log_softmax = |x: &[f32]| {
        let z = logsumexp(x);
        x.iter().map(move |&v| v as f64 - z).collect::<Vec<f64>>()
    };
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// Index of the largest value (the first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Indices of the `m` largest values (ties to the lower index), unordered.
pub fn top_m(x: &[f32], m: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    order.truncate(m);
    order
}

/// The fraction of `truth` found in `kept`.
pub fn recall(truth: &[usize], kept: &[usize]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let set: std::collections::HashSet<usize> = kept.iter().copied().collect();
    truth.iter().filter(|i| set.contains(i)).count() as f64 / truth.len() as f64
}

/// What a policy keeps of the keys 0..=t with a budget of m: `sinks` first and `recent` last
/// positions protected, the rest of the budget by `score` (None: the most recent, as sinks +
/// window does).
pub fn policy_keep(t: usize, m: usize, sinks: usize, recent: usize, score: Option<&[f32]>) -> Vec<usize> {
    let n = t + 1;
    if n <= m {
        return (0..n).collect();
    }
    let sinks = sinks.min(m);
    let mut keep: Vec<usize> = (0..sinks).collect();
    match score {
        None => keep.extend(n - (m - sinks)..n),
        Some(s) => {
            let recent = recent.min(m - sinks);
            keep.extend(n - recent..n);
            let rest: Vec<f32> = (sinks..n - recent).map(|i| s[i]).collect();
            keep.extend(top_m(&rest, m - sinks - recent).into_iter().map(|i| i + sinks));
        }
    }
    keep
}

/// What a scored policy keeps when releases are final, as generation makes them: tokens
/// 0..n arrive one at a time; token t joins the cache and, over the budget of `m`, the
/// lowest-scored unprotected token by `score(t, i)` is released for good (the `sinks` first
/// and `recent` last positions protected, clamped as in [`policy_keep`]; on equal scores the
/// later position goes, as the GPU selection keeps the lower one). Returns the cache after
/// step t for each t in `at` (ascending): the m tokens kept of 0..=t, comparable with
/// [`policy_keep`], which ranks every past token afresh instead.
pub fn replay_keep(n: usize, m: usize, sinks: usize, recent: usize, score: &dyn Fn(usize, usize) -> f32, at: &[usize]) -> Vec<Vec<usize>> {
    let m = m.max(1);
    let sinks = sinks.min(m);
    let recent = recent.min(m - sinks);
    let mut cache: Vec<usize> = Vec::with_capacity(m + 1);
    let mut out = Vec::with_capacity(at.len());
    let mut next = at.iter().peekable();
    for t in 0..n {
        cache.push(t);
        if cache.len() > m {
            // m + 1 tokens, at most m of them protected: something is free.
            let free = |i: usize| i >= sinks && i + recent <= t;
            let worst = cache
                .iter()
                .enumerate()
                .filter(|(_, &i)| free(i))
                .min_by(|(_, &a), (_, &b)| score(t, a).total_cmp(&score(t, b)).then(b.cmp(&a)))
                .map(|(k, _)| k);
            if let Some(k) = worst {
                cache.remove(k);
            }
        }
        while next.peek().is_some_and(|&&q| q == t) {
            out.push(cache.clone());
            next.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_by_hand() {
        // p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
        let p = [0.0f32, 0.0];
        let q = [0.0f32, 3f32.ln()];
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_from_logits(&p, &q) - want).abs() < 1e-7);
        assert_eq!(kl_from_logits(&q, &q), 0.0);
    }

    #[test]
    fn recall_and_policy_sets() {
        assert_eq!(recall(&[1, 2, 3, 4], &[2, 4, 9]), 0.5);
        let mut k = policy_keep(9, 4, 1, 0, None);
        k.sort();
        assert_eq!(k, vec![0, 7, 8, 9]);
        let s = [0.0, 5.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut k = policy_keep(9, 5, 1, 2, Some(&s));
        k.sort();
        assert_eq!(k, vec![0, 1, 3, 8, 9]);
        assert_eq!(top_m(&[1.0, 3.0, 3.0, 2.0], 2), vec![1, 2]);
    }

    #[test]
    fn replay_is_the_fresh_ranking_when_scores_do_not_change() {
        // Scores fixed per token: every query's ranking agrees with the earlier ones, so
        // releasing for good loses nothing and the replay equals the fresh selection.
        let fixed: Vec<f32> = (0..40).map(|i| ((i * 7919) % 23) as f32).collect();
        let at: Vec<usize> = (0..40).collect();
        let got = replay_keep(40, 9, 2, 3, &|_, i| fixed[i], &at);
        for (t, kept) in at.iter().zip(got) {
            let mut kept = kept;
            kept.sort();
            let mut want = policy_keep(*t, 9, 2, 3, Some(&fixed[..=*t]));
            want.sort();
            assert_eq!(kept, want, "t = {t}");
        }
    }

    #[test]
    fn replay_never_brings_back_a_released_token() {
        // Budget 3, the current token protected (recent 1): token 0 scores lowest at t = 3
        // and is released; from t = 4 on it scores highest, but it is gone for good, while a
        // fresh ranking would take it back.
        let score = |t: usize, i: usize| -> f32 {
            if i == 0 {
                return if t <= 3 { -1.0 } else { 10.0 };
            }
            i as f32
        };
        let got = replay_keep(7, 3, 0, 1, &score, &[3, 4, 6]);
        assert_eq!(got, vec![vec![1, 2, 3], vec![2, 3, 4], vec![4, 5, 6]]);
        let fresh: Vec<f32> = (0..=6).map(|i| score(6, i)).collect();
        assert!(policy_keep(6, 3, 0, 1, Some(&fresh)).contains(&0));
        // Equal scores: the later position is released first.
        let got = replay_keep(5, 2, 0, 1, &|_, _| 0.0, &[1, 4]);
        assert_eq!(got, vec![vec![0, 1], vec![0, 4]]);
    }
}
