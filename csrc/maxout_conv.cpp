// maxout_conv2d's pooled layers: maxout with bias followed by max-pooling, in one pass over a channels-last
// pre-activation (unpooled layers use maxout.cpp's kernel).
//
// Layout: pre (N, H, W, C*K) contiguous (pieces of channel c adjacent, bias[c*K + p]); outputs (N, Ho, Wo, C)
// contiguous: the pooled maxout value and a one-byte index (dy*P + dx)*K + p of the winner, dy, dx its
// place in the P x P window (rows ho*Q ..., columns wo*Q ..., clipped to the map: ceil-mode windows).
// Winners follow the two-step reference (maxout, then torch's max_pool2d): within a pixel the largest piece,
// ties to the lowest, the first NaN; across the window, scanned row by row, a strictly larger value or any
// NaN takes over (so ties go to the first pixel and NaN to the last NaN pixel). Storage is float, double or
// bfloat16 (compared and summed in float, see Arith).
#include <pybind11/pybind11.h>

#include <limits>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

struct PoolShape {
    int64_t N, H, W, C, K, P, Q, Ho, Wo;
};

// Folds one pixel's maxout (value, piece) into the window's running winner of each of n channels.
template <typename A>
inline void fold_pixel(const A* __restrict value, const int32_t* __restrict piece, int32_t place, int64_t K,
                       int64_t n, A* __restrict best, int32_t* __restrict index) {
    for (int64_t c = 0; c < n; ++c) {
        const A v = value[c];
        const bool take = (v > best[c]) | (v != v);
        best[c] = take ? v : best[c];
        index[c] = take ? place * int32_t(K) + piece[c] : index[c];
    }
}

// One row of windows (n, ho) at a time: the maxout of each image row the windows cover is one
// max_adjacent pass over its W*C outputs (bias repeated once per pixel), then each pixel's channels fold
// into the running winners of the windows that hold it. KC: the number of pieces at compile time, or 0
// (see with_pieces).
template <typename T, bool HasBias, int KC>
void forward(const T* pre, const T* bias, T* out, uint8_t* index_out, PoolShape sh, int threads) {
    using A = Arith<T>;
    const int64_t C = sh.C, K = sh.K, CK = C * K, WC = sh.W * C, WoC = sh.Wo * C;
    std::vector<T> row_bias(HasBias ? sh.W * CK : 0);
    for (int64_t j = 0; j < int64_t(row_bias.size()); j += CK) std::copy(bias, bias + CK, row_bias.begin() + j);
#pragma omp parallel num_threads(threads)
    {
        std::vector<A> value(WC), best(WoC);
        std::vector<int32_t> piece(WC), index(WoC);
#pragma omp for schedule(static) collapse(2)
        for (int64_t n = 0; n < sh.N; ++n) {
            for (int64_t ho = 0; ho < sh.Ho; ++ho) {
                const int64_t h0 = ho * sh.Q, h1 = std::min(h0 + sh.P, sh.H);
                std::fill(best.begin(), best.end(), -std::numeric_limits<A>::infinity());
                std::fill(index.begin(), index.end(), 0);
                for (int64_t h = h0; h < h1; ++h) {
                    max_adjacent<T, HasBias, KC>(pre + (n * sh.H + h) * sh.W * CK, row_bias.data(), WC, K,
                                                 value.data(), piece.data());
                    for (int64_t wo = 0; wo < sh.Wo; ++wo) {
                        const int64_t w0 = wo * sh.Q, w1 = std::min(w0 + sh.P, sh.W);
                        for (int64_t w = w0; w < w1; ++w) {
                            const int32_t place = int32_t((h - h0) * sh.P + (w - w0));
                            fold_pixel(value.data() + w * C, piece.data() + w * C, place, K, C,
                                       best.data() + wo * C, index.data() + wo * C);
                        }
                    }
                }
                const int64_t o = (n * sh.Ho + ho) * WoC;
                for (int64_t i = 0; i < WoC; ++i) {
                    out[o + i] = T(best[i]);
                    index_out[o + i] = uint8_t(index[i]);
                }
            }
        }
    }
}

