// gloo_shim.cpp - implementation of the C API declared in gloo_shim.h.
//
// Design notes (the "why" behind the code below):
//
// * Every extern "C" entry point runs its body inside `guard`, which catches
//   gloo::Exception, gloo::EnforceNotMet, std::exception and `...`: nothing
//   unwinds into the caller.
//
// * Gloo closes a pair for good after any error and, on an application-side
//   timeout, closes every pair of the context. So the shim keeps a per-context
//   "broken" state: the first failure records a reason, wakes every waiting
//   operation (abortWaitSend/abortWaitRecv on each in-flight buffer) and closes
//   all connections so that peers fail promptly too.
//
// * Gloo only wakes operations that are still queued on a pair when that pair
//   fails; a transfer whose bytes are already moving is only noticed when its
//   wait times out. To notice a dead peer at once, each context posts one
//   "sentinel" receive per peer on a reserved slot nobody sends on, and a
//   monitor thread waits on it: when any pair fails, Gloo signals the sentinel,
//   and the monitor breaks the context, which wakes the in-flight operations.
//
// * Gloo aborts the process (an exception escapes its I/O thread) when a
//   message is longer than the posted receive, and silently truncates a shorter
//   one. The shim therefore derives the Gloo slot from (slot, nbytes): sides
//   that disagree on the size never match, and the receiver times out instead.
//   User slots map to Gloo slots below 2^63; the sentinel slot is 2^64-1.
//
// * A message is posted as ceil(nbytes / GLOO_SHIM_CHUNK_BYTES) pieces on one
//   unbound buffer (offset sends/recvs, as Gloo's own collectives do); both
//   sides derive the same pieces from nbytes, and the pieces of one message
//   match in order because they share (peer, Gloo slot).

#include "gloo_shim.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>

namespace {

using std::chrono::milliseconds;

// Gloo slot of the per-peer sentinel receives (see the file comment).
constexpr uint64_t kSentinelSlot = ~uint64_t{0};

// How long the monitor waits on the sentinel: "forever" (ten years), still far
// from overflowing std::chrono::steady_clock.
constexpr milliseconds kSentinelWait{milliseconds(3650LL * 24 * 3600 * 1000)};

// Text of the exception Gloo signals to every pair of a context when an
// operation of that context times out (tcp/unbound_buffer.cc).
constexpr const char* kGlooApplicationTimeout =
    "Application timeout caused pair closure";

// Text of Gloo's exception for a wait that timed out.
constexpr const char* kGlooWaitTimedOut = "Timed out waiting";

// Gloo's connect waits for 5x the context timeout (tcp/pair.h). The shim sets
// the context timeout to 1/kConnectTimeoutFactor of the requested timeout, so
// a rendezvous fails after about the requested time. Operations always pass
// an explicit timeout, so the context timeout has no other use here.
constexpr int64_t kConnectTimeoutFactor = 5;

// The splitmix64 finalizer: a bijective 64-bit mix.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Gloo slot for a user (slot, nbytes): below 2^63, so never the sentinel.
uint64_t glooSlot(uint64_t slot, size_t nbytes) {
  return mix64(slot ^ mix64(static_cast<uint64_t>(nbytes) + 0x9e3779b97f4a7c15ULL)) >>
         1;
}

// Copies `msg` into the caller's buffer, truncated and NUL-terminated.
void writeMessage(char* buf, size_t cap, const std::string& msg) {
  if (buf == nullptr || cap == 0) {
    return;
  }
  const size_t n = std::min(cap - 1, msg.size());
  std::memcpy(buf, msg.data(), n);
  buf[n] = '\0';
}

// A failure with a shim status code, thrown inside the shim only.
struct ShimError : std::runtime_error {
  ShimError(gloo_shim_status status, const std::string& msg)
      : std::runtime_error(msg), status(status) {}
  gloo_shim_status status;
};

// Runs `body` (returning a status), converting every exception to a status
// and a message. Used by each entry point that reports errors.
template <typename F>
gloo_shim_status guard(char* err, size_t errCap, const char* what, F&& body) noexcept {
  try {
    return body();
  } catch (const ShimError& e) {
    writeMessage(err, errCap, e.what());
    return e.status;
  } catch (const gloo::IoException& e) {
    writeMessage(err, errCap, std::string(what) + ": " + e.what());
    return GLOO_SHIM_IO;
  } catch (const gloo::Exception& e) {
    writeMessage(err, errCap, std::string(what) + ": " + e.what());
    return GLOO_SHIM_INTERNAL;
  } catch (const gloo::EnforceNotMet& e) {
    writeMessage(err, errCap, std::string(what) + ": " + e.what());
    return GLOO_SHIM_INTERNAL;
  } catch (const std::bad_alloc&) {
    writeMessage(err, errCap, std::string(what) + ": out of memory");
    return GLOO_SHIM_INTERNAL;
  } catch (const std::exception& e) {
    writeMessage(err, errCap, std::string(what) + ": " + e.what());
    return GLOO_SHIM_INTERNAL;
  } catch (...) {
    try {
      writeMessage(err, errCap, std::string(what) + ": unknown C++ exception");
    } catch (...) {
      // Out of memory while reporting: the status alone has to do.
    }
    return GLOO_SHIM_INTERNAL;
  }
}

// Text of the exception being handled (call only inside a catch block).
std::string currentExceptionText() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown C++ exception";
  }
}

