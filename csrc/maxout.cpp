// Maxout with bias: forward (output + one-byte winning piece per output element) and backward, for float,
// double and bfloat16 storage.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

template <typename T>
inline void store(T* __restrict y, uint8_t* __restrict w, const Arith<T>* __restrict best,
                  const int32_t* __restrict win, int64_t len) {
    for (int64_t i = 0; i < len; ++i) {
        y[i] = T(best[i]);
        w[i] = uint8_t(win[i]);
    }
}

// Writes out[o] = max_p(x[.., p, ..] + bias[c*K + p]) and piece[o] = the winning p, for every output o.
template <typename T>
void forward(std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out, std::uintptr_t piece, MaxoutShape sh,
             int threads) {
    T* y = ptr<T>(out);
    uint8_t* w = ptr<uint8_t>(piece);
    auto epilogue = [y, w](int64_t off, int64_t len, const Arith<T>* best, const int32_t* win, double&) {
        store(y + off, w + off, best, win, len);
    };
    if (bias)
        maxout_blocks<T, true>(ptr<const T>(x), ptr<const T>(bias), sh, threads, epilogue);
    else
        maxout_blocks<T, false>(ptr<const T>(x), nullptr, sh, threads, epilogue);
}

MaxoutShape shape(int64_t M, int64_t C, int64_t K, int64_t S) {
    if (M < 0 || C < 0 || K < 1 || K > 256 || S < 0) throw std::invalid_argument("bad maxout shape");
    return MaxoutShape{M, C, K, S};
}

}  // namespace

void register_maxout(py::module_& m) {
    m.def(
        "maxout_forward",
        [](const std::string& dtype, std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out, std::uintptr_t piece,
           int64_t M, int64_t C, int64_t K, int64_t S, int threads) {
            const MaxoutShape sh = shape(M, C, K, S);
            dispatch_float_or_bf16(dtype, [&](auto tag) { forward<decltype(tag)>(x, bias, out, piece, sh, threads); });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Maxout forward over a contiguous (M, C, K, S) pre-activation x (+ bias (C*K,) if bias != 0): writes "
        "out (M, C, S) and the winning piece index piece (M, C, S, uint8).");
    m.def(
        "maxout_backward",
        [](const std::string& dtype, std::uintptr_t grad_out, std::uintptr_t piece, double scale,
           std::uintptr_t grad_in, std::uintptr_t grad_bias, int64_t M, int64_t C, int64_t K, int64_t S, int threads) {
            const MaxoutShape sh = shape(M, C, K, S);
            dispatch_float_or_bf16(dtype, [&](auto tag) {
                using T = decltype(tag);
                maxout_backward<T>(ptr<const T>(grad_out), ptr<const uint8_t>(piece), Arith<T>(scale), ptr<T>(grad_in),
                                   grad_bias ? ptr<T>(grad_bias) : nullptr, sh, threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Maxout backward: grad_in (M, C, K, S) = scale * grad_out (M, C, S) at the winning piece, else 0; "
        "grad_bias (C*K,), if != 0, = grad_in summed over M and S.");
}

}  // namespace fitnets
