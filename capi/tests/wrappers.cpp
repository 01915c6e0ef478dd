// pompc.hpp's wrappers: a failed call throws pompc::Error with the status and the library's
// message; each handle is destroyed exactly once, however the objects are moved; a
// moved-from object throws (NULL handle), it does not crash. The destroy functions are
// wrapped at link time (-Wl,--wrap) to count the handles they release. Exit status 0: all
// checks passed; the failed check is printed otherwise.
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "pompc.hpp"

static int gpus, mppis;
extern "C" {
pompc_status __real_pompc_gpu_destroy(pompc_gpu* p);
pompc_status __real_pompc_mppi_destroy(pompc_mppi* p);
pompc_status __wrap_pompc_gpu_destroy(pompc_gpu* p) {
  if (p) gpus++;
  return __real_pompc_gpu_destroy(p);
}
pompc_status __wrap_pompc_mppi_destroy(pompc_mppi* p) {
  if (p) mppis++;
  return __real_pompc_mppi_destroy(p);
}
}

#define CHECK(c)                                                 \
  do {                                                           \
    if (!(c)) {                                                  \
      std::fprintf(stderr, "line %d: failed: %s\n", __LINE__, #c); \
      return 1;                                                  \
    }                                                            \
  } while (0)

// The call throws pompc::Error with `status` and a message containing `needle`.
template <class F>
static bool throws(F f, pompc_status status, const char* needle) {
  try {
    f();
  } catch (const pompc::Error& e) {
    if (e.status() == status && std::strstr(e.what(), needle)) return true;
    std::fprintf(stderr, "wrong error: %s\n", e.what());
    return false;
  }
  return false;
}

static const char* kWgsl =
    "fn dynamics(x: State, u: Control, t: u32) -> State { return State(x[0] + DT * u[0]); }\n"
    "fn running_cost(x: State, u: Control, t: u32) -> f32 { return x[0] * x[0]; }\n"
    "fn terminal_cost(x: State) -> f32 { return 0.0; }\n";

int main() {
  {
    pompc::Gpu gpu;
    pompc_mppi_problem problem = {"point", kWgsl, 1, 1, 0};
    pompc_mppi_config cfg;
    pompc::check(pompc_mppi_config_default(&cfg));
    cfg.horizon = 4;
    cfg.samples = 16;

    // Errors carry the status, its name and the library's message.
    CHECK(throws([&] { pompc::Model::load(gpu, "no-such-file.safetensors"); },
                 POMPC_STATUS_IO, "POMPC_STATUS_IO: no-such-file.safetensors"));
    CHECK(throws([&] { pompc::Model::load(gpu, std::string("a\0b", 3)); },
                 POMPC_STATUS_INVALID_ARGUMENT, "NUL"));
    pompc_mppi_problem broken = problem;
    broken.wgsl = "fn dynamics(";
    CHECK(throws([&] { pompc::Mppi m(gpu, broken, &cfg); }, POMPC_STATUS_SHADER, "POMPC_STATUS_SHADER: shader point"));

    pompc::Mppi a(gpu, problem, &cfg);
    CHECK(throws([&] { a.set_params({1.0f}); }, POMPC_STATUS_SHAPE, "params"));
    CHECK(a.step({0.5f}).size() == 1);

    // Move construction: the new object owns the handle, the old one is empty.
    pompc::Mppi b(std::move(a));
    CHECK(b.step({0.5f}).size() == 1);
    CHECK(throws([&] { a.step({0.5f}); }, POMPC_STATUS_NULL_ARGUMENT, "mppi is NULL"));
    // Move assignment releases the handle it overwrites, once.
    pompc::Mppi c(gpu, problem, &cfg);
    c = std::move(b);
    CHECK(mppis == 1);
    CHECK(c.info().steps == 2);
    c = std::move(c);  // self-move: still owns its handle
    // A vector that reallocates moves its elements.
    std::vector<pompc::Mppi> v;
    for (int i = 0; i < 5; i++) v.emplace_back(gpu, problem, &cfg);
    CHECK(mppis == 1);
    pompc::Gpu gpu2(std::move(gpu));
    CHECK(throws([&] { gpu.info(); }, POMPC_STATUS_NULL_ARGUMENT, "gpu is NULL"));
    CHECK(gpus == 0);
  }
  // Every handle created was destroyed exactly once: 1 + 1 + 5 controllers (the failed
  // create made none), one device.
  std::printf("destroyed: %d mppi, %d gpu\n", mppis, gpus);
  CHECK(mppis == 7);
  CHECK(gpus == 1);
  std::printf("ok\n");
  return 0;
}
