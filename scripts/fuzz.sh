#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, cargo-fuzz + libFuzzer, nightly Rust),
# each for SECONDS, starting from its corpus in fuzz/corpus/<target>/ (seeds, and
# inputs that once crashed). Prints each target's final libFuzzer line (runs, coverage
# `cov`, features `ft`, corpus, exec/s) and exits non-zero if any target crashed,
# failed a check, hung or ran out of memory; the input is then in
# fuzz/artifacts/<target>/ and the log in fuzz/target/fuzz-logs/<target>.log.
#
# Usage: scripts/fuzz.sh SECONDS [TARGET...]   (default: every target in fuzz/fuzz_targets)
#
# New inputs the fuzzer finds go to a scratch corpus, fuzz/target/fuzz-corpus/<target>/,
# so the repository's corpus only changes on purpose. To keep what a long run found:
#   cargo +nightly fuzz run -a TARGET -- -merge=1 fuzz/corpus/TARGET fuzz/target/fuzz-corpus/TARGET
# (run from the repository root; it adds only inputs that reach new coverage).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh SECONDS [TARGET...]" >&2
  exit 2
fi
secs=$1
shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz || cargo +nightly install --locked cargo-fuzz
fi

# -a: debug assertions (integer overflow, the mempool's owner check) in every crate.
# AddressSanitizer is cargo-fuzz's default.
flags=(-a)
for t in "${targets[@]}"; do
  cargo +nightly fuzz build "${flags[@]}" "$t"
done

mkdir -p fuzz/target/fuzz-logs
failed=()
printf "%-16s %s\n" target "final libFuzzer line"
for t in "${targets[@]}"; do
  work=fuzz/target/fuzz-corpus/$t
  log=fuzz/target/fuzz-logs/$t.log
  mkdir -p "$work" "fuzz/corpus/$t"
  rc=0
  # -timeout: an input running 10 s is a hang (a ring walk that does not end).
  cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  if [ $rc -ne 0 ] || [ -z "$line" ]; then
    failed+=("$t")
    printf "%-16s FAILED (exit %s); log %s\n" "$t" "$rc" "$log"
    # The panic and its message, libFuzzer's verdict, and where the input is.
    grep -A1 -E 'panicked at' "$log" | head -2 | sed 's/^/    /' || true
    grep -E 'ERROR: |SUMMARY: |Test unit written to|Base64: ' "$log" | head -6 | sed 's/^/    /' || true
  else
    printf "%-16s %s\n" "$t" "$line"
  fi
done

# The closing line in the plain form CI reads ("N passed, N failed"), one per target.
echo "fuzz targets, ${secs} s each:"
echo "fuzz: $(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
