// Hint-loss epilogue: after the (bias-free) regressor convolution, one pass over its k-wide output does
// bias + maxout (+ ReLU) + (r - hint) and the sum of squares, saving r - hint and the winning piece for the
// backward. With ReLU (K = 1) the saved piece is 0 where the unit is active (r > 0) and 1 where it is not,
// so maxout's backward scatter (which writes the gradient only to piece 0 < K) gives ReLU's gradient.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

// Writes d = best - h and the winning pieces of one block; returns the block's sum of d^2.
// Relu: apply ReLU to the maxout output (NaN stays NaN, as torch.relu) and mark inactive units piece 1.
template <typename T, bool Relu>
inline T block(const T* __restrict best, const int32_t* __restrict win, const T* __restrict h, T* __restrict d,
               uint8_t* __restrict w, int64_t len) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < len; ++i) {
        const T b = best[i];
        const T r = Relu ? (b < T(0) ? T(0) : b) : b;
        const T e = r - h[i];
        d[i] = e;
        w[i] = Relu ? uint8_t(b > T(0) ? 0 : 1) : uint8_t(win[i]);
        sum += e * e;
    }
    return sum;
}

template <typename T, bool Relu>
double forward(std::uintptr_t pre, std::uintptr_t bias, std::uintptr_t hint, std::uintptr_t diff,
               std::uintptr_t piece, MaxoutShape sh, int threads) {
    const T* h = ptr<const T>(hint);
    T* d = ptr<T>(diff);
    uint8_t* w = ptr<uint8_t>(piece);
    auto epilogue = [h, d, w](int64_t off, int64_t len, const T* best, const int32_t* win, double& acc) {
        acc += block<T, Relu>(best, win, h + off, d + off, w + off, len);
    };
    if (bias) return maxout_blocks<T, true>(ptr<const T>(pre), ptr<const T>(bias), sh, threads, epilogue);
    return maxout_blocks<T, false>(ptr<const T>(pre), nullptr, sh, threads, epilogue);
}

}  // namespace

void register_hint_loss(py::module_& m) {
    m.def(
        "hint_forward",
        [](const std::string& dtype, std::uintptr_t pre, std::uintptr_t bias, std::uintptr_t hint,
           std::uintptr_t diff, std::uintptr_t piece, int64_t M, int64_t C, int64_t K, int64_t S, bool relu,
           int threads) {
            if (M < 0 || C < 0 || K < 1 || K > 256 || S < 0) throw std::invalid_argument("bad hint_forward shape");
            if (relu && K != 1) throw std::invalid_argument("hint_forward: relu needs K = 1");
            const MaxoutShape sh{M, C, K, S};
            return dispatch_float(dtype, [&](auto tag) {
                using T = decltype(tag);
                return relu ? forward<T, true>(pre, bias, hint, diff, piece, sh, threads)
                            : forward<T, false>(pre, bias, hint, diff, piece, sh, threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Hint epilogue over a contiguous (M, C, K, S) regressor pre-activation (+ bias (C*K,) if != 0): "
        "r = maxout (then ReLU if relu, K = 1); writes diff = r - hint (M, C, S) and piece (uint8: the winning "
        "piece, or with relu 0 where r > 0 and 1 elsewhere); returns sum(diff^2) as a double.");
}

}  // namespace fitnets
