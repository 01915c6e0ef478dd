// TD-MPC2's planner from C++ through pompc's C ABI, with the RAII wrappers of pompc.hpp.
//
//   plan [--tiny] [weights.safetensors [seed [batch]]]
//
// Plans three steps for `batch` environments (default 2) with observations drawn from `seed`
// (default 1) by the xorshift64* below: the first step starts every episode, the next two
// warm-start. Without a weights file the model is TD-MPC2's 5M preset at initialization (24
// observations, 6 actions). The planner is TD-MPC2's, cut to 64 samples, 8 elites, 8 policy
// trajectories and 2 iterations so that it runs in seconds on a CPU (lavapipe), in
// evaluation mode; --tiny cuts it further (8 samples, horizon 1, 1 iteration, one call, and
// a 10-minute GPU wait timeout) for runs under valgrind. Prints each step's actions and the last plan's value; capi/tests
// replays the same calls through the Rust API and compares.
//
// Build: see the README's "C ABI" section.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "pompc.hpp"

// Observations in [-1, 1): xorshift64*, 24 bits per value (exact in float).
struct Xorshift {
  uint64_t s;
  explicit Xorshift(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  float uniform() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    uint64_t x = s * 0x2545F4914F6CDD1Dull;
    return static_cast<float>(static_cast<double>(x >> 40) / 16777216.0 * 2.0 - 1.0);
  }
};

int main(int argc, char** argv) {
  int arg = 1;
  bool tiny = argc > 1 && std::string(argv[1]) == "--tiny";
  if (tiny) arg++;
  const char* weights = argc > arg ? argv[arg] : nullptr;
  uint64_t seed = argc > arg + 1 ? std::strtoull(argv[arg + 1], nullptr, 10) : 1;
  size_t batch = argc > arg + 2 ? std::strtoul(argv[arg + 2], nullptr, 10) : 2;
  if (batch == 0) {
    std::fprintf(stderr, "usage: plan [--tiny] [weights.safetensors [seed [batch]]]\n");
    return 2;
  }
  try {
    pompc_gpu_config gpu_cfg;
    pompc::check(pompc_gpu_config_default(&gpu_cfg));
    if (tiny) gpu_cfg.wait_timeout_ms = 600000;  // valgrind slows lavapipe 50-fold
    pompc::Gpu gpu(&gpu_cfg);
    pompc_adapter_info adapter = gpu.info();
    std::printf("adapter: %s (%s)\n", adapter.name, adapter.backend);

    // Errors come back as exceptions with the library's message.
    try {
      pompc::Model::load(gpu, "no-such-file.safetensors");
    } catch (const pompc::Error& e) {
      std::printf("expected error: %s\n", e.what());
    }

    pompc::Model model = weights ? pompc::Model::load(gpu, weights)
                                 : pompc::Model::init_tdmpc2(gpu, 5, 24, 6, 0);
    pompc_model_info mi = model.info();
    std::printf("model: obs %zu, action %zu, latent %zu, %zu parameters\n", mi.obs_dim,
                mi.action_dim, mi.latent_dim, mi.param_count);

    pompc_planner_config cfg;
    pompc::check(pompc_planner_config_default(mi.action_dim, &cfg));
    cfg.num_samples = 64;
    cfg.num_elites = 8;
    cfg.num_pi_trajs = 8;
    cfg.iterations = 2;
    cfg.eval = 1;
    if (tiny) {
      cfg.num_samples = 8;
      cfg.num_elites = 2;
      cfg.num_pi_trajs = 2;
      cfg.iterations = 1;
      cfg.horizon = 1;
    }
    pompc::Planner planner(model, &cfg);

    Xorshift rng(seed);
    std::vector<float> obs(batch * mi.obs_dim);
    std::vector<uint8_t> first(batch, 1);
    for (int call = 0; call < (tiny ? 1 : 3); call++) {
      for (float& o : obs) o = rng.uniform();
      std::vector<float> action = planner.plan(obs, first);
      for (size_t b = 0; b < batch; b++) {
        std::printf("action %d %zu:", call, b);
        for (size_t j = 0; j < mi.action_dim; j++)
          std::printf(" %.9g", action[b * mi.action_dim + j]);
        std::printf("\n");
      }
      std::fill(first.begin(), first.end(), 0);
    }
    std::vector<float> mean, std_, value;
    planner.last_plan(mean, std_, value, batch);
    for (size_t b = 0; b < batch; b++) std::printf("value %zu: %.9g\n", b, value[b]);
  } catch (const pompc::Error& e) {
    std::fprintf(stderr, "pompc: %s\n", e.what());
    return 1;
  }
  return 0;
}
