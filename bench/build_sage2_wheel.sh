#!/usr/bin/env bash
# Builds the sageattention 2.x wheel that `bash bench/gpu_check.sh --prepare-sage2 WHEEL` carries to a lent
# H100/H200. PyPI has only 1.0.6 (Triton kernels) and the device machine can fetch nothing, so the CUDA kernels are
# compiled here, with no GPU and no driver, by this machine's nvcc for the device image (Python 3.12, torch
# 2.11.0+cu130 from PyPI: the device tool's notes on its machines). Only the Hopper kernels are built (_qattn_sm90 and _fused,
# sm_90a): the sm80/sm89 extensions would triple the build and are not what an H100/H200 runs. 3 to 6 minutes on
# 2 cores, after torch's download (reuse a venv with SAGE2_VENV).
#
#   bash bench/build_sage2_wheel.sh SAGEATTENTION_GIT_DIR OUT_DIR
#
# SAGEATTENTION_GIT_DIR is what `fetch github:thu-ml/SageAttention` prints; the commit built is d1a57a5 (2.2.0, the
# one rehearsed) unless SAGE2_REF names another. PY312 and CUDA_HOME name a Python 3.12 and the CUDA 13 toolkit where
# python3.12 (or pyenv's) and /usr/local/cuda-13.0 are not them.
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,13p "$0" >&2; exit 2; }
die() { echo "build_sage2_wheel: $*" >&2; exit 1; }
src_git=$1
ref=${SAGE2_REF:-d1a57a5}
out=$(mkdir -p "$2" && cd "$2" && pwd)
find_py312() {   # python3.12 on the PATH, else pyenv's newest 3.12
    if python3.12 -c '' 2>/dev/null; then echo python3.12; return; fi
    ls -d "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python 2>/dev/null | tail -1 || true
}
py312=${PY312:-$(find_py312)}
[ -n "$py312" ] && "$py312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null ||
    die "no Python 3.12 found: set PY312 to one"
cuda=$(cd "${CUDA_HOME:-/usr/local/cuda-13.0}" 2>/dev/null && pwd) || die "no CUDA 13 toolkit found: set CUDA_HOME"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=${SAGE2_VENV:-$work/venv}
mkdir -p "$venv" && venv=$(cd "$venv" && pwd)
git -C "$src_git" rev-parse -q --verify "$ref^{commit}" >/dev/null || die "$src_git has no commit $ref"
command -v unzip >/dev/null || die "unzip is needed (apt-get install unzip)"

mkdir "$work/src" "$work/stubs"
# (from a partial snapshot git may print "invalid object" for blobs left out of it, its assets/ pictures: harmless)
git -C "$src_git" archive "$ref" setup.py pyproject.toml sageattention csrc LICENSE README.md MANIFEST.in |
    tar -C "$work/src" -x
"$py312" - "$work/src/setup.py" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
# The two conditions that add the sm80 and sm89 extensions; TORCH_CUDA_ARCH_LIST=9.0 sets HAS_SM90 alone, but
# both conditions name HAS_SM90 too.
text, n = re.subn(r"^    if HAS_SM(80|89) or [^\n]*:$", "    if False:", text, flags=re.M)
assert n == 2, f"setup.py changed upstream: {n} of the 2 extension conditions found"
open(path, "w").write(text)
EOF

[ -x "$venv/bin/python" ] || "$py312" -m venv "$venv"
"$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' || die "$venv is not a Python 3.12 venv"
"$venv/bin/pip" install -q --disable-pip-version-check torch==2.11.0 numpy packaging "setuptools<82" wheel ninja
# The sm90 extension links libcuda for one driver call (cuTensorMapEncodeTiled); no driver here, so a stub with
# that symbol and the driver's soname, which the wheel then records as libcuda.so.1.
echo "int cuTensorMapEncodeTiled(void) { return 1; }" |
    gcc -shared -fPIC -x c - -o "$work/stubs/libcuda.so" -Wl,-soname,libcuda.so.1
ln -s libcuda.so "$work/stubs/libcuda.so.1"
# This toolkit lacks cusparse.h, which torch's headers include; the pip CUDA headers have it.
inc=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "include"))')
[ -f "$inc/cusparse.h" ] || die "no cusparse.h in $inc: torch==2.11.0 is no longer a CUDA 13 build?"
inc=-I$inc
(cd "$work/src" && LDFLAGS="-L$work/stubs" CUDA_HOME="$cuda" PATH="$cuda/bin:$PATH" TORCH_CUDA_ARCH_LIST=9.0 \
    MAX_JOBS=${MAX_JOBS:-2} NVCC_APPEND_FLAGS="$inc" CXX_APPEND_FLAGS="$inc" \
    "$venv/bin/pip" wheel -q --no-build-isolation --no-deps -w "$out" .)

wheel=$(ls -t "$out"/sageattention-2*-cp312-*.whl | head -1)
# Checks: Hopper machine code in the sm90 extension, libcuda.so.1 recorded, and the wheel imports with its sm90
# kernels against that torch (the stub stands in for the driver's library).
mkdir "$work/check" && (cd "$work/check" && unzip -q "$wheel")
so=$(ls "$work/check"/sageattention/_qattn_sm90*.so)
# The toolkit here has no cuobjdump; the Triton package torch brings carries one.
cuobjdump=$(command -v cuobjdump || ls "$venv"/lib/python3.12/site-packages/triton/backends/nvidia/bin/cuobjdump)
"$cuobjdump" --dump-elf "$so" | grep 'arch = sm_90a' >/dev/null || die "no sm_90a code in $so"
readelf -d "$so" | grep 'libcuda.so.1' >/dev/null || die "$so does not link libcuda.so.1"
(cd "$work/check" && LD_LIBRARY_PATH="$work/stubs" "$venv/bin/python" -c \
    'from sageattention import core; assert core.SM90_ENABLED, "sm90 kernels did not import"')
echo "build_sage2_wheel: $wheel"
