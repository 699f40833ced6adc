// rdt_plugin_loader.cc: see rdt_plugin_loader.h.

#include "rdt_plugin_loader.h"

#include <dlfcn.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

namespace ray {
namespace rdt {

namespace {

// dlerror() text of the last failure, or a placeholder (dlerror is not thread
// safe across threads in old glibcs; the caller serializes loads).
std::string DlError() {
  const char *e = dlerror();
  return e != nullptr ? std::string(e) : std::string("unknown dlopen/dlsym error");
}

// Loads are serialized so dlerror() pairs with its own failure.
std::mutex &LoadMutex() {
  static std::mutex mu;
  return mu;
}

std::string VersionString(uint32_t v) {
  return std::to_string(v >> 16) + "." + std::to_string(v & 0xffff);
}

Status InvalidObjectId(const char *what, const std::string &object_id) {
  return Status(StatusCode::kLoaderInvalidArgument,
                std::string(what) + ": object_id must be Ray's " + std::to_string(kObjectIdSize) +
                    "-byte binary ObjectID, got " + std::to_string(object_id.size()) + " bytes");
}

const uint8_t *Bytes(const std::string &s) {
  return reinterpret_cast<const uint8_t *>(s.data());
}

// Copies a plugin-owned buffer into a string and releases it.
std::string TakeBuffer(const RdtApi &api, rdt_buffer *buf) {
  std::string out;
  if (buf->data != nullptr && buf->len > 0) {
    out.assign(reinterpret_cast<const char *>(buf->data), buf->len);
  }
  api.buffer_free(buf);
  return out;
}

}  // namespace

const char *StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kNullArgument:
      return "RDT_ERR_NULL_ARGUMENT";
    case StatusCode::kInvalidArgument:
      return "RDT_ERR_INVALID_ARGUMENT";
    case StatusCode::kNotFound:
      return "RDT_ERR_NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "RDT_ERR_ALREADY_EXISTS";
    case StatusCode::kTimeout:
      return "RDT_ERR_TIMEOUT";
    case StatusCode::kMalformedMetadata:
      return "RDT_ERR_MALFORMED_METADATA";
    case StatusCode::kUnsupported:
      return "RDT_ERR_UNSUPPORTED";
    case StatusCode::kTransport:
      return "RDT_ERR_TRANSPORT";
    case StatusCode::kObjectFailed:
      return "RDT_ERR_OBJECT_FAILED";
    case StatusCode::kUnavailable:
      return "RDT_ERR_UNAVAILABLE";
    case StatusCode::kBufferTooSmall:
      return "RDT_ERR_BUFFER_TOO_SMALL";
    case StatusCode::kIo:
      return "RDT_ERR_IO";
    case StatusCode::kInternal:
      return "RDT_ERR_INTERNAL";
    case StatusCode::kLibraryNotLoaded:
      return "LIBRARY_NOT_LOADED";
    case StatusCode::kSymbolMissing:
      return "SYMBOL_MISSING";
    case StatusCode::kAbiMismatch:
      return "ABI_MISMATCH";
    case StatusCode::kLoaderInvalidArgument:
      return "INVALID_ARGUMENT";
  }
  return "UNKNOWN_STATUS";
}

