// rdt_plugin_loader.h: loads libray_rdt.so (the Ray Direct Transport data plane)
// at run time and wraps its C ABI in a small RAII C++17 API for Ray's core worker.
//
// Nothing here links against the plugin: the library is dlopen()ed, every
// function the loader uses is resolved into `RdtApi` up front (a missing symbol
// is a clear error naming it), and the library's C ABI major version must equal
// the RDT_ABI_VERSION_MAJOR of the ray_rdt.h this file was compiled with. A
// missing or unusable library is an error Status, never an abort, so a core
// worker can log it and run without the plugin.
//
// Errors: every call returns a `Status` (or `StatusOr<T>`): the plugin's
// rdt_status plus the text of rdt_last_error(), read on the calling thread right
// after the failing call. No exceptions are thrown by this code (std::bad_alloc
// from the standard library aside).
//
// Threads: `Plugin` and `Context` are safe to use from any thread at once (the
// plugin's functions are), except that a `Context` must not be destroyed while
// another thread is still calling it.
//
// Lifetime: a `Context` keeps its `Plugin` alive. The library is opened with
// RTLD_NODELETE: unloading a `Plugin` drops the handle, but the code stays
// mapped, because tensors the plugin handed out carry deleters that point into
// it and the plugin's own threads (endpoint, transports) may still be winding
// down. Loading the same path again returns the same library.

#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ray_rdt.h"

namespace ray {
namespace rdt {

/// Ray's binary ObjectID length (ObjectID::Binary().size()).
constexpr size_t kObjectIdSize = 28;

/// Environment variable holding the plugin's path when none is given.
constexpr const char kLibraryPathEnv[] = "RAY_RDT_LIB";

/// Environment variable that turns the plugin off in a core worker when "0".
constexpr const char kPluginSwitchEnv[] = "RAY_RDT_PLUGIN";

/// File name tried (through the dynamic linker's search path) when neither an
/// explicit path nor RAY_RDT_LIB is given.
constexpr const char kDefaultLibraryName[] = "libray_rdt.so";

/// Where a failure came from. Values 1..13 are the plugin's `rdt_status` codes;
/// the rest are the loader's own.
enum class StatusCode : uint32_t {
  kOk = RDT_OK,
  kNullArgument = RDT_ERR_NULL_ARGUMENT,
  kInvalidArgument = RDT_ERR_INVALID_ARGUMENT,
  kNotFound = RDT_ERR_NOT_FOUND,
  kAlreadyExists = RDT_ERR_ALREADY_EXISTS,
  kTimeout = RDT_ERR_TIMEOUT,
  kMalformedMetadata = RDT_ERR_MALFORMED_METADATA,
  kUnsupported = RDT_ERR_UNSUPPORTED,
  kTransport = RDT_ERR_TRANSPORT,
  kObjectFailed = RDT_ERR_OBJECT_FAILED,
  kUnavailable = RDT_ERR_UNAVAILABLE,
  kBufferTooSmall = RDT_ERR_BUFFER_TOO_SMALL,
  kIo = RDT_ERR_IO,
  kInternal = RDT_ERR_INTERNAL,
  /// dlopen() failed: no such file, not a shared object, unresolved dependency.
  kLibraryNotLoaded = 1000,
  /// The library lacks a function this loader needs.
  kSymbolMissing = 1001,
  /// The library's C ABI major version differs from this loader's.
  kAbiMismatch = 1002,
  /// An argument failed the loader's own checks before reaching the plugin.
  kLoaderInvalidArgument = 1003,
};

/// Name of a status code ("RDT_ERR_TIMEOUT", "LIBRARY_NOT_LOADED", ...).
const char *StatusCodeName(StatusCode code);

/// The result of a call: OK, or a code and a message (in the spirit of ray::Status).
class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status OK() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  /// The failure's text (empty when OK).
  const std::string &message() const { return message_; }
  /// "OK", or "<CODE NAME>: <message>".
  std::string ToString() const;

  bool IsTimeout() const { return code_ == StatusCode::kTimeout; }
  bool IsNotFound() const { return code_ == StatusCode::kNotFound; }
  bool IsMalformedMetadata() const { return code_ == StatusCode::kMalformedMetadata; }
  /// True for failures to load the library (any of the loader's load codes).
  bool IsLoadError() const {
    return code_ == StatusCode::kLibraryNotLoaded || code_ == StatusCode::kSymbolMissing ||
           code_ == StatusCode::kAbiMismatch;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// A value or the Status explaining why there is none (in the spirit of
/// ray::StatusOr). Accessing the value of an error result is a programming error
/// (checked with assert in debug builds).
template <typename T>
class StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) {
      status_ = Status(StatusCode::kInternal, "StatusOr built from an OK status without a value");
    }
  }
  StatusOr(T value) : value_(std::move(value)), has_value_(true) {}  // NOLINT

