// embed.wgsl: x[r, :] = E[tokens[r], :], the embedding row dequantized (quant.wgsl). E may be
// one part of a table split in row ranges (rows first .. first + vocab): a row whose token lies
// outside it is left to another part's dispatch, and the last part writes zeros for tokens past
// the whole table. Invocation = 8 features of one row; dispatch (ceil(dim / 8 / 64), rows, 1).

struct Params {
    dim: u32,    // embedding width
    vocab: u32,  // rows of this part of E
    first: u32,  // the token id of its first row
    last: u32,   // 1: the table's last part
    scale: f32,  // every value times this (Gemma 3: sqrt(dim))
    pad0: u32,
    pad1: u32,
    pad2: u32,
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
    if token >= p.first && token - p.first < p.vocab {
        w = dequant8(token - p.first, g, p.dim);
    } else if token < p.first || p.last == 0u {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let k = g * 8u + i;
        if k < p.dim {
            x[r * p.dim + k] = w.lo[i] * p.scale;
        }
        if k + 4u < p.dim {
            x[r * p.dim + k + 4u] = w.hi[i] * p.scale;
        }
    }
}
