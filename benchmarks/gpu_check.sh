#!/usr/bin/env bash
# One short check of the project on a CUDA machine without network, run from the project root:
#
#   bash benchmarks/gpu_check.sh WHEELS OUTDIR
#
# The project's copy of ../shared/gpu/check.sh (see its README); here parts c and d decode 64 tokens, not 300.
#
# 1. Installs WHEELS/*.whl (from fetch-wheels.sh) into /tmp/site with pip --no-index --no-deps and puts /tmp/site
#    first on PYTHONPATH; the datasets 4.8.5 of WHEELS/alt replaces 5.2.0 when the machine's pyarrow is older than 24.
# 2. Prints the GPU (nvidia-smi) and the versions of the packages as actually imported, and whether every
#    requirement of the installed wheels is met.
# 3. Runs, each under its own timeout, with logs in OUTDIR, going on to the next whatever happens:
#      a. python3 grpotrainer.py --smoke --max_steps 20 --output_dir /tmp/gpu-smoke   (4-bit NF4 on the GPU, bf16)
#      b. benchmarks/step_time.py --model-size 0.6b --variants default,compiled,bf16-lora,bf16-compiled
#      c. benchmarks/step_time.py --model-size 1.7b --variants default,bf16-compiled -- --max_completion_length 64
#      d. benchmarks/step_time.py --model-size 8b --variants default,bf16-compiled -- --max_completion_length 64
#    (c and d decode 64 tokens so that they fit their time: ms per decoding step does not depend on the length)
#    (compiled / bf16-compiled: compiled decoding; the project's benchmarks/step_time.py defines the variants)
#    (benchmarks with --steps 4 --warmup 1), and prints a line `PART x: ok|failed|timed out after N s` for each.
# 4. Writes OUTDIR/summary.md (versions, part results, the smoke run's result and TensorBoard scalars, the benchmark
#    tables) and prints it.
#
# Time: parts a-d get 90, 150, 120 and 150 s (8.5 min); time a part leaves unused passes to the next, and nothing
# runs past CHECK_TOTAL_S (525 s) after the start, install included, so the whole script ends within 9 minutes.
# Each benchmark variant runs as its own step_time.py process (a timeout loses that variant only; step_time.py
# writes its table and --json only at its end), in the order given; a variant is not started with less than
# CHECK_MIN_VARIANT_S (30) s of its part left. While part a runs, the random 0.6b/1.7b/8b models that step_time.py
# would build at the start of b, c and d (8b: 16 GB) are written in the background; a part waits for its model.
#
# OUTDIR gets at most 7 files: check.log (this script's whole output), smoke.log (last 40 lines of the smoke run and
# its TensorBoard scalars), bench.log (every step_time.py run's output), step_time-{0.6b,1.7b,8b}.json, summary.md.
# Exit status: 0 when every part is ok, 1 otherwise, 2 for bad arguments.
#
# Environment (all optional):
#   CHECK_DRY_RUN=1        skip the install; use the packages python3 already has
#   CHECK_DATASETS=auto    auto | main (datasets 5.2.0) | alt (4.8.5 from WHEELS/alt)
#   CHECK_PARTS="a b c d"  which parts to run ("": install and versions only)
#   CHECK_TIMEOUT_A/B/C/D  the parts' own times in s (90 150 120 150)
#   CHECK_TOTAL_S=525      nothing runs past this many seconds after the start
#   CHECK_VARIANTS_B/C/D   the variants of parts b, c, d
#   CHECK_STEPS=4 CHECK_WARMUP=1   step_time.py --steps / --warmup
#   CHECK_BENCH_EXTRA=""   grpotrainer.py flags for every benchmark (after step_time.py's --)
#   CHECK_EXTRA_B/C/D      grpotrainer.py flags of one part, after those ("", and "--max_completion_length 64" for c, d)
#   CHECK_PER_VARIANT=1    0: one step_time.py process per part, with all its variants (the table is lost on timeout)
#   CHECK_PREBUILD=auto    auto (with CUDA: the sizes of parts b-d) | 0 (off) | sizes to build, e.g. "1.7b 8b"
#   CHECK_BENCH_SIZE=      a model size for parts b-d instead of theirs (smoke: the logic on a machine without GPU)
#   CHECK_MIN_VARIANT_S=30 CHECK_SITE=/tmp/site
set -u

