// Knowledge-distillation loss (FitNets stage 2). The forward makes one streaming pass per row that gathers
// the softmax statistics of the student (at temperatures 1 and T_s) and of the teacher (at T) with a
// blockwise online softmax, so any class count works, and saves them per row. When the student needs a
// gradient, the same pass also writes dL/ds: it then takes the row maxima first, keeps the row's
// exponentials in a per-thread scratch row and scales them once the sums are known, so no exponential is
// evaluated twice. The teacher gradient (rarely needed) comes from the saved statistics in its own passes.
//
// loss_i = hard_i + w * soft_i, hard_i = CE(y_i, softmax(s_i)) (0 if y_i == ignore_index),
// soft_i = -sum_j softmax(t_i/T)_j * log_softmax(s_i/T_s)_j, w = lam * soft_scale.
#include <pybind11/pybind11.h>
#include <omp.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

constexpr int64_t kRowBlock = 2048;

// Saved per row (float64), in this order, for the teacher gradient: max_j t_j; kInvZt: 1 / sum_j
// exp((t_j - max t) / T).
enum Stat { kMaxT = 0, kInvZt, kStats };

struct KdParams {
    int64_t N, K;
    double T, Ts, w;
    int64_t ignore_index;
    int reduction;  // 0 none, 1 sum, 2 mean
};

// Arithmetic type of the per-element work: float stays float (vectorised); double runs in x87 extended
// precision, so the float64 kernel (the one tests compare with the reference) adds almost no error.
template <typename T> struct Compute { using type = T; };
template <> struct Compute<double> { using type = long double; };
// The teacher gradient (rarely needed: teachers are usually frozen) cancels (s_j - mean) terms; it runs in
// double for float inputs too.
template <typename T> struct TeacherCompute { using type = double; };
template <> struct TeacherCompute<double> { using type = long double; };
// Row sums and per-row statistics use a wider type than the elements: float sums of thousands of terms
// lose ~10 ulps.
template <typename T> struct Accumulate { using type = double; };
template <> struct Accumulate<double> { using type = long double; };

// exp(d / temp) for d <= 0 (or NaN), given k = log2e_over<A>(temp). float: 2^(d * k) (k is rounded once,
// like a multiplication by 1 / temp would be; ~20% faster than exp with a Cody-Waite reduction); the wider
// types divide and call std::exp, ignoring k.
inline float exp_over(float d, float, float k) { return exp2_nonpos(d * k); }
inline double exp_over(double d, double temp, double) { return std::exp(d / temp); }
inline long double exp_over(long double d, long double temp, long double) { return std::exp(d / temp); }

template <typename A>
inline A log2e_over(double temp) { return A(1.4426950408889634 / temp); }

// Softmax statistics of one row, accumulated block by block (online softmax).
template <typename Wide>
struct RowStats {
    Wide ms = -std::numeric_limits<Wide>::infinity();  // max_j s_j
    Wide z1 = 0;   // sum_j exp(s_j - ms)
    Wide zs = 0;   // sum_j exp((s_j - ms) / Ts)
    Wide mt = -std::numeric_limits<Wide>::infinity();  // max_j t_j
    Wide zt = 0;   // sum_j exp((t_j - mt) / T)
    Wide ref = 0;  // a fixed shift of s for `a`: the first block's max of s
    Wide a = 0;    // sum_j exp((t_j - mt) / T) * (s_j - ref)
};

// max_j x_j over n >= 1 values, NaNs ignored (-inf if all are NaN). Kept in one 64-byte vector of
// independent running maxima (GCC/Clang vector extension) so that it vectorises: gcc will not turn a
// NaN-aware scalar max into vmaxps, and a single running max is a serial dependency chain.
template <typename T>
T max_ignoring_nan(const T* x, int64_t n) {
    typedef T Vec __attribute__((vector_size(64)));
    constexpr int64_t kLanes = 64 / sizeof(T);
    const T lowest = -std::numeric_limits<T>::infinity();
    Vec m;
    for (int64_t l = 0; l < kLanes; ++l) m[l] = lowest;
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        Vec v;
        std::memcpy(&v, x + j, sizeof v);
        m = v > m ? v : m;
    }
    T best = lowest;
    for (int64_t l = 0; l < kLanes; ++l) best = m[l] > best ? m[l] : best;
    for (; j < n; ++j) best = x[j] > best ? x[j] : best;
    return best;
}

