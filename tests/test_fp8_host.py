"""The software FP8 -> fp16 routine of templates/fp8_convert.cuh, compiled for the host with g++,
over all 256 codes of both formats, against torch's float8 conversion. Both the exact routine
and the fast one (convert_finite, valid where special_bits() is 0) are checked, and the V paths'
forms (decode's rows, prefill's dim pairs of e5m2) against the exact routine."""
import shutil
import subprocess

import numpy as np
import pytest
import torch

from generator.toolchain import TEMPLATE_DIR

PROGRAM = r"""
#include <cstdio>
#include "fp8_convert.cuh"
using namespace fig;
template <class C> void dump(const char* tag) {
  for (unsigned code = 0; code < 256; ++code) {
    // place the code in each byte position in turn, the others holding neighbours
    for (int pos = 0; pos < 4; ++pos) {
      uint32_t word = 0;
      for (int b = 0; b < 4; ++b) word |= uint32_t((code + 37u * (b != pos) * (b + 1)) & 0xFF) << (8 * b);
      uint32_t lo, hi, flo, fhi;
      C::convert(word, lo, hi);
      C::convert_finite(word, flo, fhi);
      const uint32_t halves[2] = {lo, hi}, fast[2] = {flo, fhi};
      const unsigned exact_bits = (halves[pos / 2] >> (16 * (pos % 2))) & 0xFFFF;
      const unsigned fast_bits = (fast[pos / 2] >> (16 * (pos % 2))) & 0xFFFF;
      const unsigned special = (C::special_bits(word) >> (8 * pos)) & 0x80;
      std::printf("%s %u %d %u %u %u %.1f\n", tag, code, pos, exact_bits, fast_bits, special, C::kScale);
    }
  }
}
// The V path's convert_finite_rows(a, b, p) must equal converting the interleaved word exactly,
// for every pair of codes in both byte positions (specials excluded: they take the exact path).
template <class C> void check_rows(const char* tag) {
  unsigned checked = 0, mismatches = 0;
  for (unsigned x = 0; x < 256; ++x) {
    for (unsigned y = 0; y < 256; ++y) {
      const uint32_t a = x | (y << 8) | ((x ^ 0x5Au) << 16) | ((y ^ 0xA5u) << 24);
      const uint32_t b = y | (x << 8) | ((y ^ 0x3Cu) << 16) | ((x ^ 0xC3u) << 24);
      for (int p = 0; p <= 2; p += 2) {
        const uint32_t word = byte_perm(a, b, interleave_rows_selector(p));
        if (C::special_bits(word)) continue;
        uint32_t lo, hi, rlo, rhi;
        C::convert(word, lo, hi);
        C::convert_finite_rows(a, b, p, rlo, rhi);
        ++checked;
        mismatches += (lo != rlo) || (hi != rhi);
      }
    }
  }
  std::printf("rows %s %u %u\n", tag, checked, mismatches);
}
// The prefill V path's convert_dim_pairs(codes) must equal converting the word grouped by dim
// (kSelDimPairs) exactly, for every pair of codes in every byte position.
template <class C> void check_dim_pairs(const char* tag) {
  unsigned checked = 0, mismatches = 0;
  for (unsigned x = 0; x < 256; ++x) {
    for (unsigned y = 0; y < 256; ++y) {
      const uint32_t words[2] = {x | (y << 8) | ((x ^ 0x5Au) << 16) | ((y ^ 0xA5u) << 24),
                                 (y ^ 0x3Cu) | ((x ^ 0xC3u) << 8) | (y << 16) | (x << 24)};
      for (uint32_t word : words) {
        uint32_t lo, hi, even, odd;
        C::convert(byte_perm(word, 0u, kSelDimPairs), lo, hi);
        C::convert_dim_pairs(word, even, odd);
        ++checked;
        mismatches += (lo != even) || (hi != odd);
      }
    }
  }
  std::printf("dims %s %u %u\n", tag, checked, mismatches);
}
int main() {
  dump<Fp8ToF16<Fp8Format::kE4M3, Conversion::kSoftware>>("e4m3");
  dump<Fp8ToF16<Fp8Format::kE5M2, Conversion::kSoftware>>("e5m2");
  check_rows<Fp8ToF16<Fp8Format::kE4M3, Conversion::kSoftware>>("e4m3");
  check_rows<Fp8ToF16<Fp8Format::kE5M2, Conversion::kSoftware>>("e5m2");
  check_dim_pairs<Fp8ToF16<Fp8Format::kE5M2, Conversion::kSoftware>>("e5m2");
}
"""


