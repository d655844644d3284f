// Maxout-with-bias forward driver and backward kernel, shared by maxout.cpp and hint_loss.cpp.
//
// Layout: the pre-activation is a contiguous (M, C, K, S) array: M rows (batch, or batch*pixels for
// channels-last data), C output channels, K pieces, S inner positions (H*W for NCHW; 1 for channels-last
// or linear layers, where the pieces are adjacent in memory). Output element (m, c, s) lives at
// (m*C + c)*S + s. Piece p of output channel c uses bias[c*K + p].
// Winner: the largest piece; ties go to the lowest piece; a NaN piece wins (the first NaN if several).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"

namespace fitnets {

struct MaxoutShape {
    int64_t M, C, K, S;
    int64_t outputs() const { return M * C * S; }
};

// Candidate v replaces the current best b: strictly larger, or NaN while b is not (first NaN wins).
template <typename T>
inline bool takes_over(T v, T b) {
    return (v > b) | ((v != v) & (b == b));
}

// Computes, block by block, the winning value and piece of every output element and hands each block
// to epi(offset, length, best, piece, acc): offset is the linear output index of the block's first
// element, acc a per-thread double accumulator. Returns the sum of all threads' acc.
template <typename T, bool HasBias, typename Epilogue>
double maxout_blocks(const T* x, const T* bias, MaxoutShape sh, int threads, Epilogue epi) {
    const int64_t C = sh.C, K = sh.K, S = sh.S;
    double total = 0.0;
    if (sh.outputs() == 0) return total;
    if (S > 1) {
        const int64_t rows = sh.M * C;
        const int64_t blocks_per_row = (S + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
        for (int64_t task = 0; task < rows * blocks_per_row; ++task) {
            T best[kBlock];
            int32_t piece[kBlock];
            const int64_t r = task / blocks_per_row;
            const int64_t s0 = (task % blocks_per_row) * kBlock;
            const int64_t len = std::min(kBlock, S - s0);
            const int64_t c = r % C;
            const T* base = x + r * K * S + s0;
            const T b0 = HasBias ? bias[c * K] : T(0);
            for (int64_t i = 0; i < len; ++i) {
                best[i] = HasBias ? base[i] + b0 : base[i];
                piece[i] = 0;
            }
            for (int64_t p = 1; p < K; ++p) {
                const T* xp = base + p * S;
                const T bp = HasBias ? bias[c * K + p] : T(0);
                for (int64_t i = 0; i < len; ++i) {
                    const T v = HasBias ? xp[i] + bp : xp[i];
                    const bool take = takes_over(v, best[i]);
                    best[i] = take ? v : best[i];
                    piece[i] = take ? int32_t(p) : piece[i];
                }
            }
            double acc = 0.0;
            epi(r * S + s0, len, best, piece, acc);
            total += acc;
        }
    } else {
        const int64_t blocks_per_row = (C + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
        for (int64_t task = 0; task < sh.M * blocks_per_row; ++task) {
            T best[kBlock];
            int32_t piece[kBlock];
            const int64_t m = task / blocks_per_row;
            const int64_t c0 = (task % blocks_per_row) * kBlock;
            const int64_t len = std::min(kBlock, C - c0);
            const T* base = x + (m * C + c0) * K;
            const T* bb = HasBias ? bias + c0 * K : nullptr;
            for (int64_t i = 0; i < len; ++i) {
                T b = HasBias ? base[i * K] + bb[i * K] : base[i * K];
                int32_t w = 0;
                for (int64_t p = 1; p < K; ++p) {
                    const T v = HasBias ? base[i * K + p] + bb[i * K + p] : base[i * K + p];
                    const bool take = takes_over(v, b);
                    b = take ? v : b;
                    w = take ? int32_t(p) : w;
                }
                best[i] = b;
                piece[i] = w;
            }
            double acc = 0.0;
            epi(m * C + c0, len, best, piece, acc);
            total += acc;
        }
    }
    return total;
}

// One piece's gradient over a run of n outputs: out = scale * g where the winner is p, else 0; returns the sum.
// Written with 64-byte GCC/Clang vectors (the tail through zero-padded copies): gcc's own vectorisation of
// the select leaves runs shorter than its unrolled vector loop (e.g. 7x7 = 49) to a branchy scalar loop
// that mispredicts on every random winner.
template <typename T>
inline T scatter_piece(const T* __restrict g, const uint8_t* __restrict w, uint8_t p, T scale, T* __restrict out,
                       int64_t n) {
    constexpr int64_t kLanes = 64 / sizeof(T);
    using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    typedef T Vec __attribute__((vector_size(64)));
    typedef Int IntVec __attribute__((vector_size(64)));
    typedef uint8_t ByteVec __attribute__((vector_size(kLanes)));
    const Vec zero = {};
    Vec sum = zero;
    auto lanes = [&](const T* gs, const uint8_t* ws, T* os) {
        Vec gv;
        ByteVec wv;
        std::memcpy(&gv, gs, sizeof gv);
        std::memcpy(&wv, ws, sizeof wv);
        const Vec v = __builtin_convertvector(wv, IntVec) == Int(p) ? gv * scale : zero;
        std::memcpy(os, &v, sizeof v);
        sum += v;
    };
    int64_t s = 0;
    for (; s + kLanes <= n; s += kLanes) lanes(g + s, w + s, out + s);
    if (s < n) {
        T gt[kLanes] = {}, ot[kLanes];
        uint8_t wt[kLanes];
        std::fill(wt, wt + kLanes, uint8_t(p + 1));  // never the winner: padding stays 0
        std::copy(g + s, g + n, gt);
        std::copy(w + s, w + n, wt);
        lanes(gt, wt, ot);
        std::copy(ot, ot + (n - s), out + s);
    }
    T total = 0;
    for (int64_t l = 0; l < kLanes; ++l) total += sum[l];
    return total;
}

// Backward of maxout with bias: grad_in (M, C, K, S) gets scale * grad_out at each output's winning
// piece and 0 elsewhere; grad_bias (C*K,), if not null, gets the sum of grad_in over M and S.
template <typename T>
void maxout_backward(const T* grad_out, const uint8_t* piece, T scale, T* grad_in, T* grad_bias, MaxoutShape sh,
                     int threads) {
    const int64_t C = sh.C, K = sh.K, S = sh.S;
    const bool want_bias = grad_bias != nullptr;
    if (sh.outputs() == 0) {
        if (want_bias) std::fill(grad_bias, grad_bias + C * K, T(0));
        return;
    }
    advise_huge_pages(grad_in, sh.outputs() * K * sizeof(T));
    std::vector<double> partial(want_bias ? size_t(threads) * C * K : 0, 0.0);
    if (S > 1) {
        const int64_t rows = sh.M * C;
#pragma omp parallel num_threads(threads)
        {
            double* mine = want_bias ? partial.data() + size_t(omp_get_thread_num()) * C * K : nullptr;
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t c = r % C;
                const T* g = grad_out + r * S;
                const uint8_t* w = piece + r * S;
                for (int64_t p = 0; p < K; ++p) {
                    const T sum = scatter_piece(g, w, uint8_t(p), scale, grad_in + (r * K + p) * S, S);
                    if (want_bias) mine[c * K + p] += sum;
                }
            }
        }
    } else {
#pragma omp parallel num_threads(threads)
        {
            double* mine = want_bias ? partial.data() + size_t(omp_get_thread_num()) * C * K : nullptr;
#pragma omp for schedule(static)
            for (int64_t m = 0; m < sh.M; ++m) {
                const T* g = grad_out + m * C;
                const uint8_t* w = piece + m * C;
                T* out = grad_in + m * C * K;
                for (int64_t c = 0; c < C; ++c) {
                    for (int64_t p = 0; p < K; ++p) {
                        const T v = w[c] == uint8_t(p) ? g[c] * scale : T(0);
                        out[c * K + p] = v;
                        if (want_bias) mine[c * K + p] += v;
                    }
                }
            }
        }
    }
    if (want_bias) {
        for (int64_t j = 0; j < C * K; ++j) {
            double sum = 0.0;
            for (int t = 0; t < threads; ++t) sum += partial[size_t(t) * C * K + j];
            grad_bias[j] = T(sum);
        }
    }
}

}  // namespace fitnets
