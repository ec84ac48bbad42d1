//! Shared test helpers: one GPU context per test binary, seeded random numbers, comparisons
//! that report what failed, and a tiny random Llama model with a plain-Rust forward pass.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use adore::gpu::{Context, ContextOptions};

pub mod malformed;
pub mod sessions;
pub mod tiny;

/// The shared GPU context. Without an adapter the test fails, saying how to get one.
pub fn ctx() -> Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        }
        match Context::new_blocking(ContextOptions::default()) {
            Ok(c) => {
                eprintln!("adapter: {}", c.describe());
                Arc::new(c)
            }
            Err(e) => panic!(
                "GPU tests need a WebGPU adapter and none was found: {e}\n\
                 Without a GPU, install Mesa's software Vulkan driver: apt-get install -y mesa-vulkan-drivers"
            ),
        }
    })
    .clone()
}

/// A second context on the same adapter with its subgroup operations left unused, so that
/// kernels with a subgroup path are checked on their other path too (the same as [`ctx`] where
/// the adapter has none).
pub fn ctx_without_subgroups() -> Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        ctx();
        Arc::new(Context::new_blocking(ContextOptions { subgroups: Some(false), ..ContextOptions::default() }).expect("a second context"))
    })
    .clone()
}

/// A context on the same adapter with the GPU kernel shape whatever the adapter is, so that on a
/// CPU renderer the kernels' GPU forms are checked too (the same shape as [`ctx`] on a GPU).
pub fn ctx_gpu_shape() -> Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        ctx();
        let options = ContextOptions { kernel_shape: Some(adore::gpu::KernelShape::Gpu), ..ContextOptions::default() };
        Arc::new(Context::new_blocking(options).expect("a GPU-shaped context"))
    })
    .clone()
}

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Asserts |got - want| <= atol + rtol |want| everywhere; on failure reports the number of
/// failures, the worst error, its index and both values.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length {} but expected {}", got.len(), want.len());
    let mut fails = 0;
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        if !(err <= atol + rtol * w.abs()) {
            fails += 1;
            if err > worst.1 || err.is_nan() {
                worst = (i, err);
            }
        }
    }
    assert!(
        fails == 0,
        "{what}: {fails} of {} values differ beyond atol {atol} + rtol {rtol}; worst at index {}: got {} expected {} (error {})",
        got.len(),
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1
    );
}

/// The awkward sizes every kernel is tried at.
pub const AWKWARD: &[usize] = &[1, 3, 17, 255, 257, 1000];
