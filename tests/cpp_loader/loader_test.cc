// Drives libray_rdt.so through ray-patches/core_worker/rdt_plugin_loader.{h,cc}
// the way a patched Ray core worker would, across two processes.
//
//   loader_test <libray_rdt.so> <dir with fake plugins>
//
// Process A (this one, the producer) checks the loader's error paths, loads the
// plugin, starts process B (fork + exec of this binary with --consumer) with two
// pipes, serves the rendezvous of a 2-rank gloo group that both join, stores
// objects of CPU DLPack tensors (several dtypes and shapes, a 0-d, an empty and a
// strided tensor, with counting deleters) as task returns over shm and gloo and
// sends their metadata records to B. B resolves them as task arguments, checks
// every byte, releases them and reports back with its counters. A then frees the
// objects and checks that every deleter ran exactly once and that the counters
// match. Error cases: missing library, wrong ABI, missing symbol, garbage and
// truncated records, an object freed before B resolves it, NULL arguments,
// duplicate IDs, unknown groups and transports.
//
// The last line is "N passed, N failed" (A's and B's checks together); the exit
// status is non-zero on any failure.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "rdt_plugin_loader.h"

using ray::rdt::Context;
using ray::rdt::Plugin;
using ray::rdt::Status;
using ray::rdt::StatusCode;
using ray::rdt::StatusOr;

namespace {

// ---------------------------------------------------------------------------
// Checks

const char *g_role = "A";
int g_passed = 0;
int g_failed = 0;

bool Record(bool ok, const char *file, int line, const std::string &what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::fprintf(stderr, "[%s] FAIL %s:%d: %s\n", g_role, file, line, what.c_str());
  }
  return ok;
}

#define EXPECT(cond) Record((cond), __FILE__, __LINE__, #cond)
#define EXPECT_MSG(cond, msg) Record((cond), __FILE__, __LINE__, std::string(#cond) + " -- " + (msg))
// Checks a Status/StatusOr is OK; prints its error otherwise. Evaluates to ok.
#define EXPECT_OK(expr) ExpectOk((expr), #expr, __FILE__, __LINE__)
// Checks a failure with `code` whose message contains `needle`.
#define EXPECT_ERR(expr, code, needle) ExpectErr((expr), (code), (needle), #expr, __FILE__, __LINE__)

const Status &StatusOf(const Status &s) { return s; }
template <typename T>
const Status &StatusOf(const StatusOr<T> &s) {
  return s.status();
}
template <typename T>
bool IsOk(const StatusOr<T> &s) {
  return s.ok();
}
bool IsOk(const Status &s) { return s.ok(); }

template <typename S>
bool ExpectOk(const S &s, const char *expr, const char *file, int line) {
  bool ok = IsOk(s);
  Record(ok, file, line, std::string(expr) + " failed: " + StatusOf(s).ToString());
  return ok;
}

template <typename S>
bool ExpectErr(const S &s, StatusCode code, const std::string &needle, const char *expr,
               const char *file, int line) {
  if (IsOk(s)) {
    Record(false, file, line, std::string(expr) + " succeeded, expected " + ray::rdt::StatusCodeName(code));
    return false;
  }
  const Status &st = StatusOf(s);
  bool ok = st.code() == code && st.message().find(needle) != std::string::npos;
  Record(ok, file, line,
         std::string(expr) + " gave \"" + st.ToString() + "\", expected " +
             ray::rdt::StatusCodeName(code) + " containing \"" + needle + "\"");
  if (ok) {
    std::printf("[%s]   error text ok: %s\n", g_role, st.ToString().c_str());
  }
  return ok;
}

// ---------------------------------------------------------------------------
// Pipes between A and B: frames of a 4-byte length and the bytes.

constexpr int kPipeTimeoutMs = 60000;

