// Fixtures shared by the tests.
#include "fixtures.hpp"

#include <cstring>
#include <numeric>

#include "harness.hpp"

namespace rdt_test {
namespace {

std::atomic<int> g_live{0};

// What a test tensor's manager_ctx owns.
struct Owned {
  std::vector<float> data;
  std::vector<int64_t> shape;
  Deletions* deletions;
};

Owned* own(Deletions& deletions, const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  auto* o = new Owned{std::vector<float>(static_cast<size_t>(numel)), shape, &deletions};
  std::iota(o->data.begin(), o->data.end(), 0.0f);
  g_live++;
  return o;
}

// Appends `v` little-endian (the test machines are little-endian).
template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

void put_short_bytes(std::vector<uint8_t>& out, const char* s) {
  put<uint16_t>(out, static_cast<uint16_t>(std::strlen(s)));
  out.insert(out.end(), s, s + std::strlen(s));
}

DLTensor view_of(Owned* o) {
  DLTensor t{};
  t.data = o->data.data();
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(o->shape.size());
  t.dtype = DLDataType{kDLFloat, 32, 1};
  t.shape = o->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  return t;
}

void disown(void* ctx) {
  auto* o = static_cast<Owned*>(ctx);
  o->deletions->count++;
  g_live--;
  delete o;
}

}  // namespace

DLManagedTensor* make_tensor(Deletions& deletions, const std::vector<int64_t>& shape) {
  Owned* o = own(deletions, shape);
  return new DLManagedTensor{view_of(o), o, [](DLManagedTensor* self) {
                               disown(self->manager_ctx);
                               delete self;
                             }};
}

DLManagedTensorVersioned* make_versioned(Deletions& deletions, const std::vector<int64_t>& shape,
                                         uint32_t major) {
  Owned* o = own(deletions, shape);
  auto deleter = [](DLManagedTensorVersioned* self) {
    disown(self->manager_ctx);
    delete self;
  };
  return new DLManagedTensorVersioned{DLPackVersion{major, DLPACK_MINOR_VERSION}, o, deleter, 0,
                                      view_of(o)};
}

void release(DLManagedTensor* t) { t->deleter(t); }
void release(DLManagedTensorVersioned* t) { t->deleter(t); }
void release(const std::vector<DLManagedTensor*>& ts) {
  for (DLManagedTensor* t : ts) release(t);
}

int live_tensors() { return g_live.load(); }

float* data_of(const DLManagedTensor* t) {
  return reinterpret_cast<float*>(static_cast<char*>(t->dl_tensor.data) + t->dl_tensor.byte_offset);
}

ObjectId::ObjectId(uint64_t n) {
  std::memset(bytes, 0x5a, sizeof(bytes));
  std::memcpy(bytes, &n, sizeof(n));
}

Store::Store() {
  if (rdt_context_new(nullptr, 0, nullptr, 0, &ctx_) != RDT_OK) {
    fail(__FILE__, __LINE__, "rdt_context_new: " + last_error());
  }
}

Store::~Store() { rdt_context_destroy(ctx_); }

rdt_status Store::put(uint64_t id, const std::vector<DLManagedTensor*>& tensors, rdt_transport transport) const {
  rdt_buffer record{nullptr, 0};
  rdt_status s =
      rdt_context_put(ctx_, ObjectId(id).get(), transport, nullptr, tensors.data(), tensors.size(), &record);
  rdt_buffer_free(&record);
  return s;
}

rdt_status Store::get(uint64_t id, std::vector<DLManagedTensor*>& views, bool pop, size_t capacity,
                      size_t* count) const {
  views.assign(capacity, nullptr);
  size_t n = 0;
  rdt_status s = rdt_context_get(ctx_, ObjectId(id).get(), views.data(), capacity, &n);
  views.resize(s == RDT_OK ? n : 0);
  if (count) *count = n;
  if (pop && s == RDT_OK && !free(id)) fail(__FILE__, __LINE__, "popped object was not held");
  return s;
}

bool Store::free(uint64_t id) const {
  bool found = false;
  if (rdt_context_free(ctx_, ObjectId(id).get(), &found) != RDT_OK) {
    fail(__FILE__, __LINE__, "rdt_context_free: " + last_error());
  }
  return found;
}

bool Store::contains(uint64_t id) const {
  bool held = false;
  if (rdt_context_contains(ctx_, ObjectId(id).get(), &held) != RDT_OK) {
    fail(__FILE__, __LINE__, "rdt_context_contains: " + last_error());
  }
  return held;
}

std::vector<uint8_t> shm_record() {
  std::vector<uint8_t> r = {'R', 'D', 'T', 'M'};
  put<uint16_t>(r, 3);
  put<uint8_t>(r, RDT_TRANSPORT_SHM);
  put<int32_t>(r, kDLCPU);
  put<int32_t>(r, 0);
  ObjectId key(7);
  r.insert(r.end(), key.bytes, key.bytes + sizeof(key.bytes));
  put_short_bytes(r, "node-0001");
  put<uint32_t>(r, 4242);
  put_short_bytes(r, "actor-7");
  put_short_bytes(r, "boot-id/net:4026531840");
  put_short_bytes(r, "unix:@ray-rdt-4242");
  put_short_bytes(r, "tcp:10.0.0.7:40001");
  // Every count, length and offset below is a one-byte varint.
  r.insert(r.end(), {1, 24});                  // one extent of 24 bytes
  r.insert(r.end(), {1, 0});                   // one tensor, flags: its own shape
  r.insert(r.end(), {kDLFloat, 32, 1, 2, 2, 3});  // float32, lanes 1, ndim 2, shape [2, 3]
  r.insert(r.end(), {0, 0});                   // extent 0, offset 0
  r.insert(r.end(), {0, 0});                   // no transport data; flags: not inline
  return r;
}

}  // namespace rdt_test
