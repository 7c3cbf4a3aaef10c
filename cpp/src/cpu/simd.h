// Eight- and sixteen-wide float helpers on GCC/Clang vector extensions. They compile to
// SSE2 on any x86-64, to AVX2 inside functions marked WAVALIGN_SIMD_CLONES and to AVX-512
// inside the avx512f clone of WAVALIGN_SIMD_CLONES_512; scalar and vector versions perform
// the same operations in the same order (and the build disables FMA contraction), so every
// clone rounds identically.
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

// Every helper is force-inlined. The vector helpers take and return 32- and 64-byte
// vectors, which an avx2 / avx512f clone passes in ymm / zmm registers and code compiled
// for less passes in memory: an out-of-line call between the two disagrees on where the
// vector is (GCC's -Wpsabi warning, silenced in CMakeLists.txt for this intended inline
// use) and returns garbage lanes. Inlined, there is no call.
#define WAVALIGN_SIMD_INLINE inline __attribute__((always_inline))

constexpr int kWidth = 8;
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint32_t u8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
// Sixteen lanes: two eight-lane vectors side by side, either two rows (lanes 0-7 one row,
// 8-15 the other) or sixteen consecutive ids of one row. Each lane does exactly what the
// eight-wide code does to it, so results round as the eight-wide code's.
typedef float f16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

constexpr float kInf = std::numeric_limits<float>::infinity();

WAVALIGN_SIMD_INLINE f8 splat(float v) { return f8{v, v, v, v, v, v, v, v}; }
WAVALIGN_SIMD_INLINE f8 load(const float* p) { f8 v; std::memcpy(&v, p, sizeof(v)); return v; }
WAVALIGN_SIMD_INLINE void store(float* p, f8 v) { std::memcpy(p, &v, sizeof(v)); }
WAVALIGN_SIMD_INLINE f8 load_bf16(const uint16_t* p) {
  u16x8 raw;
  std::memcpy(&raw, p, sizeof(raw));
  const u8 widened = __builtin_convertvector(raw, u8) << 16;
  return (f8)widened;  // same-size vector cast reinterprets the bits
}
WAVALIGN_SIMD_INLINE f8 vmax(f8 a, f8 b) { return a > b ? a : b; }
WAVALIGN_SIMD_INLINE float hmax(f8 v) {
  float best = v[0];
  for (int l = 1; l < kWidth; ++l) best = v[l] > best ? v[l] : best;
  return best;
}
WAVALIGN_SIMD_INLINE double hsum(f8 v) {
  double total = 0.0;
  for (int l = 0; l < kWidth; ++l) total += v[l];
  return total;
}

// Whether any lane of a comparison mask is set (lanes are 0 or -1). Two 128-bit halves
// ORed, then two 64-bit words: five instructions with AVX2, where a loop over the eight
// lanes compiles to eight extracts.
typedef int64_t i64x2 __attribute__((vector_size(16)));
WAVALIGN_SIMD_INLINE bool any_lane(i8 mask) {
  i64x2 lo, hi;
  std::memcpy(&lo, &mask, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&mask) + sizeof(lo), sizeof(hi));
  const i64x2 both = lo | hi;
  return (both[0] | both[1]) != 0;
}

// exp(x) for x <= 0: Cephes-style range reduction and a degree-6 polynomial (~1 ulp);
// exactly 0 below -87 (so -inf -> 0). Branch-free; scalar and vector twins below.
WAVALIGN_SIMD_INLINE float exp_nonpositive(float x) {
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
WAVALIGN_SIMD_INLINE F exp_nonpositive_lanes(F x) {
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

WAVALIGN_SIMD_INLINE f8 exp_nonpositive(f8 x) { return exp_nonpositive_lanes<f8, i8>(x); }
WAVALIGN_SIMD_INLINE f16 exp_nonpositive(f16 x) { return exp_nonpositive_lanes<f16, i16>(x); }

// Two eight-lane vectors as one sixteen-lane vector (a in lanes 0-7), and its halves.
// A register shuffle where the compiler has __builtin_shufflevector (GCC 12, clang); the
// memcpy fallback goes through the stack.
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define WAVALIGN_HAS_SHUFFLEVECTOR 1
#endif
#endif
WAVALIGN_SIMD_INLINE f16 join(f8 a, f8 b) {
#ifdef WAVALIGN_HAS_SHUFFLEVECTOR
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  f16 v;
  std::memcpy(&v, &a, sizeof(a));
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof(a), &b, sizeof(b));
  return v;
#endif
}
WAVALIGN_SIMD_INLINE f8 low_half(f16 v) {
#ifdef WAVALIGN_HAS_SHUFFLEVECTOR
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
#else
  f8 h;
  std::memcpy(&h, &v, sizeof(h));
  return h;
#endif
}
WAVALIGN_SIMD_INLINE f8 high_half(f16 v) {
#ifdef WAVALIGN_HAS_SHUFFLEVECTOR
  return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  f8 h;
  std::memcpy(&h, reinterpret_cast<const char*>(&v) + sizeof(h), sizeof(h));
  return h;
#endif
}
WAVALIGN_SIMD_INLINE f16 load16(const float* p) { f16 v; std::memcpy(&v, p, sizeof(v)); return v; }
WAVALIGN_SIMD_INLINE void store16(float* p, f16 v) { std::memcpy(p, &v, sizeof(v)); }
WAVALIGN_SIMD_INLINE f16 splat16(float v) { return join(splat(v), splat(v)); }

}  // namespace wavalign::simd
