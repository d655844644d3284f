// Knowledge-distillation loss (FitNets stage 2): per row, one streaming pass gathers the softmax
// statistics of the student (at temperatures 1 and T_s) and of the teacher (at T) with a blockwise online
// softmax, so any class count works; a second pass over the (cache-resident) row writes dL/ds.
//
// loss_i = hard_i + w * soft_i, hard_i = CE(y_i, softmax(s_i)) (0 if y_i == ignore_index),
// soft_i = -sum_j softmax(t_i/T)_j * log_softmax(s_i/T_s)_j, w = lam * soft_scale.
#include <pybind11/pybind11.h>
#include <omp.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

constexpr int64_t kRowBlock = 2048;

// Saved per row (float64), in this order, for the teacher gradient.
enum Stat { kMaxS = 0, kMeanS, kMaxT, kInvZt, kStats };  // kMeanS: sum_j softmax(t/T)_j (s_j - max s)

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

// x / temperature: float multiplies by the rounded inverse (speed), the wider types divide.
inline float scaled(float x, float, float inv) { return x * inv; }
inline double scaled(double x, double temp, double) { return x / temp; }
inline long double scaled(long double x, long double temp, long double) { return x / temp; }

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

// Per-thread scratch of one row: the exponentials of the statistics pass, kept (L2-resident) so that the
// gradient pass only rescales them instead of recomputing them. Block b's values are relative to the
// running maxima when it was processed (block_ms[b], block_mt[b]; -inf: the maxima were still -inf).
template <typename A, typename Wide>
struct RowScratch {
    std::vector<A> e1, es, et;  // exp(s - m), exp((s - m) / Ts), exp((t - m_t) / T)
    std::vector<Wide> block_ms, block_mt;
    explicit RowScratch(int64_t K)
        : e1(K), es(K), et(K), block_ms((K + kRowBlock - 1) / kRowBlock), block_mt(block_ms.size()) {}
};

// exp((block max - final max) / temp), and 0 for a block whose max was -inf (its exponentials are 0).
template <typename Wide>
inline Wide block_factor(Wide block_max, Wide final_max, Wide temp) {
    if (block_max == final_max) return Wide(1);
    return block_max == -std::numeric_limits<Wide>::infinity() ? Wide(0) : std::exp((block_max - final_max) / temp);
}

template <typename T, typename A, typename Wide>
RowStats<Wide> row_stats(const T* s, const T* t, int64_t K, Wide temp, Wide temp_s, RowScratch<A, Wide>& sc) {
    RowStats<Wide> st;
    const Wide none = -std::numeric_limits<Wide>::infinity();
    const A inv_t = A(1 / temp), inv_ts = A(1 / temp_s), tt = A(temp), ts = A(temp_s);
    for (int64_t j0 = 0, b = 0; j0 < K; j0 += kRowBlock, ++b) {
        const int64_t len = std::min(kRowBlock, K - j0);
        const T* sb = s + j0;
        const T* tb = t + j0;
        T bms = -std::numeric_limits<T>::infinity(), bmt = bms;
#pragma omp simd reduction(max : bms, bmt)
        for (int64_t j = 0; j < len; ++j) {
            bms = std::max(bms, sb[j]);
            bmt = std::max(bmt, tb[j]);
        }
        if (j0 == 0) st.ref = bms;
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
        sc.block_ms[b] = st.ms;
        sc.block_mt[b] = st.mt;
        using S = typename Accumulate<T>::type;
        // While a maximum is still -inf every exponential is 0; shifting by 0 keeps them 0 (not NaN).
        const A ms = st.ms > none ? A(st.ms) : A(0), mt = st.mt > none ? A(st.mt) : A(0), ref = A(st.ref);
        A* e1 = sc.e1.data() + j0;
        A* es = sc.es.data() + j0;
        A* et = sc.et.data() + j0;
        S z1 = 0, zs = 0, zt = 0, acc = 0;
#pragma omp simd reduction(+ : z1, zs, zt, acc)
        for (int64_t j = 0; j < len; ++j) {
            const A ds = A(sb[j]) - ms;
            const A x1 = exp_nonpos(ds), xs = exp_nonpos(scaled(ds, ts, inv_ts));
            const A xt = exp_nonpos(scaled(A(tb[j]) - mt, tt, inv_t));
            e1[j] = x1;
            es[j] = xs;
            et[j] = xt;
            z1 += S(x1);
            zs += S(xs);
            zt += S(xt);
            acc += S(xt * (A(sb[j]) - ref));
        }
        st.z1 += z1;
        st.zs += zs;
        st.zt += zt;
        st.a += acc;
    }
    return st;
}

