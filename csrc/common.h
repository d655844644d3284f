// Shared helpers for the fused CPU kernels: raw-pointer views, a bfloat16 storage type, dtype dispatch, a
// vectorisable exp, and the maxout-with-bias forward driver and backward kernel that maxout.cpp,
// maxout_conv.cpp and hint_loss.cpp build on.
//
// The Python side (fitnets_fast/cpp/) passes data pointers as integers together with sizes; every tensor
// it passes is contiguous in the layout the kernel documents, and outputs are preallocated by Python.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fitnets {

// Elements processed per inner block: keeps the per-block scratch (best values, winning pieces) in L1.
constexpr int64_t kBlock = 512;

template <typename T>
inline T* ptr(std::uintptr_t address) {
    return reinterpret_cast<T*>(address);
}

// torch.bfloat16 in memory: the upper 16 bits of a float. Arithmetic happens in float (Arith<bfloat16>);
// converting back rounds to nearest, ties to even, and keeps NaN a (quiet) NaN. Branch-free, so loops
// over it vectorise.
struct bfloat16 {
    uint16_t bits;
    bfloat16() = default;
    template <typename U, typename = std::enable_if_t<std::is_arithmetic<U>::value>>
    explicit bfloat16(U value) {
        const float f = float(value);
        uint32_t u;
        std::memcpy(&u, &f, sizeof u);
        const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
        bits = uint16_t(nan ? (u >> 16) | 0x40u : rounded);
    }
    operator float() const {
        const uint32_t u = uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, sizeof f);
        return f;
    }
};

// The type element-wise arithmetic on stored T values uses: T itself, float for bfloat16.
template <typename T> struct ArithOf { using type = T; };
template <> struct ArithOf<bfloat16> { using type = float; };
template <typename T> using Arith = typename ArithOf<T>::type;

// Calls fn(float{}) or fn(double{}) for the dtype name passed from Python.
template <typename Fn>
inline auto dispatch_float(const std::string& dtype, Fn&& fn) {
    if (dtype == "float32") return fn(float{});
    if (dtype == "float64") return fn(double{});
    throw std::invalid_argument("fitnets_fast._C supports float32 and float64 here, got " + dtype);
}

// dispatch_float, plus fn(bfloat16{}) for "bfloat16" (the maxout kernels, which only compare, add a bias
// and copy, handle bfloat16 storage too).
template <typename Fn>
inline auto dispatch_float_or_bf16(const std::string& dtype, Fn&& fn) {
    if (dtype == "bfloat16") return fn(bfloat16{});
    if (dtype == "float32" || dtype == "float64") return dispatch_float(dtype, fn);
    throw std::invalid_argument("fitnets_fast._C supports float32, float64 and bfloat16 here, got " + dtype);
}

// 2^u for u <= 0 (and NaN), written branch-free so that gcc vectorises loops calling it: u = n + f with
// n = round(u) and |f| <= 1/2, 2^f from a degree-6 minimax polynomial (max. error ~1.2 ulp), 2^n put in the
// exponent bits. 2^u = 0 below the smallest normal (u < -126); a NaN u gives a NaN (through the polynomial).
// n is rounded with the 1.5 * 2^23 shifter: its low bits then hold n in two's complement, so the exponent
// comes from an integer shift without a float-to-int conversion.
inline float exp2_nonpos(float u) {
    const float lo = -126.0f, shifter = 12582912.0f;
    const float uc = u < lo ? lo : u;
    const float shifted = uc + shifter;
    const float f = uc - (shifted - shifter);
    float p = 1.5353361960e-4f;
    p = p * f + 1.3398875017e-3f;
    p = p * f + 9.6184369177e-3f;
    p = p * f + 5.5503323674e-2f;
    p = p * f + 2.4022647738e-1f;
    p = p * f + 6.9314718246e-1f;
    p = p * f + 1.0f;
    uint32_t n_bits;
    std::memcpy(&n_bits, &shifted, sizeof n_bits);
    const uint32_t scale_bits = (n_bits << 23) + (127u << 23);
    float scale;
    std::memcpy(&scale, &scale_bits, sizeof scale);
    return u < lo ? 0.0f : p * scale;
}


