// Per-row thinking-phase state machine of one decoding step (Cold Stop, ThinkRouter, budget),
// shared by the CPU and CUDA implementations of softkernels::route_step.
//
// State per row: phase (1 thinking, 0 answering), low_count (consecutive thinking steps with
// entropy below the Cold Stop threshold), think_steps (thinking tokens emitted so far).
// Output per row and step: mode (0 hard, 1 soft, 2 forced think-end) and the token to emit when
// the step is forced (think_end_id) or else next_id.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace softkernels {

enum StepMode : int8_t { kModeHard = 0, kModeSoft = 1, kModeForcedEnd = 2 };

struct RouteConfig {
  int64_t think_end_id;      // < 0: the model has no think-end token
  double cold_stop_entropy;  // Cold Stop threshold in nats; < 0: off
  int64_t cold_stop_patience;
  double router_threshold;   // max_prob below it -> hard step; <= 0: off
  int64_t max_think_tokens;  // < 0: no budget
};

struct RouteState {
  int8_t phase;
  int32_t low_count;
  int32_t think_steps;
};

// Counters saturate at INT32_MAX instead of overflowing (a row that thinks for 2^31 steps keeps
// its count there); the Python wrapper refuses negative counters.
SK_HD int32_t route_inc(int32_t c) { return c < INT32_MAX ? c + 1 : c; }

// Advances one row by one step. `entropy` and `max_prob` describe this step's next-token
// distribution; `next_id` is the token the row would emit (its top-1 soft slot).
template <typename T>
SK_HD int8_t route_row(RouteState& s, T entropy, T max_prob, int64_t next_id,
                       const RouteConfig& cfg, int64_t& token) {
  token = next_id;
  if (s.phase == 0) return kModeHard;
  const bool has_end = cfg.think_end_id >= 0;
  // A think-end token the model chose itself ends thinking; it is fed as a hard token.
  if (has_end && next_id == cfg.think_end_id) {
    s.phase = 0;
    s.low_count = 0;
    return kModeHard;
  }
  bool forced = cfg.max_think_tokens >= 0 && s.think_steps >= cfg.max_think_tokens;
  if (!forced && cfg.cold_stop_entropy >= 0) {
    s.low_count = entropy < static_cast<T>(cfg.cold_stop_entropy) ? route_inc(s.low_count) : 0;
    forced = s.low_count >= cfg.cold_stop_patience;
  }
  if (forced) {
    s.phase = 0;
    s.low_count = 0;
    if (has_end) {
      token = cfg.think_end_id;
      return kModeForcedEnd;
    }
    return kModeHard;  // no think-end token: switch to hard decoding from this step on
  }
  s.think_steps = route_inc(s.think_steps);
  if (cfg.router_threshold > 0 && max_prob < static_cast<T>(cfg.router_threshold)) {
    return kModeHard;
  }
  return kModeSoft;
}

}  // namespace softkernels