if [ $# -ne 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
    echo "usage: bash benchmarks/gpu_check.sh WHEELS OUTDIR   (from the project root)" >&2
    exit 2
fi
if [ ! -f grpotrainer.py ] || [ ! -f benchmarks/step_time.py ]; then
    echo "check.sh: run it from the project root (no grpotrainer.py or benchmarks/step_time.py in $PWD)" >&2
    exit 2
fi
if ! command -v timeout >/dev/null; then
    echo "check.sh: needs coreutils' timeout" >&2
    exit 2
fi

WHEELS=$1
OUTDIR=$2
DRY_RUN=${CHECK_DRY_RUN:-0}
DATASETS_CHOICE=${CHECK_DATASETS:-auto}
PARTS=${CHECK_PARTS-a b c d}  # empty: install and versions only
TIMEOUT_A=${CHECK_TIMEOUT_A:-90}
TIMEOUT_B=${CHECK_TIMEOUT_B:-150}
TIMEOUT_C=${CHECK_TIMEOUT_C:-120}
TIMEOUT_D=${CHECK_TIMEOUT_D:-150}
TOTAL_S=${CHECK_TOTAL_S:-525}
VARIANTS_B=${CHECK_VARIANTS_B:-default,compiled,bf16-lora,bf16-compiled}
VARIANTS_C=${CHECK_VARIANTS_C:-default,bf16-compiled}
VARIANTS_D=${CHECK_VARIANTS_D:-default,bf16-compiled}
STEPS=${CHECK_STEPS:-4}
WARMUP=${CHECK_WARMUP:-1}
BENCH_EXTRA=${CHECK_BENCH_EXTRA:-}
EXTRA_B=${CHECK_EXTRA_B-}
EXTRA_C=${CHECK_EXTRA_C---max_completion_length 64}
EXTRA_D=${CHECK_EXTRA_D---max_completion_length 64}
PER_VARIANT=${CHECK_PER_VARIANT:-1}
PREBUILD=${CHECK_PREBUILD:-auto}
BENCH_SIZE=${CHECK_BENCH_SIZE:-}
MIN_VARIANT_S=${CHECK_MIN_VARIANT_S:-30}
SITE=${CHECK_SITE:-/tmp/site}
SMOKE_OUT=/tmp/gpu-smoke
SMOKE_STEPS=20
KILL_GRACE=10  # after a timeout's SIGTERM, SIGKILL this many seconds later
RESERVE_S=10   # kept at the end for the summary

mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
case $WHEELS in /*) ;; *) WHEELS=$PWD/$WHEELS ;; esac
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2  # this run's helpers and full logs

export PYTHONUNBUFFERED=1  # a killed part's log keeps everything it printed
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false

T0=$(date +%s)
DEADLINE=$((T0 + TOTAL_S))

# ---------------------------------------------------------------------------------------------------------------------
# Python helpers, written once into SCRATCH

cat >"$SCRATCH/versions.py" <<'PY'
"""Versions as imported, CUDA, bitsandbytes on the GPU, unmet requirements of the wheels in SITE; smoke assets."""
import importlib, importlib.metadata as md, os, sys, time

site, compact_out, build_smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
site = os.path.abspath(site) + os.sep if site else ""
print(f"python {sys.version.split()[0]} ({sys.executable})")
versions = {}
for name in ["torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "pyarrow",
             "tokenizers", "huggingface_hub", "safetensors", "tensorboard", "dill", "multiprocess", "pandas", "fsspec"]:
    start = time.time()
    try:
        module = importlib.import_module(name)
    except BaseException as error:  # an import can raise anything, SystemExit included
        versions[name] = "IMPORT FAILED"
        print(f"  {name:16} IMPORT FAILED: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
        continue
    versions[name] = str(getattr(module, "__version__", "?"))
    path = os.path.dirname(os.path.abspath(getattr(module, "__file__", None) or "?"))
    origin = "(wheel)" if site and (path + os.sep).startswith(site) else "(machine)"
    print(f"  {name:16} {versions[name]:16} {origin:9} {path}  {time.time() - start:.1f} s")

cuda = "torch not imported"
try:
    import torch
    cuda = f"CUDA {torch.version.cuda}, available {torch.cuda.is_available()}"
    with open(compact_out + ".cuda", "w") as out:
        out.write("1\n" if torch.cuda.is_available() else "0\n")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cuda += (f", {torch.cuda.device_count()} device(s): {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                 f"capability {props.major}.{props.minor}, bf16 {torch.cuda.is_bf16_supported()}")
except BaseException as error:
    cuda = f"torch.cuda failed: {type(error).__name__}: {error}"
print(f"torch: {cuda}")
try:
    import torch, bitsandbytes.functional as F
    if torch.cuda.is_available():
        weight = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
        packed, state = F.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        error = (F.dequantize_4bit(packed, state) - weight).abs().mean().item()
        print(f"bitsandbytes: NF4 quantize/dequantize on the GPU ok (mean abs error {error:.3f})")
except BaseException as error:
    print(f"bitsandbytes: NF4 on the GPU FAILED: {type(error).__name__}: {' '.join(str(error).split())[:300]}")

if site:
    try:
        from packaging.requirements import Requirement
        problems = []
        for dist in md.distributions(path=[site.rstrip(os.sep)]):
            for line in dist.requires or []:
                requirement = Requirement(line)
                if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                    continue
                try:
                    have = md.version(requirement.name)
                except md.PackageNotFoundError:
                    problems.append(f"{dist.metadata['Name']} requires {requirement}: not installed")
                    continue
                if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
                    problems.append(f"{dist.metadata['Name']} requires {requirement}: have {have}")
        print("requirements of the installed wheels: " + (f"{len(problems)} unmet" if problems else "all met"))
        for problem in sorted(set(problems)):
            print(f"  {problem}")
    except BaseException as error:
        print(f"requirements not checked: {type(error).__name__}: {error}")

keys = ["torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "pyarrow"]
with open(compact_out, "w") as out:
    out.write(", ".join(f"{k} {versions.get(k, '?')}" for k in keys) + f"; python {sys.version.split()[0]}; {cuda}\n")

if build_smoke:  # the smoke model and tokenizer: part a and the background model builds use them
    start = time.time()
    try:
        sys.path.insert(0, os.getcwd())
        import smoke
        smoke.build_assets()
        print(f"smoke assets ready in {smoke.SMOKE_DIR} ({time.time() - start:.1f} s)")
    except BaseException as error:
        print(f"smoke assets not built: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
PY

cat >"$SCRATCH/unpack.py" <<'PY'
"""Install wheels by unpacking them (when pip cannot): SITE WHEEL..."""
import re, shutil, sys, zipfile
from pathlib import Path

site = Path(sys.argv[1])
site.mkdir(parents=True, exist_ok=True)
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()
for wheel in map(Path, sys.argv[2:]):
    project = norm(wheel.name.split("-")[0])
    for old in site.glob("*.dist-info"):  # like --upgrade: drop an installed version of the same project
        if norm(old.name.split("-")[0]) == project:
            shutil.rmtree(old)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for top in {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".data", ".dist-info"))}:
            target = site / top
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        archive.extractall(site)
    for data in site.glob("*.data"):
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                for item in (data / kind).iterdir():
                    target = site / item.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    shutil.move(str(item), str(target))
        shutil.rmtree(data)
    print(f"unpacked {wheel.name}")
PY

cat >"$SCRATCH/prebuild.py" <<'PY'
"""Write step_time.py's random-weight Qwen3 models ahead of the benchmarks: SIZE..."""
import os, sys, time

sys.path[:0] = [os.path.join(os.getcwd(), "benchmarks"), os.getcwd()]
import step_time

for size in sys.argv[1:]:
    start = time.time()
    folder = step_time.build_random_qwen3(size)
    print(f"prebuild: qwen3 {size} ready in {folder} after {time.time() - start:.1f} s", flush=True)
PY

cat >"$SCRATCH/tbsummary.py" <<'PY'
"""First and last values of the smoke run's main TensorBoard scalars: RUN_DIR"""
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

WANTED = ["train/rewards/mean", "train/objective/kl", "eval/accuracy"]
accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
accumulator.Reload()
tags = accumulator.Tags().get("scalars", [])
print(f"TensorBoard scalars in {sys.argv[1]}:")
for tag in WANTED:
    events = accumulator.Scalars(tag) if tag in tags else []
    if events:
        first, last = events[0], events[-1]
        print(f"  {tag}: first {first.value:.4f} (step {first.step}), last {last.value:.4f} (step {last.step}), "
              f"{len(events)} values")
    else:
        print(f"  {tag}: not logged")
rest = sorted(set(tags) - set(WANTED))
print(f"  {len(rest)} other scalar tags: {', '.join(rest)}")
PY

cat >"$SCRATCH/merge.py" <<'PY'
"""Merge the step_time.py runs of one part: RECORDS OUT_JSON OUT_MD SIZE. RECORDS: one line per run, tab-separated:
variants, exit code (or 'skip'), wall seconds, its --json file, its log. Prints one line per variant, then a counts line."""
import json, sys
from pathlib import Path

records, out_json, out_md, size = sys.argv[1:5]
COLUMNS = ["variant", "median step s", "generation %", "log-prob %", "update %", "gen tok/s", "ms/decode step", "x bound", "compiles after warm-up", "peak GPU GiB", "peak host GiB", "status"]  # fmt: skip
rows, walls, flags, machine, meta, header = {}, {}, [], None, {}, None
for line in Path(records).read_text().splitlines():
    variants, code, wall, json_path, log_path = line.split("\t")
    report = None
    try:
        report = json.loads(Path(json_path).read_text())
    except (OSError, ValueError):
        pass
    log = Path(log_path).read_text(errors="replace").splitlines() if Path(log_path).is_file() else []
    if report:
        machine = machine or report.get("machine")
        meta = meta or {key: report.get(key) for key in ("model_size", "steps", "warmup", "extra_flags")}
        found = report.get("variants", {})
    else:
        found = {}
        if code == "skip":
            status = "not run: the part's time was spent"
        elif code in ("124", "137"):
            status = f"timed out after {wall} s"
        else:
            last = next((text.strip() for text in reversed(log) if text.strip()), "no output")
            status = f"failed (exit {code}): {last[:160]}"
    for variant in variants.split(","):
        rows[variant] = found.get(variant) or {"status": status if not report else "missing from its report"}
        rows[variant]["status"] = str(rows[variant].get("status", "?")).replace("|", "/")
    if code != "skip" and wall.isdigit():
        walls[variants] = int(wall)
    for text in log:
        if header is None and text.startswith("Machine:"):
            header = text
        if text.startswith("Variant flags: "):
            flags.append(text[len("Variant flags: "):])

report = {"machine": machine, **meta, "variants": rows, "check_wall_s_per_run": walls}
report.setdefault("model_size", size)
Path(out_json).write_text(json.dumps(report, indent=2, default=str) + "\n")

cell = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"
lines = [header or f"Model {size}: no variant finished, so no machine line.", "", "| " + " | ".join(COLUMNS) + " |",
         "|" + "---|" * len(COLUMNS)]
for variant, row in rows.items():
    values = [cell(row.get(key), digits) for key, digits in (("median_step_s", 2), ("generation_pct", 1),
              ("logprob_pct", 1), ("update_pct", 1), ("generated_tokens_per_s", 1), ("ms_per_decoding_step", 1),
              ("times_bound", 1), ("compiles_after_warmup", 0), ("peak_gpu_gib", 2),
              ("peak_host_gib", 2))]
    lines.append(f"| {variant} | " + " | ".join(values) + f" | {row['status']} |")
    figures = ", ".join(f"{name} {value}" for name, value in zip(COLUMNS[1:], values) if value != "-")
    group = next((g for g in walls if variant in g.split(",")), None)
    took = f" (its step_time.py run took {walls[group]} s)" if group else ""
    print(f"  {variant}: {figures + '; ' if figures else ''}{row['status']}{took}")
if flags:
    lines += ["", "Variant flags: " + "; ".join(flags)]
runs = [f"{group} {seconds} s" for group, seconds in walls.items()]
if runs:
    lines += ["", "Wall time of each step_time.py run (start, model build or load, all steps): " + ", ".join(runs)]
Path(out_md).write_text("\n".join(lines) + "\n")
statuses = [row["status"] for row in rows.values()]
print("counts", sum(s == "ok" for s in statuses), len(statuses),
      sum(s.startswith(("timed out", "not run")) for s in statuses))
PY

# ---------------------------------------------------------------------------------------------------------------------

main() {
    now() { date +%s; }
    # seconds left before the deadline's reserve, at most $1, at least 1 (timeout 0 would mean no limit)
    time_left() {
        local left=$((DEADLINE - RESERVE_S - $(now)))
        [ "$left" -gt "$1" ] && left=$1
        [ "$left" -lt 1 ] && left=1
        echo "$left"
    }
    log() { printf '[%s +%3ds] %s\n' "$(date +%H:%M:%S)" "$(($(now) - T0))" "$*"; }
    # a log as a terminal shows it: a progress bar's last state, and a final newline even if its writer was killed
    tidy() { sed -e 's/.*\r//' -e '$a\' "$1"; }
    status_of() { case $1 in 0) echo ok ;; 124 | 137) echo "timed out" ;; *) echo "failed (exit $1)" ;; esac; }
    # run_timed LIMIT LOGFILE CMD...: CMD under timeout, its output appended to LOGFILE; sets RC and ELAPSED
    run_timed() {
        local limit=$1 logfile=$2 start
        shift 2
        start=$(now)
        timeout -k "$KILL_GRACE" "$limit" "$@" >>"$logfile" 2>&1
        RC=$?
        ELAPSED=$(($(now) - start))
    }
    # the time a part may take: its own plus what earlier parts left, within the deadline
    part_budget() {
        local budget=$(($1 + CARRY)) global=$((DEADLINE - RESERVE_S - $(now)))
        [ "$budget" -gt "$global" ] && budget=$global
        [ "$budget" -lt 0 ] && budget=0
        echo "$budget"
    }
    declare -A PART_LINE=()
    FAILED=0
    CARRY=0
    PREBUILD_PID=
    stop_prebuild() {
        if [ -n "$PREBUILD_PID" ] && kill -0 "$PREBUILD_PID" 2>/dev/null; then
            kill -TERM "$PREBUILD_PID" 2>/dev/null
            wait "$PREBUILD_PID" 2>/dev/null
        fi
        PREBUILD_PID=
    }
    trap stop_prebuild EXIT

    log "GPU check of $PWD; wheels $WHEELS; output $OUTDIR; scratch $SCRATCH"
    log "plan: parts [$PARTS], times a ${TIMEOUT_A} s, b ${TIMEOUT_B} s, c ${TIMEOUT_C} s, d ${TIMEOUT_D} s (unused time passes on); everything ends by +${TOTAL_S} s"

    # --- GPU
    local gpu
    if command -v nvidia-smi >/dev/null; then
        gpu=$(timeout 20 nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv,noheader 2>&1 | head -n 4 | paste -sd ';' -)
        gpu="$gpu; $(timeout 20 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | head -n 1)"
    else
        gpu="nvidia-smi not found"
    fi
    log "GPU: $gpu"
    echo "$gpu" >"$SCRATCH/gpu.txt"

    # --- install
    local install="skipped (CHECK_DRY_RUN=1: the packages python3 has)"
    if [ "$DRY_RUN" != 1 ]; then
        local pyarrow_version major use_alt=0 wheels=() file
        pyarrow_version=$(timeout 60 python3 -c 'import pyarrow; print(pyarrow.__version__)' 2>/dev/null | tail -n 1)
        major=${pyarrow_version%%.*}
        case $DATASETS_CHOICE in
            alt) use_alt=1 ;;
            main) use_alt=0 ;;
            *) [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 24 ] && use_alt=1 ;;
        esac
        log "pyarrow on this machine: ${pyarrow_version:-not importable}; datasets: $([ $use_alt = 1 ] && echo "4.8.5 (WHEELS/alt)" || echo "5.2.0")"
        for file in "$WHEELS"/*.whl; do
            [ -e "$file" ] || continue
            if [ $use_alt = 1 ] && [[ ${file##*/} == datasets-* ]]; then continue; fi
            wheels+=("$file")
        done
        if [ $use_alt = 1 ]; then
            for file in "$WHEELS"/alt/datasets-*.whl; do [ -e "$file" ] && wheels+=("$file"); done
            if ! timeout 60 python3 -c 'import requests' >/dev/null 2>&1; then
                log "requests is missing (datasets 4.8.5 imports it): adding WHEELS/alt/requests"
                for file in "$WHEELS"/alt/requests/*.whl; do [ -e "$file" ] && wheels+=("$file"); done
            fi
        fi
        if [ ${#wheels[@]} -eq 0 ]; then
            install="FAILED: no wheels in $WHEELS"
            log "install: $install"
        else
            log "install: ${#wheels[@]} wheels into $SITE: $(for file in "${wheels[@]}"; do printf '%s ' "${file##*/}"; done)"
            local start
            start=$(now)
            timeout "$(time_left 150)" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" "${wheels[@]}" >"$SCRATCH/install.log" 2>&1
            RC=$?
            if [ $RC = 0 ]; then
                install="ok ($(($(now) - start)) s, pip)"
            else
                log "pip install failed (exit $RC): $(grep -v '^ *$' "$SCRATCH/install.log" | tail -n 3 | paste -sd ' ' -)"
                log "installing by unpacking the wheels instead"
                timeout "$(time_left 120)" python3 "$SCRATCH/unpack.py" "$SITE" "${wheels[@]}" >>"$SCRATCH/install.log" 2>&1
                RC=$?
                if [ $RC = 0 ]; then install="ok ($(($(now) - start)) s, unpacked: pip failed)"; else install="FAILED (exit $RC)"; fi
            fi
            [ $RC = 0 ] || tail -n 20 "$SCRATCH/install.log"
            log "install: $install"
        fi
        [ $use_alt = 1 ] && install="$install; datasets 4.8.5 for pyarrow ${pyarrow_version:-?}"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        log "PYTHONPATH=$PYTHONPATH"
    else
        log "install: $install"
    fi

    # --- versions, and the smoke assets that part a and the background builds share
    log "versions as imported (and the smoke model and tokenizer, built once):"
    timeout -k 5 "$(time_left 120)" python3 "$SCRATCH/versions.py" "$([ "$DRY_RUN" != 1 ] && echo "$SITE")" \
        "$SCRATCH/versions.txt" 1 2>&1 | grep -v '^\s*$' | sed 's/^/    /'
    [ -s "$SCRATCH/versions.txt" ] || echo "versions not printed (timed out or crashed)" >"$SCRATCH/versions.txt"

    # --- background builds of the random benchmark models
    local tmproot sizes=() part
    tmproot=$(python3 -c 'import tempfile; print(tempfile.gettempdir())' 2>/dev/null || echo /tmp)
    BENCH_MODELS=$tmproot/grpotrainer-bench
    if [ "$PREBUILD" = auto ]; then
        # only where step_time.py will run them: with CUDA, at the parts' own sizes
        if [ -z "$BENCH_SIZE" ] && [ "$(cat "$SCRATCH/versions.txt.cuda" 2>/dev/null)" = 1 ]; then
            for part in $PARTS; do
                case $part in b) sizes+=(0.6b) ;; c) sizes+=(1.7b) ;; d) sizes+=(8b) ;; esac
            done
        fi
    elif [ "$PREBUILD" != 0 ]; then
        read -r -a sizes <<<"$PREBUILD"
    fi
    if [ ${#sizes[@]} -gt 0 ]; then
        if [ -f "$tmproot/grpotrainer-smoke/model/smoke_build.json" ]; then
            log "background: building the random models ${sizes[*]} for the benchmarks (log in bench.log)"
            timeout -k 5 "$(time_left "$TOTAL_S")" python3 "$SCRATCH/prebuild.py" "${sizes[@]}" >"$SCRATCH/prebuild.log" 2>&1 &
            PREBUILD_PID=$!
        else
            log "background builds skipped: no smoke tokenizer yet (step_time.py builds each model itself)"
        fi
    fi

    reap_prebuild() {  # log how the background builds ended, once they have
        local rc
        if [ -n "$PREBUILD_PID" ] && ! kill -0 "$PREBUILD_PID" 2>/dev/null; then
            wait "$PREBUILD_PID"
            rc=$?
            log "background builds ended (exit $rc): $(grep '^prebuild:' "$SCRATCH/prebuild.log" | sed 's/^prebuild: //' | paste -sd ';' -)"
            PREBUILD_PID=
        fi
    }

    # wait_for_model SIZE UNTIL: until the background build has written SIZE (or has ended)
    wait_for_model() {
        local marker=$BENCH_MODELS/qwen3-$1-random/bench_build.json waited=0
        reap_prebuild
        [ -n "$PREBUILD_PID" ] || return 0
        [[ " ${sizes[*]} " == *" $1 "* ]] || return 0  # not one the background builds
        while kill -0 "$PREBUILD_PID" 2>/dev/null && [ ! -f "$marker" ]; do
            if [ "$(now)" -ge "$2" ]; then
                log "background build of $1 not done: stopping it (step_time.py builds the model itself)"
                stop_prebuild
                break
            fi
            [ $waited = 0 ] && log "waiting for the background build of the $1 model"
            waited=1
            sleep 2
        done
        [ -f "$marker" ] && [ $waited = 1 ] && log "the $1 model is ready"
        reap_prebuild
        [ -n "$PREBUILD_PID" ] && log "note: background builds still running during this part's measurements"
        return 0
    }

    # --- part a: the smoke run
    smoke_part() {
        local budget start run_dir
        budget=$(part_budget "$TIMEOUT_A")
        if [ "$budget" -le "$KILL_GRACE" ]; then
            PART_LINE[a]="PART a: timed out after 0 s (no time left)"
            FAILED=1
            log "${PART_LINE[a]}"
            return
        fi
        log "PART a: python3 grpotrainer.py --smoke --max_steps $SMOKE_STEPS --output_dir $SMOKE_OUT (timeout $((budget - KILL_GRACE)) s)"
        : >"$OUTDIR/smoke.log"
        touch "$SCRATCH/smoke.start"
        run_timed $((budget - KILL_GRACE)) "$OUTDIR/smoke.log" \
            python3 grpotrainer.py --smoke --max_steps "$SMOKE_STEPS" --output_dir "$SMOKE_OUT"
        local rc=$RC elapsed=$ELAPSED
        tidy "$OUTDIR/smoke.log" >"$SCRATCH/smoke.full.log"
        # the run's TensorBoard folder: the one it announced, else the newest written since it started
        run_dir=$(sed -n 's/^TensorBoard: tensorboard --logdir //p' "$SCRATCH/smoke.full.log" | tail -n 1)
        run_dir=$(find ${run_dir:+"$run_dir"} "$SMOKE_OUT" "$SMOKE_OUT"-* -name 'events.out.tfevents.*' \
            -newer "$SCRATCH/smoke.start" -printf '%T@ %h\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)
        if [ -n "$run_dir" ]; then
            timeout 60 python3 "$SCRATCH/tbsummary.py" "$run_dir" 2>&1 | grep -v -E 'TensorFlow installation not found|^\s*$' >"$SCRATCH/smoke.tb.txt"
        else
            echo "no TensorBoard event file written by the smoke run" >"$SCRATCH/smoke.tb.txt"
        fi
        {
            echo "# python3 grpotrainer.py --smoke --max_steps $SMOKE_STEPS --output_dir $SMOKE_OUT: $(status_of $rc) after $elapsed s; its last 40 lines:"
            tail -n 40 "$SCRATCH/smoke.full.log"
            echo
            echo "# $(cat "$SCRATCH/smoke.tb.txt")"
        } >"$OUTDIR/smoke.log"
        grep -E 'GSM8K accuracy|^before .* -> after|^final LoRA|Error|error:' "$SCRATCH/smoke.full.log" | tail -n 8 >"$SCRATCH/smoke.key.txt"
        if [ $rc != 0 ]; then
            FAILED=1
            log "smoke run's last lines:"
            tail -n 15 "$SCRATCH/smoke.full.log" | sed 's/^/    /'
        fi
        grep -v 'other scalar tags' "$SCRATCH/smoke.key.txt" "$SCRATCH/smoke.tb.txt" -h | sed 's/^/    /'
        PART_LINE[a]="PART a: $(status_of $rc) after $elapsed s"
        log "${PART_LINE[a]}"
        CARRY=$((budget - elapsed))
        [ $CARRY -lt 0 ] && CARRY=0
    }

    # --- parts b-d: step_time.py
    bench_part() {  # LETTER SIZE VARIANTS TIME EXTRA
        local letter=$1 size=${BENCH_SIZE:-$2} variants=$3 budget start end group left rc
        local flags="$BENCH_EXTRA${5:+ $5}"
        flags=${flags# }
        local records=$SCRATCH/$letter.records json_out=$OUTDIR/step_time-$2.json extra=() groups=() counts
        budget=$(part_budget "$4")
        start=$(now)
        end=$((start + budget))
        : >"$records"
        [ -n "$flags" ] && read -r -a extra <<<"-- $flags"
        if [ "$PER_VARIANT" = 1 ]; then IFS=, read -r -a groups <<<"$variants"; else groups=("$variants"); fi
        log "PART $letter: step_time.py --model-size $size --steps $STEPS --warmup $WARMUP --variants $variants${flags:+ -- $flags} (${budget} s)"
        if [ "$budget" -ge $((MIN_VARIANT_S + KILL_GRACE)) ]; then  # else no variant starts: leave the builds be
            wait_for_model "$size" $((end - MIN_VARIANT_S - KILL_GRACE - 3))
        fi
        for group in "${groups[@]}"; do
            left=$((end - $(now) - KILL_GRACE))
            if [ $left -lt "$MIN_VARIANT_S" ]; then
                printf '%s\tskip\t0\t-\t-\n' "$group" >>"$records"
                log "PART $letter: $group not started: ${left} s left"
                continue
            fi
            local tag=$letter-${group//,/+}
            rm -f "$SCRATCH/$tag.json" "$SCRATCH/$tag.log"
            log "PART $letter: $group (timeout $left s)"
            run_timed "$left" "$SCRATCH/$tag.log" python3 benchmarks/step_time.py --model-size "$size" \
                --steps "$STEPS" --warmup "$WARMUP" --variants "$group" --json "$SCRATCH/$tag.json" \
                ${extra[@]+"${extra[@]}"}
            rc=$RC
            {
                echo "==== PART $letter: step_time.py --model-size $size --variants $group: $(status_of $rc) after $ELAPSED s"
                tidy "$SCRATCH/$tag.log"
            } >>"$OUTDIR/bench.log"
            printf '%s\t%s\t%s\t%s\t%s\n' "$group" "$rc" "$ELAPSED" "$SCRATCH/$tag.json" "$SCRATCH/$tag.log" >>"$records"
            timeout 30 python3 "$SCRATCH/merge.py" "$records" "$json_out" "$SCRATCH/table-$letter.md" "$size" \
                >"$SCRATCH/merge-$letter.txt" 2>&1
            grep -v '^counts ' "$SCRATCH/merge-$letter.txt" | tail -n "$(tr -cd , <<<"$group" | wc -c | awk '{print $1 + 1}')"
        done
        if [ ! -s "$records" ] || ! timeout 30 python3 "$SCRATCH/merge.py" "$records" "$json_out" \
            "$SCRATCH/table-$letter.md" "$size" >"$SCRATCH/merge-$letter.txt" 2>&1; then
            echo "no table: nothing ran or the merge failed: $(tail -n 1 "$SCRATCH/merge-$letter.txt" 2>/dev/null)" >"$SCRATCH/table-$letter.md"
        fi
        counts=$(grep '^counts ' "$SCRATCH/merge-$letter.txt" 2>/dev/null | tail -n 1)
        read -r _ n_ok n_all n_time <<<"${counts:-counts 0 0 0}"
        local word=ok
        if [ "${n_ok:-0}" != "${n_all:-0}" ] || [ "${n_all:-0}" = 0 ]; then
            word=failed
            [ "${n_time:-0}" -gt 0 ] && word="timed out"
            FAILED=1
        fi
        PART_LINE[$letter]="PART $letter: $word after $(($(now) - start)) s ($size: ${n_ok:-0} of ${n_all:-0} variants ok)"
        log "${PART_LINE[$letter]}"
        CARRY=$((budget - ($(now) - start)))
        [ $CARRY -lt 0 ] && CARRY=0
    }

    : >"$OUTDIR/bench.log"
    for part in $PARTS; do
        case $part in
            a) smoke_part ;;
            b) bench_part b 0.6b "$VARIANTS_B" "$TIMEOUT_B" "$EXTRA_B" ;;
            c) bench_part c 1.7b "$VARIANTS_C" "$TIMEOUT_C" "$EXTRA_C" ;;
            d) bench_part d 8b "$VARIANTS_D" "$TIMEOUT_D" "$EXTRA_D" ;;
            *) log "unknown part '$part' (a b c d)" ;;
        esac
    done
    reap_prebuild
    if [ -n "$PREBUILD_PID" ]; then
        log "stopping the background builds"
        stop_prebuild
    fi
    if [ -s "$SCRATCH/prebuild.log" ]; then
        { echo "==== background builds of the random models"; tidy "$SCRATCH/prebuild.log"; } >>"$OUTDIR/bench.log"
    fi
    [ -s "$OUTDIR/bench.log" ] || rm -f "$OUTDIR/bench.log"

    # --- summary.md
    {
        echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(now) - T0)) s"
        echo
        echo "- GPU: $(cat "$SCRATCH/gpu.txt")"
        echo "- versions: $(cat "$SCRATCH/versions.txt")"
        echo "- install: $install"
        for part in $PARTS; do
            [ -n "${PART_LINE[$part]:-}" ] && echo "- ${PART_LINE[$part]}"
        done
        if [ -n "${PART_LINE[a]:-}" ]; then
            echo
            echo "## a. grpotrainer.py --smoke --max_steps $SMOKE_STEPS (4-bit NF4, bf16 on CUDA)"
            echo
            echo '```'
            cat "$SCRATCH/smoke.key.txt" 2>/dev/null
            grep -v 'other scalar tags' "$SCRATCH/smoke.tb.txt" 2>/dev/null
            echo '```'
        fi
        for part in b c d; do
            [ -f "$SCRATCH/table-$part.md" ] || continue
            echo
            echo "## $part. benchmarks/step_time.py (${PART_LINE[$part]#PART $part: })"
            echo
            cat "$SCRATCH/table-$part.md"
        done
    } >"$OUTDIR/summary.md"
    log "done: $(ls "$OUTDIR" | paste -sd ' ' -) in $OUTDIR"
    echo
    cat "$OUTDIR/summary.md"
    trap - EXIT
    return $FAILED
}

main 2>&1 | tee "$OUTDIR/check.log"
exit "${PIPESTATUS[0]}"
