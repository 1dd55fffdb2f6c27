#!/usr/bin/env bash
# The GPU benchmark as one command, for a lent H100/H200 (the device tool's `run`), in at most 9.5 minutes (the
# sections' time limits add up to 570 s; a section that runs out is marked and the next one starts). The sections
# run most important first, so a run cut short still brings back what matters most.
#
#   here, once:  bash bench/gpu_check.sh --prepare
#       wheels the device image lacks into .whl/ (sageattention, av, torchsde, comfy-kitchen without its CUDA
#       extension: its eager backend, i.e. torch._scaled_mm) and a trimmed copy of the ComfyUI host into .host/;
#       both are listed in .git/info/exclude and travel with `carry`.
#   there:       run(command="bash bench/gpu_check.sh", carry=[".whl", ".host"], timeout_s=590)
#   comfy-kitchen's CUDA extension (too large to carry with the rest: its int8 attention, and its per-tensor FP8
#   quantization, which quantizes the activations on Windows without Triton): --prepare-kitchen here, then
#   run(command='GPU_CHECK_ONLY="activation quantization|attention backends" bash bench/gpu_check.sh', the same
#   carry, 150 s)
#   sageattention 2.x (CUDA kernels; no wheel on PyPI, so built from its source for the device's Python 3.12 and
#   torch by bench/build_sage2_wheel.sh, about 6 minutes here): --prepare-sage2 WHEEL here, then
#   run(command='GPU_CHECK_ONLY=sage2 bash bench/gpu_check.sh', the same carry, 420 s): the sections its kernels
#   change, and the Linears' (SAGE2_SECTIONS below).
#   Both on one warm machine (one start-up less of the lent minutes): prepare the two sets of wheels side by side
#   first, GPU_CHECK_WHEELS naming the second folder (.whl by default; the run reads the same variable):
#     bash bench/gpu_check.sh --prepare-sage2 WHEEL
#     GPU_CHECK_WHEELS=.whl-kitchen bash bench/gpu_check.sh --prepare-kitchen
#   then the sage2 run with carry [".whl", ".host"], and at once (the machine goes back after 30 s idle)
#   run(command='GPU_CHECK_WHEELS=.whl-kitchen GPU_CHECK_ONLY="..." bash bench/gpu_check.sh',
#       carry=[".whl-kitchen", ".host"]).
#
# Writes gpu_check.txt into $OUT (what the device tool brings back; elsewhere test-artifacts/): our FP8 model
# under ComfyUI's own main.py with Dynamic VRAM, its default on NVIDIA GPUs, against --disable-dynamic-vram, with
# and without a LoRA (bench/dynamic_vram.py: no CPU test reaches that path), the fp8 GEMM
# table at the 14B block's Linear shapes, torch._scaled_mm's fast accumulation and one block's Linears, and the 1.3B
# weight memory (bench/gemm.py), the activation quantization's time and memory, fused vs eager, and the kernel's
# launch settings at the 14B widths (bench/act_quant.py --sweep), each attention backend Patch
# SageAttention can run there vs SDPA (its own order, FlashAttention and cuDNN forced) at L = 51000 and
# 111600, with peak VRAM and the NaN/Inf check's cost, after each mode's dispatch decision (bench/attention.py; the
# carried comfy-kitchen lacks its CUDA extension, so its int8 attention shows as unavailable), Sample Video's seed
# noise on the GPU against SkyReels-V2's scripts' draw (bench/noise.py), Sample Video's step time and peak
# VRAM at the 1.3B model's widths and at the 14B model's (4 of its 40 blocks): FP8 + Patch SageAttention auto,
# FP8 + sageattn and bf16 with ComfyUI's attention and with cuDNN's first, with profiled steps (bench/sample.py;
# its other configurations with no --only), and TeaCache's calls skipped,
# latent distance and time beside core's EasyCache / LazyCache (bench/teacache.py). Without a GPU every part
# runs its CPU smoke version, with three times the time limits, so the script is checked on any machine
# (tests/host/test_host_bench.py). Exits 1 if any section failed or ran out of time, after running all of them.
set -uo pipefail
# --prepare-sage2's wheel as an absolute path: it is read after the cd below, and again from a temp folder
[ "${1:-}" = --prepare-sage2 ] && [ -n "${2:-}" ] && set -- "$1" "$(realpath -m -- "$2")"
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}

