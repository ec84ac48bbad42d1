//! adore's dequantization against an independent one: `tests/fixtures/dequant.gguf` holds rows of
//! real quantized tensors (gemma-3-270m Q4_K_M: Q5_0, Q8_0, Q4_K, Q6_K) and quantized random
//! rows (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 by the `gguf` package's quantizers, Q5_K and Q3_K as random bytes),
//! each with the `gguf` Python package's dequantization of it. Made by
//! scripts/make-dequant-fixtures.py.

mod common;

use adore::model::gguf::Gguf;
use adore::ops::{self, Step};
use adore::tensor::{dequantize, quantize, DType, GpuWeight, HostTensor};
use common::{assert_close, ctx};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dequant.gguf");

/// (quantized row, the package's f32 values, the input it was quantized from if any).
fn cases(g: &Gguf) -> Vec<(HostTensor<'static>, Vec<f32>, Option<Vec<f32>>)> {
    let find = |name: &str| g.tensors.iter().find(|t| t.name == name).map(|t| g.tensor(t));
    let mut out = Vec::new();
    for info in g.tensors.iter().filter(|t| t.dtype.is_quantized()) {
        let t = g.tensor(info);
        let want = find(&format!("{}.f32", info.name)).unwrap_or_else(|| panic!("{}: no .f32 beside it", info.name)).to_f32();
        let input = find(&format!("{}.input", info.name)).map(|t| t.to_f32());
        let owned = HostTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data: t.data.into_owned().into() };
        out.push((owned, want, input));
    }
    out
}

fn fixture() -> Vec<u8> {
    std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e} (made by scripts/make-dequant-fixtures.py)"))
}

#[test]
fn cpu_dequantization_equals_the_gguf_package() {
    let bytes = fixture();
    let g = Gguf::parse(FIXTURE, &bytes).unwrap();
    let cases = cases(&g);
    let mut seen: Vec<DType> = cases.iter().map(|c| c.0.dtype).collect();
    seen.dedup();
    for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
        assert!(seen.contains(&dtype), "the fixture has no {dtype:?} row");
    }
    for (t, want, _) in &cases {
        let got = t.to_f32();
        assert_eq!(got.len(), want.len(), "{}", t.name);
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(a == b, "{} ({:?}) weight {i}: adore {a}, gguf {b}", t.name, t.dtype);
        }
    }
}

/// The 32-weight quantizers write the bytes llama.cpp's reference quantizers (as the package
/// implements them) write.
#[test]
fn quantizers_write_the_reference_bytes() {
    let bytes = fixture();
    let g = Gguf::parse(FIXTURE, &bytes).unwrap();
    let mut checked = 0;
    for (t, _, input) in cases(&g) {
        let Some(x) = input else { continue };
        let ours = quantize(t.dtype, &x);
        let blocks = ours.len() / t.dtype.block_bytes();
        for b in 0..blocks {
            let r = b * t.dtype.block_bytes()..(b + 1) * t.dtype.block_bytes();
            assert_eq!(&ours[r.clone()], &t.data[r], "{} block {b}", t.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 5, "random rows quantized by the package");
}

/// The kernels read the same rows as the package: the embedding kernel exactly, the
/// matrix-vector products (both kernel shapes' variants) to rounding.
#[test]
fn kernels_read_real_rows_as_the_gguf_package() {
    let ctx = ctx();
    let bytes = fixture();
    let g = Gguf::parse(FIXTURE, &bytes).unwrap();
    for (t, want, _) in cases(&g) {
        let n = t.numel();
        // Two rows: the row, then its values reversed in order of blocks (another row's data).
        let bb = t.dtype.block_bytes();
        let mut data = t.data.to_vec();
        data.extend(t.data.chunks_exact(bb).rev().flatten());
        let table = HostTensor { name: t.name.clone(), dtype: t.dtype, shape: vec![2, n], data: data.into() };
        let exact = dequantize(t.dtype, &table.data, 2 * n);
        assert_eq!(&exact[..n], &want[..], "{}", t.name);
        let w = GpuWeight::upload(&ctx, &table).unwrap();
        let step = ctx.uniform("step", &Step::new(2, 0, 0, 0));
        let ids = ctx.storage_init("tokens", bytemuck::cast_slice(&[1u32, 0])).unwrap();
        let x = ctx.storage("x", (2 * n * 4) as u64).unwrap();
        ctx.run(&[ops::embed::build(&ctx, &w, &ids, &x, &step, 2).unwrap()]).unwrap();
        let got = pollster::block_on(ctx.read_f32(&x, 2 * n)).unwrap();
        let mut expect = exact[n..].to_vec();
        expect.extend_from_slice(&want);
        assert_close(&format!("embed {}", t.name), &got, &expect, 0.0, 0.0);

        let input: Vec<f32> = (0..3 * n).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
        let xb = ctx.storage_init("x", bytemuck::cast_slice(&input)).unwrap();
        let reference = ops::matmul::reference(&exact, &input, 3, n, 2);
        for variant in [ops::matmul::Variant::Cooperative, ops::matmul::Variant::Independent, ops::matmul::Variant::UniformInput] {
            let y = ctx.storage("y", 3 * 2 * 4).unwrap();
            let st = ctx.uniform("step", &Step::new(3, 0, 0, 0));
            let d = ops::matmul::build_variant(&ctx, variant, &w, &xb, None, &y, Default::default(), &st, 3, 0).unwrap();
            ctx.run(&d).unwrap();
            let got = pollster::block_on(ctx.read_f32(&y, 6)).unwrap();
            assert_close(&format!("matmul {variant:?} {}", t.name), &got, &reference, 1e-4 * (n as f32).sqrt(), 1e-4);
        }
    }
}
