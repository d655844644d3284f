// Dropout with a counter-based mask: dst[i] = src[i] * (keep(i) ? scale : 0) over n dense elements, where
// keep(i) depends only on the call's 64-bit seed and i. The mask needs no state or storage: the backward
// runs the same pass over the output gradient with the same seed.
//
// keep(i): bits = mix(mix(lo(i) * 0x9E3779B9 + k0) ^ k1), with k0, k1 the seed's halves (k0 also mixed
// with hi(i), so tensors of 2^32 elements or more get fresh bits) and mix a 32-bit integer hash (xor-shift /
// multiply, "lowbias32"); kept iff the top 24 bits of bits are >= threshold = ceil(p * 2^24), so an element
// is kept with probability 1 - p to 2^-24. 32-bit multiplies keep the loop vectorised on AVX2.
#include <pybind11/pybind11.h>

#include <cmath>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

// Elements per task; a power of two below 2^32, so no task crosses a 2^32 boundary of the counter.
constexpr int64_t kTask = 1 << 15;

template <typename T>
void dropout_apply(const T* src, T* dst, int64_t n, uint64_t seed, uint32_t threshold, double scale, int threads) {
    using A = Arith<T>;
    const A keep_factor = A(scale);
    const uint32_t k1 = uint32_t(seed >> 32);
    const int64_t tasks = (n + kTask - 1) / kTask;
#pragma omp parallel for num_threads(threads) schedule(static) if (n >= 4 * kTask)
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t begin = t * kTask, end = std::min(n, begin + kTask);
        const uint32_t k0 = uint32_t(seed) ^ mix32(uint32_t(begin >> 32) + 0x632be59bU);
        const uint32_t base = uint32_t(begin);
        const T* __restrict s = src + begin;
        T* __restrict d = dst + begin;
        const int64_t len = end - begin;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
            const uint32_t bits = mix32(mix32((base + uint32_t(i)) * 0x9E3779B9U + k0) ^ k1);
            const A factor = (bits >> 8) >= threshold ? keep_factor : A(0);
            d[i] = T(A(s[i]) * factor);
        }
    }
}

}  // namespace

void register_dropout(py::module_& m) {
    m.def(
        "dropout_apply",
        [](const std::string& dtype, std::uintptr_t src, std::uintptr_t dst, int64_t n, int64_t seed, double p,
           double scale, int threads) {
            if (n < 0 || !(p >= 0.0 && p <= 1.0)) throw std::invalid_argument("bad dropout arguments");
            const auto threshold = uint32_t(std::ceil(p * double(1 << 24)));
            dispatch_float_or_bf16(dtype, [&](auto tag) {
                using T = decltype(tag);
                dropout_apply<T>(ptr<const T>(src), ptr<T>(dst), n, uint64_t(seed), threshold, scale, threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "dst[i] = src[i] * (kept ? scale : 0) over n dense elements; element i is kept with probability 1 - p, "
        "from a hash of (seed, i) alone (the same seed gives the same mask).");
}

}  // namespace fitnets
