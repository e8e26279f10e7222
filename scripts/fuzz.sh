#!/usr/bin/env bash
# make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="json websocket topic events daemon"]: builds each
# libFuzzer target (swiftc -sanitize=fuzzer,address) from its harness in fuzz/<target>/ and the
# sources it exercises, runs it for FUZZ_SECONDS from the seed corpus in fuzz/corpus/<target>,
# then times every input of the grown corpus once. Fails on a crash, a sanitizer report (leaks
# included), or an input slower than FUZZ_SLOW_MS (100). Findings: .build-fuzz/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-${1:-60}}
slow_ms=${FUZZ_SLOW_MS:-100}
targets=${FUZZ_TARGETS:-json websocket topic events daemon}
swiftc=${SWIFTC:-/opt/swift/usr/bin/swiftc}
[ -x "$swiftc" ] || swiftc=swiftc

sources() {
  case $1 in
    json) echo Sources/HTTPServer/JSONValue.swift Sources/HTTPServer/HTTPError.swift ;;
    websocket) echo Sources/HTTPServer/WebSocketFrame.swift ;;
    topic) echo Sources/EventCatalog/TopicPattern.swift Tests/EventCatalogTests/TopicPatternReference.swift ;;
    events) echo Sources/EventCatalog/*.swift ;;
    daemon) echo Sources/CLIDaemon/DaemonProtocol.swift Sources/CLIDaemon/DaemonPaths.swift Sources/EventCatalog/*.swift \
      Sources/HTTPServer/JSONValue.swift Sources/HTTPServer/HTTPError.swift ;;
  esac
}

status=0
for t in $targets; do
  dir=.build-fuzz/$t
  mkdir -p "$dir/corpus"
  bin=$dir/fuzz-$t
  files="fuzz/$t/main.swift $(sources "$t")"
  # Rebuilt only when a source is newer than the binary.
  if [ ! -x "$bin" ] || [ -n "$(find $files -newer "$bin" 2>/dev/null | head -1)" ]; then
    "$swiftc" -sanitize=fuzzer,address -parse-as-library -O -g $files -o "$bin" 2>&1 \
      | grep -v "Cannot export local symbol" || true
    [ -x "$bin" ] || { echo "fuzz $t: build failed" >&2; exit 1; }
  fi
  log=$dir/run.log
  # Crash inputs are written to $dir (-artifact_prefix); the corpus grows in $dir/corpus.
  if ! SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -max_len=4096 \
       -print_final_stats=1 -artifact_prefix="$dir/" "$dir/corpus" "fuzz/corpus/$t" >"$log" 2>&1; then
    echo "fuzz $t: FAILED after $(grep -c '' "$log") log lines; see $log:" >&2
    grep -E "ERROR|SUMMARY|Test unit written|panic|Fatal error|Precondition" "$log" | head -20 >&2
    status=1
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  corpus=$(find "$dir/corpus" "fuzz/corpus/$t" -type f | wc -l)
  # Each input once, timed by libFuzzer itself ("Executed FILE in N ms"). Each batch starts
  # with a warm-up input that is not counted: the first run of a process pays its start-up.
  warm=$dir/warmup
  cp "$(find "fuzz/corpus/$t" -type f | head -1)" "$warm"
  slowest=$(find "$dir/corpus" "fuzz/corpus/$t" -type f -print0 \
    | xargs -0 -n 256 sh -c '"$0" "$1" "$@"' "$bin" "$warm" 2>&1 | grep -v "^Executed $warm " \
    | sed -n 's/^Executed .* in \([0-9]*\) ms$/\1/p' | sort -n | tail -1)
  echo "fuzz $t: ${seconds} s, $runs inputs run, corpus $corpus, no crash or leak, slowest input ${slowest:-0} ms"
  if [ "${slowest:-0}" -gt "$slow_ms" ]; then
    echo "fuzz $t: an input took ${slowest} ms (limit ${slow_ms} ms)" >&2
    status=1
  fi
done
exit $status