template <typename T>
struct BlockSums {
    using S = typename Accumulate<T>::type;
    S z1 = 0, zs = 0, zt = 0, acc = 0;
};

// Elements per partial sum kept in the element type before it is added in the wider type: one vector
// lane then sums kSumChunk / 16 terms (float), a few ulps, and the widening is off the per-element path.
constexpr int64_t kSumChunk = 256;

// Student power P: with P >= 1 (float only, T_s == P exactly), exp(s - m) = exp((s - m) / T_s)^P is
// taken from the T_s exponential by P - 1 multiplications (error ~P ulps, like the polynomial's own);
// P = 0 evaluates it.
template <int P, typename A>
inline A student_exp1(A ds, A xs, A k1) {
    if constexpr (P == 0) return exp_over(ds, A(1), k1);
    else if constexpr (P == 1) return xs;
    else if constexpr (P == 2) return xs * xs;
    else if constexpr (P == 3) return xs * xs * xs;
    else return (xs * xs) * (xs * xs);
}

// fn(std::integral_constant<int, power>{}) for power 0 to 4 (the student_exp1 variants), 0 for any other.
template <typename Fn>
decltype(auto) with_power(int power, Fn&& fn) {
    switch (power) {
        case 1: return fn(std::integral_constant<int, 1>{});
        case 2: return fn(std::integral_constant<int, 2>{});
        case 3: return fn(std::integral_constant<int, 3>{});
        case 4: return fn(std::integral_constant<int, 4>{});
        default: return fn(std::integral_constant<int, 0>{});
    }
}

// A row's exponentials, kept for the gradient: x1 = exp(s - max s), xs = exp((s - max s) / T_s),
// xt = exp((t - max t) / T), each K values (per-thread scratch).
template <typename A>
struct KeptExps {
    A *x1, *xs, *xt;
};

// Exponentials of one block of a row, relative to the given maxima, and their sums; Keep also stores
// them at kept + the block's offset j0.
template <typename T, typename A, int P, bool Keep>
BlockSums<T> block_exps(const T* sb, const T* tb, int64_t len, A ms, A mt, A ref, A tt, A ts, A kt, A ks,
                        A k1, KeptExps<A> kept, int64_t j0) {
    using S = typename BlockSums<T>::S;
    BlockSums<T> out;
    for (int64_t c0 = 0; c0 < len; c0 += kSumChunk) {
        const int64_t c1 = std::min(len, c0 + kSumChunk);
        A z1 = 0, zs = 0, zt = 0, acc = 0;
#pragma omp simd reduction(+ : z1, zs, zt, acc)
        for (int64_t j = c0; j < c1; ++j) {
            const A ds = A(sb[j]) - ms;
            const A xs = exp_over(ds, ts, ks);
            const A xt = exp_over(A(tb[j]) - mt, tt, kt);
            const A x1 = student_exp1<P>(ds, xs, k1);
            if constexpr (Keep) {
                kept.x1[j0 + j] = x1;
                kept.xs[j0 + j] = xs;
                kept.xt[j0 + j] = xt;
            }
            z1 += x1;
            zs += xs;
            zt += xt;
            acc += xt * (A(sb[j]) - ref);
        }
        out.z1 += S(z1);
        out.zs += S(zs);
        out.zt += S(zt);
        out.acc += S(acc);
    }
    return out;
}

