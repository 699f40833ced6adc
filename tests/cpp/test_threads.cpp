// The store driven from several threads: blocking calls time out in time, and
// return as soon as another thread puts, frees or fails the object.
#include <atomic>
#include <thread>
#include <vector>

#include "fixtures.hpp"
#include "harness.hpp"

using namespace rdt_test;

namespace {

// Runs `fn` on `n` threads at once and joins them.
template <typename Fn>
void on_threads(int n, Fn fn) {
  std::vector<std::thread> threads;
  for (int i = 0; i < n; i++) threads.emplace_back(fn, i);
  for (auto& t : threads) t.join();
}

}  // namespace

TEST(blocking_calls_time_out_in_time) {
  Store store;
  std::vector<DLManagedTensor*> views;
  for (int call = 0; call < 3; call++) {
    auto start = Clock::now();
    rdt_status s = call == 0   ? rdt_store_wait(store.get(), ObjectId(1).get(), kShortMs)
                   : call == 1 ? store.get(1, kShortMs, views)
                               : store.get(1, kShortMs, views, /*pop=*/true);
    Ms took = since(start);
    CHECK_STATUS(s, RDT_ERR_TIMEOUT);
    CHECK(last_error().find("did not arrive") != std::string::npos);
    CHECK(took >= Ms(kShortMs) && took < Ms(kShortMs) + kSlack);
  }
}

TEST(waiters_return_when_another_thread_puts) {
  Deletions deletions;
  Store store;
  DLManagedTensor* tensor = make_tensor(deletions, {32});
  float* data = data_of(tensor);
  std::thread producer([&] {
    std::this_thread::sleep_for(Ms(50));
    CHECK_STATUS(store.put(1, {tensor}), RDT_OK);
  });
  on_threads(4, [&](int i) {
    auto start = Clock::now();
    if (i == 0) {
      CHECK_STATUS(rdt_store_wait(store.get(), ObjectId(1).get(), kLongMs), RDT_OK);
    } else {
      std::vector<DLManagedTensor*> views;
      CHECK_STATUS(store.get(1, kLongMs, views), RDT_OK);
      CHECK(views.size() == 1 && data_of(views[0]) == data);
      release(views);
    }
    CHECK(since(start) < kSlack);
  });
  producer.join();
  CHECK(deletions.count == 0);
  CHECK(store.free(1));
  CHECK(deletions.count == 1);
}

TEST(wait_tensor_freed_blocks_until_another_thread_frees) {
  Deletions deletions;
  Store store;
  DLManagedTensor* tensor = make_tensor(deletions, {64});
  const void* data = data_of(tensor);
  CHECK_STATUS(store.put(1, {tensor}), RDT_OK);

  auto start = Clock::now();
  CHECK_STATUS(rdt_store_wait_tensor_freed(store.get(), data, kShortMs), RDT_ERR_TIMEOUT);
  CHECK(since(start) >= Ms(kShortMs) && since(start) < Ms(kShortMs) + kSlack);

  std::atomic<bool> freeing{false};
  std::thread freer([&] {
    std::this_thread::sleep_for(Ms(kShortMs));
    freeing = true;
    CHECK(store.free(1));
  });
  CHECK_STATUS(rdt_store_wait_tensor_freed(store.get(), data, kLongMs), RDT_OK);
  CHECK(freeing);
  freer.join();
  CHECK(deletions.count == 1);
  CHECK_STATUS(rdt_store_wait_tensor_freed(store.get(), data, 0), RDT_OK);
}

TEST(put_error_fails_every_waiter_with_its_text) {
  Store store;
  std::thread failer([&] {
    std::this_thread::sleep_for(Ms(50));
    CHECK_STATUS(rdt_store_put_error(store.get(), ObjectId(1).get(), "producer actor died"), RDT_OK);
  });
  on_threads(3, [&](int) {
    std::vector<DLManagedTensor*> views;
    CHECK_STATUS(store.get(1, kLongMs, views), RDT_ERR_OBJECT_FAILED);
    CHECK(last_error() == "producer actor died");
  });
  failer.join();
  CHECK_STATUS(rdt_store_wait(store.get(), ObjectId(1).get(), 0), RDT_OK);

  Deletions deletions;
  CHECK_STATUS(store.put(2, {make_tensor(deletions, {4}), make_tensor(deletions, {4})}), RDT_OK);
  CHECK_STATUS(rdt_store_put_error(store.get(), ObjectId(2).get(), "receive failed"), RDT_OK);
  CHECK(deletions.count == 2);  // the error replaced the tensors
}

TEST(concurrent_put_get_pop_deletes_everything_once) {
  constexpr uint64_t kThreads = 4, kObjects = 200;
  Deletions deletions;
  Store store;
  on_threads(kThreads, [&](int t) {
    for (uint64_t i = 0; i < kObjects; i++) {
      uint64_t mine = t * kObjects + i, theirs = (t + 1) % kThreads * kObjects + i;
      CHECK_STATUS(store.put(mine, {make_tensor(deletions, {4}), make_tensor(deletions, {2, 2})}), RDT_OK);
      std::vector<DLManagedTensor*> views, popped;
      if (store.get(theirs, 0, views) == RDT_OK) release(views);
      CHECK_STATUS(store.get(mine, 0, popped, /*pop=*/true), RDT_OK);
      CHECK(popped.size() == 2 && data_of(popped[1])[3] == 3.0f);
      release(popped);
    }
  });
  size_t objects = 1;
  uint64_t bytes = 1;
  CHECK_STATUS(rdt_store_counts(store.get(), &objects, &bytes), RDT_OK);
  CHECK(objects == 0 && bytes == 0);
  CHECK(deletions.count == static_cast<int>(kThreads * kObjects * 2));
}
