// quant.wgsl: reading weights in their file's format (prepended to kernels that bind `weights`).
//
// Formats on the GPU, as array<u32> words, selected by the override constant WTYPE:
//   0 F32   one word per weight
//   1 F16   two weights per word (low half first), row-major over the whole tensor
//   2 BF16  as F16, bfloat16 halves
//   3 Q4    blocks of 32 weights in 5 words: (f16 d | f16 m << 16), then 16 bytes of nibbles;
//           w = d * q + m; weights 0..15 are the low nibbles of bytes 0..15, 16..31 the high ones.
//           (Q4_1 as in GGUF; Q4_0 is loaded with m = -8 d.)
//   4 Q8    blocks of 32 weights in 9 words: (f16 d), then 32 signed bytes; w = d * q.
override WTYPE: u32 = 0u;

fn half_at(e: u32) -> f32 {
    let w = weights[e >> 1u];
    if WTYPE == 1u {
        return unpack2x16float(w)[e & 1u];
    }
    return bitcast<f32>(((w >> ((e & 1u) * 16u)) & 0xffffu) << 16u);
}

// Weights k = 8 g .. 8 g + 7 of row `row` of a (rows, k) matrix; zero past the row's end.
fn dequant8(row: u32, g: u32, k: u32) -> array<f32, 8> {
    var out: array<f32, 8>;
    if WTYPE <= 2u {
        for (var i = 0u; i < 8u; i++) {
            let kk = g * 8u + i;
            if kk < k {
                let e = row * k + kk;
                if WTYPE == 0u {
                    out[i] = bitcast<f32>(weights[e]);
                } else {
                    out[i] = half_at(e);
                }
            }
        }
        return out;
    }
    let nb = k / 32u;
    let b = g / 4u;
    let part = g % 4u;
    if WTYPE == 3u {
        let base = (row * nb + b) * 5u;
        let dm = unpack2x16float(weights[base]);
        let shift = (part >> 1u) * 4u;
        let w0 = weights[base + 1u + (part & 1u) * 2u];
        let w1 = weights[base + 2u + (part & 1u) * 2u];
        for (var i = 0u; i < 4u; i++) {
            out[i] = dm.x * f32((w0 >> (8u * i + shift)) & 0xfu) + dm.y;
            out[i + 4u] = dm.x * f32((w1 >> (8u * i + shift)) & 0xfu) + dm.y;
        }
    } else {
        let base = (row * nb + b) * 9u;
        let d = unpack2x16float(weights[base]).x;
        let w0 = weights[base + 1u + part * 2u];
        let w1 = weights[base + 2u + part * 2u];
        for (var i = 0u; i < 4u; i++) {
            out[i] = d * f32(bitcast<i32>(w0 << (24u - 8u * i)) >> 24u);
            out[i + 4u] = d * f32(bitcast<i32>(w1 << (24u - 8u * i)) >> 24u);
        }
    }
    return out;
}
