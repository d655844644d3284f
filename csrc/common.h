// Shared helpers for the fused CPU kernels: raw-pointer views, a bfloat16 storage type, dtype dispatch and a
// vectorisable exp.
//
// The Python side (fitnets_fast/cpu/) passes data pointers as integers together with sizes; every tensor
// it passes is contiguous in the layout the kernel documents, and outputs are preallocated by Python.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

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

// exp(x) for x <= 0 (and NaN), written branch-free so that gcc vectorises loops calling it.
// float: Cody-Waite range reduction + degree-6 minimax polynomial (max rel. error ~2 ulp);
// exp(x) = 0 for x below the smallest normal's log; NaN stays NaN.
inline float exp_nonpos(float x) {
    const float lo = -87.33654f;
    float xc = x < lo ? lo : x;
    float n = std::nearbyint(xc * 1.44269504088896341f);
    float r = xc - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723212e-6f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

inline double exp_nonpos(double x) { return std::exp(x); }
inline long double exp_nonpos(long double x) { return std::exp(x); }

}  // namespace fitnets
