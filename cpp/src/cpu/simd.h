// Eight-wide float helpers on GCC/Clang vector extensions. They compile to SSE2 on any
// x86-64 and to AVX2 inside functions marked WAVALIGN_SIMD_CLONES; scalar and vector
// versions perform the same operations in the same order (and the build disables FMA
// contraction), so they round identically.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WAVALIGN_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
// For the 16-wide code (two rows per vector): one zmm instruction where AVX-512 exists.
#define WAVALIGN_SIMD_CLONES_512 __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WAVALIGN_SIMD_CLONES
#define WAVALIGN_SIMD_CLONES_512
#endif

namespace wavalign::simd {

constexpr int kWidth = 8;
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint32_t u8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
// Sixteen lanes: two rows side by side (lanes 0-7 one row, 8-15 the other), each row's
// lanes doing exactly what the eight-wide code does, so each row rounds as it would alone.
typedef float f16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

constexpr float kInf = std::numeric_limits<float>::infinity();

inline f8 splat(float v) { return f8{v, v, v, v, v, v, v, v}; }
inline f8 load(const float* p) { f8 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, f8 v) { std::memcpy(p, &v, sizeof(v)); }
inline f8 load_bf16(const uint16_t* p) {
  u16x8 raw;
  std::memcpy(&raw, p, sizeof(raw));
  const u8 widened = __builtin_convertvector(raw, u8) << 16;
  return (f8)widened;  // same-size vector cast reinterprets the bits
}
inline f8 vmax(f8 a, f8 b) { return a > b ? a : b; }
inline float hmax(f8 v) {
  float best = v[0];
  for (int l = 1; l < kWidth; ++l) best = v[l] > best ? v[l] : best;
  return best;
}
inline double hsum(f8 v) {
  double total = 0.0;
  for (int l = 0; l < kWidth; ++l) total += v[l];
  return total;
}

// exp(x) for x <= 0: Cephes-style range reduction and a degree-6 polynomial (~1 ulp);
// exactly 0 below -87 (so -inf -> 0). Branch-free; scalar and vector twins below.
inline float exp_nonpositive(float x) {
  const float clamped = x > -87.0f ? x : -87.0f;
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t exponent_bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &exponent_bits, sizeof(scale));
  return x < -87.0f ? 0.0f : y * scale;
}

template <typename F, typename I>
inline F exp_nonpositive_lanes(F x) {
  const F zero = {};
  const F lower = zero + -87.0f;
  const F clamped = x > lower ? x : lower;
  const F magic = zero + 12582912.0f;
  const F n = (clamped * (zero + 1.44269504088896341f) + magic) - magic;
  F r = clamped - n * (zero + 0.693359375f);
  r = r - n * (zero + -2.12194440e-4f);
  F p = zero + 1.9875691500e-4f;
  p = p * r + (zero + 1.3981999507e-3f);
  p = p * r + (zero + 8.3334519073e-3f);
  p = p * r + (zero + 4.1665795894e-2f);
  p = p * r + (zero + 1.6666665459e-1f);
  p = p * r + (zero + 5.0000001201e-1f);
  const F y = p * r * r + r + (zero + 1.0f);
  const I exponent_bits = (__builtin_convertvector(n, I) + 127) << 23;
  const F scale = (F)exponent_bits;
  return x < lower ? zero : y * scale;
}

inline f8 exp_nonpositive(f8 x) { return exp_nonpositive_lanes<f8, i8>(x); }
inline f16 exp_nonpositive(f16 x) { return exp_nonpositive_lanes<f16, i16>(x); }

// The two rows' eight-lane vectors as one sixteen-lane vector, and back.
inline f16 join(f8 a, f8 b) {
  f16 v;
  std::memcpy(&v, &a, sizeof(a));
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof(a), &b, sizeof(b));
  return v;
}

}  // namespace wavalign::simd