// Validates a timeout and converts it.
milliseconds checkTimeout(int64_t timeoutMs) {
  if (timeoutMs < 1 || timeoutMs > GLOO_SHIM_MAX_TIMEOUT_MS) {
    throw ShimError(
        GLOO_SHIM_INVALID_ARGUMENT,
        "timeout must be between 1 and " + std::to_string(GLOO_SHIM_MAX_TIMEOUT_MS) +
            " ms, got " + std::to_string(timeoutMs) + " ms");
  }
  return milliseconds(timeoutMs);
}

// Sets SIGPIPE to SIG_IGN once per process if nobody installed a disposition.
void ignoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current;
    std::memset(&current, 0, sizeof(current));
    if (sigaction(SIGPIPE, nullptr, &current) != 0) {
      return;
    }
    const bool isDefault =
        (current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_DFL;
    if (isDefault) {
      struct sigaction ignore;
      std::memset(&ignore, 0, sizeof(ignore));
      ignore.sa_handler = SIG_IGN;
      sigemptyset(&ignore.sa_mask);
      sigaction(SIGPIPE, &ignore, nullptr);
    }
  });
}

// A gloo::rendezvous::Store that forwards to the caller's C callbacks.
// gloo's connectFullMesh calls set, get, and wait(keys, timeout).
class CallbackStore : public gloo::rendezvous::Store {
 public:
  CallbackStore(const gloo_shim_store& callbacks, milliseconds timeout)
      : cb_(callbacks), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    char err[512] = {0};
    const int rc = cb_.set(cb_.user, key.data(), key.size(),
                           reinterpret_cast<const uint8_t*>(data.data()), data.size(),
                           err, sizeof(err));
    if (rc != GLOO_SHIM_STORE_OK) {
      throw ShimError(GLOO_SHIM_STORE,
                      "rendezvous store: set of key '" + key + "' failed: " +
                          describe(err));
    }
  }

  std::vector<char> get(const std::string& key) override {
    return getWithin(key, timeout_);
  }

  void wait(const std::vector<std::string>& keys) override {
    wait(keys, timeout_);
  }

  // Gloo passes its context timeout here, which the shim shortened (see
  // kConnectTimeoutFactor): the store's own timeout is used instead.
  void wait(const std::vector<std::string>& keys, const milliseconds&) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (const auto& key : keys) {
      const auto left = std::chrono::duration_cast<milliseconds>(
          deadline - std::chrono::steady_clock::now());
      getWithin(key, std::max(left, milliseconds(1)));
    }
  }

 private:
  // Collects the value handed to the sink; never throws into the callback.
  struct Sink {
    std::vector<char> value;
    bool delivered = false;
    bool failed = false;
  };

  static void sinkFn(void* sink, const uint8_t* data, size_t len) {
    auto* s = static_cast<Sink*>(sink);
    try {
      if (len > 0 && data != nullptr) {
        s->value.assign(reinterpret_cast<const char*>(data),
                        reinterpret_cast<const char*>(data) + len);
      } else {
        s->value.clear();
      }
      s->delivered = true;
    } catch (...) {
      s->failed = true;
    }
  }

  static std::string describe(const char* err) {
    return err[0] != '\0' ? std::string(err) : std::string("no details given");
  }

  std::vector<char> getWithin(const std::string& key, milliseconds timeout) {
    Sink sink;
    char err[512] = {0};
    const int rc = cb_.get(cb_.user, key.data(), key.size(), timeout.count(), &sink,
                           &CallbackStore::sinkFn, err, sizeof(err));
    if (rc == GLOO_SHIM_STORE_TIMEOUT) {
      throw ShimError(GLOO_SHIM_TIMEOUT,
                      "rendezvous timed out after " + std::to_string(timeout_.count()) +
                          " ms waiting for store key '" + key +
                          "' (do all ranks connect with the same store, prefix and "
                          "size?)");
    }
    if (rc != GLOO_SHIM_STORE_OK) {
      throw ShimError(GLOO_SHIM_STORE, "rendezvous store: get of key '" + key +
                                           "' failed: " + describe(err));
    }
    if (sink.failed) {
      throw std::bad_alloc();
    }
    if (!sink.delivered) {
      throw ShimError(GLOO_SHIM_STORE, "rendezvous store: get of key '" + key +
                                           "' returned success without a value");
    }
    return std::move(sink.value);
  }

  const gloo_shim_store& cb_;
  const milliseconds timeout_;
};

}  // namespace

