/* A differential-drive robot driven to its goal among obstacles by pompc's classic MPPI,
 * from C: the scene of examples/diff_drive_mppi.rs (MPPI-Generic's and Nav2's settings:
 * dt 0.02 s, horizon 100, lambda 1, sigma 0.2, Nav2's control-cost weight 0.015), with the
 * simulation in C.
 *
 *   diff_drive [samples [max_steps [horizon]]]   (defaults 512, 1000, 100)
 *   diff_drive --print-wgsl                      prints the problem's WGSL
 *   diff_drive --leak ...                        skips pompc_mppi_destroy (for the leak test)
 *
 * Exit status: 0 goal reached without collision, 3 goal not reached within max_steps,
 * 4 collision, 1 a pompc call failed, 2 bad arguments.
 *
 * Build: see the README's "C ABI" section. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diff_drive_problem.h"
#include "pompc.h"

/* Every pompc call returns a status; on failure the message is in pompc_last_error(). */
#define CHECK(call)                                                                   \
    do {                                                                              \
        pompc_status s_ = (call);                                                     \
        if (s_ != POMPC_STATUS_OK) {                                                  \
            fprintf(stderr, "%s failed: %s: %s\n", #call, pompc_status_name(s_),      \
                    pompc_last_error());                                              \
            goto fail;                                                                \
        }                                                                             \
    } while (0)

int main(int argc, char **argv) {
    size_t samples = 512, max_steps = 1000, horizon = 100;
    int leak = 0, arg = 1, code = 1;
    pompc_gpu *gpu = NULL;
    pompc_mppi *mppi = NULL;
    pompc_adapter_info adapter;
    pompc_mppi_config cfg;
    pompc_mppi_problem problem;
    pompc_mppi_info info;
    pompc_mppi_step_info step_info;
    size_t n_adapters = 0, step;
    float params[DD_PARAM_LEN], xf[DD_STATE_DIM], u[DD_CONTROL_DIM];
    float *costs = NULL, *sequence = NULL;
    double x[DD_STATE_DIM], min_clearance = INFINITY;
    int reached = 0, collisions = 0;

    if (argc > 1 && strcmp(argv[1], "--print-wgsl") == 0) {
        fputs(DD_WGSL, stdout);
        return 0;
    }
    if (argc > arg && strcmp(argv[arg], "--leak") == 0) {
        leak = 1;
        arg++;
    }
    if (argc > arg) samples = strtoul(argv[arg++], NULL, 10);
    if (argc > arg) max_steps = strtoul(argv[arg++], NULL, 10);
    if (argc > arg) horizon = strtoul(argv[arg++], NULL, 10);
    if (samples == 0 || max_steps == 0 || horizon == 0) {
        fprintf(stderr, "usage: diff_drive [--leak] [samples [max_steps [horizon]]]\n");
        return 2;
    }

    printf("pompc %s (ABI %u, header %d)\n", pompc_version(), pompc_abi_version(),
           POMPC_ABI_VERSION);
    CHECK(pompc_adapters(NULL, NULL, 0, &n_adapters));
    printf("%zu adapter(s) visible\n", n_adapters);
    CHECK(pompc_gpu_create(NULL, &gpu));
    CHECK(pompc_gpu_get_info(gpu, &adapter));
    printf("adapter: %s (%s, %s)\n", adapter.name, adapter.backend, adapter.device_type);

    problem.name = "diff_drive";
    problem.wgsl = DD_WGSL;
    problem.state_dim = DD_STATE_DIM;
    problem.control_dim = DD_CONTROL_DIM;
    problem.param_len = DD_PARAM_LEN;
    CHECK(pompc_mppi_config_default(&cfg));
    cfg.horizon = horizon;
    cfg.samples = samples;
    cfg.gamma = 0.015f; /* Nav2's: Williams et al.'s gamma = lambda swamps this task */
    cfg.seed = 3;
    CHECK(pompc_mppi_create(gpu, &problem, &cfg, &mppi));
    /* The controller keeps the device alive: the gpu handle can go now. */
    CHECK(pompc_gpu_destroy(gpu));
    gpu = NULL;
    CHECK(pompc_mppi_get_info(mppi, &info));
    printf("MPPI: %zu samples, horizon %zu x %.2f s\n", info.samples, info.horizon, cfg.dt);

    dd_params(params);
    CHECK(pompc_mppi_set_params(mppi, params, DD_PARAM_LEN));
    memcpy(x, DD_START, sizeof x);
    for (step = 0; step < max_steps; step++) {
        double d, c;
        int i;
        for (i = 0; i < DD_STATE_DIM; i++) xf[i] = (float)x[i];
        CHECK(pompc_mppi_step(mppi, xf, DD_STATE_DIM, u, DD_CONTROL_DIM, &step_info));
        if (step == 0) {
            /* The rollouts' costs and the nominal sequence, read back once to show them. */
            size_t k, best = 0;
            costs = malloc(info.samples * sizeof *costs);
            sequence = malloc(info.horizon * DD_CONTROL_DIM * sizeof *sequence);
            if (costs == NULL || sequence == NULL) goto fail;
            CHECK(pompc_mppi_costs(mppi, costs, info.samples, NULL, 0));
            CHECK(pompc_mppi_controls(mppi, sequence, info.horizon * DD_CONTROL_DIM));
            for (k = 1; k < info.samples; k++)
                if (costs[k] < costs[best]) best = k;
            printf("step 0: lowest sample cost %.3f (sample %zu; step reports %.3f), "
                   "%zu finite, first control (%+.3f, %+.3f) = sequence[0] (%+.3f, %+.3f)\n",
                   costs[best], best, step_info.min_cost, step_info.finite_samples, u[0],
                   u[1], sequence[0], sequence[1]);
        }
        dd_simulate(x, u, cfg.dt);
        c = dd_clearance(x);
        if (c < min_clearance) min_clearance = c;
        if (c < 0.0) collisions++;
        d = dd_goal_distance(x);
        if (step % 50 == 0)
            printf("step %4zu  at (%+.2f, %+.2f)  %.2f m to goal, clearance %+.2f m\n", step,
                   x[0], x[1], d, c);
        if (d <= DD_GOAL_RADIUS) {
            reached = 1;
            break;
        }
    }
    if (reached)
        printf("reached the goal at step %zu (t = %.2f s)\n", step, (step + 1) * cfg.dt);
    else
        printf("did not reach the goal in %zu steps (%.2f m short)\n", max_steps,
               dd_goal_distance(x));
    if (collisions == 0)
        printf("no collision (smallest clearance %.3f m)\n", min_clearance);
    else
        printf("collided at %d steps\n", collisions);
    code = collisions ? 4 : (reached ? 0 : 3);

fail:
    free(costs);
    free(sequence);
    if (!leak) pompc_mppi_destroy(mppi);
    pompc_gpu_destroy(gpu);
    return code;
}