// ------------------------------------------------------------------ maxout kernels (shared by the ops)
// Layout: the pre-activation is a contiguous (M, C, K, S) array: M rows (batch, or batch*pixels for
// channels-last data), C output channels, K pieces, S inner positions (H*W for NCHW; 1 for channels-last
// or linear layers, where the pieces are adjacent in memory). Output element (m, c, s) lives at
// (m*C + c)*S + s. Piece p of output channel c uses bias[c*K + p].
// Winner: the largest piece; ties go to the lowest piece; a NaN piece wins (the first NaN if several).
// Values are compared in Arith<T> (float for bfloat16 storage, where x + bias is rounded only after the
// max, so the winner is the exact sums' winner).
struct MaxoutShape {
    int64_t M, C, K, S;
    int64_t outputs() const { return M * C * S; }
};

// Candidate v replaces the current best b: strictly larger, or NaN while b is not (first NaN wins).
template <typename T>
inline bool takes_over(T v, T b) {
    return (v > b) | ((v != v) & (b == b));
}

// Calls fn(std::integral_constant<int, K>) for K = 2..5 (compile-time piece counts let gcc vectorise the
// interleaved loops over adjacent pieces) and fn(std::integral_constant<int, 0>) for any other K.
template <typename Fn>
inline void with_pieces(int64_t K, Fn&& fn) {
    switch (K) {
        case 2: fn(std::integral_constant<int, 2>{}); break;
        case 3: fn(std::integral_constant<int, 3>{}); break;
        case 4: fn(std::integral_constant<int, 4>{}); break;
        case 5: fn(std::integral_constant<int, 5>{}); break;
        default: fn(std::integral_constant<int, 0>{});
    }
}

// Winner of each of len outputs whose K pieces are adjacent in memory (x[i*K + p], bias bb[i*K + p]).
// KC: K known at compile time (the pieces loop is then written out, so gcc vectorises over i), or 0 to
// use the run-time K.
template <typename T, bool HasBias, int KC, int... P>
inline void max_adjacent_unrolled(const T* __restrict x, const T* __restrict bb, int64_t len,
                                  Arith<T>* __restrict best, int32_t* __restrict piece,
                                  std::integer_sequence<int, P...>) {
    using A = Arith<T>;
    for (int64_t i = 0; i < len; ++i) {
        A b = HasBias ? A(x[i * KC]) + A(bb[i * KC]) : A(x[i * KC]);
        int32_t w = 0;
        auto consider = [&](int p) {
            const A v = HasBias ? A(x[i * KC + p]) + A(bb[i * KC + p]) : A(x[i * KC + p]);
            const bool take = takes_over(v, b);
            b = take ? v : b;
            w = take ? int32_t(p) : w;
        };
        (consider(P + 1), ...);
        best[i] = b;
        piece[i] = w;
    }
}

template <typename T, bool HasBias, int KC>
inline void max_adjacent(const T* __restrict x, const T* __restrict bb, int64_t len, int64_t K,
                         Arith<T>* __restrict best, int32_t* __restrict piece) {
    using A = Arith<T>;
    if constexpr (KC > 0) {
        max_adjacent_unrolled<T, HasBias, KC>(x, bb, len, best, piece, std::make_integer_sequence<int, KC - 1>{});
    } else {
        for (int64_t i = 0; i < len; ++i) {
            A b = HasBias ? A(x[i * K]) + A(bb[i * K]) : A(x[i * K]);
            int32_t w = 0;
            for (int64_t p = 1; p < K; ++p) {
                const A v = HasBias ? A(x[i * K + p]) + A(bb[i * K + p]) : A(x[i * K + p]);
                const bool take = takes_over(v, b);
                b = take ? v : b;
                w = take ? int32_t(p) : w;
            }
            best[i] = b;
            piece[i] = w;
        }
    }
}

