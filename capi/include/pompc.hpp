// C++17 RAII wrappers over pompc's C ABI (pompc.h): each handle is a move-only object that
// destroys what it owns, and a failed call throws pompc::Error with the status and the
// library's message. Header-only; link libpompc_c as for C. Written by hand, not generated.
// Licensed MIT OR Apache-2.0.
#ifndef POMPC_HPP
#define POMPC_HPP

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "pompc.h"

namespace pompc {

// A call that did not return POMPC_STATUS_OK.
class Error : public std::runtime_error {
 public:
  Error(pompc_status status, const std::string& message)
      : std::runtime_error(std::string(pompc_status_name(status)) + ": " + message),
        status_(status) {}
  pompc_status status() const noexcept { return status_; }

 private:
  pompc_status status_;
};

// Throw on failure, with this thread's last error.
inline void check(pompc_status s) {
  if (s != POMPC_STATUS_OK) throw Error(s, pompc_last_error());
}

namespace detail {
// Destroy functions return a status too; a destructor has nowhere to report it.
struct Destroy {
  void operator()(pompc_gpu* p) const noexcept { pompc_gpu_destroy(p); }
  void operator()(pompc_model* p) const noexcept { pompc_model_destroy(p); }
  void operator()(pompc_planner* p) const noexcept { pompc_planner_destroy(p); }
  void operator()(pompc_mppi* p) const noexcept { pompc_mppi_destroy(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Destroy>;
}  // namespace detail

// A device. Handles made from it keep it open, so it may go out of scope before them.
class Gpu {
 public:
  // The best adapter (config nullptr), or the one a config asks for.
  explicit Gpu(const pompc_gpu_config* config = nullptr) {
    pompc_gpu* p = nullptr;
    check(pompc_gpu_create(config, &p));
    h_.reset(p);
  }
  pompc_adapter_info info() const {
    pompc_adapter_info i;
    check(pompc_gpu_get_info(h_.get(), &i));
    return i;
  }
  const pompc_gpu* get() const noexcept { return h_.get(); }

 private:
  detail::Owned<pompc_gpu> h_;
};

// A TD-MPC2 world model on a device.
class Model {
 public:
  static Model load(const Gpu& gpu, const std::string& path) {
    // c_str() would cut the path at the NUL and load another file.
    if (path.find('\0') != std::string::npos)
      throw Error(POMPC_STATUS_INVALID_ARGUMENT, "path contains a NUL byte");
    pompc_model* p = nullptr;
    check(pompc_model_load(gpu.get(), path.c_str(), &p));
    return Model(p);
  }
  static Model init_tdmpc2(const Gpu& gpu, uint32_t size, size_t obs_dim, size_t action_dim,
                           uint64_t seed) {
    pompc_model* p = nullptr;
    check(pompc_model_init_tdmpc2(gpu.get(), size, obs_dim, action_dim, seed, &p));
    return Model(p);
  }
  pompc_model_info info() const {
    pompc_model_info i;
    check(pompc_model_get_info(h_.get(), &i));
    return i;
  }
  const pompc_model* get() const noexcept { return h_.get(); }

 private:
  explicit Model(pompc_model* p) : h_(p) {}
  detail::Owned<pompc_model> h_;
};

// TD-MPC2's planner over a model (which it keeps alive). One thread at a time.
class Planner {
 public:
  explicit Planner(const Model& model, const pompc_planner_config* config = nullptr)
      : info_(model.info()) {
    pompc_planner* p = nullptr;
    check(pompc_planner_create(model.get(), config, &p));
    h_.reset(p);
  }
  // Actions [batch, action_dim] for observations [batch, obs_dim]; first_step[b] nonzero
  // where environment b starts an episode.
  std::vector<float> plan(const std::vector<float>& obs, const std::vector<uint8_t>& first_step) {
    std::vector<float> action(first_step.size() * info_.action_dim);
    check(pompc_planner_plan(h_.get(), obs.data(), obs.size(), first_step.data(),
                             first_step.size(), action.data(), action.size()));
    return action;
  }
  // The last plan's mean and std [batch, action_dim] and value [batch].
  void last_plan(std::vector<float>& mean, std::vector<float>& std, std::vector<float>& value,
                 size_t batch) const {
    mean.resize(batch * info_.action_dim);
    std.resize(batch * info_.action_dim);
    value.resize(batch);
    check(pompc_planner_last_plan(h_.get(), mean.data(), mean.size(), std.data(), std.size(),
                                  value.data(), value.size()));
  }
  const pompc_model_info& model_info() const noexcept { return info_; }

 private:
  pompc_model_info info_;
  detail::Owned<pompc_planner> h_;
};

// Classic MPPI over a WGSL problem (keeps its device alive). One thread at a time.
class Mppi {
 public:
  Mppi(const Gpu& gpu, const pompc_mppi_problem& problem,
       const pompc_mppi_config* config = nullptr) {
    pompc_mppi* p = nullptr;
    check(pompc_mppi_create(gpu.get(), &problem, config, &p));
    h_.reset(p);
    info_ = info();
  }
  void set_params(const std::vector<float>& params) {
    check(pompc_mppi_set_params(h_.get(), params.data(), params.size()));
  }
  // The control to apply now, from state x0.
  std::vector<float> step(const std::vector<float>& x0, pompc_mppi_step_info* info = nullptr) {
    std::vector<float> u(info_.control_dim);
    check(pompc_mppi_step(h_.get(), x0.data(), x0.size(), u.data(), u.size(), info));
    return u;
  }
  std::vector<float> costs() const {
    std::vector<float> c(info_.samples);
    check(pompc_mppi_costs(h_.get(), c.data(), c.size(), nullptr, 0));
    return c;
  }
  std::vector<float> controls() const {
    std::vector<float> u(info_.horizon * info_.control_dim);
    check(pompc_mppi_controls(h_.get(), u.data(), u.size()));
    return u;
  }
  // Sizes and the number of steps so far.
  pompc_mppi_info info() const {
    pompc_mppi_info i;
    check(pompc_mppi_get_info(h_.get(), &i));
    return i;
  }

 private:
  pompc_mppi_info info_{};  // the sizes, as created
  detail::Owned<pompc_mppi> h_;
};

}  // namespace pompc

#endif  // POMPC_HPP
