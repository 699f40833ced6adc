// Single-threaded store behaviour through the C ABI: views share memory, pop,
// free, ownership on refusal, and deleters when the store is destroyed.
#include <vector>

#include "fixtures.hpp"
#include "harness.hpp"

using namespace rdt_test;

TEST(get_views_share_memory_and_see_mutations) {
  Deletions deletions;
  Store store;
  std::vector<DLManagedTensor*> put = {make_tensor(deletions, {4, 8}), make_tensor(deletions, {16})};
  float* first = data_of(put[0]);
  float* second = data_of(put[1]);
  CHECK_STATUS(store.put(1, put), RDT_OK);

  std::vector<DLManagedTensor*> a, b;
  CHECK_STATUS(store.get(1, a), RDT_OK);
  CHECK(a.size() == 2);
  CHECK(data_of(a[0]) == first && data_of(a[1]) == second);
  CHECK(a[0]->dl_tensor.ndim == 2 && a[0]->dl_tensor.shape[0] == 4 && a[0]->dl_tensor.shape[1] == 8);
  CHECK(a[1]->dl_tensor.dtype.code == kDLFloat && a[1]->dl_tensor.dtype.bits == 32);

  data_of(a[1])[5] = -2.5f;  // a consumer writes through its view...
  CHECK_STATUS(store.get(1, b), RDT_OK);
  CHECK(data_of(b[1]) == second);
  CHECK(data_of(b[1])[5] == -2.5f && data_of(b[1])[6] == 6.0f);  // ...a later get sees it

  release(a);
  release(b);
  CHECK(deletions.count == 0);
  CHECK(store.free(1));
  CHECK(!store.free(1));
  CHECK(deletions.count == 2);
}

TEST(versioned_tensors_are_stored_and_deleted_once) {
  Deletions deletions;
  Store store;
  DLManagedTensorVersioned* put[] = {make_versioned(deletions, {3}), make_versioned(deletions, {2, 2})};
  rdt_buffer record{nullptr, 0};
  CHECK_STATUS(rdt_context_put_versioned(store.get(), ObjectId(1).get(), RDT_TRANSPORT_SHM, nullptr, put, 2, &record),
               RDT_OK);
  rdt_buffer_free(&record);
  std::vector<DLManagedTensor*> views;
  CHECK_STATUS(store.get(1, views), RDT_OK);
  CHECK(views.size() == 2 && data_of(views[1])[3] == 3.0f);
  release(views);
  CHECK(store.free(1));
  CHECK(deletions.count == 2);
}

TEST(pop_removes_the_object_and_views_keep_the_memory) {
  Deletions deletions;
  Store store;
  CHECK_STATUS(store.put(1, {make_tensor(deletions, {8}), make_tensor(deletions, {8})}), RDT_OK);
  std::vector<DLManagedTensor*> views, after;
  CHECK_STATUS(store.get(1, views, /*pop=*/true), RDT_OK);
  CHECK(views.size() == 2);
  CHECK(!store.contains(1));
  CHECK_STATUS(store.get(1, after), RDT_ERR_NOT_FOUND);
  CHECK_STATUS(store.get(1, after, /*pop=*/true), RDT_ERR_NOT_FOUND);
  CHECK(deletions.count == 0);
  CHECK(data_of(views[1])[7] == 7.0f);
  release(views);
  CHECK(deletions.count == 2);
}

TEST(an_existing_object_leaves_ownership_with_the_caller) {
  Deletions kept, refused;
  Store store;
  CHECK_STATUS(store.put(1, {make_tensor(kept, {2})}), RDT_OK);
  DLManagedTensor* again = make_tensor(refused, {2});
  CHECK_STATUS(store.put(1, {again}), RDT_ERR_ALREADY_EXISTS);
  CHECK(last_error().find("already") != std::string::npos);
  CHECK(refused.count == 0);
  release(again);
  CHECK(refused.count == 1 && kept.count == 0);
}

TEST(buffer_too_small_reports_the_count) {
  Deletions deletions;
  Store store;
  CHECK_STATUS(store.put(1, {make_tensor(deletions, {1}), make_tensor(deletions, {1}), make_tensor(deletions, {1})}),
               RDT_OK);
  std::vector<DLManagedTensor*> views;
  size_t count = 0;
  CHECK_STATUS(store.get(1, views, false, 2, &count), RDT_ERR_BUFFER_TOO_SMALL);
  CHECK(count == 3 && views.empty());
  CHECK_STATUS(store.get(1, views, true, 0, &count), RDT_ERR_BUFFER_TOO_SMALL);
  CHECK(count == 3 && store.contains(1));
  CHECK_STATUS(store.get(1, views, false, 3, &count), RDT_OK);
  CHECK(count == 3 && views.size() == 3);
  release(views);
}

TEST(counts_track_objects_and_bytes) {
  Deletions deletions;
  Store store;
  CHECK_STATUS(store.put(1, {make_tensor(deletions, {4, 4})}), RDT_OK);
  CHECK_STATUS(store.put(2, {make_tensor(deletions, {10}), make_tensor(deletions, {0})}), RDT_OK);
  CHECK_STATUS(store.put(3, {}), RDT_OK);
  size_t objects = 0;
  uint64_t bytes = 0;
  CHECK_STATUS(rdt_context_counts(store.get(), &objects, &bytes), RDT_OK);
  CHECK(objects == 3 && bytes == (16 + 10) * 4);
  CHECK_STATUS(rdt_context_get(store.get(), ObjectId(3).get(), nullptr, 0, &objects), RDT_OK);
  CHECK(objects == 0);
  store.free(1);
  CHECK_STATUS(rdt_context_counts(store.get(), &objects, &bytes), RDT_OK);
  CHECK(objects == 2 && bytes == 40);
}

TEST(destroying_the_store_deletes_what_it_holds) {
  Deletions deletions;
  std::vector<DLManagedTensor*> view;
  {
    Store store;
    for (uint64_t id = 0; id < 5; id++) {
      CHECK_STATUS(store.put(id, {make_tensor(deletions, {3}), make_tensor(deletions, {3})}), RDT_OK);
    }
    DLManagedTensorVersioned* versioned = make_versioned(deletions, {7});
    rdt_buffer record{nullptr, 0};
    CHECK_STATUS(
        rdt_context_put_versioned(store.get(), ObjectId(9).get(), RDT_TRANSPORT_SHM, nullptr, &versioned, 1, &record),
        RDT_OK);
    rdt_buffer_free(&record);
    CHECK_STATUS(store.get(0, view), RDT_OK);
    CHECK(deletions.count == 0);
  }  // rdt_context_destroy
  CHECK(deletions.count == 9);  // object 0 lives on in its views
  CHECK(data_of(view[1])[2] == 2.0f);
  release(view);
  CHECK(deletions.count == 11);
}