std::string Status::ToString() const {
  if (ok()) {
    return "OK";
  }
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

StatusOr<rdt_transport> ParseTransport(const std::string &name) {
  std::string lower;
  for (char c : name) {
    lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  if (lower == "gloo") return rdt_transport{RDT_TRANSPORT_GLOO};
  if (lower == "nccl") return rdt_transport{RDT_TRANSPORT_NCCL};
  if (lower == "nixl") return rdt_transport{RDT_TRANSPORT_NIXL};
  if (lower == "cuda_ipc") return rdt_transport{RDT_TRANSPORT_CUDA_IPC};
  if (lower == "shm") return rdt_transport{RDT_TRANSPORT_SHM};
  return Status(StatusCode::kLoaderInvalidArgument,
                "unknown tensor transport \"" + name +
                    "\" (expected gloo, nccl, nixl, cuda_ipc or shm)");
}

std::string TransportName(rdt_transport transport) {
  switch (transport) {
    case RDT_TRANSPORT_GLOO:
      return "gloo";
    case RDT_TRANSPORT_NCCL:
      return "nccl";
    case RDT_TRANSPORT_NIXL:
      return "nixl";
    case RDT_TRANSPORT_CUDA_IPC:
      return "cuda_ipc";
    case RDT_TRANSPORT_SHM:
      return "shm";
    default:
      return "unknown(" + std::to_string(transport) + ")";
  }
}

void ReleaseTensors(std::vector<DLManagedTensor *> *tensors) {
  if (tensors == nullptr) {
    return;
  }
  for (DLManagedTensor *t : *tensors) {
    if (t != nullptr && t->deleter != nullptr) {
      t->deleter(t);
    }
  }
  tensors->clear();
}

// ---------------------------------------------------------------------------
// Plugin

bool Plugin::EnabledByEnvironment() {
  const char *v = std::getenv(kPluginSwitchEnv);
  if (v == nullptr) {
    return true;
  }
  // Same switch as the Python binding (python/ray_rdt): "0", "false", "no",
  // "off" (any case, surrounding blanks ignored) or an empty value turn it off.
  std::string value;
  for (const char *p = v; *p != '\0'; ++p) {
    if (!std::isspace(static_cast<unsigned char>(*p))) {
      value.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(*p))));
    }
  }
  return !(value.empty() || value == "0" || value == "false" || value == "no" || value == "off");
}

