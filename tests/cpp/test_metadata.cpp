// Metadata records through the C ABI: a record written by hand in the documented
// wire format (fixtures.cpp) decodes, and malformed input is refused.
#include <vector>

#include "fixtures.hpp"
#include "harness.hpp"

using namespace rdt_test;

TEST(a_hand_written_record_decodes) {
  std::vector<uint8_t> record = shm_record();
  rdt_metadata* md = nullptr;
  CHECK_STATUS(rdt_metadata_decode(record.data(), record.size(), &md), RDT_OK);
  rdt_transport transport;
  DLDevice device;
  size_t n;
  uint64_t bytes;
  rdt_tensor_desc desc;
  rdt_status summary = rdt_metadata_summary(md, &transport, &device, &n, &bytes);
  rdt_status tensor = rdt_metadata_tensor(md, 0, &desc);
  rdt_status past_end = rdt_metadata_tensor(md, 1, &desc);
  rdt_metadata_destroy(md);
  CHECK_STATUS(summary, RDT_OK);
  CHECK(transport == RDT_TRANSPORT_SHM && device.device_type == kDLCPU && n == 1 && bytes == 24);
  CHECK_STATUS(tensor, RDT_OK);
  CHECK_STATUS(past_end, RDT_ERR_INVALID_ARGUMENT);
  CHECK(desc.ndim == 2 && desc.nbytes == 24 && desc.dtype.bits == 32);
}

TEST(malformed_records_are_refused) {
  std::vector<uint8_t> record = shm_record();
  std::vector<std::vector<uint8_t>> inputs = {
      {},                                                  // empty
      {'g', 'a', 'r', 'b', 'a', 'g', 'e', 0, 1, 2, 3},     // bad magic
      std::vector<uint8_t>(record.begin(), record.end() - 1),  // truncated
  };
  inputs.push_back(record);
  inputs.back().push_back(0);  // trailing byte
  inputs.push_back(record);
  inputs.back()[4] = 9;  // unknown version
  inputs.push_back(record);
  inputs.back()[record.size() - kExtentLengthFromEnd] = 23;  // the tensor runs past its extent
  for (const auto& input : inputs) {
    rdt_metadata* md = nullptr;
    CHECK_STATUS(rdt_metadata_decode(input.empty() ? nullptr : input.data(), input.size(), &md),
                 RDT_ERR_MALFORMED_METADATA);
    CHECK(md == nullptr && !last_error().empty());
  }
}