struct gloo_shim_op;

struct gloo_shim_context {
  gloo_shim_context(int rank, int size) : rank(rank), size(size) {}

  // Stops the monitor; members are then destroyed in reverse order of
  // declaration: sentinel buffer, Gloo context (pairs), device (I/O thread).
  ~gloo_shim_context() {
    stopping.store(true);
    if (sentinel) {
      sentinel->abortWaitRecv();
    }
    if (monitor.joinable()) {
      monitor.join();
    }
  }

  const int rank;
  const int size;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> gctx;
  char sentinelByte = 0;
  std::unique_ptr<gloo::transport::UnboundBuffer> sentinel;
  std::thread monitor;
  std::atomic<bool> stopping{false};

  // Guards everything below.
  std::mutex mu;
  std::unordered_set<gloo_shim_op*> inflight;
  bool broken = false;
  bool aborted = false;
  std::string reason;

  // Moves the context to the broken state (first reason wins), wakes every
  // in-flight operation and closes all connections. Never throws.
  void breakContext(const std::string& why, bool byAbort) noexcept;

  // Status and message for an operation refused or woken by the broken state.
  std::pair<gloo_shim_status, std::string> brokenStatus();
};

struct gloo_shim_op {
  enum class State { Posted, Completed, Failed };

  gloo_shim_op(gloo_shim_context* ctx, bool isSend, int peer, uint64_t slot,
               size_t nbytes)
      : ctx(ctx),
        isSend(isSend),
        peer(peer),
        slot(slot),
        nbytes(nbytes),
        pieces(nbytes == 0 ? 1 : (nbytes - 1) / GLOO_SHIM_CHUNK_BYTES + 1) {}

  // "send to peer 1 (slot 7, 4096 bytes)"
  std::string describe() const {
    return std::string(isSend ? "send to" : "recv from") + " peer " +
           std::to_string(peer) + " (slot " + std::to_string(slot) + ", " +
           std::to_string(nbytes) + " bytes)";
  }

  gloo_shim_context* const ctx;
  const bool isSend;
  const int peer;
  const uint64_t slot;
  const size_t nbytes;
  // Number of pieces the message travels in (see the file comment).
  const size_t pieces;
  std::unique_ptr<gloo::transport::UnboundBuffer> buf;
  State state = State::Posted;
  // Pieces whose completion has been waited for.
  size_t piecesDone = 0;
};

void gloo_shim_context::breakContext(const std::string& why, bool byAbort) noexcept {
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!broken) {
      first = true;
      broken = true;
      aborted = byAbort;
      try {
        reason = why;
      } catch (...) {
        // Keep the (empty) reason; the state change is what matters.
      }
    }
    for (auto* op : inflight) {
      if (op->isSend) {
        op->buf->abortWaitSend();
      } else {
        op->buf->abortWaitRecv();
      }
    }
  }
  if (first && gctx) {
    try {
      gctx->closeConnections();
    } catch (...) {
      // A pair that cannot be closed is already unusable; nothing to add.
    }
  }
}

