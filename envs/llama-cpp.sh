#!/usr/bin/env bash
# The llama.cpp baseline: llama-cpp-python built from source for this CPU (-DGGML_NATIVE=ON), with
# llama-cpp-amx.patch applied to the llama.cpp it vendors, and gguf (which writes the GGUF files).
#
#     bash envs/llama-cpp.sh        # in the project's virtual environment
#
# The patch is the fix of llama.cpp PR #26954, not yet released: without it the AMX kernels die of
# SIGILL on q8_0 weights on Intel Xeons with AMX (docs/design-notes.md#baseline-crash). It touches
# only those kernels; on a CPU without AMX it changes nothing that runs. Extra cmake options go
# in CMAKE_ARGS as usual.
set -euo pipefail

version=0.3.36  # the patch is written against this release's vendored llama.cpp
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
patch -d "$work/llama_cpp_python-$version" -p1 --forward < "$here/llama-cpp-amx.patch"
echo "building llama-cpp-python $version (llama.cpp compiles: several minutes on 2 cores)"
CMAKE_ARGS="-DGGML_NATIVE=ON ${CMAKE_ARGS:-}" \
    python -m pip install --no-deps --force-reinstall "$work/llama_cpp_python-$version"
# --no-deps above keeps pip from reinstalling numpy; this installs what the package needs that is
# missing (diskcache, jinja2, ...) without replacing the build, and gguf
python -m pip install "llama-cpp-python==$version" gguf