@pytest.fixture(scope="module")
def host_table(tmp_path_factory):
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.fail("a host C++ compiler (g++) is needed for this test")
    d = tmp_path_factory.mktemp("fp8host")
    (d / "main.cpp").write_text(PROGRAM)
    subprocess.run([gxx, "-std=c++17", "-O2", f"-I{TEMPLATE_DIR}", str(d / "main.cpp"), "-o", str(d / "fp8")],
                   check=True)
    rows = subprocess.run([str(d / "fp8")], check=True, capture_output=True, text=True).stdout.split("\n")
    table = {}
    for row in filter(None, rows):
        if row.startswith(("rows ", "dims ")):
            path, fmt, checked, mismatches = row.split()
            table[(path, fmt)] = (int(checked), int(mismatches))
            continue
        fmt, code, pos, exact, fast, special, scale = row.split()
        table[(fmt, int(code), int(pos))] = (int(exact), int(fast), int(special), float(scale))
    return table


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_all_codes_match_torch(host_table, fmt, dtype):
    codes = torch.arange(256, dtype=torch.uint8)
    expected = codes.view(dtype).to(torch.float64).numpy()
    checked_nan = 0
    for code in range(256):
        for pos in range(4):
            exact, fast, special, scale = host_table[(fmt, code, pos)]
            value = float(np.array([exact], dtype=np.uint16).view(np.float16)[0]) * scale
            if np.isnan(expected[code]):
                assert np.isnan(value), f"{fmt} code {code:#04x} (NaN) converted to {value}"
                checked_nan += 1
            else:
                assert value == expected[code], f"{fmt} code {code:#04x} pos {pos}: {value} != {expected[code]}"
            # the fast routine is exact wherever the word-level check lets it run
            if not special:
                assert fast == exact, f"{fmt} code {code:#04x}: fast path {fast:#06x} != exact {exact:#06x}"
            else:
                assert np.isnan(expected[code]), f"{fmt} code {code:#04x} flagged special but is finite"
    assert checked_nan == 4 * int(np.isnan(expected).sum())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_v_rows_path_matches_exact_conversion(host_table, fmt):
    checked, mismatches = host_table[("rows", fmt)]
    assert checked > 100000 and mismatches == 0


def test_v_dim_pairs_path_matches_exact_conversion(host_table):
    """The Ampere-path prefill's V codes (ldmatrix.trans words) by dim: e5m2's two fused permutes
    (e4m3's software routine has special codes, so its codes never reach the warps)."""
    checked, mismatches = host_table[("dims", "e5m2")]
    assert checked == 2 * 256 * 256 and mismatches == 0


# --- fp32 -> FP8 encoding (templates/fp8_encode.cuh, the software routine of the append kind) ---

ENCODE_PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "fp8_encode.cuh"
using namespace fig;
int main(int argc, char** argv) {
  // stdin: n fp32 values; stdout: n e4m3 codes, then n e5m2 codes (raw bytes)
  std::vector<float> x;
  float v;
  while (std::fread(&v, 4, 1, stdin) == 1) x.push_back(v);
  for (float f : x) std::fputc(int(encode_fp8_software<Fp8Format::kE4M3>(f)), stdout);
  for (float f : x) std::fputc(int(encode_fp8_software<Fp8Format::kE5M2>(f)), stdout);
  // the kernel's 8-at-a-time entry point must agree with the scalar routine
  unsigned mismatches = 0;
  for (size_t i = 0; i + 8 <= x.size(); i += 8) {
    float chunk[8];
    for (int j = 0; j < 8; ++j) chunk[j] = x[i + j];
    uint32_t lo, hi;
    Fp8Encoder<Fp8Format::kE4M3, Conversion::kSoftware>::encode8(chunk, lo, hi);
    for (int j = 0; j < 8; ++j)
      mismatches += ((j < 4 ? lo >> (8 * j) : hi >> (8 * (j - 4))) & 0xFFu) != encode_fp8_software<Fp8Format::kE4M3>(chunk[j]);
  }
  std::fprintf(stderr, "encode8 mismatches %u\n", mismatches);
  return 0;
}
"""

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def _encode_inputs() -> np.ndarray:
    """Every finite code's value, the midpoints between neighbours and the floats on either side
    of each (the rounding boundaries, ties included), the saturation edges, specials, fp32
    subnormals, and random values over the whole range; both signs."""
    values = []
    for dtype in FP8_MAX:
        codes = torch.arange(128, dtype=torch.uint8).view(dtype).to(torch.float32).numpy()
        finite = np.sort(codes[np.isfinite(codes)])
        mids = (finite[:-1] + finite[1:]) / 2  # exact in fp32
        for base in (finite, mids, [FP8_MAX[dtype], FP8_MAX[dtype] * 1.0625, FP8_MAX[dtype] * 1.125]):
            base = np.asarray(base, dtype=np.float32)
            values += [base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf))]
    rng = np.random.default_rng(0)
    values.append((rng.standard_normal(200000) * np.exp2(rng.integers(-30, 30, 200000))).astype(np.float32))
    values.append(np.array([0.0, np.inf, np.nan, 1e30, 1e-30, 1e-45, 3e-39], dtype=np.float32))
    x = np.concatenate(values).astype(np.float32)
    x = np.concatenate([x, -x])
    return x[: x.size // 8 * 8]


def test_software_encoder_matches_torch_saturating_rne(tmp_path):
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.fail("a host C++ compiler (g++) is needed for this test")
    (tmp_path / "enc.cpp").write_text(ENCODE_PROGRAM)
    subprocess.run([gxx, "-std=c++17", "-O2", f"-I{TEMPLATE_DIR}", str(tmp_path / "enc.cpp"), "-o",
                    str(tmp_path / "enc")], check=True)
    x = _encode_inputs()
    run = subprocess.run([str(tmp_path / "enc")], input=x.tobytes(), check=True, capture_output=True)
    assert b"encode8 mismatches 0" in run.stderr
    ours = np.frombuffer(run.stdout, dtype=np.uint8).reshape(2, -1)
    xt = torch.from_numpy(x)
    for row, dtype in enumerate(FP8_MAX):
        ref = torch.clamp(xt, -FP8_MAX[dtype], FP8_MAX[dtype]).to(dtype).view(torch.uint8).numpy()
        nan = np.isnan(x)
        assert np.array_equal(ours[row][~nan], ref[~nan]), (
            f"{dtype}: first mismatch at x = {x[~nan][ours[row][~nan] != ref[~nan]][:3]}")
        decoded = torch.from_numpy(ours[row][nan].copy()).view(dtype).float()
        assert torch.isnan(decoded).all(), f"{dtype}: NaN encoded as a finite code"
