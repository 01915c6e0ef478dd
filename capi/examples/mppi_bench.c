/* The classic-MPPI step through the C ABI, timed the way `pompc bench mppi` times it in
 * Rust (same problem, scene and settings: differential drive, horizon 100, dt 0.02,
 * lambda 1, sigma 0.2, gamma 0.015, trusted WGSL), so that the two medians differ by the
 * cost of the boundary: argument checks, the handle's lock, the copies into caller arrays.
 *
 *   mppi_bench [-r runs] [-w warm-up seconds] [samples ...]   (defaults 300, 1, 128 16384)
 *
 * Per sample count: a warm-up of at least 50 steps and at least the given seconds (a cold
 * GPU runs its first steps up to twice as slow), then `runs` steps from the scene's start,
 * each timed on the host's monotonic clock around pompc_mppi_step. Prints median, p90 and
 * min in milliseconds. scripts/device/capi_bench.sh runs it beside `pompc bench mppi`. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "diff_drive_problem.h"
#include "pompc.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The q-quantile of n sorted values, indexed as pompc's bench::Stats does. */
static double quantile(const double *sorted, size_t n, double q) {
    return sorted[(size_t)((double)(n - 1) * q + 0.5)];
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(const char *what, pompc_status s) {
    fprintf(stderr, "%s: %s: %s\n", what, pompc_status_name(s), pompc_last_error());
    return 1;
}

int main(int argc, char **argv) {
    size_t runs = 300, samples[16] = {128, 16384}, n_samples = 2, i, j;
    double warmup_seconds = 1.0;
    int arg = 1, first = 1;
    pompc_gpu *gpu = NULL;
    pompc_adapter_info adapter;
    pompc_mppi_problem problem = {"diff_drive", DD_WGSL, DD_STATE_DIM, DD_CONTROL_DIM,
                                  DD_PARAM_LEN};
    float params[DD_PARAM_LEN], x0[DD_STATE_DIM], u[DD_CONTROL_DIM];
    pompc_status s;

    while (arg < argc) {
        if (strcmp(argv[arg], "-r") == 0 && arg + 1 < argc) {
            runs = strtoul(argv[arg + 1], NULL, 10);
            arg += 2;
        } else if (strcmp(argv[arg], "-w") == 0 && arg + 1 < argc) {
            warmup_seconds = strtod(argv[arg + 1], NULL);
            arg += 2;
        } else if (n_samples < 16 && strtoul(argv[arg], NULL, 10) > 0) {
            if (first) n_samples = 0, first = 0;
            samples[n_samples++] = strtoul(argv[arg++], NULL, 10);
        } else {
            fprintf(stderr, "usage: mppi_bench [-r runs] [-w warm-up seconds] [samples ...]\n");
            return 2;
        }
    }
    if (runs == 0) runs = 1;

    if ((s = pompc_gpu_create(NULL, &gpu)) != POMPC_STATUS_OK) return fail("gpu", s);
    pompc_gpu_get_info(gpu, &adapter);
    printf("adapter: %s (%s); pompc %s through the C ABI\n", adapter.name, adapter.backend,
           pompc_version());
    printf("differential drive, horizon 100, dt 0.02, lambda 1, sigma 0.2, gamma 0.015, "
           "trusted WGSL; %zu runs after a warm-up of >= 50 steps and >= %.1f s\n",
           runs, warmup_seconds);
    printf("%8s %10s %10s %10s\n", "samples", "wall ms", "p90 ms", "min ms");
    dd_params(params);
    for (i = 0; i < DD_STATE_DIM; i++) x0[i] = (float)DD_START[i];

    for (j = 0; j < n_samples; j++) {
        pompc_mppi *mppi = NULL;
        pompc_mppi_config cfg;
        double *t = malloc(runs * sizeof *t), t0;
        size_t done = 0;
        if (t == NULL) return 1;
        pompc_mppi_config_default(&cfg);
        cfg.samples = samples[j];
        cfg.gamma = 0.015f;
        cfg.trusted = 1;
        if ((s = pompc_mppi_create(gpu, &problem, &cfg, &mppi)) != POMPC_STATUS_OK)
            return fail("mppi", s);
        if ((s = pompc_mppi_set_params(mppi, params, DD_PARAM_LEN)) != POMPC_STATUS_OK)
            return fail("params", s);
        t0 = now();
        while (done < 50 || now() - t0 < warmup_seconds) {
            if ((s = pompc_mppi_step(mppi, x0, DD_STATE_DIM, u, DD_CONTROL_DIM, NULL)) !=
                POMPC_STATUS_OK)
                return fail("warm-up step", s);
            done++;
        }
        for (i = 0; i < runs; i++) {
            double a = now();
            s = pompc_mppi_step(mppi, x0, DD_STATE_DIM, u, DD_CONTROL_DIM, NULL);
            t[i] = now() - a;
            if (s != POMPC_STATUS_OK) return fail("step", s);
        }
        qsort(t, runs, sizeof *t, by_value);
        printf("%8zu %10.3f %10.3f %10.3f\n", samples[j], 1e3 * quantile(t, runs, 0.5),
               1e3 * quantile(t, runs, 0.9), 1e3 * t[0]);
        free(t);
        pompc_mppi_destroy(mppi);
    }
    pompc_gpu_destroy(gpu);
    return 0;
}