bool WriteAll(int fd, const void *data, size_t len) {
  const char *p = static_cast<const char *>(data);
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, void *data, size_t len) {
  char *p = static_cast<char *>(data);
  while (len > 0) {
    pollfd pfd{fd, POLLIN, 0};
    int r = poll(&pfd, 1, kPipeTimeoutMs);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      std::fprintf(stderr, "[%s] pipe read timed out or failed\n", g_role);
      return false;
    }
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;  // EOF: the peer died.
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool Send(int fd, const std::string &msg) {
  uint32_t len = static_cast<uint32_t>(msg.size());
  return WriteAll(fd, &len, sizeof len) && WriteAll(fd, msg.data(), msg.size());
}

bool Recv(int fd, std::string *msg) {
  uint32_t len = 0;
  if (!ReadAll(fd, &len, sizeof len)) return false;
  msg->assign(len, '\0');
  return len == 0 || ReadAll(fd, &(*msg)[0], len);
}

std::string Hex(const std::string &bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out.empty() ? std::string("-") : out;
}

std::string Unhex(const std::string &hex) {
  if (hex == "-") return std::string();
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<std::string> Split(const std::string &s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

// ---------------------------------------------------------------------------
// Test objects: the same catalog is built in both processes, so B knows what
// every tensor must contain.

struct TensorSpec {
  uint8_t code;
  uint8_t bits;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // Empty: compact (DLTensor.strides = NULL).
  uint64_t byte_offset;          // Producer-side byte_offset of the first element.
};

struct ObjectSpec {
  const char *name;
  std::vector<TensorSpec> tensors;
};

std::vector<ObjectSpec> Catalog() {
  return {
      {"mixed",  // 9 tensors: more than the loader's first guess of 8.
       {
           {kDLFloat, 32, {2, 3}, {}, 0},
           {kDLInt, 64, {7}, {}, 16},  // non-zero byte_offset
           {kDLUInt, 8, {3, 4, 5}, {}, 0},
           {kDLFloat, 64, {}, {}, 0},    // 0-d
           {kDLInt, 32, {0, 4}, {}, 0},  // empty
           {kDLBool, 8, {9}, {}, 0},
           {kDLFloat, 16, {2, 2}, {}, 0},
           {kDLBfloat, 16, {3}, {}, 0},
           {kDLInt, 16, {3, 2}, {1, 3}, 0},  // strided: a transposed 2x3
       }},
      {"large", {{kDLFloat, 32, {256, 257}, {}, 0}}},
      {"empty-only", {{kDLFloat, 32, {0}, {}, 0}}},
      {"scalar-only", {{kDLInt, 8, {}, {}, 0}}},
  };
}

int64_t Numel(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t SpecBytes(const ObjectSpec &o) {
  uint64_t total = 0;
  for (const auto &t : o.tensors) total += static_cast<uint64_t>(Numel(t.shape)) * (t.bits / 8);
  return total;
}

// The expected value of byte `b` of logical element `e` (row-major order) of
// tensor `t` of the object with seed `seed`.
uint8_t Pattern(int seed, size_t t, int64_t e, int b, const TensorSpec &spec) {
  if (spec.code == kDLBool) return static_cast<uint8_t>((e + seed) & 1);
  return static_cast<uint8_t>(seed * 131 + t * 31 + e * 7 + b * 3 + 1);
}

// Offset in elements of logical element `e` of a tensor with `shape`/`strides`.
int64_t ElementOffset(int64_t e, const std::vector<int64_t> &shape,
                      const std::vector<int64_t> &strides) {
  int64_t off = 0;
  for (size_t d = shape.size(); d-- > 0;) {
    int64_t idx = e % shape[d];
    e /= shape[d];
    off += idx * strides[d];
  }
  return off;
}

std::vector<int64_t> CompactStrides(const std::vector<int64_t> &shape) {
  std::vector<int64_t> s(shape.size());
  int64_t acc = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    s[d] = acc;
    acc *= std::max<int64_t>(shape[d], 1);
  }
  return s;
}

// Producer tensors: each records its deleter calls by id.
constexpr int kMaxTensors = 512;
std::atomic<int> g_deleter_calls[kMaxTensors];
std::atomic<int> g_next_tensor_id{0};

struct Owned {
  int id;
  std::vector<uint8_t> buffer;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

void CountingDeleter(DLManagedTensor *t) {
  Owned *owned = static_cast<Owned *>(t->manager_ctx);
  g_deleter_calls[owned->id].fetch_add(1);
  delete owned;
  delete t;
}

struct Made {
  DLManagedTensor *tensor;
  int id;
  const void *first_element;  // data + byte_offset
};

Made MakeTensor(int seed, size_t index, const TensorSpec &spec) {
  auto *owned = new Owned;
  owned->id = g_next_tensor_id.fetch_add(1);
  owned->shape = spec.shape;
  owned->strides = spec.strides.empty() ? CompactStrides(spec.shape) : spec.strides;
  const int item = spec.bits / 8;
  const int64_t numel = Numel(spec.shape);
  int64_t max_off = 0;
  for (size_t d = 0; d < spec.shape.size(); ++d) {
    if (spec.shape[d] > 0) max_off += (spec.shape[d] - 1) * owned->strides[d];
  }
  owned->buffer.assign(spec.byte_offset + static_cast<size_t>(numel > 0 ? (max_off + 1) * item : 0) + 1, 0xEE);
  uint8_t *base = owned->buffer.data() + spec.byte_offset;
  for (int64_t e = 0; e < numel; ++e) {
    int64_t off = ElementOffset(e, owned->shape, owned->strides);
    for (int b = 0; b < item; ++b) base[off * item + b] = Pattern(seed, index, e, b, spec);
  }
  auto *t = new DLManagedTensor{};
  t->dl_tensor.data = owned->buffer.data();
  t->dl_tensor.device = DLDevice{kDLCPU, 0};
  t->dl_tensor.ndim = static_cast<int32_t>(spec.shape.size());
  t->dl_tensor.dtype = DLDataType{spec.code, spec.bits, 1};
  t->dl_tensor.shape = owned->shape.empty() ? nullptr : owned->shape.data();
  t->dl_tensor.strides = spec.strides.empty() ? nullptr : owned->strides.data();
  t->dl_tensor.byte_offset = spec.byte_offset;
  t->manager_ctx = owned;
  t->deleter = CountingDeleter;
  return Made{t, owned->id, base};
}

struct Produced {
  std::string id;
  std::string metadata;
  rdt_transport transport;
  int spec;
  int seed;
  std::vector<Made> tensors;
};

std::string MakeObjectId(int n) {
  std::string id(ray::rdt::kObjectIdSize, '\0');
  for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<char>(0xA0 + n + i * 7);
  id[0] = static_cast<char>(n);
  return id;
}

// Checks tensors resolved for `spec` (seed `seed`) byte by byte. Returns the
// number of mismatching tensors.
int VerifyTensors(const std::vector<DLManagedTensor *> &got, const ObjectSpec &spec, int seed,
                  const std::string &label) {
  int bad = 0;
  if (got.size() != spec.tensors.size()) {
    EXPECT_MSG(got.size() == spec.tensors.size(), label + ": tensor count");
    return 1;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const TensorSpec &ts = spec.tensors[i];
    const DLTensor &t = got[i]->dl_tensor;
    std::string where = label + " tensor " + std::to_string(i);
    bool meta_ok = t.device.device_type == kDLCPU && t.dtype.code == ts.code &&
                   t.dtype.bits == ts.bits && t.dtype.lanes == 1 &&
                   t.ndim == static_cast<int32_t>(ts.shape.size()) && got[i]->deleter != nullptr;
    for (int d = 0; meta_ok && d < t.ndim; ++d) meta_ok = t.shape[d] == ts.shape[d];
    EXPECT_MSG(meta_ok, where + ": device/dtype/shape");
    if (!meta_ok) {
      ++bad;
      continue;
    }
    std::vector<int64_t> strides =
        t.strides != nullptr ? std::vector<int64_t>(t.strides, t.strides + t.ndim)
                             : CompactStrides(ts.shape);
    const int item = ts.bits / 8;
    const int64_t numel = Numel(ts.shape);
    const uint8_t *base = static_cast<const uint8_t *>(t.data) + t.byte_offset;
    int64_t mismatches = 0;
    if (numel > 0 && t.data == nullptr) mismatches = numel;
    for (int64_t e = 0; mismatches == 0 && e < numel; ++e) {
      int64_t off = ElementOffset(e, ts.shape, strides);
      for (int b = 0; b < item; ++b) {
        if (base[off * item + b] != Pattern(seed, i, e, b, ts)) ++mismatches;
      }
    }
    EXPECT_MSG(mismatches == 0, where + ": bytes differ");
    if (mismatches != 0) ++bad;
  }
  return bad;
}

// `transfers` counts one per object moved, empty objects included.
void CheckTransfers(const rdt_transport_stats &s, uint64_t objects, const char *name) {
  EXPECT_MSG(s.transfers == objects, std::string(name) + " transfers " + std::to_string(s.transfers) +
                                         ", expected " + std::to_string(objects));
}

// ---------------------------------------------------------------------------
// Process B: the consumer.

constexpr const char kGroup[] = "loader-test-group";
constexpr uint64_t kTimeoutMs = 30000;

std::string NodeId() { return std::string(28, 'N'); }

int RunConsumer(const std::string &lib, int in, int out) {
  g_role = "B";
  auto plugin = Plugin::Load(lib);
  if (!EXPECT_OK(plugin)) return 1;
  auto ctx_or = (*plugin)->NewContext(NodeId(), std::string(16, 'B'));
  if (!EXPECT_OK(ctx_or)) return 1;
  std::unique_ptr<Context> ctx = std::move(ctx_or).value();
  const auto catalog = Catalog();

  uint64_t expect_shm = 0, expect_gloo = 0, shm_objects = 0, gloo_objects = 0;
  uint64_t shm_empty_objects = 0, gloo_empty_objects = 0;
  bool in_group = false;
  std::string msg;
  while (Recv(in, &msg)) {
    auto w = Split(msg);
    if (w.empty()) continue;
    if (w[0] == "group" && w.size() == 2) {
      // rank 1 of the 2-rank gloo group whose rendezvous A serves.
      in_group = EXPECT_OK(ctx->CreateGroup(kGroup, RDT_TRANSPORT_GLOO, 1, 2, w[1], kTimeoutMs));
      Send(out, in_group ? "joined" : "join-failed");
    } else if (w[0] == "obj" && w.size() == 6) {
      // obj <transport> <spec> <seed> <id> <metadata>: resolve as a task argument.
      rdt_transport transport = static_cast<rdt_transport>(std::stoul(w[1]));
      const ObjectSpec &spec = catalog.at(std::stoul(w[2]));
      int seed = std::stoi(w[3]);
      std::string id = Unhex(w[4]), meta = Unhex(w[5]);
      std::string label = ray::rdt::TransportName(transport) + " " + spec.name;
      auto info = (*plugin)->DescribeMetadata(meta);
      if (EXPECT_OK(info)) {
        EXPECT(info->transport == transport);
        EXPECT(info->num_tensors == spec.tensors.size());
        EXPECT(info->total_bytes == SpecBytes(spec));
        EXPECT(info->device.device_type == kDLCPU);
      }
      auto got = ctx->ResolveArgument(id, meta, kTimeoutMs);
      if (EXPECT_OK(got)) {
        int bad = VerifyTensors(*got, spec, seed, label);
        std::printf("[B] resolved %s: %zu tensors, %s\n", label.c_str(), got->size(),
                    bad == 0 ? "every byte matches" : "MISMATCH");
        ray::rdt::ReleaseTensors(&got.value());
        EXPECT(got->empty());
        (transport == RDT_TRANSPORT_SHM ? expect_shm : expect_gloo) += SpecBytes(spec);
        ++(transport == RDT_TRANSPORT_SHM ? shm_objects : gloo_objects);
        if (SpecBytes(spec) == 0) ++(transport == RDT_TRANSPORT_SHM ? shm_empty_objects : gloo_empty_objects);
      }
      Send(out, "resolved");
    } else if (w[0] == "freed" && w.size() == 4) {
      // freed <transport> <id> <metadata>: the producer freed it first.
      std::string id = Unhex(w[2]), meta = Unhex(w[3]);
      auto got = ctx->ResolveArgument(id, meta, 5000);
      EXPECT_ERR(got, StatusCode::kNotFound, "freed");
      if (got.ok()) ray::rdt::ReleaseTensors(&got.value());
      Send(out, "checked");
    } else if (w[0] == "bad" && w.size() == 2) {
      // bad <good metadata>: garbage, truncated and empty records.
      std::string good = Unhex(w[1]);
      std::string id = MakeObjectId(99);
      auto garbage = ctx->ResolveArgument(id, "this is not an RDT metadata record", 1000);
      EXPECT_ERR(garbage, StatusCode::kMalformedMetadata, "");
      EXPECT(!garbage.status().message().empty());
      EXPECT_ERR((*plugin)->DescribeMetadata(std::string(64, '\xff')), StatusCode::kMalformedMetadata, "");
      EXPECT_ERR(ctx->ResolveArgument(id, good.substr(0, good.size() / 2), 1000),
                 StatusCode::kMalformedMetadata, "");
      EXPECT_ERR(ctx->ResolveArgument(id, good.substr(0, 3), 1000), StatusCode::kMalformedMetadata, "");
      EXPECT_ERR(ctx->ResolveArgument(id, "", 1000), StatusCode::kMalformedMetadata, "");
      // A record of a valid object with a wrong-sized object ID never reaches the plugin.
      EXPECT_ERR(ctx->ResolveArgument("short", good, 1000), StatusCode::kLoaderInvalidArgument, "28-byte");
      Send(out, "checked");
    } else if (w[0] == "stats") {
      auto shm = ctx->Stats(RDT_TRANSPORT_SHM);
      auto gloo = ctx->Stats(RDT_TRANSPORT_GLOO);
      if (EXPECT_OK(shm) && EXPECT_OK(gloo)) {
        std::printf("[B] stats shm: received %" PRIu64 " bytes in %" PRIu64
                    " transfers, %" PRIu64 " errors; gloo: received %" PRIu64 " bytes in %" PRIu64
                    " transfers, %" PRIu64 " errors\n",
                    shm->bytes_received, shm->transfers, shm->errors, gloo->bytes_received,
                    gloo->transfers, gloo->errors);
        EXPECT(shm->bytes_received == expect_shm && expect_shm > 0);
        EXPECT(gloo->bytes_received == expect_gloo && expect_gloo > 0);
        CheckTransfers(*shm, shm_objects, "shm");
        CheckTransfers(*gloo, gloo_objects, "gloo");
        EXPECT(shm->bytes_sent == 0 && gloo->bytes_sent == 0);
        EXPECT(shm->errors >= 1 && gloo->errors >= 1);  // the freed objects
      }
      Send(out, "ok");
    } else if (w[0] == "leave") {
      if (in_group) EXPECT_OK(ctx->DestroyGroup(kGroup));
      in_group = false;
      Send(out, "left");
    } else if (w[0] == "done") {
      break;
    } else {
      EXPECT_MSG(false, "unknown message: " + msg);
    }
  }
  if (in_group) EXPECT_OK(ctx->DestroyGroup(kGroup));
  auto counts = ctx->Counts();
  if (EXPECT_OK(counts)) EXPECT(counts->objects == 0);  // received copies are not kept
  ctx.reset();
  plugin->reset();
  Send(out, "result " + std::to_string(g_passed) + " " + std::to_string(g_failed));
  return g_failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------
// Process A: the producer.

struct Child {
  pid_t pid = -1;
  int to = -1;    // A -> B
  int from = -1;  // B -> A
};

Child SpawnConsumer(const std::string &lib) {
  Child c;
  int a2b[2], b2a[2];
  if (pipe2(a2b, O_CLOEXEC) != 0 || pipe2(b2a, O_CLOEXEC) != 0) return c;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return c;
  self[n] = '\0';
  // Everything exec needs is prepared before fork (async-signal-safe child).
  std::string in_fd = "100", out_fd = "101";
  std::vector<char *> argv = {self, const_cast<char *>("--consumer"), const_cast<char *>(lib.c_str()),
                              &in_fd[0], &out_fd[0], nullptr};
  pid_t pid = fork();
  if (pid == 0) {
    if (dup2(a2b[0], 100) < 0 || dup2(b2a[1], 101) < 0) _exit(127);
    execv(self, argv.data());
    _exit(127);
  }
  close(a2b[0]);
  close(b2a[1]);
  c.pid = pid;
  c.to = a2b[1];
  c.from = b2a[0];
  return c;
}

// Sends `msg` to B and waits for its one-line answer.
std::string Ask(const Child &b, const std::string &msg) {
  std::string reply;
  if (!Send(b.to, msg) || !Recv(b.from, &reply)) {
    EXPECT_MSG(false, "no answer from process B to: " + msg.substr(0, 40));
    return "";
  }
  return reply;
}

void TestLoaderErrors(const std::string &lib, const std::string &fake_dir) {
  std::printf("[A] loader errors\n");
  EXPECT_ERR(Plugin::Load("/nonexistent/dir/libray_rdt.so"), StatusCode::kLibraryNotLoaded,
             "/nonexistent/dir/libray_rdt.so");
  EXPECT_ERR(Plugin::Load("/nonexistent/dir/libray_rdt.so"), StatusCode::kLibraryNotLoaded,
             "RAY_RDT_LIB");
  // Not a shared object at all.
  EXPECT_ERR(Plugin::Load("/proc/self/status"), StatusCode::kLibraryNotLoaded, "cannot load");
  // The ABI major differs: both versions named.
  auto wrong = Plugin::Load(fake_dir + "/libfake_rdt_abi3.so");
  EXPECT_ERR(wrong, StatusCode::kAbiMismatch, "version 3.3");
  EXPECT_ERR(wrong, StatusCode::kAbiMismatch,
             "built for major version " + std::to_string(RDT_ABI_VERSION_MAJOR));
  // Right major, missing functions: the first missing one is named.
  EXPECT_ERR(Plugin::Load(fake_dir + "/libfake_rdt_missing.so"), StatusCode::kSymbolMissing,
             "`rdt_buffer_free`");
  // The path from RAY_RDT_LIB when none is given.
  setenv("RAY_RDT_LIB", "/nonexistent/from-env/libray_rdt.so", 1);
  EXPECT_ERR(Plugin::Load(), StatusCode::kLibraryNotLoaded, "/nonexistent/from-env/libray_rdt.so");
  setenv("RAY_RDT_LIB", lib.c_str(), 1);
  auto from_env = Plugin::Load();
  if (EXPECT_OK(from_env)) {
    EXPECT((*from_env)->path() == lib);
    EXPECT(((*from_env)->abi_version() >> 16) == RDT_ABI_VERSION_MAJOR);
  }
  unsetenv("RAY_RDT_LIB");
  // The core worker's on/off switch.
  unsetenv("RAY_RDT_PLUGIN");
  EXPECT(Plugin::EnabledByEnvironment());
  setenv("RAY_RDT_PLUGIN", "0", 1);
  EXPECT(!Plugin::EnabledByEnvironment());
  setenv("RAY_RDT_PLUGIN", " Off ", 1);
  EXPECT(!Plugin::EnabledByEnvironment());
  setenv("RAY_RDT_PLUGIN", "1", 1);
  EXPECT(Plugin::EnabledByEnvironment());
  unsetenv("RAY_RDT_PLUGIN");
  // Transport names as Ray spells them.
  EXPECT(ray::rdt::ParseTransport("GLOO").ok() && *ray::rdt::ParseTransport("GLOO") == RDT_TRANSPORT_GLOO);
  EXPECT(ray::rdt::ParseTransport("shm").ok() && *ray::rdt::ParseTransport("shm") == RDT_TRANSPORT_SHM);
  EXPECT_ERR(ray::rdt::ParseTransport("carrier-pigeon"), StatusCode::kLoaderInvalidArgument, "carrier-pigeon");
}

void TestNullArguments(const Plugin &plugin, const Context &ctx) {
  std::printf("[A] NULL arguments\n");
  const ray::rdt::RdtApi &api = plugin.api();
  const std::string id = MakeObjectId(77);
  const uint8_t *idp = reinterpret_cast<const uint8_t *>(id.data());
  rdt_buffer buf{nullptr, 0};
  auto expect_null = [&](rdt_status s, const char *arg, int line) {
    std::string text = api.last_error();
    Record(s == RDT_ERR_NULL_ARGUMENT && text.find(arg) != std::string::npos, __FILE__, line,
           std::string("NULL `") + arg + "` gave status " + std::to_string(s) + ", \"" + text + "\"");
  };
  expect_null(api.context_put(nullptr, idp, RDT_TRANSPORT_SHM, nullptr, nullptr, 0, &buf), "ctx", __LINE__);
  expect_null(api.context_put(ctx.raw(), nullptr, RDT_TRANSPORT_SHM, nullptr, nullptr, 0, &buf), "object_id", __LINE__);
  expect_null(api.context_put(ctx.raw(), idp, RDT_TRANSPORT_SHM, nullptr, nullptr, 2, &buf), "tensors", __LINE__);
  expect_null(api.context_put(ctx.raw(), idp, RDT_TRANSPORT_SHM, nullptr, nullptr, 0, nullptr), "out_metadata", __LINE__);
  size_t count = 0;
  DLManagedTensor *outs[4];
  expect_null(api.context_fetch(ctx.raw(), idp, nullptr, 10, 0, outs, 4, &count), "metadata", __LINE__);
  expect_null(api.context_fetch(ctx.raw(), idp, idp, 28, 0, outs, 4, nullptr), "out_count", __LINE__);
  expect_null(api.context_fetch(nullptr, idp, idp, 28, 0, outs, 4, &count), "ctx", __LINE__);
  expect_null(api.context_free(ctx.raw(), idp, nullptr), "out_found", __LINE__);
  expect_null(api.context_free(ctx.raw(), nullptr, nullptr), "", __LINE__);
  expect_null(api.context_endpoint(ctx.raw(), nullptr), "out_address", __LINE__);
  expect_null(api.context_counts(ctx.raw(), nullptr, nullptr), "out_objects", __LINE__);
  expect_null(api.context_wait_tensor_freed(nullptr, nullptr, 0), "ctx", __LINE__);
  expect_null(api.rendezvous_serve(ctx.raw(), nullptr, &buf), "bind_host", __LINE__);
  expect_null(api.group_create(ctx.raw(), nullptr, RDT_TRANSPORT_GLOO, 0, 1, "x", 0), "name", __LINE__);
  expect_null(api.group_destroy(ctx.raw(), nullptr), "name", __LINE__);
  expect_null(api.stats_get(RDT_TRANSPORT_SHM, nullptr), "out_stats", __LINE__);
  rdt_metadata *m = nullptr;
  expect_null(api.metadata_decode(nullptr, 3, &m), "data", __LINE__);
  expect_null(api.metadata_decode(idp, 3, nullptr), "out_metadata", __LINE__);
  rdt_context *c = nullptr;
  expect_null(api.context_new(nullptr, 5, nullptr, 0, &c), "node_id", __LINE__);
  expect_null(api.context_new(nullptr, 0, nullptr, 0, nullptr), "out_ctx", __LINE__);
  // Destroy/free functions accept NULL.
  api.context_destroy(nullptr);
  api.metadata_destroy(nullptr);
  api.buffer_free(nullptr);
  api.buffer_free(&buf);
  EXPECT(buf.data == nullptr && buf.len == 0);
  // Through the C++ API: a NULL tensor in the list.
  std::vector<DLManagedTensor *> with_null = {nullptr};
  EXPECT_ERR(ctx.StoreReturn(id, RDT_TRANSPORT_SHM, "", with_null), StatusCode::kNullArgument, "NULL");
  EXPECT_ERR(ctx.StoreReturn("short-id", RDT_TRANSPORT_SHM, "", {}), StatusCode::kLoaderInvalidArgument,
             "28-byte");
  EXPECT_ERR(ctx.Free(""), StatusCode::kLoaderInvalidArgument, "28-byte");
}

// Rejected puts leave the tensors with the caller: no deleter may run.
void TestRejectedPuts(const Context &ctx, std::vector<Made> *to_release) {
  std::printf("[A] rejected task returns keep ownership with the caller\n");
  const auto catalog = Catalog();
  auto make = [&](int seed) {
    std::vector<Made> made;
    std::vector<DLManagedTensor *> raw;
    for (size_t i = 0; i < catalog[0].tensors.size(); ++i) {
      made.push_back(MakeTensor(seed, i, catalog[0].tensors[i]));
      raw.push_back(made.back().tensor);
    }
    return std::make_pair(made, raw);
  };
  auto [made, raw] = make(50);
  EXPECT_ERR(ctx.StoreReturn(MakeObjectId(50), RDT_TRANSPORT_GLOO, "", raw), StatusCode::kInvalidArgument,
             "group");
  EXPECT_ERR(ctx.StoreReturn(MakeObjectId(51), RDT_TRANSPORT_GLOO, "no-such-group", raw), StatusCode::kNotFound,
             "no-such-group");
  // CPU tensors over nccl: refused for their device (the guide's system error).
  EXPECT_ERR(ctx.StoreReturn(MakeObjectId(52), RDT_TRANSPORT_NCCL, "", raw), StatusCode::kUnsupported,
             "which the nccl transport does not move");
  EXPECT_ERR(ctx.StoreReturn(MakeObjectId(53), 42, "", raw), StatusCode::kInvalidArgument, "42");
  // A CUDA tensor on shm is refused (the others stay valid).
  raw[3]->dl_tensor.device = DLDevice{kDLCUDA, 0};
  EXPECT_ERR(ctx.StoreReturn(MakeObjectId(54), RDT_TRANSPORT_SHM, "", raw), StatusCode::kUnsupported, "tensor 3");
  raw[3]->dl_tensor.device = DLDevice{kDLCPU, 0};
  for (const Made &m : made) EXPECT_MSG(g_deleter_calls[m.id].load() == 0, "rejected put ran a deleter");
  // Duplicate ID: the first put owns its tensors, the second keeps them with us.
  auto [dup_made, dup_raw] = make(55);
  auto first = ctx.StoreReturn(MakeObjectId(55), RDT_TRANSPORT_SHM, "", raw);
  EXPECT_OK(first);
  EXPECT_ERR(ctx.StoreReturn(MakeObjectId(55), RDT_TRANSPORT_SHM, "", dup_raw), StatusCode::kAlreadyExists, "");
  for (const Made &m : dup_made) EXPECT_MSG(g_deleter_calls[m.id].load() == 0, "rejected duplicate ran a deleter");
  auto freed = ctx.Free(MakeObjectId(55));
  EXPECT(freed.ok() && *freed);
  for (const Made &m : made) EXPECT_MSG(g_deleter_calls[m.id].load() == 1, "freed object's deleter count");
  // Still ours: release them ourselves (deleter counts checked at the end).
  to_release->insert(to_release->end(), dup_made.begin(), dup_made.end());
}

Produced Produce(const Context &ctx, int n, rdt_transport transport, int spec_index,
                 const std::string &group) {
  const auto catalog = Catalog();
  Produced p;
  p.id = MakeObjectId(n);
  p.transport = transport;
  p.spec = spec_index;
  p.seed = n;
  std::vector<DLManagedTensor *> raw;
  const ObjectSpec &spec = catalog[spec_index];
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    p.tensors.push_back(MakeTensor(n, i, spec.tensors[i]));
    raw.push_back(p.tensors.back().tensor);
  }
  auto meta = ctx.StoreReturn(p.id, transport, group, raw);
  if (EXPECT_OK(meta)) {
    p.metadata = std::move(meta).value();
    EXPECT(!p.metadata.empty());
  }
  return p;
}

int RunProducer(const std::string &lib, const std::string &fake_dir) {
  TestLoaderErrors(lib, fake_dir);

  auto plugin_or = Plugin::Load(lib);
  if (!EXPECT_OK(plugin_or)) return 1;
  std::shared_ptr<Plugin> plugin = plugin_or.value();
  std::printf("[A] loaded %s, C ABI %u.%u\n", plugin->path().c_str(), plugin->abi_version() >> 16,
              plugin->abi_version() & 0xffff);

  Child b = SpawnConsumer(lib);
  if (!EXPECT_MSG(b.pid > 0, "spawning process B")) return 1;

  auto ctx_or = plugin->NewContext(NodeId(), std::string(16, 'A'));
  if (!EXPECT_OK(ctx_or)) return 1;
  std::unique_ptr<Context> ctx = std::move(ctx_or).value();
  auto endpoint = ctx->Endpoint();
  if (EXPECT_OK(endpoint)) std::printf("[A] endpoint %s\n", endpoint->c_str());

  TestNullArguments(*plugin, *ctx);
  std::vector<Made> caller_owned;
  TestRejectedPuts(*ctx, &caller_owned);

  // The gloo group: A (rank 0) serves the rendezvous, B joins as rank 1.
  std::printf("[A] creating the 2-rank gloo group\n");
  bool in_group = false;
  auto address = ctx->ServeRendezvous("127.0.0.1");
  if (EXPECT_OK(address)) {
    if (Send(b.to, "group " + *address)) {
      in_group = EXPECT_OK(ctx->CreateGroup(kGroup, RDT_TRANSPORT_GLOO, 0, 2, *address, kTimeoutMs));
      std::string reply;
      EXPECT(Recv(b.from, &reply) && reply == "joined");
    }
  }
  EXPECT_ERR(ctx->CreateGroup(kGroup, RDT_TRANSPORT_GLOO, 0, 2, address.ok() ? *address : "x", 100),
             StatusCode::kAlreadyExists, kGroup);

  // Task returns over both transports.
  std::printf("[A] storing task returns\n");
  const auto catalog = Catalog();
  std::vector<Produced> objects;
  int n = 1;
  for (rdt_transport transport : {rdt_transport{RDT_TRANSPORT_SHM}, rdt_transport{RDT_TRANSPORT_GLOO}}) {
    if (transport == RDT_TRANSPORT_GLOO && !in_group) continue;
    for (int s = 0; s < static_cast<int>(catalog.size()); ++s) {
      objects.push_back(Produce(*ctx, n++, transport, s, transport == RDT_TRANSPORT_GLOO ? kGroup : ""));
    }
  }
  auto counts = ctx->Counts();
  if (EXPECT_OK(counts)) EXPECT(counts->objects == objects.size());

  // Resolved in its own producer: views of the very same memory.
  std::printf("[A] resolving in the producer itself\n");
  for (const Produced &p : objects) {
    if (p.metadata.empty()) continue;
    auto got = ctx->ResolveArgument(p.id, p.metadata, kTimeoutMs);
    if (!EXPECT_OK(got)) continue;
    bool same = got->size() == p.tensors.size();
    for (size_t i = 0; same && i < got->size(); ++i) {
      const DLTensor &t = (*got)[i]->dl_tensor;
      same = static_cast<const uint8_t *>(t.data) + t.byte_offset == p.tensors[i].first_element;
    }
    EXPECT_MSG(same, "local resolve of object " + std::to_string(p.seed) + " is not the same memory");
    VerifyTensors(*got, catalog[p.spec], p.seed, "local " + std::string(catalog[p.spec].name));
    // RAII release: the views' deleters run when `owned` goes out of scope.
    ray::rdt::OwnedTensors owned(std::move(got).value());
    ray::rdt::OwnedTensors moved = std::move(owned);
    EXPECT(owned.size() == 0 && moved.size() == p.tensors.size());
  }
  for (const Produced &p : objects) {
    for (const Made &m : p.tensors) EXPECT_MSG(g_deleter_calls[m.id].load() == 0, "deleter ran while stored");
  }
  // wait_tensor_freed times out while the object is stored.
  const void *watched = objects.empty() ? nullptr : objects[0].tensors[0].first_element;
  EXPECT_ERR(ctx->WaitTensorFreed(watched, 50), StatusCode::kTimeout, "");

  // B resolves every object as a task argument.
  std::printf("[A] process B resolves %zu objects\n", objects.size());
  uint64_t shm_bytes = 0, gloo_bytes = 0, shm_sent = 0, gloo_sent = 0, shm_empty = 0, gloo_empty = 0;
  for (const Produced &p : objects) {
    if (p.metadata.empty()) continue;
    std::string reply = Ask(b, "obj " + std::to_string(p.transport) + " " + std::to_string(p.spec) + " " +
                                   std::to_string(p.seed) + " " + Hex(p.id) + " " + Hex(p.metadata));
    EXPECT(reply == "resolved");
    (p.transport == RDT_TRANSPORT_SHM ? shm_bytes : gloo_bytes) += SpecBytes(catalog[p.spec]);
    ++(p.transport == RDT_TRANSPORT_SHM ? shm_sent : gloo_sent);
    if (SpecBytes(catalog[p.spec]) == 0) ++(p.transport == RDT_TRANSPORT_SHM ? shm_empty : gloo_empty);
  }

  // Objects freed before B resolves them: a clear error, not a hang.
  std::printf("[A] objects freed before the consumer resolves them\n");
  for (rdt_transport transport : {rdt_transport{RDT_TRANSPORT_SHM}, rdt_transport{RDT_TRANSPORT_GLOO}}) {
    if (transport == RDT_TRANSPORT_GLOO && !in_group) continue;
    Produced p = Produce(*ctx, n++, transport, 1, transport == RDT_TRANSPORT_GLOO ? kGroup : "");
    auto found = ctx->Free(p.id);
    EXPECT(found.ok() && *found);
    for (const Made &m : p.tensors) EXPECT(g_deleter_calls[m.id].load() == 1);
    EXPECT(Ask(b, "freed " + std::to_string(transport) + " " + Hex(p.id) + " " + Hex(p.metadata)) == "checked");
    // In its own producer too, a freed object is refused at once.
    EXPECT_ERR(ctx->ResolveArgument(p.id, p.metadata, 100), StatusCode::kNotFound, "freed");
  }

  // Malformed records.
  if (!objects.empty()) EXPECT(Ask(b, "bad " + Hex(objects[0].metadata)) == "checked");
  EXPECT_ERR(ctx->ResolveArgument(MakeObjectId(98), "\x01\x02garbage", 100), StatusCode::kMalformedMetadata, "");

  // Counters: what B pulled went out of A's plugin.
  EXPECT(Ask(b, "stats") == "ok");
  auto shm = ctx->Stats(RDT_TRANSPORT_SHM);
  auto gloo = ctx->Stats(RDT_TRANSPORT_GLOO);
  if (EXPECT_OK(shm) && EXPECT_OK(gloo)) {
    std::printf("[A] stats shm: sent %" PRIu64 " bytes in %" PRIu64 " transfers; gloo: sent %" PRIu64
                " bytes in %" PRIu64 " transfers (expected %" PRIu64 " and %" PRIu64 ")\n",
                shm->bytes_sent, shm->transfers, gloo->bytes_sent, gloo->transfers, shm_bytes, gloo_bytes);
    EXPECT(shm->bytes_sent == shm_bytes && shm_bytes > 0);
    EXPECT(gloo->bytes_sent == gloo_bytes && gloo_bytes > 0);
    EXPECT(shm->bytes_received == 0 && gloo->bytes_received == 0);
    CheckTransfers(*shm, shm_sent, "shm");
    CheckTransfers(*gloo, gloo_sent, "gloo");
  }
  EXPECT_ERR(ctx->Stats(1234), StatusCode::kInvalidArgument, "");

  // Out of scope: free everything; every deleter runs exactly once. The first
  // object is also viewed locally across the free: its deleters wait for the view.
  std::printf("[A] freeing\n");
  std::vector<DLManagedTensor *> held;
  if (!objects.empty() && !objects[0].metadata.empty()) {
    auto got = ctx->ResolveArgument(objects[0].id, objects[0].metadata, kTimeoutMs);
    if (EXPECT_OK(got)) held = std::move(got).value();
  }
  for (const Produced &p : objects) {
    auto found = ctx->Free(p.id);
    EXPECT(found.ok() && *found == !p.metadata.empty());
    auto again = ctx->Free(p.id);
    EXPECT(again.ok() && !*again);
  }
  if (!held.empty()) {
    for (const Made &m : objects[0].tensors) EXPECT_MSG(g_deleter_calls[m.id].load() == 0, "deleter ran under a live view");
    ray::rdt::ReleaseTensors(&held);
  }
  EXPECT_OK(ctx->WaitTensorFreed(watched, 1000));
  for (const Produced &p : objects) {
    for (const Made &m : p.tensors) {
      EXPECT_MSG(g_deleter_calls[m.id].load() == 1,
                 "tensor " + std::to_string(m.id) + " deleter ran " + std::to_string(g_deleter_calls[m.id].load()) +
                     " times");
    }
  }
  counts = ctx->Counts();
  if (EXPECT_OK(counts)) EXPECT(counts->objects == 0 && counts->bytes == 0);

  // Tear down: leave the group on both sides, let B report and exit.
  if (in_group) {
    EXPECT(Ask(b, "leave") == "left");
    EXPECT_OK(ctx->DestroyGroup(kGroup));
  }
  EXPECT_ERR(ctx->DestroyGroup(kGroup), StatusCode::kNotFound, kGroup);
  Send(b.to, "done");
  std::string result;
  int b_passed = 0, b_failed = 1;
  if (EXPECT(Recv(b.from, &result) && result.rfind("result ", 0) == 0)) {
    auto w = Split(result);
    b_passed = std::stoi(w.at(1));
    b_failed = std::stoi(w.at(2));
  }
  close(b.to);
  int wstatus = 0;
  pid_t waited = -1;
  for (int i = 0; i < 600 && (waited = waitpid(b.pid, &wstatus, WNOHANG)) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (waited == 0) {
    kill(b.pid, SIGKILL);
    waitpid(b.pid, &wstatus, 0);
    EXPECT_MSG(false, "process B did not exit");
  } else {
    EXPECT_MSG(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0,
               "process B exit status " + std::to_string(wstatus));
  }
  close(b.from);

  ctx.reset();
  // The caller-owned tensors of the rejected duplicate put: ours to release.
  for (const Made &m : caller_owned) m.tensor->deleter(m.tensor);
  for (const Made &m : caller_owned) EXPECT(g_deleter_calls[m.id].load() == 1);
  plugin->Unload();
  plugin.reset();

  g_passed += b_passed;
  g_failed += b_failed;
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc == 5 && std::strcmp(argv[1], "--consumer") == 0) {
    return RunConsumer(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <libray_rdt.so> <dir with libfake_rdt_*.so>\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  return RunProducer(argv[1], argv[2]);
}
