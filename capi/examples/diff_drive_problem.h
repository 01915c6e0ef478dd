/* The differential-drive robot of pompc's examples, as a WGSL problem for classic MPPI:
 * the same text as pompc::planner::problems::diff_drive() in Rust (capi/tests/examples.rs
 * checks that they agree), and the scene of MPPI-Generic's and Nav2's benchmarks
 * (DiffDriveScene::benchmark). Shared by diff_drive.c and mppi_bench.c.
 *
 * State [x, y, heading] (m, m, rad); controls in [-1, 1]^2: speed (1 m/s at 1) and turn rate
 * (3 rad/s at 1). Parameters: the goal (x, y), then 8 obstacles (x, y, r), r <= 0 absent. */
#ifndef POMPC_EXAMPLE_DIFF_DRIVE_PROBLEM_H
#define POMPC_EXAMPLE_DIFF_DRIVE_PROBLEM_H

#include <math.h>

#define DD_STATE_DIM 3
#define DD_CONTROL_DIM 2
#define DD_MAX_OBSTACLES 8
#define DD_PARAM_LEN (2 + 3 * DD_MAX_OBSTACLES)
#define DD_MAX_SPEED 1.0
#define DD_MAX_TURN_RATE 3.0
#define DD_ROBOT_RADIUS 0.15

static const char DD_WGSL[] =
    "// Differential drive among circular obstacles (pompc::planner::problems::DiffDrive).\n"
    "// x = [x, y, heading]; u = [speed / max speed, turn rate / max turn rate] in [-1, 1]^2.\n"
    "// param(0), param(1): goal; then 8 obstacles (x, y, r), r <= 0 absent.\n"
    "const DD_VMAX: f32 = 1.0;\n"
    "const DD_WMAX: f32 = 3.0;\n"
    "const DD_RADIUS: f32 = 0.15;\n"
    "const DD_W_GOAL: f32 = 10.0;\n"
    "const DD_W_U: f32 = 0.0;\n"
    "const DD_COLLISION: f32 = 1000.0;\n"
    "const DD_MARGIN: f32 = 0.3;\n"
    "const DD_W_MARGIN: f32 = 20.0;\n"
    "const DD_W_TERM: f32 = 300.0;\n"
    "const DD_OBSTACLES: u32 = 8u;\n"
    "\n"
    "fn dynamics(x: State, u: Control, t: u32) -> State {\n"
    "    let v = DD_VMAX * clamp(u[0], -1.0, 1.0);\n"
    "    let w = DD_WMAX * clamp(u[1], -1.0, 1.0);\n"
    "    return State(x[0] + DT * v * cos(x[2]), x[1] + DT * v * sin(x[2]), x[2] + DT * w);\n"
    "}\n"
    "\n"
    "fn dd_goal_distance(x: State) -> f32 {\n"
    "    let dx = x[0] - param(0u);\n"
    "    let dy = x[1] - param(1u);\n"
    "    return sqrt(dx * dx + dy * dy);\n"
    "}\n"
    "\n"
    "fn running_cost(x: State, u: Control, t: u32) -> f32 {\n"
    "    var c = DD_W_GOAL * dd_goal_distance(x) + DD_W_U * (u[0] * u[0] + u[1] * u[1]);\n"
    "    for (var i = 0u; i < DD_OBSTACLES; i++) {\n"
    "        let r = param(2u + 3u * i + 2u);\n"
    "        if (r <= 0.0) {\n"
    "            continue;\n"
    "        }\n"
    "        let dx = x[0] - param(2u + 3u * i);\n"
    "        let dy = x[1] - param(2u + 3u * i + 1u);\n"
    "        let clearance = sqrt(dx * dx + dy * dy) - r - DD_RADIUS;\n"
    "        if (clearance < 0.0) {\n"
    "            c += DD_COLLISION;\n"
    "        } else if (clearance < DD_MARGIN) {\n"
    "            let a = 1.0 - clearance / DD_MARGIN;\n"
    "            c += DD_W_MARGIN * a * a;\n"
    "        }\n"
    "    }\n"
    "    return c;\n"
    "}\n"
    "\n"
    "fn terminal_cost(x: State) -> f32 {\n"
    "    return DD_W_TERM * dd_goal_distance(x);\n"
    "}\n";

/* The benchmark scene: from (0, 0) facing +x to (6, 0) past five obstacles; reached within
 * 0.1 m of the goal. */
static const double DD_START[DD_STATE_DIM] = {0.0, 0.0, 0.0};
static const float DD_GOAL[2] = {6.0f, 0.0f};
static const double DD_GOAL_RADIUS = 0.1;
static const float DD_OBSTACLES[5][3] = {
    {1.5f, 0.2f, 0.4f}, {3.0f, -0.6f, 0.4f}, {3.2f, 1.0f, 0.4f},
    {4.5f, 0.1f, 0.35f}, {4.7f, -1.5f, 0.3f},
};

/* The scene's parameter buffer: goal, then the obstacles, the rest absent (r = 0). */
static inline void dd_params(float params[DD_PARAM_LEN]) {
    int i, j;
    for (i = 0; i < DD_PARAM_LEN; i++) params[i] = 0.0f;
    params[0] = DD_GOAL[0];
    params[1] = DD_GOAL[1];
    for (i = 0; i < 5; i++)
        for (j = 0; j < 3; j++) params[2 + 3 * i + j] = DD_OBSTACLES[i][j];
}

static inline double dd_clamp(double u) { return u < -1.0 ? -1.0 : (u > 1.0 ? 1.0 : u); }

/* The simulator: the WGSL's dynamics in double precision (forward Euler over dt). */
static inline void dd_simulate(double x[DD_STATE_DIM], const float u[DD_CONTROL_DIM], double dt) {
    double v = DD_MAX_SPEED * dd_clamp(u[0]);
    double w = DD_MAX_TURN_RATE * dd_clamp(u[1]);
    double heading = x[2];
    x[0] += dt * v * cos(heading);
    x[1] += dt * v * sin(heading);
    x[2] += dt * w;
}

static inline double dd_goal_distance(const double x[DD_STATE_DIM]) {
    return hypot(x[0] - DD_GOAL[0], x[1] - DD_GOAL[1]);
}

/* Distance from the robot's disc to the nearest obstacle (negative: collision). */
static inline double dd_clearance(const double x[DD_STATE_DIM]) {
    double best = INFINITY;
    int i;
    for (i = 0; i < 5; i++) {
        double c = hypot(x[0] - DD_OBSTACLES[i][0], x[1] - DD_OBSTACLES[i][1]) -
                   DD_OBSTACLES[i][2] - DD_ROBOT_RADIUS;
        if (c < best) best = c;
    }
    return best;
}

#endif
