#!/usr/bin/env bash
# GPU check of the CUDA kernels on a machine with an NVIDIA GPU, a CUDA torch and no network:
# build the extension, run the CUDA tests, compute-sanitizer, the benchmarks; print a short table
# LAST. Full logs go to OUT (default ./out): build.log, tests.log, sanitize.log, gpu_check.log
# (+ whatever benchmarks/bench_soft_embed.py writes). Budget: SK_BUDGET_S (400 s) on an H100;
# every stage has a timeout and the script keeps going where it can.
#
# usage: OUT=/path/to/out bash benchmarks/gpu_check.sh        (or: bash benchmarks/gpu_check.sh OUT)
# env:   PYTHON (default python3), SK_BUDGET_S (default 400: later stages shrink to fit),
#        SK_SKIP_SANITIZER=1, SK_SKIP_BENCH=1, SK_SKIP_TESTS=1, SK_SKIP_BUILD=1
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-./out}}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
: >"$LOG"
T0=$(date +%s)
BUDGET="${SK_BUDGET_S:-400}"

log() { echo "$@" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
# remaining budget minus a reserve, capped by the stage maximum (seconds, at least 5)
stage_limit() {
  local max="$1" reserve="${2:-0}" left
  left=$(( BUDGET - $(elapsed) - reserve ))
  (( left > max )) && left=$max
  (( left < 5 )) && left=5
  echo "$left"
}

declare -A RES
RES[build]="not run"; RES[smoke]="not run"; RES[tests]="not run"; RES[memcheck]="not run"
RES[racecheck]="not run"; RES[synccheck]="not run"; RES[bench]="not run"; RES[quick]="not run"
RES[diag]="not run"

log "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(pwd), OUT=$OUT"
log "--- git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files"

# ---------------------------------------------------------------------------------------------
# Environment
{
  echo "--- nvidia-smi"
  timeout 20 nvidia-smi 2>&1 | head -25
  echo "--- python / torch"
  timeout 60 "$PY" - <<'EOF' 2>&1
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "cc %d.%d" % (p.major, p.minor), "SMs", p.multi_processor_count,
          "mem %.0f GiB" % (p.total_memory / 2**30))
import importlib.metadata as md
for name in ("scikit-build-core", "cmake", "ninja", "pytest", "pytest-timeout"):
    try:
        print(name, md.version(name))
    except Exception:
        print(name, "missing")
EOF
} 2>&1 | tee -a "$LOG"

# nvcc: PATH, else the usual places; CMake finds it through CUDACXX / PATH.
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin /opt/cuda/bin; do
    if [[ -x "$d/nvcc" ]]; then export PATH="$d:$PATH"; break; fi
  done
fi
if command -v nvcc >/dev/null 2>&1; then
  NVCC="$(command -v nvcc)"
  export CUDACXX="${CUDACXX:-$NVCC}"
  export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}"
  log "--- nvcc: $NVCC ($(nvcc --version | tail -1)), CUDA_HOME=$CUDA_HOME"
else
  log "--- nvcc: NOT FOUND (the build will fail: SOFTKERNELS_CUDA=ON)"
fi
CC_ARCH=$(timeout 60 "$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')" 2>/dev/null || echo 90)
export SOFTKERNELS_CUDA_ARCHS="${SOFTKERNELS_CUDA_ARCHS:-$CC_ARCH}"
export SOFTKERNELS_CUDA=ON
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
log "--- building for sm_${SOFTKERNELS_CUDA_ARCHS} with ${CMAKE_BUILD_PARALLEL_LEVEL} jobs"

# ---------------------------------------------------------------------------------------------
# Build (find_package(Torch) first; on failure retry without torch's CMake CUDA scripts)
BUILD_OK=0
build_once() {
  local mode="$1" lim
  lim=$(stage_limit 300 150)
  log "--- build ($mode, timeout ${lim}s)"
  SOFTKERNELS_TORCH_CMAKE="$mode" timeout "$lim" "$PY" -m pip install --no-index \
    --no-build-isolation --no-deps -e . -v >>"$OUT/build.log" 2>&1
}
if [[ "${SK_SKIP_BUILD:-0}" == 1 ]]; then
  RES[build]="skipped"; BUILD_OK=1
else
  : >"$OUT/build.log"
  tb=$(date +%s)
  if build_once ON; then
    BUILD_OK=1; RES[build]="ok (find_package(Torch)) $(( $(date +%s) - tb ))s"
  else
    log "!!! build with find_package(Torch) failed; tail of build.log:"
    tail -40 "$OUT/build.log" | tee -a "$LOG"
    echo "=================== retry: SOFTKERNELS_TORCH_CMAKE=OFF ===================" >>"$OUT/build.log"
    if build_once OFF; then
      BUILD_OK=1; RES[build]="ok (fallback, no find_package) $(( $(date +%s) - tb ))s"
    else
      RES[build]="FAILED $(( $(date +%s) - tb ))s"
      log "!!! fallback build failed too; tail of build.log:"
      tail -60 "$OUT/build.log" | tee -a "$LOG"
    fi
  fi
  grep -E "softkernels:|ptxas|error|Error|warning: " "$OUT/build.log" | grep -v "^ *$" | head -40 >>"$LOG"
