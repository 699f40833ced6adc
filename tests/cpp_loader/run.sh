#!/usr/bin/env bash
# Builds libray_rdt.so and the core-worker loader test (the same
# ray-patches/core_worker/rdt_plugin_loader.cc a Ray fork compiles), then runs
# the two-process test twice:
#   1. built with ASan + UBSan, leak detection on (both processes);
#   2. built without sanitizers, both processes under valgrind memcheck; only
#      definite leaks fail (the plugin's own threads may leave "possibly lost"
#      blocks behind; they are not shown).
# Fails on any test failure, sanitizer report, valgrind error or definite leak.
#
# Suppressions: valgrind.supp (Gloo's address padding sent over its store;
# documented in the file). None for the plugin.
#
# Environment: RDT_LIB_DIR        directory holding a prebuilt libray_rdt.so
#                                 (default: `cargo build` at the repo root, target/debug)
#              CXX, CC            compilers (default g++, gcc)
set -euo pipefail
# The test counts what each transport moved between the two processes: no small
# objects inside their records, no same-host path instead of gloo.
export RAY_RDT_INLINE_BYTES=0 RAY_RDT_SAME_HOST_PATH=0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
if [[ -z "${RDT_LIB_DIR:-}" ]]; then
    cargo build -j1 --lib
    RDT_LIB_DIR="$root/target/debug"
fi
lib="$RDT_LIB_DIR/libray_rdt.so"
out="$root/target/cpp-loader-test"
mkdir -p "$out"
cxx="${CXX:-g++}"
cc="${CC:-gcc}"
flags=(-std=c++17 -g -Wall -Wextra -Werror -I"$root/include" -I"$root/ray-patches/core_worker")
sources=("$root/ray-patches/core_worker/rdt_plugin_loader.cc" "$here/loader_test.cc")

# Two libraries the loader must refuse: wrong ABI major, and missing functions.
"$cc" -shared -fPIC -DFAKE_MAJOR=3 "$here/fake_plugin.c" -o "$out/libfake_rdt_abi3.so"
"$cc" -shared -fPIC -DFAKE_MAJOR=2 "$here/fake_plugin.c" -o "$out/libfake_rdt_missing.so"

valgrind_supp=(--suppressions="$here/valgrind.supp")

echo "== loader test, ASan + UBSan"
"$cxx" "${flags[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
    "${sources[@]}" -ldl -pthread -o "$out/loader_test_asan"
# fast_unwind_on_malloc=0: the Rust library keeps no frame pointers, so leak
# stacks need the slow unwinder.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0 \
    UBSAN_OPTIONS=print_stacktrace=1 "$out/loader_test_asan" "$lib" "$out"

echo "== loader test, valgrind"
"$cxx" "${flags[@]}" -O1 "${sources[@]}" -ldl -pthread -o "$out/loader_test"
# Both processes run under valgrind (--trace-children). Only definite leaks fail
# and are shown: the plugin's endpoint and gloo threads may still be winding down
# at exit, which leaves "possibly lost" thread-local blocks.
valgrind -q --trace-children=yes --child-silent-after-fork=yes --num-callers=40 \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --error-exitcode=1 "${valgrind_supp[@]}" \
    "$out/loader_test" "$lib" "$out"