  bool ok() const { return has_value_; }
  const Status &status() const { return status_; }
  T &value() & { return value_; }
  const T &value() const & { return value_; }
  T &&value() && { return std::move(value_); }
  T *operator->() { return &value_; }
  const T *operator->() const { return &value_; }
  T &operator*() & { return value_; }
  const T &operator*() const & { return value_; }
  T &&operator*() && { return std::move(value_); }

 private:
  Status status_;  // OK when has_value_.
  T value_{};
  bool has_value_ = false;
};

/// Every plugin function the loader uses, resolved with dlsym(). The types come
/// from ray_rdt.h, so a signature change there is a compile error here.
struct RdtApi {
  decltype(&rdt_abi_version) abi_version = nullptr;
  decltype(&rdt_last_error) last_error = nullptr;
  decltype(&rdt_buffer_free) buffer_free = nullptr;
  decltype(&rdt_context_new) context_new = nullptr;
  decltype(&rdt_context_destroy) context_destroy = nullptr;
  decltype(&rdt_context_endpoint) context_endpoint = nullptr;
  decltype(&rdt_context_put) context_put = nullptr;
  decltype(&rdt_context_fetch) context_fetch = nullptr;
  decltype(&rdt_context_free) context_free = nullptr;
  decltype(&rdt_context_wait_tensor_freed) context_wait_tensor_freed = nullptr;
  decltype(&rdt_context_counts) context_counts = nullptr;
  decltype(&rdt_rendezvous_serve) rendezvous_serve = nullptr;
  decltype(&rdt_group_create) group_create = nullptr;
  decltype(&rdt_group_destroy) group_destroy = nullptr;
  decltype(&rdt_metadata_decode) metadata_decode = nullptr;
  decltype(&rdt_metadata_destroy) metadata_destroy = nullptr;
  decltype(&rdt_metadata_summary) metadata_summary = nullptr;
  decltype(&rdt_stats_get) stats_get = nullptr;
};

/// What a metadata record says, without fetching anything.
struct MetadataInfo {
  rdt_transport transport = 0;
  DLDevice device{};
  size_t num_tensors = 0;
  uint64_t total_bytes = 0;
};

/// Objects and tensor bytes a context holds.
struct ContextCounts {
  size_t objects = 0;
  uint64_t bytes = 0;
};

/// Transport name ("gloo", "nccl", "nixl", "cuda_ipc", "shm"; case-insensitive,
/// as Ray's tensor_transport strings) to its RDT_TRANSPORT_* code.
StatusOr<rdt_transport> ParseTransport(const std::string &name);

/// The lower-case name of a transport code ("shm"), or "unknown(<n>)".
std::string TransportName(rdt_transport transport);

/// Calls the deleter of every tensor (NULL entries and NULL deleters are
/// skipped) and clears the vector. Use it on what ResolveArgument returned once
/// the task is done with the tensors.
void ReleaseTensors(std::vector<DLManagedTensor *> *tensors);

/// Owns tensors the plugin handed out (ResolveArgument) and calls each deleter
/// once when destroyed, unless they were released to another owner first.
class OwnedTensors {
 public:
  OwnedTensors() = default;
  explicit OwnedTensors(std::vector<DLManagedTensor *> tensors) : tensors_(std::move(tensors)) {}
  OwnedTensors(OwnedTensors &&other) noexcept : tensors_(other.release()) {}
  OwnedTensors &operator=(OwnedTensors &&other) noexcept {
    if (this != &other) {
      ReleaseTensors(&tensors_);
      tensors_ = other.release();
    }
    return *this;
  }
  OwnedTensors(const OwnedTensors &) = delete;
  OwnedTensors &operator=(const OwnedTensors &) = delete;
  ~OwnedTensors() { ReleaseTensors(&tensors_); }

  const std::vector<DLManagedTensor *> &get() const { return tensors_; }
  size_t size() const { return tensors_.size(); }
  /// Gives up ownership: the caller now calls each deleter (e.g. a DLPack
  /// consumer such as torch.from_dlpack does).
  std::vector<DLManagedTensor *> release() {
    std::vector<DLManagedTensor *> out;
    out.swap(tensors_);
    return out;
  }

 private:
  std::vector<DLManagedTensor *> tensors_;
};

class Context;

/// The loaded library and its resolved functions.
class Plugin : public std::enable_shared_from_this<Plugin> {
 public:
  /// Loads the plugin from `path`; an empty path means the RAY_RDT_LIB
  /// environment variable, else "libray_rdt.so" through the linker's search
  /// path. Fails (never aborts) when the file cannot be opened, a function is
  /// missing or the ABI major version differs.
  static StatusOr<std::shared_ptr<Plugin>> Load(const std::string &path = "");

  /// Whether a core worker should load the plugin: true unless RAY_RDT_PLUGIN
  /// is "0" (or "false", "no", "off", empty: the Python binding's switch).
  static bool EnabledByEnvironment();