std::pair<gloo_shim_status, std::string> gloo_shim_context::brokenStatus() {
  std::lock_guard<std::mutex> lock(mu);
  if (aborted) {
    return {GLOO_SHIM_ABORTED, "the context was aborted"};
  }
  return {GLOO_SHIM_BROKEN, "the context is broken: " + reason};
}

namespace {

// Body of the monitor thread: see the file comment.
void monitorMain(gloo_shim_context* ctx) noexcept {
  try {
    if (ctx->sentinel->waitRecv(nullptr, kSentinelWait)) {
      ctx->breakContext("internal error: a message arrived on the reserved monitor slot",
                        false);
    }
    // false: woken by the destructor.
  } catch (const std::exception& e) {
    if (ctx->stopping.load()) {
      return;
    }
    const std::string what = e.what();
    if (what.find(kGlooApplicationTimeout) != std::string::npos) {
      // A local operation timed out; its waiter reports that, with details.
      return;
    }
    try {
      ctx->breakContext("connection to a peer failed: " + what, false);
    } catch (...) {
      ctx->breakContext("connection to a peer failed", false);
    }
  } catch (...) {
    if (!ctx->stopping.load()) {
      ctx->breakContext("connection to a peer failed (unknown error)", false);
    }
  }
}

// Posts a send or receive; on success *out owns the op.
gloo_shim_status postOp(gloo_shim_context* ctx, bool isSend, int peer, uint64_t slot,
                        void* ptr, size_t nbytes, gloo_shim_op** out) {
  if (ctx == nullptr || out == nullptr) {
    throw ShimError(GLOO_SHIM_INVALID_ARGUMENT, "NULL context or output pointer");
  }
  *out = nullptr;
  if (peer < 0 || peer >= ctx->size || peer == ctx->rank) {
    throw ShimError(GLOO_SHIM_INVALID_ARGUMENT,
                    "peer rank " + std::to_string(peer) + " is not another rank of " +
                        "this group (rank " + std::to_string(ctx->rank) + " of " +
                        std::to_string(ctx->size) + ")");
  }
  if (ptr == nullptr && nbytes > 0) {
    throw ShimError(GLOO_SHIM_INVALID_ARGUMENT, "NULL buffer with a non-zero size");
  }
  auto op = std::make_unique<gloo_shim_op>(ctx, isSend, peer, slot, nbytes);
  op->buf = ctx->gctx->createUnboundBuffer(ptr, nbytes);
  bool registered = false;
  {
    std::lock_guard<std::mutex> lock(ctx->mu);
    if (!ctx->broken) {
      ctx->inflight.insert(op.get());
      registered = true;
    }
  }
  if (!registered) {
    const auto st = ctx->brokenStatus();
    throw ShimError(st.first, op->describe() + " refused: " + st.second);
  }
  try {
    const uint64_t gslot = glooSlot(slot, nbytes);
    for (size_t i = 0; i < op->pieces; i++) {
      const size_t offset = i * GLOO_SHIM_CHUNK_BYTES;
      const size_t len = std::min(GLOO_SHIM_CHUNK_BYTES, nbytes - offset);
      if (isSend) {
        op->buf->send(peer, gslot, offset, len);
      } else {
        op->buf->recv(peer, gslot, offset, len);
      }
    }
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(ctx->mu);
      ctx->inflight.erase(op.get());
    }
    const std::string msg = op->describe() + " failed to post: " + currentExceptionText();
    ctx->breakContext(msg, false);
    throw ShimError(GLOO_SHIM_IO, msg);
  }
  *out = op.release();
  return GLOO_SHIM_OK;
}

