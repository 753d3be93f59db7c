# Sourced by the scripts: reuse a cargo target directory outside the clone when one exists
# (CI machines keep ../target between runs); otherwise cargo's default ./target is used.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d ../target ]; then
  CARGO_TARGET_DIR="$(cd ../target && pwd)"
  export CARGO_TARGET_DIR
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