// Winner (value, piece) of each of len outputs whose K pieces are rows S apart, x[p*S + i], with bias bc[p]
// (one channel of an NCHW row), in one pass that keeps the running winners in registers (64-byte GCC/Clang
// vectors; gcc does not vectorise the select chain over a run-time number of pieces by itself). Used for
// short rows (such as 8x8 maps), where a pass per piece over the row is mostly loop overhead. float and
// double only.
template <typename T, bool HasBias>
inline void max_short_rows(const T* __restrict x, const T* __restrict bc, int64_t len, int64_t K, int64_t S,
                           T* __restrict best, int32_t* __restrict piece) {
    constexpr int64_t kLanes = 64 / sizeof(T);
    using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    typedef T Vec __attribute__((vector_size(64)));
    typedef Int IntVec __attribute__((vector_size(64)));
    typedef int32_t PieceVec __attribute__((vector_size(kLanes * 4)));
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
        Vec top;
        std::memcpy(&top, x + i, sizeof top);
        if (HasBias) top += bc[0];
        IntVec w = {};
        for (int64_t p = 1; p < K; ++p) {
            Vec v;
            std::memcpy(&v, x + p * S + i, sizeof v);
            if (HasBias) v += bc[p];
            const IntVec take = (v > top) | ((v != v) & (top == top));
            top = take ? v : top;
            w = take ? IntVec{} + Int(p) : w;
        }
        const PieceVec w32 = __builtin_convertvector(w, PieceVec);
        std::memcpy(best + i, &top, sizeof top);
        std::memcpy(piece + i, &w32, sizeof w32);
    }
    for (; i < len; ++i) {
        T b = HasBias ? x[i] + bc[0] : x[i];
        int32_t w = 0;
        for (int64_t p = 1; p < K; ++p) {
            const T v = HasBias ? x[p * S + i] + bc[p] : x[p * S + i];
            const bool take = takes_over(v, b);
            b = take ? v : b;
            w = take ? int32_t(p) : w;
        }
        best[i] = b;
        piece[i] = w;
    }
}

// Rows of at most this many positions take max_short_rows; longer ones a streaming pass per piece.
constexpr int64_t kShortRow = 128;

// maxout_blocks for NCHW rows of 2 to kShortRow positions (float and double): several whole rows
// (contiguous outputs) per block, one register pass each.
template <typename T, bool HasBias, typename Epilogue>
double short_row_blocks(const T* x, const T* bias, MaxoutShape sh, int threads, Epilogue& epi) {
    const int64_t C = sh.C, K = sh.K, S = sh.S;
    const int64_t rows = sh.M * C;
    const int64_t rows_per_block = kBlock / S;
    const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
    double total = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (int64_t b = 0; b < blocks; ++b) {
        T best[kBlock];
        int32_t piece[kBlock];
        const int64_t r0 = b * rows_per_block;
        const int64_t n = std::min(rows_per_block, rows - r0);
        for (int64_t j = 0; j < n; ++j) {
            const int64_t r = r0 + j;
            max_short_rows<T, HasBias>(x + r * K * S, HasBias ? bias + (r % C) * K : nullptr, S, K, S,
                                       best + j * S, piece + j * S);
        }
        double acc = 0.0;
        epi(r0 * S, n * S, best, piece, acc);
        total += acc;
    }
    return total;
}