// grad_pre (N, H, W, C*K) = grad_out at each window's winner (summed where windows overlap), 0
// elsewhere; grad_bias (C*K,), if not null, = grad_pre summed over N, H, W. Threads split the images.
template <typename T>
void backward(const T* grad_out, const uint8_t* index, T* grad_pre, T* grad_bias, PoolShape sh, int threads) {
    using A = Arith<T>;
    const int64_t C = sh.C, K = sh.K, CK = C * K;
    const int64_t image = sh.H * sh.W * CK;
    const bool overlapping = sh.P > sh.Q;  // else each winner gets one gradient: a copy, no add
    std::vector<double> partial(grad_bias ? size_t(threads) * CK : 0, 0.0);
#pragma omp parallel num_threads(threads)
    {
        double* mine = grad_bias ? partial.data() + size_t(omp_get_thread_num()) * CK : nullptr;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < sh.N; ++n) {
            T* gp = grad_pre + n * image;
            std::memset(gp, 0, size_t(image) * sizeof(T));  // all-zero bits: 0 in float, double and bfloat16
            for (int64_t ho = 0; ho < sh.Ho; ++ho) {
                for (int64_t wo = 0; wo < sh.Wo; ++wo) {
                    const int64_t o = ((n * sh.Ho + ho) * sh.Wo + wo) * C;
                    for (int64_t c = 0; c < C; ++c) {
                        const int64_t at = index[o + c];
                        const int64_t place = at / K, p = at % K;
                        const int64_t h = ho * sh.Q + place / sh.P, w = wo * sh.Q + place % sh.P;
                        T& slot = gp[(h * sh.W + w) * CK + c * K + p];
                        slot = overlapping ? T(A(slot) + A(grad_out[o + c])) : grad_out[o + c];
                        if (mine) mine[c * K + p] += A(grad_out[o + c]);
                    }
                }
            }
        }
    }
    if (grad_bias) {
        for (int64_t j = 0; j < CK; ++j) {
            double sum = 0.0;
            for (int t = 0; t < threads; ++t) sum += partial[size_t(t) * CK + j];
            grad_bias[j] = T(sum);
        }
    }
}

PoolShape pool_shape(int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t P, int64_t Q, int64_t Ho,
                     int64_t Wo) {
    const bool ok = N >= 0 && H > 0 && W > 0 && C >= 0 && K >= 1 && P >= 1 && Q >= 1 && P * P * K <= 256 &&
                    Ho >= 1 && Wo >= 1 && (Ho - 1) * Q < H && (Wo - 1) * Q < W;
    if (!ok) throw std::invalid_argument("bad maxout_pool shape");
    return PoolShape{N, H, W, C, K, P, Q, Ho, Wo};
}

}  // namespace

void register_maxout_conv(py::module_& m) {
    m.def(
        "maxout_pool_forward",
        [](const std::string& dtype, std::uintptr_t pre, std::uintptr_t bias, std::uintptr_t out, std::uintptr_t index,
           int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t P, int64_t Q, int64_t Ho, int64_t Wo,
           int threads) {
            const PoolShape sh = pool_shape(N, H, W, C, K, P, Q, Ho, Wo);
            dispatch_float_or_bf16(dtype, [&](auto tag) {
                using T = decltype(tag);
                with_pieces(K, [&](auto k) {
                    constexpr int KC = decltype(k)::value;
                    if (bias)
                        forward<T, true, KC>(ptr<const T>(pre), ptr<const T>(bias), ptr<T>(out), ptr<uint8_t>(index),
                                             sh, threads);
                    else
                        forward<T, false, KC>(ptr<const T>(pre), nullptr, ptr<T>(out), ptr<uint8_t>(index), sh,
                                              threads);
                });
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Maxout (+ bias (C*K,) if bias != 0) then P x P max-pooling with stride Q over a contiguous (N, H, W, C*K) "
        "pre-activation: writes out (N, Ho, Wo, C) and the winner's index (dy*P + dx)*K + p (uint8).");
    m.def(
        "maxout_pool_backward",
        [](const std::string& dtype, std::uintptr_t grad_out, std::uintptr_t index, std::uintptr_t grad_pre,
           std::uintptr_t grad_bias, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t P, int64_t Q,
           int64_t Ho, int64_t Wo, int threads) {
            const PoolShape sh = pool_shape(N, H, W, C, K, P, Q, Ho, Wo);
            dispatch_float_or_bf16(dtype, [&](auto tag) {
                using T = decltype(tag);
                backward<T>(ptr<const T>(grad_out), ptr<const uint8_t>(index), ptr<T>(grad_pre),
                            grad_bias ? ptr<T>(grad_bias) : nullptr, sh, threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Backward of maxout_pool_forward: grad_pre (N, H, W, C*K) = grad_out at the winners (summed over "
        "overlapping windows), else 0; grad_bias (C*K,), if != 0, = grad_pre summed over N, H, W.");
}

}  // namespace fitnets