fi

# ---------------------------------------------------------------------------------------------
# Smoke: is the CUDA kernel registered, does one call agree with the CPU kernel?
if (( BUILD_OK )); then
  log "--- smoke"
  if CUDA_LAUNCH_BLOCKING=1 timeout 120 "$PY" - >>"$LOG" 2>&1 <<'EOF'
import torch, softkernels as sk
has = torch._C._dispatch_has_kernel_for_dispatch_key("softkernels::soft_embed", "CUDA")
print("CUDA kernel registered:", has)
assert has, "softkernels was built without its CUDA kernels"
torch.manual_seed(0)
for V in (1000, 151936):
    x = torch.randn(4, V) * 3
    e = torch.randn(V, 64)
    kw = dict(k=10, temperature=0.6, top_k=30, top_p=0.95, min_p=0.001, noise=sk.Gumbel(), seed=3)
    g = sk.soft_embed(x.cuda(), e.cuda(), **kw)
    c = sk.soft_embed(x, e, **kw)
    torch.cuda.synchronize()
    same_ids = torch.equal(g.ids.cpu(), c.ids)
    dw = (g.weights.cpu() - c.weights).abs().max().item()
    de = (g.embeds.cpu() - c.embeds).abs().max().item()
    print(f"V={V}: ids equal {same_ids}, max |dw| {dw:.2e}, max |d embeds| {de:.2e}")
    if not same_ids:
        print("  cuda ids", g.ids[0].tolist()); print("  cpu  ids", c.ids[0].tolist())
    assert same_ids and dw < 1e-5 and de < 1e-4
print("smoke ok")
EOF
  then RES[smoke]="ok"; else RES[smoke]="FAILED (see gpu_check.log)"; fi
  tail -8 "$LOG"
fi

# ---------------------------------------------------------------------------------------------
# Tests: every test parametrised on the cuda device, plus tests/test_cuda.py
TESTS_SUMMARY=""
if (( BUILD_OK )) && [[ "${SK_SKIP_TESTS:-0}" != 1 ]]; then
  lim=$(stage_limit 200 200)
  log "--- tests (pytest -k cuda, timeout ${lim}s)"
  extra=()
  if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then extra+=(--timeout=120); fi
  timeout -k 10 "$lim" "$PY" -m pytest -q -k cuda -rfE --durations=15 -p no:cacheprovider \
    ${extra[@]+"${extra[@]}"} tests \
    >"$OUT/tests.log" 2>&1
  rc=$?
  TESTS_SUMMARY=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|passed|failed" "$OUT/tests.log" | tail -1)
  if (( rc == 124 || rc == 137 )); then RES[tests]="TIMEOUT after ${lim}s: ${TESTS_SUMMARY}"
  elif (( rc == 0 )); then RES[tests]="ok: ${TESTS_SUMMARY}"
  else RES[tests]="FAILED (rc $rc): ${TESTS_SUMMARY}"; fi
  log "tests: ${RES[tests]}"
fi

# ---------------------------------------------------------------------------------------------
# compute-sanitizer on benchmarks/sanitize_check.py (every tensor its own allocation)
SAN_DETAILS=""
run_sanitizer() {
  local tool="$1" max="$2" reserve="$3" lim rc errs ours
  lim=$(stage_limit "$max" "$reserve")
  echo "=================== compute-sanitizer --tool $tool (timeout ${lim}s) ===================" >>"$OUT/sanitize.log"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$lim" compute-sanitizer --tool "$tool" \
    ${SAN_OPTS[@]+"${SAN_OPTS[@]}"} "$PY" benchmarks/sanitize_check.py >>"$OUT/sanitize.log.tmp" 2>&1
  rc=$?
  cat "$OUT/sanitize.log.tmp" >>"$OUT/sanitize.log"
  errs=$(grep -Eo "ERROR SUMMARY: [0-9]+" "$OUT/sanitize.log.tmp" | tail -1 | grep -Eo "[0-9]+")
  ours=$(grep -Ec "softkernels|soft_embed|route_kernel|bwd_" "$OUT/sanitize.log.tmp")
  local done_ok=no
  grep -q "sanitize_check: ok" "$OUT/sanitize.log.tmp" && done_ok=yes
  if (( rc == 124 || rc == 137 )); then
    RES[$tool]="TIMEOUT after ${lim}s (errors so far: ${errs:-?}, lines naming our kernels: $ours)"
  else
    RES[$tool]="${errs:-?} errors (lines naming our kernels: $ours; script finished: $done_ok; rc $rc)"
  fi
  if [[ "${errs:-1}" != 0 ]]; then
    SAN_DETAILS+=$'\n'"--- first $tool reports:"$'\n'"$(grep -E "^=========" "$OUT/sanitize.log.tmp" | grep -vE "ERROR SUMMARY|COMPUTE-SANITIZER" | cut -c1-200 | head -8)"
  fi
  rm -f "$OUT/sanitize.log.tmp"
  log "$tool: ${RES[$tool]}"
}
if (( BUILD_OK )) && [[ "${SK_SKIP_SANITIZER:-0}" != 1 ]]; then
  if command -v compute-sanitizer >/dev/null 2>&1 || [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]]; then
    command -v compute-sanitizer >/dev/null 2>&1 || export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
    : >"$OUT/sanitize.log"
    SAN_OPTS=()
    # Options whose spelling differs between versions are used only where this version takes them.
    if timeout 30 compute-sanitizer --report-api-errors no true >/dev/null 2>&1; then
      SAN_OPTS+=(--report-api-errors no)
    fi
    log "--- compute-sanitizer $(compute-sanitizer --version 2>/dev/null | tail -1) opts: ${SAN_OPTS[*]-}"
    run_sanitizer memcheck 100 130
    run_sanitizer racecheck 100 90
    if (( BUDGET - $(elapsed) > 170 )); then
      run_sanitizer synccheck 60 110
    else
      RES[synccheck]="skipped (time budget)"
    fi
  else
    log "--- compute-sanitizer not found"; RES[memcheck]="no compute-sanitizer"
  fi
