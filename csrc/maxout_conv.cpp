// maxout_conv2d's pooled layers: maxout with bias followed by max-pooling, in one pass over a channels-last
// pre-activation (unpooled layers use maxout.cpp's kernel).
//
// Layout: pre (N, H, W, C*K) contiguous (pieces of channel c adjacent, bias[c*K + p], or an untied bias
// (H, W, C*K) with bias[(h*W + w)*C*K + c*K + p]); outputs (N, Ho, Wo, C)
// contiguous: the pooled maxout value and a one-byte index (dy*P + dx)*K + p of the winner, dy, dx its
// place in the P x P window (rows ho*Q ..., columns wo*Q ..., clipped to the map: ceil-mode windows).
// Winners follow the two-step reference (maxout, then torch's max_pool2d): within a pixel the largest piece,
// ties to the lowest, the first NaN; across the window, scanned row by row, a strictly larger value or any
// NaN takes over (so ties go to the first pixel and NaN to the last NaN pixel). Storage is float, double or
// bfloat16 (compared and summed in float, see Arith).
#include <pybind11/pybind11.h>

#include <limits>
#include <type_traits>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

struct PoolShape {
    int64_t N, H, W, C, K, P, Q, Ho, Wo;
};

// Folds n (value, index) candidates into the running winners: a strictly larger value or a NaN takes over
// (so ties keep the earlier candidate and NaN goes to the last NaN), its index offset by `offset`.
template <typename A>
inline void fold(const A* __restrict value, const int32_t* __restrict idx, int32_t offset, int64_t n,
                 A* __restrict best, int32_t* __restrict index) {
    for (int64_t i = 0; i < n; ++i) {
        const A v = value[i];
        const bool take = (v > best[i]) | (v != v);
        best[i] = take ? v : best[i];
        index[i] = take ? offset + idx[i] : index[i];
    }
}

// Step 2 below for one image row: rb[wo*C + c], ri[...] = the winner over w in [wo*Q, wo*Q + P) of the
// row's maxout value[w*C + c] (index dx*K + piece), for every window wo. CC: C at compile time, or 0.
template <typename A, int64_t CC>
void fold_row_windows(const A* value, const int32_t* piece, int64_t run_time_c, const PoolShape& sh, A* rb,
                      int32_t* ri) {
    const int64_t C = CC > 0 ? CC : run_time_c;
    for (int64_t wo = 0; wo < sh.Wo; ++wo) {
        const int64_t w0 = wo * sh.Q, w1 = std::min(w0 + sh.P, sh.W);
        for (int64_t w = w0; w < w1; ++w)
            fold(value + w * C, piece + w * C, int32_t((w - w0) * sh.K), C, rb + wo * C, ri + wo * C);
    }
}

// fold_row_windows with C fixed at compile time for channel counts that are whole vectors: the windows fold
// runs of C elements, where a general vectorised loop's set-up costs about as much as its work (at C = 16,
// a FitNet layer's forward and backward took 12-22% less time). At C = 12 the fixed-length code was 2x
// slower than the general loop (gcc: one 8-wide vector and four scalar steps), so other counts keep that.
template <typename A>
void fold_row_windows(const A* value, const int32_t* piece, const PoolShape& sh, A* rb, int32_t* ri) {
    switch (sh.C) {
        case 8: return fold_row_windows<A, 8>(value, piece, 8, sh, rb, ri);
        case 16: return fold_row_windows<A, 16>(value, piece, 16, sh, rb, ri);
        case 32: return fold_row_windows<A, 32>(value, piece, 32, sh, rb, ri);
        default: return fold_row_windows<A, 0>(value, piece, sh.C, sh, rb, ri);
    }
}

