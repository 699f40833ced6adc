// Argument checking through the C ABI: NULL for every pointer, out-of-range
// codes, invalid tensors (which stay with the caller), and the ABI version.
#include <functional>
#include <utility>
#include <vector>

#include "fixtures.hpp"
#include "harness.hpp"

using namespace rdt_test;

TEST(abi_version_has_major_2) {
  CHECK(rdt_abi_version() >> 16 == RDT_ABI_VERSION_MAJOR);
  CHECK(RDT_ABI_VERSION_MAJOR == 2);
  CHECK((rdt_abi_version() & 0xffff) == RDT_ABI_VERSION_MINOR);
}

TEST(every_pointer_argument_is_null_checked) {
  Store store;
  const rdt_context* s = store.get();
  rdt_buffer rec{nullptr, 0};
  const rdt_transport shm = RDT_TRANSPORT_SHM;
  ObjectId oid(1);
  const uint8_t* id = oid.get();
  std::vector<uint8_t> record = shm_record();
  rdt_metadata* md = nullptr;
  CHECK_STATUS(rdt_metadata_decode(record.data(), record.size(), &md), RDT_OK);
  rdt_metadata* unused = nullptr;
  rdt_transport transport;
  DLDevice device;
  size_t n;
  uint64_t bytes;
  rdt_tensor_desc desc;
  rdt_transport_stats stats;
  bool flag;
  DLManagedTensor* views[1];
  DLManagedTensor* null_tensor[1] = {nullptr};
  DLManagedTensorVersioned* null_versioned[1] = {nullptr};
  const std::vector<std::pair<const char*, std::function<rdt_status()>>> cases = {
      {"out_metadata", [&] { return rdt_metadata_decode(record.data(), record.size(), nullptr); }},
      {"data", [&] { return rdt_metadata_decode(nullptr, 4, &unused); }},
      {"metadata", [&] { return rdt_metadata_summary(nullptr, &transport, &device, &n, &bytes); }},
      {"out_transport", [&] { return rdt_metadata_summary(md, nullptr, &device, &n, &bytes); }},
      {"out_device", [&] { return rdt_metadata_summary(md, &transport, nullptr, &n, &bytes); }},
      {"out_num_tensors", [&] { return rdt_metadata_summary(md, &transport, &device, nullptr, &bytes); }},
      {"out_total_bytes", [&] { return rdt_metadata_summary(md, &transport, &device, &n, nullptr); }},
      {"metadata", [&] { return rdt_metadata_tensor(nullptr, 0, &desc); }},
      {"out_desc", [&] { return rdt_metadata_tensor(md, 0, nullptr); }},
      {"out_stats", [&] { return rdt_stats_get(RDT_TRANSPORT_GLOO, nullptr); }},
      {"out_tensor", [&] { return rdt_shared_memory_new(64, nullptr); }},
      {"tensors", [&] { return rdt_tensors_release(nullptr, 1); }},
      {"out_ctx", [&] { return rdt_context_new(nullptr, 0, nullptr, 0, nullptr); }},
      {"ctx", [&] { return rdt_context_put(nullptr, id, shm, nullptr, nullptr, 0, &rec); }},
      {"object_id", [&] { return rdt_context_put(s, nullptr, shm, nullptr, nullptr, 0, &rec); }},
      {"tensors", [&] { return rdt_context_put(s, id, shm, nullptr, nullptr, 1, &rec); }},
      {"tensor 0", [&] { return rdt_context_put(s, id, shm, nullptr, null_tensor, 1, &rec); }},
      {"out_metadata", [&] { return rdt_context_put(s, id, shm, nullptr, nullptr, 0, nullptr); }},
      {"ctx", [&] { return rdt_context_put_versioned(nullptr, id, shm, nullptr, nullptr, 0, &rec); }},
      {"object_id", [&] { return rdt_context_put_versioned(s, nullptr, shm, nullptr, nullptr, 0, &rec); }},
      {"tensors", [&] { return rdt_context_put_versioned(s, id, shm, nullptr, nullptr, 1, &rec); }},
      {"tensor 0", [&] { return rdt_context_put_versioned(s, id, shm, nullptr, null_versioned, 1, &rec); }},
      {"ctx", [&] { return rdt_context_get(nullptr, id, views, 1, &n); }},
      {"object_id", [&] { return rdt_context_get(s, nullptr, views, 1, &n); }},
      {"out_count", [&] { return rdt_context_get(s, id, views, 1, nullptr); }},
      {"ctx", [&] { return rdt_context_record_get(nullptr, id, &rec); }},
      {"object_id", [&] { return rdt_context_record_get(s, nullptr, &rec); }},
      {"out_record", [&] { return rdt_context_record_get(s, id, nullptr); }},
      {"ctx", [&] { return rdt_context_free(nullptr, id, &flag); }},
      {"object_id", [&] { return rdt_context_free(s, nullptr, &flag); }},
      {"out_found", [&] { return rdt_context_free(s, id, nullptr); }},
      {"ctx", [&] { return rdt_context_wait_tensor_freed(nullptr, &flag, 0); }},
      {"ctx", [&] { return rdt_context_contains(nullptr, id, &flag); }},
      {"object_id", [&] { return rdt_context_contains(s, nullptr, &flag); }},
      {"out_held", [&] { return rdt_context_contains(s, id, nullptr); }},
      {"ctx", [&] { return rdt_context_counts(nullptr, &n, &bytes); }},
      {"out_objects", [&] { return rdt_context_counts(s, nullptr, &bytes); }},
      {"out_bytes", [&] { return rdt_context_counts(s, &n, nullptr); }},
  };
  for (const auto& c : cases) {
    rdt_status s = c.second();
    if (s != RDT_ERR_NULL_ARGUMENT || last_error().find(c.first) == std::string::npos) {
      fail(__FILE__, __LINE__, std::string("NULL ") + c.first + " gave " + status_name(s) + ": " + last_error());
    }
  }
  rdt_metadata_destroy(md);
  CHECK(unused == nullptr);
  CHECK_STATUS(rdt_stats_get(RDT_TRANSPORT_GLOO, &stats), RDT_OK);
  CHECK(!store.contains(1));
  rdt_metadata_destroy(nullptr);  // ignored
  rdt_context_destroy(nullptr);   // ignored
  rdt_buffer_free(nullptr);       // ignored
}

