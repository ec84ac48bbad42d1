//! SVG line charts written directly (no plotting library): top-1 agreement against budget
//! per policy, and decode speed against context from an `adore bench --json` file.

use anyhow::{bail, Result};

use super::measure::Row;

/// A line chart as SVG: one series per name, x on a log2 scale when `log_x`.
pub fn svg_chart(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)], log_x: bool) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 150.0, 40.0, 50.0);
    let fx = |x: f64| if log_x { x.max(1e-9).log2() } else { x };
    let pts = series.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(fx(x));
        x1 = x1.max(fx(x));
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| left + (fx(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"];
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        (left + w - right) / 2.0,
        esc(title)
    );
    // Axes with five ticks each.
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    ));
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let xv = x0 + f * (x1 - x0);
        let label = if log_x { format!("{:.0}", 2f64.powf(xv)) } else { format!("{xv:.0}") };
        let x = left + f * (w - left - right);
        s.push_str(&format!("<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n", h - bottom + 18.0));
        let yv = y0 + f * (y1 - y0);
        let y = h - bottom - f * (h - top - bottom);
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{yv:.3}</text>\n", left - 6.0, y + 4.0));
        s.push_str(&format!("<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>\n", w - right));
    }
    s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (left + w - right) / 2.0, h - 10.0, esc(x_label)));
    s.push_str(&format!(
        "<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        esc(y_label)
    ));
    for (i, (name, points)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        s.push_str(&format!("<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n", path.join(" ")));
        for &(x, y) in points {
            s.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>\n", px(x), py(y)));
        }
        let ly = top + 10.0 + i as f64 * 18.0;
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0,
            esc(name)
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Series of (budget, top-1 agreement) per policy; policies without a budget become flat lines.
pub fn fidelity_series(rows: &[Row]) -> Vec<(String, Vec<(f64, f64)>)> {
    let budgets: Vec<f64> = rows.iter().filter_map(|r| r.budget.map(|b| b as f64)).collect();
    let (lo, hi) = budgets.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let name = if r.rebuild > 0 { format!("{} (rebuild {})", r.policy, r.rebuild) } else { r.policy.clone() };
        let pts = match r.budget {
            Some(b) => vec![(b as f64, r.top1_agreement)],
            None if lo <= hi => vec![(lo, r.top1_agreement), (hi, r.top1_agreement)],
            None => continue,
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.extend(pts),
            None => out.push((name, pts)),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Series of (context, decode tokens/s) per policy from `adore bench --json`.
pub fn speed_series(bench: &serde_json::Value) -> Result<Vec<(String, Vec<(f64, f64)>)>> {
    let Some(rows) = bench["rows"].as_array() else { bail!("not an `adore bench --json` file (no rows)") };
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let (Some(p), Some(c), Some(t)) = (r["policy"].as_str(), r["context"].as_f64(), r["decode_tokens_per_s"].as_f64()) else {
            bail!("a bench row lacks policy, context or decode_tokens_per_s: {r}");
        };
        let mut name = p.to_string();
        if let Some(b) = r["budget"].as_u64() {
            name += &format!(" m={b}");
        }
        if r["rebuild"].as_u64().unwrap_or(0) > 0 {
            name += &format!(" R={}", r["rebuild"]);
        }
        if r["cache_update"].as_str() == Some("matmul") {
            name += " matmul";
        }
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push((c, t)),
            None => out.push((name, vec![(c, t)])),
        }
    }
    Ok(out)
}