fi

# ---------------------------------------------------------------------------------------------
# Benchmarks: the forward's device time on diagnostic shapes, the quick device timing, then the
# lead's benchmark if present
if (( BUILD_OK )) && [[ "${SK_SKIP_BENCH:-0}" != 1 ]]; then
  if [[ -f benchmarks/cuda_diag.py ]]; then
    lim=$(stage_limit 90 60)
    log "--- cuda_diag (timeout ${lim}s)"
    timeout -k 5 "$lim" "$PY" benchmarks/cuda_diag.py >>"$LOG" 2>&1
    rc=$?
    RES[diag]=$([[ $rc == 0 ]] && echo ok || echo "rc $rc")
  fi
  lim=$(stage_limit 60 30)
  log "--- quick bench (timeout ${lim}s)"
  timeout -k 5 "$lim" "$PY" benchmarks/cuda_quick_bench.py >>"$LOG" 2>&1
  rc=$?
  RES[quick]=$([[ $rc == 0 ]] && echo ok || echo "rc $rc")
  if [[ -f benchmarks/bench_soft_embed.py ]]; then
    lim=$(stage_limit 240 0)
    log "--- benchmarks/bench_soft_embed.py --device cuda --quick (timeout ${lim}s)"
    timeout -k 5 "$lim" "$PY" benchmarks/bench_soft_embed.py --device cuda --quick --out "$OUT" \
      >"$OUT/bench.log" 2>&1
    rc=$?
    RES[bench]=$([[ $rc == 0 ]] && echo ok || echo "rc $rc (see bench.log)")
  else
    RES[bench]="benchmarks/bench_soft_embed.py not present"
  fi
fi

# ---------------------------------------------------------------------------------------------
# Details that matter, then the table LAST
{
  if [[ -f "$OUT/tests.log" ]]; then
    nf=$(grep -cE "^(FAILED|ERROR) " "$OUT/tests.log")
    if (( nf > 0 )); then
      echo "--- failing tests ($nf), first ones:"
      grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | cut -c1-220 | head -12
    fi
  fi
  [[ -n "$SAN_DETAILS" ]] && echo "$SAN_DETAILS"
  if [[ -f "$OUT/bench.log" ]]; then echo "--- bench_soft_embed.py (last lines)"; tail -20 "$OUT/bench.log" | cut -c1-200; fi
  echo "--- cuda_diag (device us per call, CUDA graph)"
  grep "^diag:" "$LOG" | cut -c7-
  echo "--- quick bench"
  grep "^quick_bench:" "$LOG" | cut -c14-
  echo
  echo "================================ gpu_check summary ================================"
  printf "%-10s %s\n" "device" "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  printf "%-10s %s\n" "build" "${RES[build]}"
  printf "%-10s %s\n" "smoke" "${RES[smoke]}"
  printf "%-10s %s\n" "tests" "${RES[tests]}"
  printf "%-10s %s\n" "memcheck" "${RES[memcheck]}"
  printf "%-10s %s\n" "racecheck" "${RES[racecheck]}"
  printf "%-10s %s\n" "synccheck" "${RES[synccheck]}"
  printf "%-10s %s\n" "diag" "${RES[diag]}"
  printf "%-10s %s\n" "quickbench" "${RES[quick]}"
  printf "%-10s %s\n" "bench" "${RES[bench]}"
  printf "%-10s %s\n" "time" "$(elapsed)s total; logs in $OUT"
} 2>&1 | tee -a "$LOG"