TEST(python_helpers_need_python_and_release_releases) {
  // This process has no CPython: the Python binding's bulk helpers say so.
  DLManagedTensorVersioned* out[1] = {nullptr};
  CHECK_STATUS(rdt_tensors_export(nullptr, nullptr, nullptr, out, nullptr, 0), RDT_ERR_UNAVAILABLE);
  CHECK(last_error().find("CPython C API is not in this process") != std::string::npos);
  CHECK_STATUS(rdt_capsules_consume(nullptr, 0), RDT_ERR_UNAVAILABLE);
  bool distinct = false;
  CHECK_STATUS(rdt_list_distinct(nullptr, 0, &distinct), RDT_ERR_UNAVAILABLE);
  CHECK_STATUS(rdt_tensors_view(nullptr, nullptr, nullptr, nullptr, nullptr, 0), RDT_ERR_UNAVAILABLE);
  // Releasing needs no Python: each deleter runs once, NULL entries are skipped.
  Deletions deletions;
  DLManagedTensorVersioned* made[3] = {make_versioned(deletions, {3}), nullptr, make_versioned(deletions, {2})};
  CHECK_STATUS(rdt_tensors_release(made, 3), RDT_OK);
  CHECK(deletions.count == 2);
  CHECK_STATUS(rdt_tensors_release(nullptr, 0), RDT_OK);
}

TEST(unknown_codes_are_invalid_arguments) {
  rdt_transport_stats stats;
  for (rdt_transport t : {RDT_TRANSPORT_GLOO, RDT_TRANSPORT_NCCL, RDT_TRANSPORT_NIXL, RDT_TRANSPORT_CUDA_IPC,
                          RDT_TRANSPORT_SHM}) {
    CHECK_STATUS(rdt_stats_get(t, &stats), RDT_OK);
  }
  CHECK_STATUS(rdt_stats_get(5, &stats), RDT_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("unknown transport code 5") != std::string::npos);
  CHECK_STATUS(rdt_stats_get(UINT32_MAX, &stats), RDT_ERR_INVALID_ARGUMENT);

  Deletions deletions;
  Store store;
  DLManagedTensor* tensor = make_tensor(deletions, {2});
  CHECK_STATUS(store.put(1, {tensor}, 7), RDT_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("transport code 7") != std::string::npos);
  CHECK(deletions.count == 0 && !store.contains(1));
  release(tensor);
}

TEST(invalid_tensors_stay_with_the_caller) {
  Deletions deletions;
  Store store;
  DLManagedTensor* good = make_tensor(deletions, {3, 2});
  DLManagedTensor* negative = make_tensor(deletions, {3, 2});
  negative->dl_tensor.shape[1] = -2;
  DLManagedTensor* bad_dtype = make_tensor(deletions, {3});
  bad_dtype->dl_tensor.dtype = DLDataType{kDLFloat, 12, 1};
  DLManagedTensor* bad_ndim = make_tensor(deletions, {3});
  bad_ndim->dl_tensor.ndim = -1;
  for (DLManagedTensor* bad : {negative, bad_dtype, bad_ndim}) {
    CHECK_STATUS(store.put(1, {good, bad}), RDT_ERR_INVALID_ARGUMENT);
    CHECK(last_error().rfind("tensor 1:", 0) == 0);
  }
  DLManagedTensorVersioned* major2 = make_versioned(deletions, {2}, 2);
  rdt_buffer record{nullptr, 0};
  CHECK_STATUS(rdt_context_put_versioned(store.get(), ObjectId(1).get(), RDT_TRANSPORT_SHM, nullptr, &major2, 1, &record),
               RDT_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("major version 2") != std::string::npos);
  CHECK(deletions.count == 0 && !store.contains(1));
  release({good, negative, bad_dtype, bad_ndim});
  release(major2);
  CHECK(deletions.count == 5);
}
