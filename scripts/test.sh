#!/usr/bin/env bash
# Every test: kernels against CPU references, the tiny model in both file formats, bad inputs,
# the CLI, and the default model against ../shared/golden (fetching model and text first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
scripts/fetch-data.sh
cargo build --release --locked --workspace --all-targets
./target/release/adore fetch
cargo test --release --locked --workspace "$@"
