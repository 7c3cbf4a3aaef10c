// Element types the native ops understand, and scalar conversions to float.
#pragma once
#include <cstdint>
#include <cstring>

namespace wavalign {

enum class DType : int { Float32 = 0, BFloat16 = 1, Float16 = 2, Int32 = 3, Int64 = 4, Int8 = 5 };

const char* dtype_name(DType dtype);

inline float bf16_to_float(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &widened, sizeof(out));
  return out;
}

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN included).
inline float fp16_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1Fu;
  uint32_t mantissa = bits & 0x3FFu;
  uint32_t out_bits;
  if (exponent == 0x1Fu) {                 // inf / NaN
    out_bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {              // normal
    out_bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {              // signed zero
    out_bits = sign;
  } else {                                 // subnormal: renormalise
    exponent = 113u;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    out_bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float out;
  std::memcpy(&out, &out_bits, sizeof(out));
  return out;
}

}  // namespace wavalign