// Computes, block by block, the winning value (as Arith<T>) and piece of every output element and hands
// each block to epi(offset, length, best, piece, acc): offset is the linear output index of the block's
// first element, acc a per-thread double accumulator. Returns the sum of all threads' acc.
template <typename T, bool HasBias, typename Epilogue>
double maxout_blocks(const T* x, const T* bias, MaxoutShape sh, int threads, Epilogue epi) {
    using A = Arith<T>;
    const int64_t C = sh.C, K = sh.K, S = sh.S;
    double total = 0.0;
    if (sh.outputs() == 0) return total;
    if constexpr (std::is_floating_point<T>::value) {  // bfloat16 short rows take the streaming pass
        if (S > 1 && S <= kShortRow) return short_row_blocks<T, HasBias>(x, bias, sh, threads, epi);
    }
    if (S > 1) {
        const int64_t rows = sh.M * C;
        const int64_t blocks_per_row = (S + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
        for (int64_t task = 0; task < rows * blocks_per_row; ++task) {
            A best[kBlock];
            int32_t piece[kBlock];
            const int64_t r = task / blocks_per_row;
            const int64_t s0 = (task % blocks_per_row) * kBlock;
            const int64_t len = std::min(kBlock, S - s0);
            const int64_t c = r % C;
            const T* base = x + r * K * S + s0;
            const A b0 = HasBias ? A(bias[c * K]) : A(0);
            for (int64_t i = 0; i < len; ++i) {
                best[i] = HasBias ? A(base[i]) + b0 : A(base[i]);
                piece[i] = 0;
            }
            for (int64_t p = 1; p < K; ++p) {
                const T* xp = base + p * S;
                const A bp = HasBias ? A(bias[c * K + p]) : A(0);
                for (int64_t i = 0; i < len; ++i) {
                    const A v = HasBias ? A(xp[i]) + bp : A(xp[i]);
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
        // Outputs (m, c) are contiguous over both m and c: a block is either part of one long row
        // (C > kBlock) or several whole rows. A row whose length is not a multiple of the vector width
        // would end in a scalar remainder (12 channels: 8x slower per output than 16); such blocks of
        // rows take one max_adjacent pass as a single run, with the bias repeated once per row.
        const int64_t blocks_per_row = (C + kBlock - 1) / kBlock;
        const int64_t rows_per_block = blocks_per_row == 1 ? std::max<int64_t>(1, kBlock / C) : 1;
        const int64_t tasks =
            blocks_per_row == 1 ? (sh.M + rows_per_block - 1) / rows_per_block : sh.M * blocks_per_row;
        const bool one_run = rows_per_block > 1 && C % int64_t(64 / sizeof(A)) != 0;
        std::vector<T> repeated_bias(HasBias && one_run ? rows_per_block * C * K : 0);
        for (int64_t j = 0; j < int64_t(repeated_bias.size()); j += C * K)
            std::copy(bias, bias + C * K, repeated_bias.begin() + j);
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
        for (int64_t task = 0; task < tasks; ++task) {
            A best[kBlock];
            int32_t piece[kBlock];
            const int64_t m0 = blocks_per_row == 1 ? task * rows_per_block : task / blocks_per_row;
            const int64_t c0 = blocks_per_row == 1 ? 0 : (task % blocks_per_row) * kBlock;
            const int64_t rows = blocks_per_row == 1 ? std::min(rows_per_block, sh.M - m0) : 1;
            const int64_t len = std::min(kBlock, C - c0);
            with_pieces(K, [&](auto k) {
                constexpr int KC = decltype(k)::value;
                if (one_run) {
                    max_adjacent<T, HasBias, KC>(x + m0 * C * K, repeated_bias.data(), rows * C, K, best, piece);
                    return;
                }
                for (int64_t j = 0; j < rows; ++j)
                    max_adjacent<T, HasBias, KC>(x + ((m0 + j) * C + c0) * K, HasBias ? bias + c0 * K : nullptr,
                                                 len, K, best + j * len, piece + j * len);
            });
            double acc = 0.0;
            epi(m0 * C + c0, rows * len, best, piece, acc);
            total += acc;
        }
    }
    return total;
}

// Backward scatter over n outputs: piece p of output i gets scale * g[i] if w[i] == p, else 0. Adjacent:
// the pieces of output i are out[i*K + p] (channels-last or linear); otherwise out[p*stride + i] (one NCHW
// row, stride = S). KC: K known at compile time (the pieces are then written out, so gcc vectorises over
// i), or 0 to use the run-time K.
template <typename T, bool Adjacent, int KC, int... P>
inline void scatter_unrolled(const T* __restrict g, const uint8_t* __restrict w, Arith<T> scale, T* __restrict out,
                             int64_t n, int64_t stride, std::integer_sequence<int, P...>) {
    using A = Arith<T>;
    for (int64_t i = 0; i < n; ++i) {
        const A v = A(g[i]) * scale;
        ((out[Adjacent ? i * KC + P : P * stride + i] = T(w[i] == uint8_t(P) ? v : A(0))), ...);
    }
}

template <typename T, bool Adjacent, int KC>
inline void scatter(const T* __restrict g, const uint8_t* __restrict w, Arith<T> scale, T* __restrict out,
                    int64_t n, int64_t K, int64_t stride) {
    using A = Arith<T>;
    if constexpr (KC > 0) {
        scatter_unrolled<T, Adjacent, KC>(g, w, scale, out, n, stride, std::make_integer_sequence<int, KC>{});
    } else {
        auto piece_of = [&](int64_t i, int64_t p) { return T(w[i] == uint8_t(p) ? A(g[i]) * scale : A(0)); };
        if constexpr (Adjacent) {  // loops ordered so that the writes are contiguous
            for (int64_t i = 0; i < n; ++i)
                for (int64_t p = 0; p < K; ++p) out[i * K + p] = piece_of(i, p);
        } else {
            for (int64_t p = 0; p < K; ++p)
                for (int64_t i = 0; i < n; ++i) out[p * stride + i] = piece_of(i, p);
        }
    }
}

// scatter of one NCHW output row (K pieces, rows of S positions), then piece_sums[p] (if not null) +=
// sum_s out[p*S + s].
template <typename T, int KC>
inline void scatter_row(const T* __restrict g, const uint8_t* __restrict w, Arith<T> scale, T* __restrict out,
                        int64_t S, int64_t run_time_k, double* piece_sums) {
    using A = Arith<T>;
    const int64_t K = KC > 0 ? KC : run_time_k;
    scatter<T, false, KC>(g, w, scale, out, S, K, S);
    if (piece_sums == nullptr) return;
    for (int64_t p = 0; p < K; ++p) {
        A sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s < S; ++s) sum += A(out[p * S + s]);
        piece_sums[p] += sum;
    }
}

// Backward of maxout with bias: grad_in (M, C, K, S) gets scale * grad_out at each output's winning
// piece and 0 elsewhere; grad_bias (C*K,), if not null, gets the sum of grad_in over M and S.
template <typename T>
void maxout_backward(const T* grad_out, const uint8_t* piece, Arith<T> scale, T* grad_in, T* grad_bias,
                     MaxoutShape sh, int threads) {
    using A = Arith<T>;
    const int64_t C = sh.C, K = sh.K, S = sh.S;
    const bool want_bias = grad_bias != nullptr;
    if (sh.outputs() == 0) {
        if (want_bias) std::fill(grad_bias, grad_bias + C * K, T(0));
        return;
    }
    std::vector<double> partial(want_bias ? size_t(threads) * C * K : 0, 0.0);
    if (S > 1) {
        const int64_t rows = sh.M * C;
#pragma omp parallel num_threads(threads)
        {
            double* mine = want_bias ? partial.data() + size_t(omp_get_thread_num()) * C * K : nullptr;
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t c = r % C;
                with_pieces(K, [&](auto k) {
                    scatter_row<T, decltype(k)::value>(grad_out + r * S, piece + r * S, scale, grad_in + r * K * S,
                                                       S, K, want_bias ? mine + c * K : nullptr);
                });
            }
        }
    } else {
        // Rows are contiguous: scatter blocks of whole rows as one run, then add each row to an
        // Arith<T>-typed bias accumulator that is flushed into the thread's double partial once it holds
        // kFlushRows rows or more (after each block when blocks are that tall; wide rows, such as an untied
        // bias's whole image, are summed kFlushRows at a time instead of paying a flush per row).
        constexpr int64_t kFlushRows = 16;
        const int64_t rows_per_block = std::max<int64_t>(1, kBlock / C);
        const int64_t blocks = (sh.M + rows_per_block - 1) / rows_per_block;
#pragma omp parallel num_threads(threads)
        {
            double* mine = want_bias ? partial.data() + size_t(omp_get_thread_num()) * C * K : nullptr;
            std::vector<A> rows_sum(want_bias ? C * K : 0, A(0));
            int64_t pending = 0;  // rows in rows_sum not yet flushed into mine
            auto flush = [&] {
                for (int64_t i = 0; i < C * K; ++i) mine[i] += rows_sum[i];
                std::fill(rows_sum.begin(), rows_sum.end(), A(0));
                pending = 0;
            };
#pragma omp for schedule(static) nowait
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t m0 = b * rows_per_block;
                const int64_t rows = std::min(rows_per_block, sh.M - m0);
                T* out = grad_in + m0 * C * K;
                with_pieces(K, [&](auto k) {
                    scatter<T, true, decltype(k)::value>(grad_out + m0 * C, piece + m0 * C, scale, out, rows * C, K, 0);
                });
                if (!want_bias) continue;
                for (int64_t j = 0; j < rows; ++j) {
                    const T* row = out + j * C * K;
                    A* acc = rows_sum.data();
#pragma omp simd
                    for (int64_t i = 0; i < C * K; ++i) acc[i] += A(row[i]);
                }
                pending += rows;
                if (pending >= kFlushRows) flush();
            }
            if (pending > 0) flush();
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
