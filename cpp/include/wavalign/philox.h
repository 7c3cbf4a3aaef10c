// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A draw is a pure function of (seed, counter): no generator state, so a row's random
// number depends only on its own seed/offset and never on which other rows share the
// batch. The same function runs on host and device; the PyTorch twin lives in
// python/wavalign/reference/philox.py and must stay bit-identical.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define WAVALIGN_HD __host__ __device__ __forceinline__
#else
#define WAVALIGN_HD inline
#endif

namespace wavalign {

struct Philox4 {
  uint32_t v[4];
};

WAVALIGN_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}

// Philox4x32 with 10 rounds. counter: 4 words, key: 2 words.
WAVALIGN_HD Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, counter.v[0], &hi0, &lo0);
    mulhilo32(kMul1, counter.v[2], &hi1, &lo1);
    Philox4 next;
    next.v[0] = hi1 ^ counter.v[1] ^ key0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ counter.v[3] ^ key1;
    next.v[3] = lo0;
    counter = next;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// Uniform double in [0, 1) with 53 random bits, for stream `offset` under `seed`.
// counter = (offset_lo, offset_hi, 0, 0), key = (seed_lo, seed_hi).
WAVALIGN_HD double philox_uniform(uint64_t seed, uint64_t offset) {
  Philox4 counter{{static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), 0u, 0u}};
  const Philox4 out = philox4x32_10(counter, static_cast<uint32_t>(seed),
                                    static_cast<uint32_t>(seed >> 32));
  const uint64_t bits53 = (static_cast<uint64_t>(out.v[0]) << 21) | (out.v[1] >> 11);
  return static_cast<double>(bits53) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace wavalign