prepare() {   # [kitchen | sage2 WHEEL]
    set -e
    local variant=${1:-} sage=sageattention==1.0.6 kitchen=""
    local server="av==18.1.0 sqlalchemy==2.1.9 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types"
    local py="--python-version 3.12 --implementation cp --only-binary=:all: --no-deps"
    local plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64"
    plat="$plat --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64"
    # What the pack and ComfyUI import for these runs and the device image (Python 3.12, torch) does not hold.
    # ComfyUI's main.py (bench/dynamic_vram.py) needs SQLAlchemy and pydantic too; its frontend package (85 MB) is
    # replaced there by an empty --front-end-root, as only its API is used.
    # --prepare-kitchen: for the attention section alone, which imports neither av nor the server's packages.
    # --prepare-sage2: the given sageattention 2.x wheel in place of 1.0.6, and of the server's packages only av (the
    # in-process Sample Video runs import it; main.py's Dynamic VRAM section is not among SAGE2_SECTIONS).
    case $variant in
        kitchen) server="" kitchen=1 ;;
        sage2) [ -f "${2:-}" ] || { echo "gpu_check: --prepare-sage2 needs the sageattention 2.x wheel" >&2; exit 2; }
               sage="" server="av==18.1.0" ;;
    esac
    rm -rf "$WHEELS" .host && mkdir -p "$WHEELS"
    "$PYTHON" -m pip download -q $py $plat -d "$WHEELS" $sage torchsde==0.2.6 trampoline==0.1.2 \
        comfy-aimdo==0.4.13 simpleeval blake3 $server ${server:+typing-inspection}
    [ "$variant" != sage2 ] || slim_wheel "$2" "$PWD/$WHEELS"
    # comfy-kitchen's wheel is 58 MB, nearly all CUDA/HIP extensions: leave them out (its loader then uses the
    # eager backend) to stay inside the 64 MiB the device tool carries; --prepare-kitchen keeps the CUDA one
    # (48 MB compressed; an abi3 build) in place of av and the server's packages, to time its int8 attention.
    local tmp whl repo=$PWD
    tmp=$(mktemp -d)
    "$PYTHON" -m pip download -q $py $plat -d "$tmp" comfy-kitchen==0.2.31
    whl=$(ls "$tmp"/comfy_kitchen-*.whl)
    mkdir "$tmp/x"
    (cd "$tmp/x" && unzip -q "$whl" && rm -f comfy_kitchen/backends/hip/_C.* \
        && { [ -n "$kitchen" ] || rm -f comfy_kitchen/backends/*/_C.*; } && zip -q -r "$repo/$WHEELS/${whl##*/}" .)
    rm -rf "$tmp"
    # The host without its tests, templates, API nodes and tokenizer data (none is used by these runs).
    local host; host=$(PYTHONPATH=tests "$PYTHON" -c 'from comfy_host import find_host; print(find_host() or "")')
    [ -n "$host" ] || { echo "gpu_check: no ComfyUI host found (set COMFYUI_PATH)" >&2; exit 2; }
    mkdir -p .host
    tar -C "$host" --exclude='__pycache__' --exclude='*.db' --exclude='./comfy/sd1_tokenizer' \
        --exclude='./comfy/text_encoders/*_tokenizer' --exclude='./tests' --exclude='./tests-unit' \
        --exclude='./blueprints' --exclude='./comfy_api_nodes' --exclude='./script_examples' --exclude='./models' \
        --exclude='./output' --exclude='./input' --exclude='./temp' --exclude='./user' --exclude='./custom_nodes' \
        -cf - . | tar -C .host -xf -
    mkdir -p .host/custom_nodes .host/models
    local exclude; exclude=$(git rev-parse --git-path info/exclude)     # a worktree's .git is a file
    mkdir -p "$(dirname "$exclude")"
    for p in "/$WHEELS/" /.host/; do grep -qx "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done
    du -sh "$WHEELS" .host
    echo "gpu_check: prepared; total to carry: $(du -cm "$WHEELS" .host | tail -1 | cut -f1) MiB (limit 64 with the repo)"
}

slim_wheel() {   # wheel, folder: a copy without the debug information its build left in the extensions
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && unzip -q "$1" && find . -name '*.so' -exec strip --strip-debug {} + && zip -q -r "$2/${1##*/}" .)
    rm -rf "$tmp"
}

