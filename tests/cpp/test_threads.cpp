// The context's store driven from several threads: wait_tensor_freed returns as
// soon as another thread frees the object; concurrent puts, gets and frees
// delete everything once. (The waits of the 1.x store handles are the core
// store's, tested in tests/store.rs.)
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

TEST(wait_tensor_freed_blocks_until_another_thread_frees) {
  Deletions deletions;
  Store store;
  DLManagedTensor* tensor = make_tensor(deletions, {64});
  const void* data = data_of(tensor);
  CHECK_STATUS(store.put(1, {tensor}), RDT_OK);

  auto start = Clock::now();
  CHECK_STATUS(rdt_context_wait_tensor_freed(store.get(), data, kShortMs), RDT_ERR_TIMEOUT);
  CHECK(since(start) >= Ms(kShortMs) && since(start) < Ms(kShortMs) + kSlack);

  std::atomic<bool> freeing{false};
  std::thread freer([&] {
    std::this_thread::sleep_for(Ms(kShortMs));
    freeing = true;
    CHECK(store.free(1));
  });
  CHECK_STATUS(rdt_context_wait_tensor_freed(store.get(), data, kLongMs), RDT_OK);
  CHECK(freeing);
  freer.join();
  CHECK(deletions.count == 1);
  CHECK_STATUS(rdt_context_wait_tensor_freed(store.get(), data, 0), RDT_OK);
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
      if (store.get(theirs, views) == RDT_OK) release(views);
      CHECK_STATUS(store.get(mine, popped, /*pop=*/true), RDT_OK);
      CHECK(popped.size() == 2 && data_of(popped[1])[3] == 3.0f);
      release(popped);
    }
  });
  size_t objects = 1;
  uint64_t bytes = 1;
  CHECK_STATUS(rdt_context_counts(store.get(), &objects, &bytes), RDT_OK);
  CHECK(objects == 0 && bytes == 0);
  CHECK(deletions.count == static_cast<int>(kThreads * kObjects * 2));
}
