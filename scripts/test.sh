#!/usr/bin/env bash
# Set up libtorch, the venv and the real datasets (MNIST, Fashion-MNIST, emoji) if needed, then
# run the lint checks and both test tiers (the fast one `cargo test` runs, and the slow one
# marked #[ignore = "slow: ..."]).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --data mnist --data fashion-mnist --data emoji
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets -- --include-ignored --test-threads 2
scripts/gpu-check.sh --dry-run
