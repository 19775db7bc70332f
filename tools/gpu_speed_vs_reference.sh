#!/usr/bin/env bash
# Speed on one GPU, side by side with the reference StyleGAN2-ADA, in one call (about 6 minutes; the stages' limits
# add up to 370 s, so that a rerun fits in a 15-minute budget with the machine's start-up):
#   1. tools/gpu_check.sh with shorter limits: CUDA kernels built from source, pytest -m gpu tests/ops, ops benchmark
#      (ref vs cuda vs compiled) with its suggested AUTO_PREFERENCE;                                  [90 + 60 + 45 s]
#   2. benchmarks/vs_reference.py at 256 px batch 32 (the paper's size) and 64 px batch 32, impl=cuda for both, one
#      repeat of two timed ticks each (the reference from $REFERENCE_DIR, default .reference/stylegan2-ada-pytorch,
#      an ignored folder; skipped with a note when absent);                                                 [120 s]
#   3. the `reduced` study's first stages on the embedded sample through the notebooks (papermill), as a user runs
#      them: seconds per finished step and the base GAN's s/kimg so far (the whole study does not fit here). [55 s]
# Papermill and the notebook stack are not on the GPU image: tools/gpu_wheels.sh puts their wheels in .whl/ (an
# ignored folder, to be carried), and this script installs them into a temporary folder first.
# Writes under $OUT (else results/gpu_speed_vs_reference/): check/{kernels.json,pytest.log,bench.json,bench.md},
# vs_reference.json, stages.json, summary.json; prints a table last. Exit status 0 only if every stage passed.
# On a machine without CUDA every stage still runs, on the CPU at small sizes (how this script is tested).
. "$(dirname "$0")/common.sh"
DEST="${OUT:-results/gpu_speed_vs_reference}"
REF="${REFERENCE_DIR:-.reference/stylegan2-ada-pytorch}"
mkdir -p "$DEST/check"
t0=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - t0 )) s elapsed)"; }
declare -A ST

if ls .whl/*.whl >/dev/null 2>&1; then
    SITE="$(mktemp -d)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$SITE"
fi
DEVICE=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')

stage "1. kernels: build, gpu tests, ops benchmark"
BUILD_TIMEOUT=90 TEST_TIMEOUT=60 BENCH_TIMEOUT=45 OUT="$DEST/check" tools/gpu_check.sh && ST[check]=ok || ST[check]=failed
rm -f "$DEST/check/pytest.xml"  # pytest.log holds the same, and the files that come back are few

stage "2. vs the reference"
if [ -d "$REF/training" ]; then
    if [ "$DEVICE" = cuda ]; then ARGS=(--device cuda --impl cuda --res 256 64 --batch 32 --ticks 2 --repeats 1)
    else ARGS=(--res 32 --ticks 1 --repeats 1 --warmup 2); fi
    timeout 120 "$PY" benchmarks/vs_reference.py --reference-dir "$REF" "${ARGS[@]}" --timeout 55 \
        --json "$DEST/vs_reference.json" && ST[vs_reference]=ok || ST[vs_reference]=failed
else
    echo "no reference snapshot at $REF: skipped"; ST[vs_reference]="skipped (no $REF)"
fi

stage "3. reduced study stages on the embedded sample"
RES_DIR="$(mktemp -d)"
if "$PY" -c "import papermill" 2>/dev/null; then
    timeout 55 "$PY" -m histlib study run studies/reduced.yaml --only data base_gan --results "$RES_DIR" \
        > "$RES_DIR/study.log" 2>&1 && ST[stages]=ok || ST[stages]="stopped at its limit or failed (partial)"
    tail -5 "$RES_DIR/study.log"
else
    ST[stages]="skipped (papermill missing: carry .whl)"
fi
"$PY" - "$RES_DIR" "$DEST/stages.json" <<'PY'
import glob, json, statistics, sys
from pathlib import Path
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
steps = {Path(p).stem: json.loads(Path(p).read_text()) for p in glob.glob(f"{root}/**/.state/*.json", recursive=True)}
out = {"steps": {k: {"status": v.get("status"), "seconds": v.get("seconds")} for k, v in steps.items()}}
for stats in glob.glob(f"{root}/**/stats.jsonl", recursive=True):
    rows = [json.loads(line) for line in Path(stats).read_text().splitlines() if line.strip()]
    if len(rows) > 1:  # the first tick holds the warm-up
        out.setdefault("gan", {})[str(Path(stats).parent.relative_to(root))] = {
            "ticks": len(rows), "kimg": rows[-1]["kimg"], "sec_per_kimg_median": statistics.median(
                r["sec_per_kimg"] for r in rows[1:])}
dest.write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out))
PY
rm -rf "$RES_DIR"

"$PY" - "$DEST" "$DEVICE" "$(( $(date +%s) - t0 ))" "check=${ST[check]}" "vs_reference=${ST[vs_reference]}" \
    "stages=${ST[stages]}" <<'PY'
import json, sys
from pathlib import Path
dest, device, wall = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
status = dict(a.split("=", 1) for a in sys.argv[4:])
import torch
card = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
summary = {"device": card, "torch": torch.__version__, "wall_s": wall, "status": status}
print(f"\n=== summary on {card}, torch {torch.__version__}, {wall} s")
for k, v in status.items():
    print(f"  {k:<14} {v}")
bench = dest / "check" / "bench.json"
if bench.is_file():
    b = json.loads(bench.read_text())
    summary["suggested_auto_preference"] = b.get("suggested_auto_preference")
    print(f"  suggested AUTO_PREFERENCE: {b.get('suggested_auto_preference')}")
vs = dest / "vs_reference.json"
if vs.is_file():
    print(f"  {'res':>4} {'ours img/s':>10} {'ref img/s':>10} {'ratio':>6}")
    for row in json.loads(vs.read_text()):
        o, r = (max(i["img_per_s_median"] for i in row[side]) for side in ("ours", "reference"))
        summary.setdefault("vs_reference", []).append({"res": row["res"], "ours": o, "reference": r})
        print(f"  {row['res']:>4} {o:>10.1f} {r:>10.1f} {o / r:>6.2f}")
st = dest / "stages.json"
if st.is_file():
    s = json.loads(st.read_text())
    summary["stages"] = s
    for name, v in s.get("steps", {}).items():
        print(f"  step {name:<22} {v['status']:<9} {v['seconds']} s")
    for run, g in s.get("gan", {}).items():
        print(f"  GAN {run}: {g['sec_per_kimg_median']:.2f} s/kimg over {g['ticks']} ticks")
(dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
sys.exit(0 if all(v == "ok" for v in status.values()) else 1)
PY
