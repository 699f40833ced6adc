// A tiny test runner for the C ABI tests: TEST registers a function, CHECK and
// CHECK_STATUS record a failure (from any thread) and return from the enclosing
// function. main() runs every test and prints "N passed, N failed" last.
#pragma once

#include <chrono>
#include <string>

#include "ray_rdt.h"

namespace rdt_test {

using TestFn = void (*)();

// Adds a test to the run; used through TEST.
struct Registrar {
  Registrar(const char* name, TestFn fn);
};

// Marks the running test failed and prints where and why. Thread safe.
void fail(const char* file, int line, const std::string& what);

// The calling thread's rdt_last_error() text.
std::string last_error();

// Name of a status code, for messages.
const char* status_name(rdt_status s);

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// A wait the tests expect to run out.
constexpr uint64_t kShortMs = 100;
// A wait the tests expect another thread to cut short.
constexpr uint64_t kLongMs = 20000;
// Slack past a timeout before a wait counts as late (valgrind is slow).
constexpr Ms kSlack{5000};

// Milliseconds since `start`.
inline Ms since(Clock::time_point start) {
  return std::chrono::duration_cast<Ms>(Clock::now() - start);
}

}  // namespace rdt_test

#define TEST(name)                                                  \
  static void name();                                               \
  static ::rdt_test::Registrar name##_registrar(#name, name);       \
  static void name()

#define CHECK(cond)                                 \
  do {                                              \
    if (!(cond)) {                                  \
      ::rdt_test::fail(__FILE__, __LINE__, #cond);  \
      return;                                       \
    }                                               \
  } while (0)

// Checks that `call` returns `expected`; the failure message includes the
// status and the thread's last error.
#define CHECK_STATUS(call, expected)                                              \
  do {                                                                            \
    rdt_status got_ = (call);                                                     \
    if (got_ != (expected)) {                                                     \
      ::rdt_test::fail(__FILE__, __LINE__,                                        \
                       std::string(#call) + " returned " +                        \
                           ::rdt_test::status_name(got_) + ", expected " +        \
                           ::rdt_test::status_name(expected) + " (last error: " + \
                           ::rdt_test::last_error() + ")");                       \
      return;                                                                     \
    }                                                                             \
  } while (0)
