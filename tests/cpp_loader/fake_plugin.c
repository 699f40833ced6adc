/* A stand-in for libray_rdt.so that the loader must refuse. Built twice by
 * run.sh:
 *   -DFAKE_MAJOR=3 : exports every symbol name the loader looks for first, but
 *                    reports C ABI version 3.3 -> "ABI_MISMATCH" naming both
 *                    versions;
 *   -DFAKE_MAJOR=2 : the right major version, but only rdt_abi_version and
 *                    rdt_last_error -> "SYMBOL_MISSING" naming rdt_buffer_free.
 */
#include <stdint.h>

#ifndef FAKE_MAJOR
#error "define FAKE_MAJOR"
#endif

uint32_t rdt_abi_version(void) { return ((uint32_t)FAKE_MAJOR << 16) | 3u; }

const char *rdt_last_error(void) { return "fake plugin"; }
