#!/usr/bin/env bash
# Every test: kernels against CPU references, the tiny model in both file formats, bad inputs,
# the CLI, controller training, the default model against ../shared/golden (fetching model and
# text first), then the browser build: the JS wrapper's checks and types in Node, the npm
# package, and the demo page in headless Chromium against the native engine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
scripts/fetch-data.sh
# The controller-training commands (feature train, candle on the CPU) and the variants kept
# behind the feature research are tested too; one
# feature set throughout, so that nothing is built twice.
features=(--features adore-cli/research)
cargo build --release --locked --workspace --all-targets "${features[@]}"
./target/release/adore fetch
cargo test --release --locked --workspace "${features[@]}" "$@"

# The browser: wasm build, package, Node tests, then Chromium (WebGPU on SwiftShader).
web/build.sh
ensure_packages chromium
command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
(cd web && npm ci --no-audit --no-fund --loglevel=error)
node --test web/tests/
(cd web && npm run -s test:types)
mkdir -p web/test-output
(cd web/pkg && npm pack --silent --pack-destination ../test-output >/dev/null)
echo "test: npm package web/test-output/adore-webgpu-*.tgz" >&2
node web/tests/browser.mjs
# A second family in the browser: gemma-3-270m (K-quants, SentencePiece, a split table) against native.
node web/tests/browser.mjs --model "$(./target/release/adore fetch gemma-3-270m)" --prompts tests/llama-cpp/gemma-3-270m.prompts.json
