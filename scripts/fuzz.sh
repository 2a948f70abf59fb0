#!/usr/bin/env bash
# Fuzzes what rouse reads from outside, each target for a set time, with cargo-fuzz (libFuzzer)
# on the nightly toolchain. Targets (fuzz/fuzz_targets/):
#   config   any text as a config file: no panic, and every answer stays short
#   route    any host, path and headers against a route table: no panic, a revision of the
#            matched service
#   headers  any request headers through hop-by-hop stripping and the forwarding headers: no
#            panic, nothing connection-scoped forwarded
#   downstream any bytes as a client's stream of requests to rouse's own HTTP/1.1 server
#            connection: no panic, the same requests, bodies and verdict however the bytes
#            are cut
#   upstream any bytes as a backend's response to rouse's own HTTP/1.1 connection: no panic,
#            the same answer however the bytes are cut, and the same head read into a map
#            and kept as written; and any request's head as written
#            upstream parses back as exactly one request with the same method, target, fields;
#            any bytes read as a head by rouse's reader and by httparse alike; and a client's
#            head whose fields are kept as written goes upstream holding what the map holds
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=900 scripts/fuzz.sh config
#
# Installs cargo-fuzz and the nightly toolchain if missing. A crash stops the run and leaves
# its input in fuzz/artifacts/TARGET/; replay it with `cargo +nightly fuzz run TARGET FILE`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/fuzz"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
SECONDS_EACH=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config route headers downstream upstream)
# The shipped configs are the config target's first inputs.
mkdir -p corpus/config
cp "$ROOT"/config/*.yaml corpus/config/
for t in "${targets[@]}"; do
  echo "== $t (${SECONDS_EACH} s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|INFO: Done)|panicked|ERROR' || true
  [ -z "$(ls -A "artifacts/$t" 2>/dev/null)" ] || { echo "$t: crash inputs in fuzz/artifacts/$t" >&2; exit 1; }
done
