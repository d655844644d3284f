// The FitNets optimisers' updates and the max-norm projection, each one pass over every tensor of a
// parameter group (instead of five or more PyTorch ops per tensor, whose per-op cost dominates on the
// thin nets' small weights).
//
// Every tensor is passed as a data pointer and an element count; the Python side guarantees that a
// parameter, its gradient and its state buffer are dense with identical strides, so element i of one is
// element i of the others. float or double storage; arithmetic in the storage type (as PyTorch's ops).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace fitnets {
namespace {

using Addresses = std::vector<std::uintptr_t>;
using Sizes = std::vector<int64_t>;

// Elements per task: tensors are cut into chunks so that one large weight still spreads over the threads.
constexpr int64_t kChunk = 16384;
// Below this many elements in all, one thread does the whole update (waking a team costs more).
constexpr int64_t kParallelElements = 1 << 17;

struct Chunk {
    size_t tensor;
    int64_t begin, end;
};

std::vector<Chunk> chunks_of(const Sizes& sizes, int64_t* total) {
    std::vector<Chunk> out;
    *total = 0;
    for (size_t t = 0; t < sizes.size(); ++t) {
        if (sizes[t] < 0) throw std::invalid_argument("negative tensor size");
        for (int64_t b = 0; b < sizes[t]; b += kChunk) out.push_back({t, b, std::min(sizes[t], b + kChunk)});
        *total += sizes[t];
    }
    return out;
}

void check_lengths(size_t n, std::initializer_list<size_t> others) {
    for (size_t m : others)
        if (m != n) throw std::invalid_argument("tensor lists of different lengths");
}

// Runs update(p, g, state, n) on every chunk of every parameter: its n elements there of the parameter, the
// gradient and the state buffer, in parallel when the update is large enough. update must capture its
// scalars by value: read through a reference, they keep gcc from vectorising its loop.
template <typename T, typename Update>
void for_chunks(const Addresses& params, const Addresses& grads, const Addresses& states, const Sizes& sizes,
                int threads, Update update) {
    int64_t total = 0;
    const std::vector<Chunk> tasks = chunks_of(sizes, &total);
    const int64_t n = int64_t(tasks.size());
#pragma omp parallel for num_threads(threads) schedule(static) if (total >= kParallelElements)
    for (int64_t i = 0; i < n; ++i) {
        const Chunk& c = tasks[size_t(i)];
        update(ptr<T>(params[c.tensor]) + c.begin, ptr<const T>(grads[c.tensor]) + c.begin,
               ptr<T>(states[c.tensor]) + c.begin, c.end - c.begin);
    }
}

// pylearn2 RMSProp: ms = decay*ms + (1-decay)*g^2; p -= lr * g / max(sqrt(ms), floor).
template <typename T>
void rmsprop(const Addresses& params, const Addresses& grads, const Addresses& mean_squares, const Sizes& sizes,
             T lr, T decay, T floor, int threads) {
    const T keep = decay, add = T(1) - decay;
    for_chunks<T>(params, grads, mean_squares, sizes, threads,
                  [=](T* __restrict p, const T* __restrict g, T* __restrict ms, int64_t n) {
#pragma omp simd
                      for (int64_t i = 0; i < n; ++i) {
                          const T m = keep * ms[i] + add * (g[i] * g[i]);
                          ms[i] = m;
                          p[i] -= lr * g[i] / std::max(std::sqrt(m), floor);
                      }
                  });
}

// pylearn2 Momentum: v = momentum*v - lr*g; p += v.
template <typename T>
void momentum(const Addresses& params, const Addresses& grads, const Addresses& velocities, const Sizes& sizes,
              T lr, T momentum, int threads) {
    for_chunks<T>(params, grads, velocities, sizes, threads,
                  [=](T* __restrict p, const T* __restrict g, T* __restrict v, int64_t n) {
#pragma omp simd
                      for (int64_t i = 0; i < n; ++i) {
                          const T vi = momentum * v[i] - lr * g[i];
                          v[i] = vi;
                          p[i] += vi;
                      }
                  });
}

// Max-norm: weight t is rows[t] contiguous rows of row_len[t] elements; a row with L2 norm n > limit[t]
// is multiplied by limit[t] / n (the norm accumulated in double), the others are left as they are.
template <typename T>
void renorm_rows(const Addresses& weights, const Sizes& rows, const Sizes& row_len, const std::vector<double>& limits,
                 int threads) {
    std::vector<std::pair<size_t, int64_t>> tasks;  // (weight, row)
    int64_t total = 0;
    for (size_t t = 0; t < weights.size(); ++t) {
        if (rows[t] < 0 || row_len[t] < 0) throw std::invalid_argument("negative weight size");
        for (int64_t r = 0; r < rows[t]; ++r) tasks.push_back({t, r});
        total += rows[t] * row_len[t];
    }
    const int64_t n = int64_t(tasks.size());
#pragma omp parallel for num_threads(threads) schedule(static) if (total >= kParallelElements)
    for (int64_t i = 0; i < n; ++i) {
        const auto [t, r] = tasks[size_t(i)];
        T* __restrict w = ptr<T>(weights[t]) + r * row_len[t];
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < row_len[t]; ++j) sum += double(w[j]) * double(w[j]);
        const double norm = std::sqrt(sum);
        if (!(norm > limits[t])) continue;
        const T scale = T(limits[t] / norm);
        for (int64_t j = 0; j < row_len[t]; ++j) w[j] *= scale;
    }
}

}  // namespace

void register_optim(py::module_& m) {
    m.def(
        "rmsprop_step",
        [](const std::string& dtype, const Addresses& params, const Addresses& grads, const Addresses& mean_squares,
           const Sizes& sizes, double lr, double decay, double floor, int threads) {
            check_lengths(params.size(), {grads.size(), mean_squares.size(), sizes.size()});
            dispatch_float(dtype, [&](auto tag) {
                using T = decltype(tag);
                rmsprop<T>(params, grads, mean_squares, sizes, T(lr), T(decay), T(floor), threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "In place over tensors i (sizes[i] dense elements): ms = decay*ms + (1-decay)*g^2; "
        "p -= lr * g / max(sqrt(ms), floor).");
    m.def(
        "momentum_step",
        [](const std::string& dtype, const Addresses& params, const Addresses& grads, const Addresses& velocities,
           const Sizes& sizes, double lr, double momentum_factor, int threads) {
            check_lengths(params.size(), {grads.size(), velocities.size(), sizes.size()});
            dispatch_float(dtype, [&](auto tag) {
                using T = decltype(tag);
                momentum<T>(params, grads, velocities, sizes, T(lr), T(momentum_factor), threads);
            });
        },
        py::call_guard<py::gil_scoped_release>(),
        "In place over tensors i (sizes[i] dense elements): v = momentum*v - lr*g; p += v.");
    m.def(
        "renorm_rows",
        [](const std::string& dtype, const Addresses& weights, const Sizes& rows, const Sizes& row_len,
           const std::vector<double>& limits, int threads) {
            check_lengths(weights.size(), {rows.size(), row_len.size(), limits.size()});
            dispatch_float(dtype, [&](auto tag) { renorm_rows<decltype(tag)>(weights, rows, row_len, limits, threads); });
        },
        py::call_guard<py::gil_scoped_release>(),
        "In place: each of weight i's rows[i] contiguous rows of row_len[i] elements with L2 norm above limits[i] "
        "is rescaled to norm limits[i].");
}

}  // namespace fitnets
