//! Text overlap of a policy's generation with full attention's: ROUGE-L and BLEU over
//! whitespace-separated tokens (for `adore eval --prompts`).

/// Longest common subsequence length.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut prev = 0;
        for (j, y) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if x == y { prev + 1 } else { row[j + 1].max(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// ROUGE-L F1 of `candidate` against `reference` over whitespace-separated tokens.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r): (Vec<&str>, Vec<&str>) = (candidate.split_whitespace().collect(), reference.split_whitespace().collect());
    if c.is_empty() || r.is_empty() {
        return if c.is_empty() && r.is_empty() { 1.0 } else { 0.0 };
    }
    let l = lcs(&c, &r) as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (p, rc) = (l / c.len() as f64, l / r.len() as f64);
    2.0 * p * rc / (p + rc)
}

fn ngrams<'a>(t: &[&'a str], n: usize) -> std::collections::HashMap<Vec<&'a str>, usize> {
    let mut m = std::collections::HashMap::new();
    for g in t.windows(n) {
        *m.entry(g.to_vec()).or_insert(0usize) += 1;
    }
    m
}

/// Sentence BLEU-4 (uniform weights, brevity penalty) of `candidate` against one `reference`,
/// over whitespace-separated tokens, with add-one smoothing of the n-gram precisions for n > 1
/// (Lin and Och's smoothing 2) so that short texts do not score zero.
pub fn bleu(candidate: &str, reference: &str) -> f64 {
    let (c, r): (Vec<&str>, Vec<&str>) = (candidate.split_whitespace().collect(), reference.split_whitespace().collect());
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let mut log_p = 0.0;
    for n in 1..=4usize {
        let (cg, rg) = (ngrams(&c, n), ngrams(&r, n));
        let total = c.len().saturating_sub(n - 1);
        let matched: usize = cg.iter().map(|(g, &k)| k.min(rg.get(g).copied().unwrap_or(0))).sum();
        let (num, den) = if n == 1 { (matched as f64, total as f64) } else { (matched as f64 + 1.0, total as f64 + 1.0) };
        if num == 0.0 || den == 0.0 {
            return 0.0;
        }
        log_p += (num / den).ln() / 4.0;
    }
    let bp = if c.len() >= r.len() { 1.0 } else { (1.0 - r.len() as f64 / c.len() as f64).exp() };
    bp * log_p.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_by_hand() {
        // LCS of "the cat sat on the mat" and "the cat on a mat" is "the cat on mat" (4):
        // P = 4/6, R = 4/5, F = 2PR/(P+R) = 8/11.
        assert!((rouge_l("the cat sat on the mat", "the cat on a mat") - 8.0 / 11.0).abs() < 1e-12);
        assert_eq!(rouge_l("a b c", "a b c"), 1.0);
        assert_eq!(rouge_l("a b", "c d"), 0.0);
    }

    #[test]
    fn bleu_by_hand() {
        assert!((bleu("a b c d e", "a b c d e") - 1.0).abs() < 1e-12);
        // Candidate "a b c d x" vs "a b c d e": 1-grams 4/5; 2-grams (3+1)/(4+1); 3-grams
        // (2+1)/(3+1); 4-grams (1+1)/(2+1); same length, no penalty.
        let want = (0.8f64 * 0.8 * 0.75 * (2.0 / 3.0)).powf(0.25);
        assert!((bleu("a b c d x", "a b c d e") - want).abs() < 1e-12);
        // Brevity penalty: "a b" against "a b c d": exp(1 - 4/2); precisions 1, (1+1)/(1+1),
        // 3- and 4-grams (0+1)/(0+1).
        assert!((bleu("a b", "a b c d") - (-1f64).exp()).abs() < 1e-12);
        assert_eq!(bleu("x y", "a b c"), 0.0);
    }
}
