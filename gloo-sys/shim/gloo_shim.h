/*
 * gloo_shim.h - a small C API over the Gloo library (Debian libgloo-dev).
 *
 * Part of the gloo-sys crate of ray-rdt. Only what the RDT data plane needs:
 * a full-mesh context made through a caller-provided rendezvous store, tagged
 * point-to-point send/receive of raw buffers (blocking and posted), abort, and
 * a "broken" state.
 *
 * Conventions
 * - Every function is noexcept from C's point of view: no C++ exception and
 *   no Rust panic crosses this boundary.
 * - Functions that can fail return a gloo_shim_status. The message for a
 *   failure is written into the caller's buffer `err` of `err_cap` bytes,
 *   truncated and always NUL-terminated when err_cap > 0 (err may be NULL
 *   when err_cap is 0). Nothing is written on success.
 * - Every timeout is in milliseconds and must be in 1..=GLOO_SHIM_MAX_TIMEOUT_MS:
 *   Gloo treats 0 as "already expired" and has no infinite wait.
 * - Any failure of a transfer (timeout, I/O error, abort, an operation
 *   destroyed before it completed) makes the context *broken*: Gloo cannot
 *   recover a pair after an error, so the shim closes every connection of the
 *   context (peers notice at once) and every later operation fails with
 *   GLOO_SHIM_BROKEN (or GLOO_SHIM_ABORTED after gloo_shim_context_abort).
 *   Recovery means destroying the context and creating a new one under a new
 *   rendezvous prefix.
 * - Creating a context sets SIGPIPE to SIG_IGN for the process if, and only
 *   if, its disposition is still SIG_DFL: Gloo writes to sockets without
 *   MSG_NOSIGNAL, so a dead peer would otherwise kill the process. A handler
 *   the application installed is left alone.
 * - Messages match by (peer, slot, nbytes), in posting order. The shim maps
 *   (slot, nbytes) to the Gloo slot, so a sender and a receiver that disagree
 *   on the size never match (Gloo itself would abort the process on an
 *   oversized message and silently truncate an undersized one): a size
 *   mismatch shows up as a timeout on both sides.
 * - A message larger than GLOO_SHIM_CHUNK_BYTES travels as consecutive pieces
 *   of that size (posted at once, waited in order): on loopback this measured
 *   10-20% faster than one piece. Both sides must use this same shim.
 */
#ifndef GLOO_SHIM_H
#define GLOO_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes returned by the shim. */
typedef int gloo_shim_status;
#define GLOO_SHIM_OK 0
/* A bad argument (NULL pointer, rank out of range, non-positive timeout...). */
#define GLOO_SHIM_INVALID_ARGUMENT 1
/* The operation did not complete within its timeout; the context is now broken. */
#define GLOO_SHIM_TIMEOUT 2
/* gloo_shim_context_abort was called on the context. */
#define GLOO_SHIM_ABORTED 3
/* The context broke earlier (or while this operation waited); see the message. */
#define GLOO_SHIM_BROKEN 4
/* A connection failed (peer died, connection reset...); the context is now broken. */
#define GLOO_SHIM_IO 5
/* The rendezvous store failed or timed out during context creation. */
#define GLOO_SHIM_STORE 6
/* Anything else Gloo or the C++ runtime threw (includes std::bad_alloc). */
#define GLOO_SHIM_INTERNAL 7

/* Results of the store callbacks. */
#define GLOO_SHIM_STORE_OK 0
/* get: the key did not appear within the timeout. */
#define GLOO_SHIM_STORE_TIMEOUT 1
/* Any other failure; the callback should describe it in `err`. */
#define GLOO_SHIM_STORE_ERROR 2

/* Size of the pieces a large message is split into (4 MiB). */
#define GLOO_SHIM_CHUNK_BYTES ((size_t)4 << 20)

/* Largest accepted timeout: 2^31 - 1 ms (about 24.8 days). */
#define GLOO_SHIM_MAX_TIMEOUT_MS 2147483647LL

/* Receives the value found by a store get: called at most once, with `len`
 * bytes at `data` (data may be NULL when len is 0), before `get` returns. */
typedef void (*gloo_shim_sink_fn)(void* sink, const uint8_t* data, size_t len);

/*
 * A rendezvous key-value store provided by the caller. The shim wraps it in a
 * gloo::rendezvous::Store and prefixes every key with "<prefix>/".
 * Both callbacks are called from the thread that called
 * gloo_shim_context_create, only during that call.
 *
 * set: store `value` under `key` (overwrite allowed). Returns GLOO_SHIM_STORE_OK
 *      or GLOO_SHIM_STORE_ERROR.
 * get: block until `key` exists or `timeout_ms` passed; on success call
 *      sink_fn(sink, value, len) once and return GLOO_SHIM_STORE_OK; return
 *      GLOO_SHIM_STORE_TIMEOUT if the key did not appear in time, otherwise
 *      GLOO_SHIM_STORE_ERROR.
 * On failure a callback may write a NUL-terminated message into `err`
 * (`err_cap` bytes, err_cap > 0).
 */
