#!/usr/bin/env bash
# Every test: kernels against CPU references, the tiny model in both file formats, bad inputs,
# the CLI, controller training, and the default model against ../shared/golden (fetching model and text first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
scripts/fetch-data.sh
# The controller-training commands (feature train, candle on the CPU) are tested too; one
# feature set throughout, so that nothing is built twice.
features=(--features native-demo/train)
cargo build --release --locked --workspace --all-targets "${features[@]}"
./target/release/adore fetch
cargo test --release --locked --workspace "${features[@]}" "$@"
