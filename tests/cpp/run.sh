#!/usr/bin/env bash
# Builds libray_rdt.so and the C++ ABI tests, then runs the tests twice:
#   1. built with ASan + UBSan (leaks and invalid accesses in the test code and in
#      every allocation, since ASan replaces malloc for the Rust library too);
#   2. built without sanitizers, under valgrind (invalid accesses inside the
#      uninstrumented Rust library, and definite or indirect leaks).
# Fails on any test failure, sanitizer report, valgrind error or leak.
#
# Environment: RDT_LIB_DIR   directory holding a prebuilt libray_rdt.so
#                            (default: `cargo build`, then target/debug)
#              CXX           C++ compiler (default g++)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if [[ -z "${RDT_LIB_DIR:-}" ]]; then
    cargo build -p ray_rdt --lib
    RDT_LIB_DIR="$root/target/debug"
fi
out="$root/target/cpp-tests"
mkdir -p "$out"
cxx="${CXX:-g++}"
flags=(-std=c++17 -g -Wall -Wextra -Werror -I"$root/include")
sources=("$root"/tests/cpp/*.cpp)
link=(-L"$RDT_LIB_DIR" -lray_rdt -pthread)
export LD_LIBRARY_PATH="$RDT_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== C ABI tests, ASan + UBSan"
"$cxx" "${flags[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
    "${sources[@]}" "${link[@]}" -o "$out/abi_tests_asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 "$out/abi_tests_asan"

echo "== C ABI tests, valgrind"
"$cxx" "${flags[@]}" -O1 "${sources[@]}" "${link[@]}" -o "$out/abi_tests"
valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=1 "$out/abi_tests"