StatusOr<std::shared_ptr<Plugin>> Plugin::Load(const std::string &path_arg) {
  std::string path = path_arg;
  if (path.empty()) {
    const char *env = std::getenv(kLibraryPathEnv);
    path = (env != nullptr && env[0] != '\0') ? std::string(env) : std::string(kDefaultLibraryName);
  }
  std::lock_guard<std::mutex> lock(LoadMutex());
  dlerror();  // Clear a stale error.
  void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (handle == nullptr) {
    return Status(StatusCode::kLibraryNotLoaded,
                  "cannot load the RDT plugin from \"" + path + "\": " + DlError() +
                      " (set " + kLibraryPathEnv + " to the path of libray_rdt.so, or " +
                      kPluginSwitchEnv + "=0 to run without it)");
  }
  std::shared_ptr<Plugin> plugin(new Plugin(handle, path));

  // rdt_abi_version first: a library of another major may lack (or have
  // changed) any of the other functions, and that is the clearer message.
  auto resolve = [&](const char *name, auto *slot) -> Status {
    dlerror();
    void *sym = dlsym(handle, name);
    if (sym == nullptr) {
      return Status(StatusCode::kSymbolMissing,
                    "the RDT plugin at \"" + path + "\" does not export `" + name +
                        "` (" + DlError() + "); it is not a compatible libray_rdt.so");
    }
    *slot = reinterpret_cast<std::remove_pointer_t<decltype(slot)>>(sym);
    return Status::OK();
  };
  Status s = resolve("rdt_abi_version", &plugin->api_.abi_version);
  if (!s.ok()) {
    return s;
  }
  plugin->abi_version_ = plugin->api_.abi_version();
  const uint32_t ours = (static_cast<uint32_t>(RDT_ABI_VERSION_MAJOR) << 16) |
                        static_cast<uint32_t>(RDT_ABI_VERSION_MINOR);
  if ((plugin->abi_version_ >> 16) != static_cast<uint32_t>(RDT_ABI_VERSION_MAJOR)) {
    return Status(StatusCode::kAbiMismatch,
                  "the RDT plugin at \"" + path + "\" implements C ABI version " +
                      VersionString(plugin->abi_version_) + ", but this core worker was built for " +
                      "major version " + std::to_string(RDT_ABI_VERSION_MAJOR) + " (ray_rdt.h " +
                      VersionString(ours) + "); use a libray_rdt.so of ABI major " +
                      std::to_string(RDT_ABI_VERSION_MAJOR));
  }

#define RDT_RESOLVE(field, symbol)                       \
  do {                                                   \
    Status st = resolve(#symbol, &plugin->api_.field);   \
    if (!st.ok()) {                                      \
      return st;                                         \
    }                                                    \
  } while (0)
  RDT_RESOLVE(last_error, rdt_last_error);
  RDT_RESOLVE(buffer_free, rdt_buffer_free);
  RDT_RESOLVE(context_new, rdt_context_new);
  RDT_RESOLVE(context_destroy, rdt_context_destroy);
  RDT_RESOLVE(context_endpoint, rdt_context_endpoint);
  RDT_RESOLVE(context_put, rdt_context_put);
  RDT_RESOLVE(context_fetch, rdt_context_fetch);
  RDT_RESOLVE(context_free, rdt_context_free);
  RDT_RESOLVE(context_wait_tensor_freed, rdt_context_wait_tensor_freed);
  RDT_RESOLVE(context_counts, rdt_context_counts);
  RDT_RESOLVE(rendezvous_serve, rdt_rendezvous_serve);
  RDT_RESOLVE(group_create, rdt_group_create);
  RDT_RESOLVE(group_destroy, rdt_group_destroy);
  RDT_RESOLVE(metadata_decode, rdt_metadata_decode);
  RDT_RESOLVE(metadata_destroy, rdt_metadata_destroy);
  RDT_RESOLVE(metadata_summary, rdt_metadata_summary);
  RDT_RESOLVE(stats_get, rdt_stats_get);
#undef RDT_RESOLVE
  return plugin;
}

Plugin::~Plugin() { Unload(); }

void Plugin::Unload() {
  if (handle_ != nullptr) {
    // RTLD_NODELETE: the code stays mapped; this only drops our reference.
    dlclose(handle_);
    handle_ = nullptr;
  }
}

Status Plugin::Error(const char *what, rdt_status status) const {
  const char *text = api_.last_error != nullptr ? api_.last_error() : nullptr;
  std::string message = std::string(what) + ": ";
  message += (text != nullptr && text[0] != '\0') ? text : "(the plugin gave no error text)";
  return Status(static_cast<StatusCode>(status), std::move(message));
}

StatusOr<std::unique_ptr<Context>> Plugin::NewContext(const std::string &node_id,
                                                      const std::string &actor_id) const {
  rdt_context *ctx = nullptr;
  rdt_status s = api_.context_new(Bytes(node_id), node_id.size(), Bytes(actor_id),
                                  actor_id.size(), &ctx);
  if (s != RDT_OK) {
    return Error("rdt_context_new", s);
  }
  return std::unique_ptr<Context>(new Context(shared_from_this(), ctx));
}

StatusOr<rdt_transport_stats> Plugin::Stats(rdt_transport transport) const {
  rdt_transport_stats out{};
  rdt_status s = api_.stats_get(transport, &out);
  if (s != RDT_OK) {
    return Error("rdt_stats_get", s);
  }
  return out;
}

StatusOr<MetadataInfo> Plugin::DescribeMetadata(const std::string &metadata) const {
  rdt_metadata *m = nullptr;
  rdt_status s = api_.metadata_decode(Bytes(metadata), metadata.size(), &m);
  if (s != RDT_OK) {
    return Error("rdt_metadata_decode", s);
  }
  MetadataInfo info;
  s = api_.metadata_summary(m, &info.transport, &info.device, &info.num_tensors,
                            &info.total_bytes);
  Status err = s == RDT_OK ? Status::OK() : Error("rdt_metadata_summary", s);
  api_.metadata_destroy(m);
  if (!err.ok()) {
    return err;
  }
  return info;
}

// ---------------------------------------------------------------------------
// Context

Context::~Context() {
  if (ctx_ != nullptr) {
    plugin_->api().context_destroy(ctx_);
    ctx_ = nullptr;
  }
}

StatusOr<std::string> Context::Endpoint() const {
  rdt_buffer buf{nullptr, 0};
  rdt_status s = plugin_->api().context_endpoint(ctx_, &buf);
  if (s != RDT_OK) {
    return plugin_->Error("rdt_context_endpoint", s);
  }
  return TakeBuffer(plugin_->api(), &buf);
}

StatusOr<std::string> Context::StoreReturn(const std::string &object_id, rdt_transport transport,
                                           const std::string &group,
                                           const std::vector<DLManagedTensor *> &tensors) const {
  if (object_id.size() != kObjectIdSize) {
    return InvalidObjectId("StoreReturn", object_id);
  }
  rdt_buffer buf{nullptr, 0};
  rdt_status s = plugin_->api().context_put(ctx_, Bytes(object_id), transport,
                                            group.empty() ? nullptr : group.c_str(),
                                            tensors.data(), tensors.size(), &buf);
  if (s != RDT_OK) {
    return plugin_->Error("rdt_context_put", s);
  }
  return TakeBuffer(plugin_->api(), &buf);
}

StatusOr<std::vector<DLManagedTensor *>> Context::ResolveArgument(const std::string &object_id,
                                                                  const std::string &metadata,
                                                                  uint64_t timeout_ms) const {
  if (object_id.size() != kObjectIdSize) {
    return InvalidObjectId("ResolveArgument", object_id);
  }
  // Most objects hold a few tensors; a larger one answers BUFFER_TOO_SMALL with
  // the count before any transfer starts, and the second call fits.
  std::vector<DLManagedTensor *> out(8, nullptr);
  for (int attempt = 0; attempt < 2; ++attempt) {
    size_t count = 0;
    rdt_status s = plugin_->api().context_fetch(ctx_, Bytes(object_id), Bytes(metadata),
                                                metadata.size(), timeout_ms, out.data(),
                                                out.size(), &count);
    if (s == RDT_OK) {
      out.resize(count);
      return out;
    }
    if (s == RDT_ERR_BUFFER_TOO_SMALL && attempt == 0 && count > out.size()) {
      out.assign(count, nullptr);
      continue;
    }
    return plugin_->Error("rdt_context_fetch", s);
  }
  return Status(StatusCode::kInternal, "rdt_context_fetch: tensor count changed between calls");
}

StatusOr<bool> Context::Free(const std::string &object_id) const {
  if (object_id.size() != kObjectIdSize) {
    return InvalidObjectId("Free", object_id);
  }
  bool found = false;
  rdt_status s = plugin_->api().context_free(ctx_, Bytes(object_id), &found);
  if (s != RDT_OK) {
    return plugin_->Error("rdt_context_free", s);
  }
  return found;
}

Status Context::WaitTensorFreed(const void *data, uint64_t timeout_ms) const {
  rdt_status s = plugin_->api().context_wait_tensor_freed(ctx_, data, timeout_ms);
  return s == RDT_OK ? Status::OK() : plugin_->Error("rdt_context_wait_tensor_freed", s);
}

StatusOr<std::string> Context::ServeRendezvous(const std::string &bind_host) const {
  rdt_buffer buf{nullptr, 0};
  rdt_status s = plugin_->api().rendezvous_serve(ctx_, bind_host.c_str(), &buf);
  if (s != RDT_OK) {
    return plugin_->Error("rdt_rendezvous_serve", s);
  }
  return TakeBuffer(plugin_->api(), &buf);
}

Status Context::CreateGroup(const std::string &name, rdt_transport backend, int32_t rank,
                            int32_t world_size, const std::string &address,
                            uint64_t timeout_ms) const {
  rdt_status s = plugin_->api().group_create(ctx_, name.c_str(), backend, rank, world_size,
                                             address.c_str(), timeout_ms);
  return s == RDT_OK ? Status::OK() : plugin_->Error("rdt_group_create", s);
}

Status Context::DestroyGroup(const std::string &name) const {
  rdt_status s = plugin_->api().group_destroy(ctx_, name.c_str());
  return s == RDT_OK ? Status::OK() : plugin_->Error("rdt_group_destroy", s);
}

StatusOr<ContextCounts> Context::Counts() const {
  ContextCounts c;
  rdt_status s = plugin_->api().context_counts(ctx_, &c.objects, &c.bytes);
  if (s != RDT_OK) {
    return plugin_->Error("rdt_context_counts", s);
  }
  return c;
}

}  // namespace rdt
}  // namespace ray
