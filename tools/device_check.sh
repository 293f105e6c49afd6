#!/usr/bin/env bash
# The GPU checks, as one script for a CUDA machine: the CUDA tests, the PURER meta-iteration and
# learner benchmarks on CUDA, and a short end-to-end dfml-run on CUDA (smoke + a budgeted PURER).
#
#   bash tools/device_check.sh [OUT_DIR [STEP...]]   # OUT_DIR defaults to $OUT, else ./device-check
#
# STEP names (cuda-tests, bench-purer-cuda, bench-learners-cuda, run-smoke-cuda, run-purer-cuda,
# collect, bench-purer-cuda-compiled) pick the steps to run, for a lease too short for all of them;
# none named runs every step.
# Run from the repo root. Where the project's dependencies are missing (a bare GPU image with torch),
# wheels in .whl/ are installed into /tmp/site first (see the closing note of the GPU issue for how
# they were fetched). Each step has its own time limit, so one slow step cannot hide the others'
# results; what each step printed is in OUT_DIR/log.txt, and the summary table is printed last.
set -uo pipefail
out="${1:-${OUT:-$PWD/device-check}}"
wanted=("${@:2}")
steps="cuda-tests bench-purer-cuda bench-learners-cuda run-smoke-cuda run-purer-cuda collect bench-purer-cuda-compiled"
for name in "${wanted[@]}"; do
  if [[ " $steps " != *" $name "* ]]; then
    echo "device_check.sh: unknown step '$name'; valid: $steps" >&2
    exit 2
  fi
done
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
tee_pid=$!
# a fresh results dir each time: on a machine kept warm, a rerun would otherwise skip finished runs
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 DFML_RESULTS=/tmp/dfml-device-results PYTHONDONTWRITEBYTECODE=1
rm -rf "$DFML_RESULTS"
summary=()
step() {  # step NAME SECONDS command...: run with a limit, record rc and seconds
  local name=$1 limit=$2 start rc
  shift 2
  if [ "${#wanted[@]}" -gt 0 ] && [[ " ${wanted[*]} " != *" $name "* ]]; then
    return 0
  fi
  echo "===== $name (limit ${limit}s) $(date -Is)"
  start=$(date +%s)
  timeout "$limit" "$@"
  rc=$?
  summary+=("$(printf '%-28s rc=%-4s %4ss' "$name" "$rc" "$(($(date +%s) - start))")")
  return 0
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/dfml . >/dev/null 2>&1 \
  && export PYTHONPATH="/tmp/dfml${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/dfml/bin:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code wins over the installed copy
python3 - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
command -v dfml-run || echo "dfml-run not installed; the run steps fail"

step cuda-tests 150 python3 -m pytest -m gpu -n0 -p no:cacheprovider -q tests/test_cuda.py \
  --junitxml="$out/cuda_tests.xml"
bench_purer=(python3 -m pytest -n0 -p no:cacheprovider -q tests/benchmarks/test_bench_purer.py
  --benchmark-enable --benchmark-columns=median,iqr,rounds --benchmark-sort=name)
step bench-purer-cuda 120 "${bench_purer[@]}" -k "cuda and not compiled and not cudagraphs" \
  --benchmark-json="$out/bench_purer_cuda.json"
step bench-learners-cuda 45 python3 -m pytest -n0 -p no:cacheprovider -q tests/benchmarks/test_bench_learners.py \
  -k cuda --benchmark-enable --benchmark-columns=median,iqr,rounds --benchmark-json="$out/bench_learners_cuda.json"
step run-smoke-cuda 100 dfml-run experiment=smoke device=cuda
step run-purer-cuda 200 dfml-run experiment=default 'method=purer_no_icfil,purer' task=5w1s device=cuda \
  budget.meta_iterations=300 eval.limit=30 threads=null
step collect 60 dfml-collect smoke default --results "$DFML_RESULTS" --format csv
tar -czf "$out/device_results.tar.gz" --exclude='*.pt' --exclude='mlartifacts' -C "$DFML_RESULTS" . 2>/dev/null
python3 - "$DFML_RESULTS" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("runs/*/*/record.json")):
    r = json.loads(path.read_text())
    acc = {k: round(v["mean"], 1) for k, v in r["metrics"].items()}
    t = {k: r["throughput"].get(k) for k in ("meta_train_s", "eval_s", "peak_mem_gb", "device_name")}
    s = {k: v for k, v in r["train_stats"].items() if "per_s" in k or k == "warmup_s"}
    code = {k: str(r["hashes"].get(k))[:12] for k in ("git_sha", "code_sha256")}  # git_sha: the copy's
    print(r["experiment"], r["method"], r["status"], acc, t, s, code)
EOF
# each compiled case pays a compile of over a minute on an H100 (2026-11-27): plain 1-shot fp32 only,
# with the eager fp32 case beside it as this machine's baseline
step bench-purer-cuda-compiled 300 "${bench_purer[@]}" \
  -k "cuda and plain and (fp32-1 or fp32_compiled or fp32_cudagraphs)" \
  --benchmark-json="$out/bench_purer_cuda_compiled.json"
echo "===== summary"
printf '%s\n' "${summary[@]}"
exec >&- 2>&-  # let tee write the last lines to log.txt before the script ends
wait "$tee_pid"