template <typename T>
double forward(const T* s, const T* t, const int64_t* y, const KdParams& p, T* loss_rows, T* grad, double* stats,
               int threads) {
    using A = typename Compute<T>::type;
    using Wide = typename Accumulate<T>::type;
    const int64_t N = p.N, K = p.K;
    int64_t labelled = 0;
    for (int64_t i = 0; i < N; ++i) labelled += y[i] != p.ignore_index;
    // dL/dloss_i for the hard and soft terms under the reduction (per-row scaling for "none" is done later).
    const Wide hard_scale = p.reduction == 2 ? Wide(1) / Wide(std::max<int64_t>(labelled, 1)) : Wide(1);
    const Wide soft_scale = p.reduction == 2 ? Wide(p.w) / Wide(std::max<int64_t>(N, 1)) : Wide(p.w);
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        RowScratch<A, Wide> sc(K);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {
            const T* si = s + i * K;
            const RowStats<Wide> st = row_stats(si, t + i * K, K, Wide(p.T), Wide(p.Ts), sc);
            const Wide log_z1 = std::log(st.z1), log_zs = std::log(st.zs);
            const bool has_label = y[i] != p.ignore_index;
            const Wide hard = has_label ? log_z1 - (Wide(si[y[i]]) - st.ms) : Wide(0);
            const Wide mean_s = st.a / st.zt + (st.ref - st.ms);  // sum_j softmax(t/T)_j (s_j - ms)
            const Wide soft = log_zs - mean_s / p.Ts;
            double* row_stat = stats + i * kStats;
            row_stat[kMaxS] = double(st.ms);
            row_stat[kMeanS] = double(mean_s);
            row_stat[kMaxT] = double(st.mt);
            row_stat[kInvZt] = double(1 / st.zt);
            if (p.reduction == 0) loss_rows[i] = T(hard + p.w * soft);
            total += double(hard * hard_scale + soft * soft_scale);
            // dL/ds_ij = hs * (softmax(s)_j - [j == y]) + ws / Ts * (softmax(s/Ts)_j - softmax(t/T)_j); each
            // softmax is a kept exponential times a per-block factor (rescale to the final max, divide by Z).
            const Wide hs = has_label ? hard_scale : Wide(0);
            const Wide ws = soft_scale / p.Ts;
            T* gi = grad + i * K;
            for (int64_t j0 = 0, b = 0; j0 < K; j0 += kRowBlock, ++b) {
                const int64_t len = std::min(kRowBlock, K - j0);
                const A f1 = A(hs * block_factor(sc.block_ms[b], st.ms, Wide(1)) / st.z1);
                const A fs = A(ws * block_factor(sc.block_ms[b], st.ms, Wide(p.Ts)) / st.zs);
                const A ft = A(ws * block_factor(sc.block_mt[b], st.mt, Wide(p.T)) / st.zt);
                const A* e1 = sc.e1.data() + j0;
                const A* es = sc.es.data() + j0;
                const A* et = sc.et.data() + j0;
                T* g = gi + j0;
#pragma omp simd
                for (int64_t j = 0; j < len; ++j) g[j] = T(e1[j] * f1 + es[j] * fs - et[j] * ft);
            }
            if (has_label) gi[y[i]] = T(A(gi[y[i]]) - A(hs));
        }
    }
    return total;
}

// dL/dt_ij = -(ws / T) * p_j * (lsm_j + soft_i), p = softmax(t_i / T), lsm = log_softmax(s_i / Ts);
// lsm_j + soft_i = (s_j - sum_l p_l s_l) / Ts, computed in that form to avoid cancelling log-sums.
template <typename T>
void teacher_grad(const T* s, const T* t, const double* stats, const KdParams& p, T* grad, int threads) {
    using A = typename TeacherCompute<T>::type;
    using Wide = typename Accumulate<T>::type;
    const int64_t N = p.N, K = p.K;
    const Wide soft_scale = p.reduction == 2 ? Wide(p.w) / Wide(std::max<int64_t>(N, 1)) : Wide(p.w);
    const A coef = A(-soft_scale / (Wide(p.T) * p.Ts)), inv_t = A(1 / Wide(p.T)), tt = A(p.T);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < N; ++i) {
        const double* st = stats + i * kStats;
        const A ms = A(st[kMaxS]), mean_s = A(st[kMeanS]), mt = A(st[kMaxT]), izt = A(st[kInvZt]);
        const T* si = s + i * K;
        const T* ti = t + i * K;
        T* gi = grad + i * K;
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) {
            const A pt = exp_nonpos(scaled(A(ti[j]) - mt, tt, inv_t)) * izt;
            gi[j] = T(coef * pt * ((A(si[j]) - ms) - mean_s));
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
           std::uintptr_t grad, std::uintptr_t stats, int threads) {
            const KdParams p = params(N, K, temp, temp_s, w, ignore_index, reduction);
            return dispatch_float(dtype, [&](auto tag) {
                using T = decltype(tag);
                return forward<T>(ptr<const T>(s), ptr<const T>(t), ptr<const int64_t>(y), p, ptr<T>(loss_rows),
                                  ptr<T>(grad), ptr<double>(stats), threads_for(N * K, threads));
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "KD loss forward over contiguous (N, K) student s and teacher t logits and int64 targets y. Writes "
        "grad = dL/ds (N, K) under the reduction (0 none: per-row dloss_i/ds_i; 1 sum; 2 mean), stats "
        "(N, 4) float64 for teacher_grad, and for reduction 0 the per-row losses; returns the reduced loss.");
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