// Statistics of one row. With kept (non-null pointers), the row maxima are taken first, so that every
// block's exponentials are relative to them and can be stored for the gradient; otherwise the maxima
// are found block by block (online softmax).
template <typename T, typename A, typename Wide>
RowStats<Wide> row_stats(const T* s, const T* t, int64_t K, Wide temp, Wide temp_s, int power, KeptExps<A> kept) {
    RowStats<Wide> st;
    const Wide none = -std::numeric_limits<Wide>::infinity();
    const A tt = A(temp), ts = A(temp_s), kt = log2e_over<A>(double(temp)), ks = log2e_over<A>(double(temp_s)),
            k1 = log2e_over<A>(1.0);
    const bool keep = kept.x1 != nullptr;
    if (keep) {
        st.ms = st.ref = max_ignoring_nan(s, K);
        st.mt = max_ignoring_nan(t, K);
    }
    for (int64_t j0 = 0; j0 < K; j0 += kRowBlock) {
        const int64_t len = std::min(kRowBlock, K - j0);
        const T* sb = s + j0;
        const T* tb = t + j0;
        // With kept exponentials the row maxima are known already; otherwise take the block's.
        const T bms = keep ? T(st.ms) : max_ignoring_nan(sb, len), bmt = keep ? T(st.mt) : max_ignoring_nan(tb, len);
        if (j0 == 0 && !keep) st.ref = bms;
        if (bms > st.ms) {
            if (st.ms > none) {
                const Wide d = Wide(bms) - st.ms;
                st.z1 *= std::exp(-d);
                st.zs *= std::exp(-d / temp_s);
            }
            st.ms = bms;
        }
        if (bmt > st.mt) {
            if (st.mt > none) {
                const Wide f = std::exp((st.mt - Wide(bmt)) / temp);
                st.zt *= f;
                st.a *= f;
            }
            st.mt = bmt;
        }
        // While a maximum is still -inf every exponential is 0; shifting by 0 keeps them 0 (not NaN).
        const A ms = st.ms > none ? A(st.ms) : A(0), mt = st.mt > none ? A(st.mt) : A(0), ref = A(st.ref);
        const BlockSums<T> sums = with_power(power, [&](auto P) {
            constexpr int kP = decltype(P)::value;
            return keep ? block_exps<T, A, kP, true>(sb, tb, len, ms, mt, ref, tt, ts, kt, ks, k1, kept, j0)
                        : block_exps<T, A, kP, false>(sb, tb, len, ms, mt, ref, tt, ts, kt, ks, k1, kept, j0);
        });
        st.z1 += sums.z1;
        st.zs += sums.zs;
        st.zt += sums.zt;
        st.a += sums.acc;
    }
    return st;
}

// Power P for student_exp1: T_s itself for a float student temperature of exactly 1 to 4 (e.g. T_s = T = 3),
// else 0 (evaluate exp(s - m)).
template <typename T>
int student_power(double temp_s) {
    const bool small_int = temp_s >= 1 && temp_s <= 4 && temp_s == std::floor(temp_s);
    return std::is_same<T, float>::value && small_int ? int(temp_s) : 0;
}

// dL/dloss_i for the hard and soft terms under the reduction ("none": 1, the per-row scale comes later).
template <typename Wide>
struct TermScales {
    Wide hard, soft;
    TermScales(const int64_t* y, const KdParams& p) {
        int64_t labelled = 0;
        for (int64_t i = 0; i < p.N; ++i) labelled += y[i] != p.ignore_index;
        hard = p.reduction == 2 ? Wide(1) / Wide(std::max<int64_t>(labelled, 1)) : Wide(1);
        soft = p.reduction == 2 ? Wide(p.w) / Wide(std::max<int64_t>(p.N, 1)) : Wide(p.w);
    }
};