typedef struct gloo_shim_store {
  void* user;
  int (*set)(void* user, const char* key, size_t key_len, const uint8_t* value,
             size_t value_len, char* err, size_t err_cap);
  int (*get)(void* user, const char* key, size_t key_len, int64_t timeout_ms,
             void* sink, gloo_shim_sink_fn sink_fn, char* err, size_t err_cap);
} gloo_shim_store;

/* Options for gloo_shim_context_create. */
typedef struct gloo_shim_options {
  /* Address or host name to bind and advertise (e.g. "127.0.0.1"). NULL or ""
   * with no iface: Gloo resolves this machine's host name. */
  const char* hostname;
  /* Network interface to bind (e.g. "eth0"); takes precedence over hostname.
   * NULL or "" for none. */
  const char* iface;
  /* Timeout of the rendezvous (store waits and connections), and Gloo's
   * context timeout. 1..=GLOO_SHIM_MAX_TIMEOUT_MS. */
  int64_t timeout_ms;
} gloo_shim_options;

/* A connected full-mesh Gloo context (opaque). Thread-safe: any function below
 * may be called on it from any thread, concurrently, except destroy. */
typedef struct gloo_shim_context gloo_shim_context;

/* A posted send or receive (opaque). Used by one thread at a time. */
typedef struct gloo_shim_op gloo_shim_op;

/*
 * Creates a TCP device, rendezvouses all `size` ranks through `store` under
 * `prefix` (use a prefix that is unique per rendezvous: keys are never
 * deleted) and connects the full mesh. Blocks until every rank joined or
 * opts->timeout_ms passed. On success *out holds a context to release with
 * gloo_shim_context_destroy. `store` is not used after this call returns.
 */
gloo_shim_status gloo_shim_context_create(int rank, int size,
                                          const gloo_shim_store* store,
                                          const char* prefix,
                                          const gloo_shim_options* opts,
                                          gloo_shim_context** out, char* err,
                                          size_t err_cap);

/*
 * Closes the connections, stops the context's threads and frees it. Every
 * op of the context must have been destroyed first. NULL is a no-op.
 */
void gloo_shim_context_destroy(gloo_shim_context* ctx);

/*
 * Makes every pending and future operation of `ctx` fail promptly with
 * GLOO_SHIM_ABORTED and closes all its connections, so peers fail promptly
 * too. Callable from any thread, any number of times. NULL is a no-op.
 */
void gloo_shim_context_abort(gloo_shim_context* ctx);

/*
 * Returns 1 if the context is broken (or aborted), 0 if not (or ctx is NULL).
 * When broken and reason_cap > 0, writes why into `reason`.
 */
int gloo_shim_context_is_broken(gloo_shim_context* ctx, char* reason,
                                size_t reason_cap);

/*
 * Sends `nbytes` at `ptr` to rank `peer` on `slot` and waits up to
 * `timeout_ms` for the send to complete (data handed to the kernel; the peer
 * must post the matching receive). `ptr` may be NULL when nbytes is 0.
 */
gloo_shim_status gloo_shim_send(gloo_shim_context* ctx, int peer, uint64_t slot,
                                const void* ptr, size_t nbytes,
                                int64_t timeout_ms, char* err, size_t err_cap);

/*
 * Receives exactly `nbytes` from rank `peer` on `slot` into `ptr`, waiting up
 * to `timeout_ms`. The sender must send exactly `nbytes` on the same slot.
 */
gloo_shim_status gloo_shim_recv(gloo_shim_context* ctx, int peer, uint64_t slot,
                                void* ptr, size_t nbytes, int64_t timeout_ms,
                                char* err, size_t err_cap);

/*
 * Posts a send without waiting. The memory must stay valid and unchanged
 * until gloo_shim_op_destroy returns. On success *out holds the op: wait on it
 * with gloo_shim_op_wait, then free it with gloo_shim_op_destroy.
 */
gloo_shim_status gloo_shim_post_send(gloo_shim_context* ctx, int peer,
                                     uint64_t slot, const void* ptr,
                                     size_t nbytes, gloo_shim_op** out,
                                     char* err, size_t err_cap);

/* Posts a receive without waiting; like gloo_shim_post_send. The memory must
 * stay valid and must not be read until the wait succeeded. */
gloo_shim_status gloo_shim_post_recv(gloo_shim_context* ctx, int peer,
                                     uint64_t slot, void* ptr, size_t nbytes,
                                     gloo_shim_op** out, char* err,
                                     size_t err_cap);

/*
 * Waits up to `timeout_ms` for a posted op to complete. An op can be waited
 * on successfully once; waiting again fails with GLOO_SHIM_INVALID_ARGUMENT.
 */
gloo_shim_status gloo_shim_op_wait(gloo_shim_op* op, int64_t timeout_ms,
                                   char* err, size_t err_cap);

/*
 * Frees an op. Destroying an op that has not completed breaks its context
 * (the peer's matching operation can no longer be honoured). Returns only
 * when Gloo's I/O thread no longer touches the op's memory. NULL is a no-op.
 */
void gloo_shim_op_destroy(gloo_shim_op* op);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GLOO_SHIM_H */