  ~Plugin();
  Plugin(const Plugin &) = delete;
  Plugin &operator=(const Plugin &) = delete;

  /// Drops the library handle (the code stays mapped; see the file comment).
  /// Contexts created earlier keep their own reference and stay usable.
  void Unload();

  /// The path the library was loaded from (as given to dlopen).
  const std::string &path() const { return path_; }
  /// The library's ABI version, `(major << 16) | minor`.
  uint32_t abi_version() const { return abi_version_; }
  /// The resolved functions (for callers that need the raw C ABI).
  const RdtApi &api() const { return api_; }

  /// Creates this process's plugin context (starts its endpoint). `node_id` and
  /// `actor_id` are Ray's binary IDs; either may be empty.
  StatusOr<std::unique_ptr<Context>> NewContext(const std::string &node_id,
                                                const std::string &actor_id) const;

  /// This process's counters of `transport` (process wide, across contexts).
  StatusOr<rdt_transport_stats> Stats(rdt_transport transport) const;

  /// Decodes and validates a metadata record without fetching.
  StatusOr<MetadataInfo> DescribeMetadata(const std::string &metadata) const;

  /// Turns the failure `status` of API function `what` into a Status carrying the
  /// calling thread's rdt_last_error() text. Call it right after the failing call.
  Status Error(const char *what, rdt_status status) const;

 private:
  Plugin(void *handle, std::string path) : handle_(handle), path_(std::move(path)) {}

  void *handle_;
  std::string path_;
  uint32_t abi_version_ = 0;
  RdtApi api_;
};

/// One process's plugin context: its RDT object store, endpoint and transports.
/// Destroying it stops the endpoint and frees every object it holds.
class Context {
 public:
  ~Context();
  Context(const Context &) = delete;
  Context &operator=(const Context &) = delete;

  /// The address other processes' plugins fetch from (appears in records).
  StatusOr<std::string> Endpoint() const;

  /// Task return: keeps `tensors` as the primary copy of `object_id` (28 bytes)
  /// and returns the metadata record to store in Ray's object store instead of
  /// the tensor bytes. `group` names the collective group for two-sided
  /// transports (gloo, nccl); empty for one-sided ones. On success the plugin
  /// owns the tensors (each deleter runs once, after Free and after the last
  /// view is released); on error the caller still owns them.
  StatusOr<std::string> StoreReturn(const std::string &object_id, rdt_transport transport,
                                    const std::string &group,
                                    const std::vector<DLManagedTensor *> &tensors) const;

  /// Argument resolution: fetches the tensors `metadata` describes. When this
  /// process produced the object they are views of the stored tensors (same
  /// memory, no copy); otherwise the bytes come straight from the producer's
  /// plugin. Waits at most `timeout_ms` (UINT64_MAX: no limit). The caller owns
  /// the result: call each deleter once (ReleaseTensors).
  StatusOr<std::vector<DLManagedTensor *>> ResolveArgument(const std::string &object_id,
                                                           const std::string &metadata,
                                                           uint64_t timeout_ms) const;

  /// Out of scope: frees the primary copy of `object_id`; returns whether this
  /// context held it. Deleters run once no view of the tensors is alive.
  StatusOr<bool> Free(const std::string &object_id) const;

  /// Waits up to `timeout_ms` until no object of this context holds memory at
  /// `data` (a tensor's first element): the guide's wait_tensor_freed.
  Status WaitTensorFreed(const void *data, uint64_t timeout_ms) const;

  /// Starts the rendezvous store of a new collective group in this process (the
  /// process of rank 0) on `bind_host`; returns its "host:port".
  StatusOr<std::string> ServeRendezvous(const std::string &bind_host) const;

  /// Joins group `name` of `backend` as `rank` of `world_size` through the
  /// rendezvous store at `address`; blocks until all ranks joined or timeout.
  Status CreateGroup(const std::string &name, rdt_transport backend, int32_t rank,
                     int32_t world_size, const std::string &address,
                     uint64_t timeout_ms) const;

  /// Leaves group `name`.
  Status DestroyGroup(const std::string &name) const;

  /// Objects and tensor bytes this context holds.
  StatusOr<ContextCounts> Counts() const;

  /// This process's counters of `transport` (same as Plugin::Stats).
  StatusOr<rdt_transport_stats> Stats(rdt_transport transport) const {
    return plugin_->Stats(transport);
  }

  const Plugin &plugin() const { return *plugin_; }
  /// The raw handle, for callers that need the C ABI directly.
  rdt_context *raw() const { return ctx_; }

 private:
  friend class Plugin;
  Context(std::shared_ptr<const Plugin> plugin, rdt_context *ctx)
      : plugin_(std::move(plugin)), ctx_(ctx) {}

  std::shared_ptr<const Plugin> plugin_;
  rdt_context *ctx_;
};

}  // namespace rdt
}  // namespace ray
