// Shared host memory through the C ABI (rdt_shared_memory_new): a zeroed,
// writable 1-D uint8 CPU tensor that a store can hold like any other, freed
// by its deleter; a size of 0 is refused.
#include <cstring>
#include <vector>

#include "fixtures.hpp"
#include "harness.hpp"

using namespace rdt_test;

TEST(shared_memory_is_a_zeroed_writable_byte_tensor) {
  const size_t len = 3 * 4096 + 5;
  DLManagedTensor* t = nullptr;
  CHECK_STATUS(rdt_shared_memory_new(len, &t), RDT_OK);
  CHECK(t != nullptr && t->deleter != nullptr);
  const DLTensor& dl = t->dl_tensor;
  CHECK(dl.ndim == 1 && dl.shape[0] == static_cast<int64_t>(len));
  CHECK(dl.dtype.code == kDLUInt && dl.dtype.bits == 8 && dl.dtype.lanes == 1);
  CHECK(dl.device.device_type == kDLCPU && dl.byte_offset == 0);
  auto* bytes = static_cast<uint8_t*>(dl.data);
  std::vector<uint8_t> zeros(len, 0);
  CHECK(std::memcmp(bytes, zeros.data(), len) == 0);
  std::memset(bytes, 0x5a, len);
  CHECK(bytes[0] == 0x5a && bytes[len - 1] == 0x5a);
  t->deleter(t);
}

TEST(shared_memory_of_no_bytes_is_refused) {
  DLManagedTensor* t = nullptr;
  CHECK_STATUS(rdt_shared_memory_new(0, &t), RDT_ERR_INVALID_ARGUMENT);
  CHECK(t == nullptr);
}
