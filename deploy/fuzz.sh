#!/usr/bin/env bash
# make fuzz: fuzzes ingest's pure path (decompress → split → normalize) with cargo-fuzz.
#
#   deploy/fuzz.sh          install cargo-fuzz if missing, seed the corpus, fuzz
#   deploy/fuzz.sh seed     only seed fuzz/corpus/normalize/
#
# Env: FUZZ_SECONDS (default 600), FUZZ_NICE (default 10), TRAILGUARD_SHARED_DATA (the
# CloudTrail records the corpus is seeded from; default ../shared/data/cloudtrail from the
# repository root). Needs a nightly toolchain. Builds in fuzz/target (not CARGO_TARGET_DIR):
# the instrumented build shares nothing with the normal one. A crash leaves its input in
# fuzz/artifacts/normalize/ and fails the script; reproduce it with
# `cargo +nightly fuzz run normalize -s none <file>` and shrink it with `cargo +nightly fuzz tmin`.
set -euo pipefail
# shellcheck source=local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/local/common.sh"

TARGET=normalize
CORPUS="$REPO/fuzz/corpus/$TARGET"
DATA="${TRAILGUARD_SHARED_DATA:-${TRAILGUARD_TEST_SHARED_DATA:-$REPO/../shared/data/cloudtrail}}"
FUZZ_SECONDS="${FUZZ_SECONDS:-600}"
FUZZ_NICE="${FUZZ_NICE:-10}"

# Seeds: every shared file whole, and every record of it (log-file records, array elements,
# NDJSON lines, the records inside an export/EventBridge envelope) on its own. Files are named
# by their SHA-1, like libFuzzer's own corpus entries, so seeding twice adds nothing.
seed() {
    [[ -d $DATA ]] || die "no shared data at $DATA (set TRAILGUARD_SHARED_DATA)"
    mkdir -p "$CORPUS"
    python3 - "$DATA" "$CORPUS" <<'PY'
import gzip, hashlib, json, os, sys

data, corpus = sys.argv[1], sys.argv[2]
added = 0

def put(blob):
    global added
    if isinstance(blob, str):
        blob = blob.encode("utf-8")
    path = os.path.join(corpus, hashlib.sha1(blob).hexdigest())
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(blob)
        added += 1

def dump(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

def records(value):
    """The records one top-level JSON value holds, as split and normalize see them."""
    if isinstance(value, dict) and isinstance(value.get("Records"), list):
        found = value["Records"]
    elif isinstance(value, list):
        found = value
    else:
        found = [value]
    for record in found:
        yield record
        if isinstance(record, dict):
            for envelope in ("detail", "event"):
                if isinstance(record.get(envelope), dict):
                    yield record[envelope]

files = 0
for root, _, names in os.walk(data):
    for name in sorted(names):
        with open(os.path.join(root, name), "rb") as f:
            blob = f.read()
        files += 1
        put(blob)
        if blob[:2] == b"\x1f\x8b":
            try:
                blob = gzip.decompress(blob)
            except (OSError, EOFError):
                continue
            put(blob)
        text = blob.decode("utf-8", errors="replace").lstrip("\ufeff")
        try:
            values = [json.loads(text)]
        except ValueError:
            values = []
            for line in text.splitlines():
                if line.strip():
                    try:
                        values.append(json.loads(line))
                    except ValueError:
                        put(line)  # a bad line is a seed too
        for value in values:
            for record in records(value):
                put(dump(record))
print(f"seeded {added} new inputs from {files} files under {data}; "
      f"corpus has {len(os.listdir(corpus))}")
PY
}

if [[ ${1:-} == seed ]]; then
    seed
    exit 0
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    die "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly"
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz into ~/.cargo/bin (once)"
    nice -n "$FUZZ_NICE" cargo install cargo-fuzz --locked
fi

seed

# `-s none`: ingest forbids unsafe code, so AddressSanitizer adds nothing but a slow
# instrumented build of librdkafka's C code. Panics, overflow and debug assertions still count.
cd "$REPO"
out="$TG_DATA/logs/fuzz-$TARGET-$(date +%Y%m%d%H%M%S).log"
mkdir -p "$(dirname "$out")"
log "fuzzing $TARGET for ${FUZZ_SECONDS}s (log: $out)"
rc=0
env -u CARGO_TARGET_DIR nice -n "$FUZZ_NICE" \
    cargo +nightly fuzz run "$TARGET" -s none -- \
    -max_total_time="$FUZZ_SECONDS" -max_len=65536 -print_final_stats=1 2>&1 | tee "$out" || rc=$?

echo
grep -E '^#[0-9]+[[:space:]]+DONE' "$out" | tail -n 1 || true
grep -E '^Done [0-9]+ runs' "$out" | tail -n 1 || true
grep -E '^stat::number_of_executed_units' "$out" | tail -n 1 || true
echo "corpus: $(find "$CORPUS" -type f | wc -l) inputs in fuzz/corpus/$TARGET"
if [[ $rc != 0 ]]; then
    log "the fuzzer failed (exit $rc): see $out and fuzz/artifacts/$TARGET/"
    exit "$rc"
fi
