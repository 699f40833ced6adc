// Fixtures shared by the tests: DLPack tensors built here with deleters that
// count their calls, Ray-style object IDs, and an owning store handle.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "ray_rdt.h"

namespace rdt_test {

// Counts the deleter calls of the tensors made with it.
struct Deletions {
  std::atomic<int> count{0};
};

// A new float32 CPU tensor of `shape` whose element i is i. Its deleter frees it
// and counts into `deletions`; a second call would be a use after free, which
// ASan and valgrind report.
DLManagedTensor* make_tensor(Deletions& deletions, const std::vector<int64_t>& shape);

// As make_tensor, in the versioned DLPack form with major version `major`.
DLManagedTensorVersioned* make_versioned(Deletions& deletions, const std::vector<int64_t>& shape,
                                         uint32_t major = DLPACK_MAJOR_VERSION);

// Calls the deleter of a tensor the caller owns (a refused put, or a view).
void release(DLManagedTensor* t);
void release(DLManagedTensorVersioned* t);
void release(const std::vector<DLManagedTensor*>& ts);

// Tensors made by make_tensor/make_versioned whose deleter has not run yet.
int live_tensors();

// The address of a tensor's first element.
float* data_of(const DLManagedTensor* t);

// A valid version 3 metadata record written by hand in the documented wire
// format (src/metadata.rs): shm transport, CPU, producer pid 4242, one extent
// of 24 bytes holding one float32 [2, 3] tensor. Its extent length is the byte
// at kExtentLengthFromEnd before the end.
std::vector<uint8_t> shm_record();
constexpr size_t kExtentLengthFromEnd = 13;

// A 28-byte binary ObjectID derived from `n`.
struct ObjectId {
  explicit ObjectId(uint64_t n);
  const uint8_t* get() const { return bytes; }
  uint8_t bytes[28];
};

// An rdt_context (the one handle family) destroyed with the object, plus
// shorthands for common calls.
class Store {
 public:
  Store();
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const rdt_context* get() const { return ctx_; }

  // rdt_context_put of `tensors` under ObjectId(id) over `transport` (no
  // group); the record is freed at once.
  rdt_status put(uint64_t id, const std::vector<DLManagedTensor*>& tensors,
                 rdt_transport transport = RDT_TRANSPORT_SHM) const;
  // rdt_context_get into an array of `capacity`, then (`pop`) rdt_context_free
  // when it succeeded; on RDT_OK `views` holds the views, otherwise it is
  // empty. `count` gets *out_count.
  rdt_status get(uint64_t id, std::vector<DLManagedTensor*>& views, bool pop = false, size_t capacity = 8,
                 size_t* count = nullptr) const;
  // rdt_context_free; returns whether the object was held.
  bool free(uint64_t id) const;
  // rdt_context_contains.
  bool contains(uint64_t id) const;

 private:
  rdt_context* ctx_ = nullptr;
};

}  // namespace rdt_test
