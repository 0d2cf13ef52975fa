// Streaming selection of a slice's P best candidates on the CPU: one read of the logits, no sort
// of the row. Tokens arrive in increasing id order, so a newcomer that only ties the current
// P-th best loses (lower id wins) and is not even stored.
#pragma once

#include <algorithm>
#include <vector>

#include "common/row_state.h"

namespace softkernels::cpu {

template <typename T>
class TopSelector {
 public:
  explicit TopSelector(int64_t capacity)
      : P_(capacity), cap_(capacity + std::max<int64_t>(capacity, 128)) {
    buf_.reserve(static_cast<size_t>(cap_));
  }

  // The z a newcomer must beat to be stored (-inf until P candidates have been seen).
  T threshold() const { return thresh_; }
  bool full() const { return full_; }

  void push(T z, int64_t id) {
    if (full_ && !(z > thresh_)) return;
    buf_.push_back(Candidate<T>{z, id});
    if (!full_) {
      if (static_cast<int64_t>(buf_.size()) == P_) {
        full_ = true;
        thresh_ = buf_[0].z;
        for (const auto& c : buf_) thresh_ = std::min(thresh_, c.z);
      }
    } else if (static_cast<int64_t>(buf_.size()) >= cap_) {
      compact();
    }
  }

  // The selected candidates, best first.
  std::vector<Candidate<T>>& finish() {
    compact();
    std::sort(buf_.begin(), buf_.end(), better<T>);
    return buf_;
  }

 private:
  void compact() {
    if (static_cast<int64_t>(buf_.size()) <= P_) return;
    std::nth_element(buf_.begin(), buf_.begin() + (P_ - 1), buf_.end(), better<T>);
    buf_.resize(static_cast<size_t>(P_));
    thresh_ = buf_[P_ - 1].z;  // everything before it is better, so this is the kept minimum
  }

  int64_t P_;
  int64_t cap_;  // compact (nth_element) when the buffer reaches this size
  std::vector<Candidate<T>> buf_;
  T thresh_ = -sk_inf<T>();
  bool full_ = false;
};

}  // namespace softkernels::cpu
