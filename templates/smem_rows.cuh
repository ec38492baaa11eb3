// Where a 16-byte chunk of a shared K/V row lives. Rows are copied by threads that write one
// row's 128 consecutive bytes eight at a time (paged_kv.cuh, kv_tile_convert.cuh) and read by
// ldmatrix, whose eight row addresses of one 8x8 matrix name the same chunk of eight
// consecutive rows.
//
// PlainRows: chunk c of row r at r x kRowBytes + 16 c (rows nobody reads with ldmatrix: the
// FP8 codes of the Ampere-path ring where the CTA's upcast reads them row by row).
//
// LdmatrixRows, swizzled (the generator's choice where a row is a whole number of 128-byte
// lines and a 16-bit cache, or FP8 codes that the warps read themselves, are copied into them):
// chunk c of row r sits at position c ^ (r % 8) of its line, so the eight rows of a matrix take
// eight different positions of the 128-byte bank window, and the eight threads that copy 128
// consecutive bytes of a row write one whole line. Padded (16-bit rows at head dims 80 and 96,
// the tile an FP8 cache is upcast into, rows of 64 FP8 codes that the warps read): 16
// bytes after each row, an odd number of chunks a row, so the rows of a matrix again start on
// eight different positions, but a copied run of 128 bytes straddles two lines unless its row
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
  // tile that starts on a 128-byte line. With the swizzle this is an XOR within the line (one
  // LOP3 per k-step; ptxas keeps the distinct ones live through a phase, which fits the 16-bit
  // instances but spilled the FP8 ones, kind_prefill.py row_padding), so `chunks` must share no
  // set bit below 8 with the chunk `at` was made from: the callers start at chunk 0 and step by
  // any count (K's FP8 codes), or start at chunk 0 or 1 and step by even counts.
  __host__ __device__ static constexpr uint32_t step(uint32_t at, int chunks) {
    return kSwizzled ? (at ^ (16u * (chunks % 8))) + 128u * (chunks / 8) : at + 16u * chunks;
  }
};

}  // namespace fig
