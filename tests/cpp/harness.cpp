// The test runner: registry, failure recording and main().
#include "harness.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <vector>

#include "fixtures.hpp"

namespace rdt_test {
namespace {

struct Test {
  const char* name;
  TestFn fn;
};

std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}

std::atomic<bool> g_failed{false};
std::mutex g_print;

}  // namespace

Registrar::Registrar(const char* name, TestFn fn) { registry().push_back({name, fn}); }

void fail(const char* file, int line, const std::string& what) {
  std::lock_guard<std::mutex> lock(g_print);
  std::fprintf(stderr, "  %s:%d: %s\n", file, line, what.c_str());
  g_failed = true;
}

std::string last_error() { return rdt_last_error(); }

const char* status_name(rdt_status s) {
  static const char* const names[] = {
      "RDT_OK",           "RDT_ERR_NULL_ARGUMENT", "RDT_ERR_INVALID_ARGUMENT",
      "RDT_ERR_NOT_FOUND", "RDT_ERR_ALREADY_EXISTS", "RDT_ERR_TIMEOUT",
      "RDT_ERR_MALFORMED_METADATA", "RDT_ERR_UNSUPPORTED", "RDT_ERR_TRANSPORT",
      "RDT_ERR_OBJECT_FAILED", "RDT_ERR_UNAVAILABLE", "RDT_ERR_BUFFER_TOO_SMALL",
      "RDT_ERR_IO",       "RDT_ERR_INTERNAL"};
  auto i = static_cast<size_t>(s);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "(unknown status)";
}

}  // namespace rdt_test

int main() {
  using namespace rdt_test;
  int passed = 0, failed = 0;
  auto record = [&](const char* name) {
    bool ok = !g_failed.exchange(false);
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", name);
    std::fflush(stdout);
    (ok ? passed : failed)++;
  };
  for (const Test& t : registry()) {
    t.fn();
    record(t.name);
  }
  // Every tensor made by any test must have had its deleter called exactly once.
  if (live_tensors() != 0) {
    fail(__FILE__, __LINE__, std::to_string(live_tensors()) + " tensors were never deleted");
  }
  record("every_deleter_called_exactly_once");
  std::printf("%d passed, %d failed\n", passed, failed);
  std::fflush(stdout);  // before LeakSanitizer runs at exit and may abort
  return failed == 0 ? 0 : 1;
}