case "${1:-}" in
    --prepare) prepare; exit ;;
    --prepare-kitchen) prepare kitchen; exit ;;
    --prepare-sage2) prepare sage2 "${2:-}"; exit ;;
esac

DEST=${OUT:-test-artifacts}
mkdir -p "$DEST"
REPORT="$DEST/gpu_check.txt"
export PYTHONUNBUFFERED=1
# The carried wheels are built for the device's Python 3.12 (GPU_CHECK_OWN_PACKAGES=1: this environment's own)
# (each folder into its own target: a second run on the same machine gets none of the first one's packages)
if [ -d "$WHEELS" ] && [ -z "${GPU_CHECK_OWN_PACKAGES:-}" ]; then
    site=/tmp/site-${WHEELS##*/}
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$WHEELS"/*.whl 2>/dev/null; then
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "gpu_check: the carried wheels do not fit this Python; using its own packages"
    fi
fi
[ -d .host ] && export COMFYUI_PATH=${COMFYUI_PATH:-$PWD/.host}

# GPU_CHECK_ONLY="attention backends": that section alone (with the device's); "A|B": the sections whose titles hold
# A or B. The sections sageattention 2.x changes, and the Linears' (the 1.6x question), for its one run:
SAGE2_SECTIONS="fp8 GEMM|activation quantization|attention backends|Sample Video"
[ "${GPU_CHECK_ONLY:-}" != sage2 ] || GPU_CHECK_ONLY=$SAGE2_SECTIONS
wanted() {   # title
    [ -z "${GPU_CHECK_ONLY:-}" ] || [ "$1" = device ] && return 0
    local part parts
    IFS='|' read -ra parts <<< "$GPU_CHECK_ONLY"
    for part in "${parts[@]}"; do [[ "$1" == *"$part"* ]] && return 0; done
    return 1
}
section() {   # title, time limit in seconds, command...
    local title=$1 limit=$2; shift 2
    wanted "$title" || return 0
    echo "== $title ($(date -u +%FT%TZ))" | tee -a "$REPORT"
    [ -z "${GPU_CHECK_LIST:-}" ] || return 0    # GPU_CHECK_LIST=1: only which sections would run
    timeout "$((limit * SCALE))" "$@" 2>&1 | tee -a "$REPORT"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "!! $title: exit $rc" | tee -a "$REPORT"; FAILED=$((FAILED + 1)); }
}
FAILED=0
# The limits keep a lent GPU's run inside its minutes; a CPU (a loaded 2-core CI machine) gets three times as long.
SCALE=$(nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 3)

: > "$REPORT"
section "device" 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || echo 'no GPU: CPU smoke run'; $PYTHON -c 'import torch; print(\"torch\", torch.__version__)'"
# Two ComfyUI start-ups (on a CPU, the smoke run, they alone take about a minute)
section "Dynamic VRAM, ComfyUI's default on NVIDIA (bench/dynamic_vram.py)" 80 "$PYTHON" bench/dynamic_vram.py
section "fp8 GEMM and weight memory (bench/gemm.py)" 45 "$PYTHON" bench/gemm.py
section "activation quantization memory and time (bench/act_quant.py)" 40 "$PYTHON" bench/act_quant.py --repeats 3 \
    --sweep
section "attention backends vs SDPA (bench/attention.py)" 40 "$PYTHON" bench/attention.py
section "noise drawn as SkyReels-V2's scripts (bench/noise.py)" 25 "$PYTHON" bench/noise.py
# (the other configurations ran on 2026-12-04: docs/benchmarks.md)
section "Sample Video (bench/sample.py)" 120 "$PYTHON" bench/sample.py --steps 2 --only abgi
section "Sample Video, the 14B widths, 4 blocks (bench/sample.py)" 120 "$PYTHON" bench/sample.py --steps 2 \
    --model 14B --only agi
section "TeaCache vs EasyCache / LazyCache (bench/teacache.py)" 80 "$PYTHON" bench/teacache.py --steps 6 --quick
# Every section runs whatever the others did; the exit status says whether one failed.
echo "gpu_check: wrote $REPORT$([ "$FAILED" = 0 ] || echo "; $FAILED section(s) failed, marked !!")"
[ "$FAILED" = 0 ]
