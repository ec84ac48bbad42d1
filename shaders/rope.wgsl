// rope.wgsl: rotary position embedding, in place, at each row's own position:
// (a, b) <- (a cos θ - b sin θ, a sin θ + b cos θ), θ = pos · base^(-2i / head_dim).
// Pairs are (2i, 2i+1) when interleaved (llama.cpp's GGUF layout) and (i, i + head_dim/2)
// otherwise (Hugging Face's rotate-half). Invocation = one pair; dispatch
// (ceil(n_heads · head_dim / 2 / 64), rows, 1).

struct Params {
    n_heads: u32,
    head_dim: u32,
    theta: f32,        // rope base
    interleaved: u32,  // 1: pairs (2i, 2i+1); 0: pairs (i, i + head_dim/2)
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;  // (rows, n_heads, head_dim)
@group(0) @binding(1) var<storage, read> positions: array<u32>; // (rows)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = p.head_dim / 2u;
    let r = gid.y;
    if r >= step.n_rows || gid.x >= p.n_heads * half_dim {
        return;
    }
    let h = gid.x / half_dim;
    let i = gid.x % half_dim;
    let base = (r * p.n_heads + h) * p.head_dim;
    var ia = base + i;
    var ib = base + i + half_dim;
    if p.interleaved != 0u {
        ia = base + 2u * i;
        ib = ia + 1u;
    }
    let inv_freq = exp2(-(2.0 * f32(i) / f32(p.head_dim)) * log2(p.theta));
    let angle = f32(positions[r]) * inv_freq;
    let c = cos(angle);
    let s = sin(angle);
    let a = x[ia];
    let b = x[ib];
    x[ia] = a * c - b * s;
    x[ib] = a * s + b * c;
}
