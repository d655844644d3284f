// Shared helpers for the fused CPU kernels: raw-pointer views, a bfloat16 storage type, dtype dispatch and a
// vectorisable exp.
//
// The Python side (fitnets_fast/cpp/) passes data pointers as integers together with sizes; every tensor
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

}  // namespace fitnets