// Loss (returned, reduced; per row into loss_rows for reduction none), per-row statistics and, if grad is
// not null, dL/ds (N, K) under the reduction:
// dL/ds_j = hs * (softmax(s)_j - [j == y]) + ws / Ts * (softmax(s/Ts)_j - softmax(t/T)_j).
template <typename T>
double forward(const T* s, const T* t, const int64_t* y, const KdParams& p, T* loss_rows, double* stats, T* grad,
               int threads) {
    using A = typename Compute<T>::type;
    using Wide = typename Accumulate<T>::type;
    const int64_t N = p.N, K = p.K;
    const TermScales<Wide> scales(y, p);
    const int power = student_power<T>(p.Ts);
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        std::vector<A> scratch(grad ? 3 * K : 0);
        const KeptExps<A> kept = grad ? KeptExps<A>{scratch.data(), scratch.data() + K, scratch.data() + 2 * K}
                                      : KeptExps<A>{nullptr, nullptr, nullptr};
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {
            const T* si = s + i * K;
            const RowStats<Wide> st = row_stats<T, A, Wide>(si, t + i * K, K, Wide(p.T), Wide(p.Ts), power, kept);
            const Wide log_z1 = std::log(st.z1), log_zs = std::log(st.zs);
            const bool has_label = y[i] != p.ignore_index;
            const Wide hard = has_label ? log_z1 - (Wide(si[y[i]]) - st.ms) : Wide(0);
            const Wide mean_s = st.a / st.zt + (st.ref - st.ms);  // sum_j softmax(t/T)_j (s_j - ms)
            const Wide soft = log_zs - mean_s / p.Ts;
            double* row_stat = stats + i * kStats;
            row_stat[kMaxT] = double(st.mt);
            row_stat[kInvZt] = double(1 / st.zt);
            if (p.reduction == 0) loss_rows[i] = T(hard + p.w * soft);
            total += double(hard * scales.hard + soft * scales.soft);
            if (grad) {
                const Wide hs = has_label ? scales.hard : Wide(0), ws = scales.soft / p.Ts;
                const A f1 = A(hs / st.z1), fs = A(ws / st.zs), ft = A(ws / st.zt);
                T* gi = grad + i * K;
#pragma omp simd
                for (int64_t j = 0; j < K; ++j) gi[j] = T(kept.x1[j] * f1 + kept.xs[j] * fs - kept.xt[j] * ft);
                if (has_label) gi[y[i]] = T(A(gi[y[i]]) - A(hs));
            }
        }
    }
    return total;
}

// Index of the first x_j equal to m (a maximum of the row) among n values, -1 if there is none.
template <typename T>
int64_t first_index_of(const T* x, int64_t n, T m) {
    for (int64_t j = 0; j < n; ++j)
        if (x[j] == m) return j;
    return -1;
}

// The shift c of teacher_grad: s at the teacher's first largest logit, else (no such class, or a non-finite
// s there) max s, else 0.
template <typename T, typename A>
A centre(const T* s, const T* t, int64_t K, T max_t) {
    const int64_t j = first_index_of(t, K, max_t);
    if (j >= 0 && std::isfinite(s[j])) return A(s[j]);
    const T ms = max_ignoring_nan(s, K);
    return std::isfinite(ms) ? A(ms) : A(0);
}

