// embed.wgsl: x[r, :] = E[tokens[r], :], the embedding row dequantized (quant.wgsl).
// Invocation = 8 features of one row; dispatch (ceil(dim / 8 / 64), rows, 1).

struct Params {
    dim: u32,    // embedding width
    vocab: u32,  // rows of E
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> weights: array<u32>;  // E: (vocab, dim) in format WTYPE
@group(0) @binding(1) var<storage, read> tokens: array<u32>;   // (rows)
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (rows, dim)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let r = gid.y;
    if r >= step.n_rows || g * 8u >= p.dim {
        return;
    }
    let token = tokens[r];
    var w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
    if token < p.vocab {
        w = dequant8(token, g, p.dim);
    }
    for (var i = 0u; i < 4u; i++) {
        let k = g * 8u + i;
        if k < p.dim {
            x[r * p.dim + k] = w.lo[i];
        }
        if k + 4u < p.dim {
            x[r * p.dim + k + 4u] = w.hi[i];
        }
    }
}