// Waits for a posted op; a failure breaks the context.
gloo_shim_status waitOp(gloo_shim_op* op, int64_t timeoutMs) {
  if (op == nullptr) {
    throw ShimError(GLOO_SHIM_INVALID_ARGUMENT, "NULL op");
  }
  const milliseconds timeout = checkTimeout(timeoutMs);
  if (op->state != gloo_shim_op::State::Posted) {
    throw ShimError(GLOO_SHIM_INVALID_ARGUMENT,
                    op->describe() + ": the op was already waited on");
  }
  gloo_shim_context* ctx = op->ctx;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool completed = true;
  try {
    while (completed && op->piecesDone < op->pieces) {
      // Never 0 ms: Gloo would treat it as already expired.
      const auto left = std::max(milliseconds(1),
                                 std::chrono::ceil<milliseconds>(
                                     deadline - std::chrono::steady_clock::now()));
      completed = op->isSend ? op->buf->waitSend(nullptr, left)
                             : op->buf->waitRecv(nullptr, left);
      if (completed) {
        op->piecesDone++;
      }
    }
  } catch (...) {
    op->state = gloo_shim_op::State::Failed;
    const std::string what = currentExceptionText();
    const bool timedOut = what.find(kGlooWaitTimedOut) != std::string::npos;
    std::string msg;
    if (timedOut) {
      msg = op->describe() + " timed out after " + std::to_string(timeoutMs) +
            " ms (the peer may be dead or slow, or not posting the matching " +
            (op->isSend ? "recv" : "send") + " with the same slot and size): " + what;
    } else {
      msg = op->describe() + " failed: " + what;
    }
    ctx->breakContext(msg, false);
    throw ShimError(timedOut ? GLOO_SHIM_TIMEOUT : GLOO_SHIM_IO, msg);
  }
  if (!completed) {
    op->state = gloo_shim_op::State::Failed;
    const auto st = ctx->brokenStatus();
    throw ShimError(st.first, op->describe() + " interrupted: " + st.second);
  }
  op->state = gloo_shim_op::State::Completed;
  return GLOO_SHIM_OK;
}

// Frees an op; see gloo_shim_op_destroy.
void destroyOp(gloo_shim_op* op) noexcept {
  gloo_shim_context* ctx = op->ctx;
  {
    std::lock_guard<std::mutex> lock(ctx->mu);
    ctx->inflight.erase(op);
  }
  if (op->state == gloo_shim_op::State::Posted) {
    try {
      ctx->breakContext(op->describe() + " was abandoned before it completed", false);
    } catch (...) {
      ctx->breakContext("an operation was abandoned before it completed", false);
    }
  }
  // Blocks until Gloo's I/O thread holds no reference to the buffer.
  delete op;
}

// Blocking send or receive: post, wait, free.
gloo_shim_status transfer(gloo_shim_context* ctx, bool isSend, int peer, uint64_t slot,
                          void* ptr, size_t nbytes, int64_t timeoutMs) {
  checkTimeout(timeoutMs);
  gloo_shim_op* raw = nullptr;
  postOp(ctx, isSend, peer, slot, ptr, nbytes, &raw);
  struct Free {
    gloo_shim_op* op;
    ~Free() { destroyOp(op); }
  } free{raw};
  return waitOp(raw, timeoutMs);
}

}  // namespace

