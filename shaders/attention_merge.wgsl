// attention_merge.wgsl: the second pass of split attention (attention_split.wgsl): each
// (row, head)'s splits merged, out = Σ_s acc_s e^(m_s - m) / Σ_s l_s e^(m_s - m), m = max_s m_s
// (zero where no split saw a slot). One workgroup of 64 per (head, row), one lane per vec4 of
// head_dim; dispatch (n_heads, rows, 1).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    splits: u32,  // splits written by the first pass
    listed: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> part: array<vec4<f32>>;        // (rows, n_heads, splits, HD4 + 1): acc, then (max, sum, 0, 0)
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;  // (rows, n_heads, head_dim)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

const HD4: u32 = 16u;  // head_dim / 4

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) c: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let r = wid.y;
    if r >= step.n_rows || c >= HD4 {
        return;
    }
    let base = (r * p.n_heads + h) * p.splits;
    var big = MASKED;
    for (var s = 0u; s < p.splits; s++) {
        big = max(big, part[(base + s) * (HD4 + 1u) + HD4].x);
    }
    var total = 0.0;
    var sum = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        let o = (base + s) * (HD4 + 1u);
        // Splits that saw no slot have sum 0 and weigh nothing.
        let f = exp(part[o + HD4].x - big);
        total += part[o + HD4].y * f;
        sum += part[o + c] * f;
    }
    out[(r * p.n_heads + h) * HD4 + c] = select(vec4<f32>(0.0), sum / total, total > 0.0);
}