// dL/dt_ij = -(ws / T) * p_j * (lsm_j + soft_i), p = softmax(t_i / T), lsm = log_softmax(s_i / Ts), where
// lsm_j + soft_i = (s_j - sum_l p_l s_l) / Ts. It is computed as ((s_j - c) - sum_l p_l (s_l - c)) / Ts,
// with no log-sum to cancel, and with c = s at the teacher's largest logit (centre): a sharp teacher puts
// nearly all of p on that class, and the sum is then made of small terms only. With c = max s it would be a
// large number with a rounding error of its own size, and the gradient at the teacher's class, a small sum,
// would be mostly that error (float32, in the sharp-teacher test: 10^3 to 2.5 * 10^4 times its size). Two
// passes per row, p kept in between.
template <typename T>
void teacher_grad(const T* s, const T* t, const double* stats, const KdParams& p, T* grad, int threads) {
    using A = typename TeacherCompute<T>::type;
    using Wide = typename Accumulate<T>::type;
    const int64_t N = p.N, K = p.K;
    const Wide soft_scale = p.reduction == 2 ? Wide(p.w) / Wide(std::max<int64_t>(N, 1)) : Wide(p.w);
    const A coef = A(-soft_scale / (Wide(p.T) * p.Ts)), tt = A(p.T), kt = log2e_over<A>(p.T);
#pragma omp parallel num_threads(threads)
    {
        std::vector<A> pt(K);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {
            const double* st = stats + i * kStats;
            const A mt = A(st[kMaxT]), izt = A(st[kInvZt]);
            const T* si = s + i * K;
            const T* ti = t + i * K;
            T* gi = grad + i * K;
            const A c = centre<T, A>(si, ti, K, T(st[kMaxT]));
            A mean = 0;  // sum_l p_l (s_l - c)
#pragma omp simd reduction(+ : mean)
            for (int64_t j = 0; j < K; ++j) {
                pt[j] = exp_over(A(ti[j]) - mt, tt, kt) * izt;
                mean += pt[j] * (A(si[j]) - c);
            }
#pragma omp simd
            for (int64_t j = 0; j < K; ++j) gi[j] = T(coef * pt[j] * ((A(si[j]) - c) - mean));
        }
    }
}

KdParams params(int64_t N, int64_t K, double temp, double temp_s, double w, int64_t ignore_index, int reduction) {
    if (N < 0 || K < 1 || !(temp > 0) || !(temp_s > 0) || reduction < 0 || reduction > 2)
        throw std::invalid_argument("bad kd_loss arguments");
    return KdParams{N, K, temp, temp_s, w, ignore_index, reduction};
}

// Rows too small to pay for waking a second thread run on one.
int threads_for(int64_t elements, int threads) { return elements < (1 << 15) ? 1 : std::max(threads, 1); }

}  // namespace

void register_kd_loss(py::module_& m) {
    m.def(
        "kd_forward",
        [](const std::string& dtype, std::uintptr_t s, std::uintptr_t t, std::uintptr_t y, int64_t N, int64_t K,
           double temp, double temp_s, double w, int64_t ignore_index, int reduction, std::uintptr_t loss_rows,
           std::uintptr_t stats, std::uintptr_t grad, int threads) {
            const KdParams p = params(N, K, temp, temp_s, w, ignore_index, reduction);
            return dispatch_float(dtype, [&](auto tag) {
                using T = decltype(tag);
                return forward<T>(ptr<const T>(s), ptr<const T>(t), ptr<const int64_t>(y), p, ptr<T>(loss_rows),
                                  ptr<double>(stats), grad ? ptr<T>(grad) : nullptr, threads_for(N * K, threads));
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "KD loss forward over contiguous (N, K) student s and teacher t logits and int64 targets y. Writes "
        "stats (N, 2) float64 for kd_teacher_grad, for reduction 0 (none; 1 sum, 2 mean) the per-row losses, "
        "and, if grad != 0, dL/ds (N, K) under the reduction; returns the reduced loss.");
    m.def(
        "kd_teacher_grad",
        [](const std::string& dtype, std::uintptr_t s, std::uintptr_t t, std::uintptr_t stats, int64_t N, int64_t K,
           double temp, double temp_s, double w, int reduction, std::uintptr_t grad, int threads) {
            const KdParams p = params(N, K, temp, temp_s, w, 0, reduction);
            dispatch_float(dtype, [&](auto tag) {
                using T = decltype(tag);
                teacher_grad<T>(ptr<const T>(s), ptr<const T>(t), ptr<const double>(stats), p, ptr<T>(grad),
                                threads_for(N * K, threads));
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "dL/dt (N, K) of the KD loss under the reduction, from the stats kd_forward saved.");
}

}  // namespace fitnets
