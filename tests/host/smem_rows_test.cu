// The shared K/V row layouts of smem_rows.cuh, checked on the host for every row size the
// Ampere-path prefill instantiates: each row's chunks land in that row and nowhere twice, step()
// from a lane's first chunk agrees with offset(), the eight rows of an ldmatrix read take eight
// different 16-byte positions of the bank window, and (swizzled) each copied run of eight chunks
// fills one whole 128-byte line. Prints "ok" or the first failed check.
#include <cstdio>
#include <set>
#include "smem_rows.cuh"

namespace {

int failures = 0;

void check(bool ok, const char* what, int bytes, int pad, int row, int chunk) {
  if (!ok && failures++ == 0)
    std::printf("FAILED %s: LdmatrixRows<%d, %d>, row %d, chunk %d\n", what, bytes, pad, row, chunk);
}

template <int kDataBytes, int kPadding>
void check_rows() {
  using Rows = fig::LdmatrixRows<kDataBytes, kPadding>;
  constexpr int kChunks = kDataBytes / 16;
  constexpr int kRows = 64;
  constexpr uint32_t kTile = 128 * 1024;  // a tile's start on a 128-byte line, as the kernel places it
  std::set<uint32_t> seen;
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kChunks; ++c) {
      const uint32_t at = Rows::offset(r, c);
      check(at % 16 == 0 && at >= uint32_t(r * Rows::kRowBytes) && at + 16 <= uint32_t(r * Rows::kRowBytes + kDataBytes),
            "chunk inside its row's data", kDataBytes, kPadding, r, c);
      check(seen.insert(at).second, "no chunk stored twice", kDataBytes, kPadding, r, c);
      if (Rows::kSwizzled && c % 8 == 0) {
        for (int i = 1; i < 8; ++i)
          check(Rows::offset(r, c + i) / 128 == at / 128, "a copied run of 8 chunks is one line", kDataBytes, kPadding, r, c);
      }
    }
    for (int c0 = 0; c0 < 2; ++c0) {  // the lanes' first chunks: from chunk 0 by any count (K's
      // FP8 codes), from chunk 1 by even counts
      for (int k = 0; c0 + k < kChunks; k += c0 == 0 ? 1 : 2)
        check(Rows::step(kTile + Rows::offset(r, c0), k) == kTile + Rows::offset(r, c0 + k), "step() agrees with offset()",
              kDataBytes, kPadding, r, c0 + k);
    }
  }
  for (int r0 = 0; r0 < kRows; r0 += 8) {
    for (int c = 0; c < kChunks; ++c) {
      std::set<uint32_t> positions;
      for (int r = r0; r < r0 + 8; ++r) positions.insert((kTile + Rows::offset(r, c)) % 128 / 16);
      check(positions.size() == 8, "an ldmatrix's eight rows on eight bank positions", kDataBytes, kPadding, r0, c);
    }
  }
}

}  // namespace

int main() {
  check_rows<128, 0>();   // head dim 64, swizzled (and 128's rows of FP8 codes)
  check_rows<256, 0>();   // 128
  check_rows<384, 0>();   // 192
  check_rows<512, 0>();   // 256
  check_rows<160, 16>();  // 80, padded
  check_rows<192, 16>();  // 96
  check_rows<256, 16>();  // 128 from an FP8 cache (the upcast tile)
  check_rows<128, 16>();  // 64 from an FP8 cache (the upcast tile)
  check_rows<64, 16>();   // 64's rows of FP8 codes that the warps read
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
