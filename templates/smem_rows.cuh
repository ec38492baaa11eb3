// Where a 16-byte chunk of a shared K/V row lives. Rows are copied by threads that write one
// row's 128 consecutive bytes eight at a time (paged_kv.cuh, kv_tile_convert.cuh) and read by
// ldmatrix, whose eight row addresses of one 8x8 matrix name the same chunk of eight
// consecutive rows.
//
// PlainRows: chunk c of row r at r x kRowBytes + 16 c (rows nobody reads with ldmatrix: the
// FP8 codes of the Ampere-path ring, which the upcast reads row by row).
//
// LdmatrixRows: where a row is a whole number of 128-byte lines, chunk c of row r sits at
// position c ^ (r % 8) of its line (an XOR swizzle): the eight rows of a matrix take eight
// different positions of the 128-byte bank window, and the eight threads that copy 128
// consecutive bytes of a row write one whole line. Other rows (head dims 80, 96) are padded by
// 16 bytes to an odd number of chunks instead: the rows of a matrix again start on eight
// different positions, but a copied run of 128 bytes straddles two lines unless its row
// starts on one (Nsight Compute at 2b6f647: the padded bf16 copies took 176 M shared-memory
// wavefronts against an ideal 67 M). Swizzled tiles start on a 128-byte line (step() relies
// on it).
#pragma once
#include <cstdint>

namespace fig {

template <int kRowBytes_>
struct PlainRows {
  static constexpr int kRowBytes = kRowBytes_;
  static_assert(kRowBytes % 16 == 0, "rows of whole 16-byte chunks");
  __host__ __device__ static constexpr uint32_t offset(int row, int chunk) { return row * kRowBytes + 16 * chunk; }
};

template <int kDataBytes, int kPadding_>  // kPadding_: the generator's choice (kind_prefill.py row_padding)
struct LdmatrixRows {
  static constexpr bool kSwizzled = kPadding_ == 0;
  static constexpr int kPadding = kPadding_;
  static constexpr int kRowBytes = kDataBytes + kPadding;
  static_assert(kSwizzled ? kDataBytes % 128 == 0 : kDataBytes % 16 == 0 && (kRowBytes / 16) % 2 == 1,
                "swizzled rows are whole 128-byte lines; padded ones an odd number of 16-byte chunks");

  __host__ __device__ static constexpr uint32_t offset(int row, int chunk) {
    return row * kRowBytes + 16 * (kSwizzled ? chunk ^ (row % 8) : chunk);
  }
  // The address `chunks` chunks further along the row of `at`, an address offset() gave in a
  // tile that starts on a 128-byte line. With the swizzle this is an XOR within the line, so
  // `chunks` must share no set bit below 8 with the chunk `at` was made from: the callers start
  // at chunk 0 or 1 and step by even counts. The XOR is an asm volatile, which stays where it is
  // used: where `at` is the same every tile (an FP8 tile's one 16-bit buffer), the compiler
  // otherwise hoisted each step's address out of the mainloop, and the registers that held them
  // made the two-m-tile instances spill (88-104 bytes at head dim 128).
  __device__ __forceinline__ static uint32_t step(uint32_t at, int chunks) {
    if constexpr (kSwizzled) {
      uint32_t y;
      asm volatile("xor.b32 %0, %1, %2;" : "=r"(y) : "r"(at), "r"(16u * (chunks % 8)));
      return y + 128u * (chunks / 8);
    } else {
      return at + 16u * chunks;
    }
  }
};

}  // namespace fig