extern "C" {

gloo_shim_status gloo_shim_context_create(int rank, int size,
                                          const gloo_shim_store* store,
                                          const char* prefix,
                                          const gloo_shim_options* opts,
                                          gloo_shim_context** out, char* err,
                                          size_t err_cap) {
  return guard(err, err_cap, "gloo context creation", [&]() -> gloo_shim_status {
    if (out == nullptr || store == nullptr || store->set == nullptr ||
        store->get == nullptr || prefix == nullptr || opts == nullptr) {
      throw ShimError(GLOO_SHIM_INVALID_ARGUMENT,
                      "NULL output, store, store callback, prefix or options");
    }
    *out = nullptr;
    if (size < 1 || rank < 0 || rank >= size) {
      throw ShimError(GLOO_SHIM_INVALID_ARGUMENT,
                      "invalid rank " + std::to_string(rank) + " for group size " +
                          std::to_string(size));
    }
    const milliseconds timeout = checkTimeout(opts->timeout_ms);
    ignoreSigpipeOnce();

    gloo::transport::tcp::attr attr;
    if (opts->iface != nullptr && opts->iface[0] != '\0') {
      attr.iface = opts->iface;
    } else if (opts->hostname != nullptr && opts->hostname[0] != '\0') {
      attr.hostname = opts->hostname;
    }

    auto ctx = std::make_unique<gloo_shim_context>(rank, size);
    try {
      ctx->device = gloo::transport::tcp::CreateDevice(attr);
    } catch (const std::exception& e) {
      const std::string where = !attr.iface.empty()      ? "interface '" + attr.iface + "'"
                                : !attr.hostname.empty() ? "address '" + attr.hostname + "'"
                                                         : std::string("this host's name");
      throw ShimError(GLOO_SHIM_IO, "cannot create the Gloo TCP device on " + where +
                                        ": " + e.what());
    }
    CallbackStore callbacks(*store, timeout);
    gloo::rendezvous::PrefixStore prefixed(prefix, callbacks);
    ctx->gctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->gctx->setTimeout(
        milliseconds(std::max<int64_t>(1, timeout.count() / kConnectTimeoutFactor)));
    try {
      ctx->gctx->connectFullMesh(prefixed, ctx->device);
    } catch (const ShimError&) {
      throw;
    } catch (const std::exception& e) {
      const std::string what = e.what();
      const bool timedOut = what.find("timeout") != std::string::npos ||
                            what.find("Timed out") != std::string::npos;
      throw ShimError(timedOut ? GLOO_SHIM_TIMEOUT : GLOO_SHIM_IO,
                      "connecting rank " + std::to_string(rank) + " of " +
                          std::to_string(size) + " (prefix '" + prefix +
                          "') failed: " + what);
    }

    if (size > 1) {
      ctx->sentinel = ctx->gctx->createUnboundBuffer(&ctx->sentinelByte, 1);
      for (int peer = 0; peer < size; peer++) {
        if (peer != rank) {
          ctx->sentinel->recv(peer, kSentinelSlot, 0, 1);
        }
      }
      ctx->monitor = std::thread(monitorMain, ctx.get());
    }
    *out = ctx.release();
    return GLOO_SHIM_OK;
  });
}

void gloo_shim_context_destroy(gloo_shim_context* ctx) {
  if (ctx == nullptr) {
    return;
  }
  try {
    delete ctx;
  } catch (...) {
    // Destructors of Gloo objects do not throw; nothing may escape anyway.
  }
}

void gloo_shim_context_abort(gloo_shim_context* ctx) {
  if (ctx == nullptr) {
    return;
  }
  ctx->breakContext("the context was aborted", true);
}

int gloo_shim_context_is_broken(gloo_shim_context* ctx, char* reason,
                                size_t reason_cap) {
  if (ctx == nullptr) {
    return 0;
  }
  try {
    const auto st = [&] {
      std::lock_guard<std::mutex> lock(ctx->mu);
      return ctx->broken;
    }();
    if (!st) {
      return 0;
    }
    writeMessage(reason, reason_cap, ctx->brokenStatus().second);
  } catch (...) {
    writeMessage(reason, reason_cap, "the context is broken");
  }
  return 1;
}

gloo_shim_status gloo_shim_send(gloo_shim_context* ctx, int peer, uint64_t slot,
                                const void* ptr, size_t nbytes, int64_t timeout_ms,
                                char* err, size_t err_cap) {
  return guard(err, err_cap, "gloo send", [&] {
    // Gloo's unbound buffers take non-const memory; a send only reads it.
    return transfer(ctx, true, peer, slot, const_cast<void*>(ptr), nbytes, timeout_ms);
  });
}

gloo_shim_status gloo_shim_recv(gloo_shim_context* ctx, int peer, uint64_t slot,
                                void* ptr, size_t nbytes, int64_t timeout_ms,
                                char* err, size_t err_cap) {
  return guard(err, err_cap, "gloo recv", [&] {
    return transfer(ctx, false, peer, slot, ptr, nbytes, timeout_ms);
  });
}

gloo_shim_status gloo_shim_post_send(gloo_shim_context* ctx, int peer, uint64_t slot,
                                     const void* ptr, size_t nbytes,
                                     gloo_shim_op** out, char* err, size_t err_cap) {
  return guard(err, err_cap, "gloo post send", [&] {
    return postOp(ctx, true, peer, slot, const_cast<void*>(ptr), nbytes, out);
  });
}

gloo_shim_status gloo_shim_post_recv(gloo_shim_context* ctx, int peer, uint64_t slot,
                                     void* ptr, size_t nbytes, gloo_shim_op** out,
                                     char* err, size_t err_cap) {
  return guard(err, err_cap, "gloo post recv", [&] {
    return postOp(ctx, false, peer, slot, ptr, nbytes, out);
  });
}

gloo_shim_status gloo_shim_op_wait(gloo_shim_op* op, int64_t timeout_ms, char* err,
                                   size_t err_cap) {
  return guard(err, err_cap, "gloo wait", [&] { return waitOp(op, timeout_ms); });
}

void gloo_shim_op_destroy(gloo_shim_op* op) {
  if (op != nullptr) {
    destroyOp(op);
  }
}

}  // extern "C"