// One image at a time, in three passes over per-thread rows:
// 1. the maxout of each image row (one max_adjacent pass over its W*C outputs, with the bias repeated once
//    per pixel, or the untied bias's row: one bias per pixel and channel, laid out (H, W, C*K));
// 2. each row's horizontal windows: the winner over w in [wo*Q, wo*Q + P) of every (wo, c), index dx*K + p;
// 3. each output row's vertical fold of those over h in [ho*Q, ho*Q + P), index (dy*P + dx)*K + p, as one
//    long loop over the Wo*C row.
// Scanning the rows in order and each row left to right gives the reference's row-major window scan: ties
// to the first pixel, NaN to the last NaN pixel. Overlapping windows (P > Q) reuse the rows' work.
// KC: the number of pieces at compile time, or 0 (see with_pieces).
template <typename T, bool HasBias, int KC>
void forward(const T* pre, const T* bias, bool untied, T* out, uint8_t* index_out, PoolShape sh, int threads) {
    using A = Arith<T>;
    const int64_t C = sh.C, K = sh.K, CK = C * K, WC = sh.W * C, WoC = sh.Wo * C;
    std::vector<T> row_bias(HasBias && !untied ? sh.W * CK : 0);
    for (int64_t j = 0; j < int64_t(row_bias.size()); j += CK) std::copy(bias, bias + CK, row_bias.begin() + j);
    constexpr A kLowest = -std::numeric_limits<A>::infinity();
#pragma omp parallel num_threads(threads)
    {
        std::vector<A> value(WC), row_best(sh.H * WoC), best(WoC);
        std::vector<int32_t> piece(WC), row_index(sh.H * WoC), index(WoC);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < sh.N; ++n) {
            for (int64_t h = 0; h < sh.H; ++h) {
                const T* bias_row = untied ? bias + h * sh.W * CK : row_bias.data();
                max_adjacent<T, HasBias, KC>(pre + (n * sh.H + h) * sh.W * CK, bias_row, WC, K, value.data(),
                                             piece.data());
                A* rb = row_best.data() + h * WoC;
                int32_t* ri = row_index.data() + h * WoC;
                std::fill(rb, rb + WoC, kLowest);
                std::fill(ri, ri + WoC, 0);
                fold_row_windows(value.data(), piece.data(), sh, rb, ri);
            }
            for (int64_t ho = 0; ho < sh.Ho; ++ho) {
                const int64_t h0 = ho * sh.Q, h1 = std::min(h0 + sh.P, sh.H);
                std::fill(best.begin(), best.end(), kLowest);
                std::fill(index.begin(), index.end(), 0);
                for (int64_t h = h0; h < h1; ++h)
                    fold(row_best.data() + h * WoC, row_index.data() + h * WoC, int32_t((h - h0) * sh.P * K), WoC,
                         best.data(), index.data());
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
// elsewhere; grad_bias, if not null, = grad_pre summed over N, H, W ((C*K,)), or over N alone for an
// untied bias ((H, W, C*K)). Threads split the images.
template <typename T>
void backward(const T* grad_out, const uint8_t* index, T* grad_pre, T* grad_bias, bool untied, PoolShape sh,
              int threads) {
    using A = Arith<T>;
    const int64_t C = sh.C, K = sh.K, CK = C * K;
    const int64_t image = sh.H * sh.W * CK;
    const int64_t bias_size = untied ? image : CK;
    const bool overlapping = sh.P > sh.Q;  // else each winner gets one gradient: a copy, no add
    // The winner's offset from its window's corner, by index (dy*P + dx)*K + p: no divisions per element.
    std::vector<int64_t> offset_of(size_t(sh.P * sh.P * K)), piece_of(offset_of.size());
    for (int64_t at = 0; at < int64_t(offset_of.size()); ++at) {
        const int64_t place = at / K, dy = place / sh.P, dx = place % sh.P;
        piece_of[size_t(at)] = at % K;
        offset_of[size_t(at)] = (dy * sh.W + dx) * CK + at % K;
    }
    std::vector<double> partial(grad_bias ? size_t(threads) * bias_size : 0, 0.0);
    // bfloat16 storage: each image's gradient is gathered in float and rounded once, in one pass at the end
    // (a conversion per scattered element, and a rounding per overlapping add, cost more than that pass).
    constexpr bool kStaged = !std::is_same_v<T, A>;
#pragma omp parallel num_threads(threads)
    {
        double* mine = grad_bias ? partial.data() + size_t(omp_get_thread_num()) * bias_size : nullptr;
        std::vector<A> stage(kStaged ? image : 0);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < sh.N; ++n) {
            T* gp = grad_pre + n * image;
            if constexpr (kStaged)
                std::fill(stage.begin(), stage.end(), A(0));
            else
                std::memset(gp, 0, size_t(image) * sizeof(T));  // all-zero bits: 0 in float and double
            for (int64_t ho = 0; ho < sh.Ho; ++ho) {
                for (int64_t wo = 0; wo < sh.Wo; ++wo) {
                    const int64_t o = ((n * sh.Ho + ho) * sh.Wo + wo) * C;
                    const int64_t corner = (ho * sh.Q * sh.W + wo * sh.Q) * CK;
                    for (int64_t c = 0; c < C; ++c) {
                        const int64_t at_pixel = corner + c * K + offset_of[index[o + c]];
                        const A g = A(grad_out[o + c]);
                        if constexpr (kStaged)
                            stage[at_pixel] += g;
                        else
                            gp[at_pixel] = overlapping ? gp[at_pixel] + g : g;
                        if (mine) mine[untied ? at_pixel : c * K + piece_of[index[o + c]]] += g;
                    }
                }
            }
            if constexpr (kStaged)
                for (int64_t i = 0; i < image; ++i) gp[i] = T(stage[i]);
        }
    }
    if (grad_bias) {
        for (int64_t j = 0; j < bias_size; ++j) {
            double sum = 0.0;
            for (int t = 0; t < threads; ++t) sum += partial[size_t(t) * bias_size + j];
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
        [](const std::string& dtype, std::uintptr_t pre, std::uintptr_t bias, bool untied, std::uintptr_t out,
           std::uintptr_t index, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t P, int64_t Q,
           int64_t Ho, int64_t Wo, int threads) {
            const PoolShape sh = pool_shape(N, H, W, C, K, P, Q, Ho, Wo);
            dispatch_float_or_bf16(dtype, [&](auto tag) {
                using T = decltype(tag);
                with_pieces(K, [&](auto k) {
                    constexpr int KC = decltype(k)::value;
                    if (bias)
                        forward<T, true, KC>(ptr<const T>(pre), ptr<const T>(bias), untied, ptr<T>(out),
                                             ptr<uint8_t>(index), sh, threads);
                    else
                        forward<T, false, KC>(ptr<const T>(pre), nullptr, false, ptr<T>(out), ptr<uint8_t>(index),
                                              sh, threads);
                });
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Maxout (+ bias if bias != 0: (C*K,), or (H, W, C*K) if untied) then P x P max-pooling with stride Q over "
        "a contiguous (N, H, W, C*K) pre-activation: writes out (N, Ho, Wo, C) and the winner's index "
        "(dy*P + dx)*K + p (uint8).");
    m.def(
        "maxout_pool_backward",
        [](const std::string& dtype, std::uintptr_t grad_out, std::uintptr_t index, std::uintptr_t grad_pre,
           std::uintptr_t grad_bias, bool untied, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t P,
           int64_t Q, int64_t Ho, int64_t Wo, int threads) {
            const PoolShape sh = pool_shape(N, H, W, C, K, P, Q, Ho, Wo);
            dispatch_float_or_bf16(dtype, [&](auto tag) {
                using T = decltype(tag);
                backward<T>(ptr<const T>(grad_out), ptr<const uint8_t>(index), ptr<T>(grad_pre),
                            grad_bias ? ptr<T>(grad_bias) : nullptr, untied, sh, threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "Backward of maxout_pool_forward: grad_pre (N, H, W, C*K) = grad_out at the winners (summed over "
        "overlapping windows), else 0; grad_bias, if != 0, = grad_pre summed over N, H, W ((C*K,)), or over N "
        "if untied ((H, W, C*K)).");
}

}  // namespace fitnets
