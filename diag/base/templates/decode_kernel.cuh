// Paged batch decode = scheduler (work list -> coordinates) + mainloop (one warp tile) +
// epilogue (CTA merge, write) + merge kernel (split-KV). The host side fills the device
// arguments from the C ABI struct and launches; generated instances only pick the Config.
#pragma once
#include <cuda_runtime.h>
#include <cute/atom/mma_traits_sm80.hpp>
#include "fig_abi_decode.h"
#include "decode_mainloop_sm80.cuh"
#include "launch.cuh"
#include "epilogue.cuh"
#include "merge.cuh"
#include "scheduler.cuh"
#include "variants.cuh"

namespace fig {

// The instance's numbers, all from the generator's table (generator/kind_decode.py); the
// static_asserts below check that the kernel's own types agree with them.
template <int kHeadDim_, int kStages_, int kWarps_, int kStepTokens_, int kRowsPerTile_, bool kQInSmem_,
          int kMinCtasPerSm_, int kSmemBytes_, int kSmemPerBlock_>
struct DecodeShape {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kStages = kStages_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStepTokens = kStepTokens_;     // k of the P.V mma
  static constexpr int kRowsPerTile = kRowsPerTile_;   // q heads of a warp tile: half the mma's m
  static constexpr bool kQInSmem = kQInSmem_;          // Q's mma fragment kept in shared memory
  static constexpr int kMinCtasPerSm = kMinCtasPerSm_; // register cap: 65536 / (kThreads * this)
  static constexpr int kSmemBytes = kSmemBytes_;       // dynamic shared memory of one CTA
  static constexpr int kSmemPerBlock = kSmemPerBlock_; // the arch's limit for one CTA
};

template <class QElement_, class Kv_, class Logits_, class Shape>
struct DecodeConfig : Shape {
  using QElement = QElement_;
  using Kv = Kv_;
  using Logits = Logits_;
};

struct DecodeArgs {
  FigDecodeParams p;
  PagedKv kv;
  DecodeGridShape shape;
  float logits_scale;  // sm_scale * k_scale * KV conversion factor
  float out_scale;     // v_scale * KV conversion factor
};

// The mainloop's copy pipeline and the epilogue's merge buffer share one allocation, whose size
// the generator computed (it sets the pipeline depth and the occupancy from it).
template <class Cfg>
constexpr size_t decode_smem_bytes() {
  constexpr size_t kNeed = cute::max(sizeof(typename DecodeMainloop<Cfg>::SharedStorage),
                                     sizeof(typename DecodeEpilogue<Cfg>::SharedStorage));
  static_assert(kNeed == size_t(Cfg::kSmemBytes), "generator/kind_decode.py smem_bytes() disagrees with the kernel");
  static_assert(Cfg::kSmemBytes <= Cfg::kSmemPerBlock, "the instance needs more shared memory than its arch has");
  using Atom = typename HalfRowsMma<typename Cfg::Kv::MmaElement>::Atom;
  using MmaShape = typename cute::MMA_Traits<Atom>::Shape_MNK;
  static_assert(Cfg::kStepTokens == cute::size<2>(MmaShape{}), "a step is one k16 slab of the P.V mma");
  static_assert(2 * Cfg::kRowsPerTile == cute::size<0>(MmaShape{}), "a warp tile is rows 0..7 of the m16 tile");
  return kNeed;
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinCtasPerSm) decode_kernel(const DecodeArgs args) {
  using Mainloop = DecodeMainloop<Cfg>;
  using Epilogue = DecodeEpilogue<Cfg>;
  using QElement = typename Cfg::QElement;
  extern __shared__ __align__(16) uint8_t smem_raw[];

  const FigDecodeParams& p = args.p;
  const int item = DecodeWorkCoord::item_of_block(p, args.shape);
  if (item < 0) return;
  const DecodeWorkCoord w = DecodeWorkCoord::from_block(p, args.shape, item);
  const int warp = threadIdx.x / 32;
  const int tiles = args.shape.row_tiles_per_cta;
  const int tile = warp % tiles;
  const int head_in_group = (w.row_group * tiles + tile) * Cfg::kRowsPerTile;
  const int valid_rows = min(Cfg::kRowsPerTile, args.shape.group_size - head_in_group);
  const int qo_head = w.kv_head * args.shape.group_size + head_in_group;

  Mainloop mainloop;
  const QElement* q_rows = static_cast<const QElement*>(p.q.data) + w.request * p.q.stride_row +
                           int64_t(qo_head) * p.q.stride_head;
  mainloop.init(*reinterpret_cast<typename Mainloop::SharedStorage*>(smem_raw), q_rows, p.q.stride_head,
                valid_rows);
  // Warp tiles past the group (a group of 17..24 heads pads 3 tiles to 4) take no tokens.
  const int end = valid_rows > 0 ? w.end : w.begin;
  const int64_t head_bytes = args.kv.head_offset(w.kv_head) * Cfg::Kv::kBytes;
  mainloop.run(args.kv, static_cast<const uint8_t*>(p.kv.k_cache) + head_bytes,
               static_cast<const uint8_t*>(p.kv.v_cache) + head_bytes, __ldg(p.kv.indptr + w.request), w.begin, end,
               warp / tiles, Cfg::kWarps / tiles,
               typename Cfg::Logits(args.logits_scale * device_scale(p.scales.q_scale_device, true) *
                                        device_scale(p.scales.k_scale_device, true),
                                    p.scales.logits_soft_cap));
  // The merge kernel may be scheduled once every CTA is past its mainloop, so that its launch
  // latency hides under the epilogues. Not earlier: signalled at CTA start, the 512 merge CTAs of
  // batch 16 x 4096 became resident beside the one-wave decode grid, waiting, and some runs
  // took 2-3x as long (bench at 8f34fbd); signalled here, no run did (616b701).
  launch_dependents();
  __syncthreads();  // every warp's pipeline is drained before its buffer is reused
  auto& epilogue_smem = *reinterpret_cast<typename Epilogue::SharedStorage*>(smem_raw);
  Epilogue::stage(epilogue_smem, mainloop, warp);
  __syncthreads();
  Epilogue::write(epilogue_smem, p, args.shape, w, args.out_scale * device_scale(p.scales.v_scale_device, false));
}

template <class Cfg>
int decode_run(const FigDecodeParams* p, cudaStream_t stream) {
  using Kv = typename Cfg::Kv;
  DecodeArgs args;
  args.p = *p;
  args.kv = PagedKv::from(p->kv);
  args.shape = DecodeGridShape::make<Cfg>(p->out.num_heads, p->kv.num_kv_heads);
  args.logits_scale = p->scales.sm_scale * p->scales.k_scale * Kv::kScale;
  args.out_scale = p->scales.v_scale * Kv::kScale;
  if (p->work.num_items > 0) {
    const dim3 grid(p->work.num_items * args.shape.ctas_per_work_item(p->kv.num_kv_heads));
    const int err = launch_with_smem(decode_kernel<Cfg>, grid, Cfg::kThreads, decode_smem_bytes<Cfg>(), stream, args);
    if (err != 0) return err;
  }
  return launch_merge<typename Cfg::QElement, Cfg::kHeadDim>(p->merge, p->out, stream);
}

template <class Cfg>
int decode_occupancy(int* ctas_per_sm, int* num_sms) {
  return kernel_occupancy(decode_kernel<Cfg>, Cfg::kThreads, decode_smem_bytes<Cfg>(), ctas_per_sm, num_sms);
}

// Test hook: runs the instance's KV conversion on raw codes, four per thread, as the mainloop does.
template <class Kv>
__global__ void convert_kv_kernel(const uint8_t* codes, float* out, int n) {
  const int first = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
  if (first >= n) return;
  uint32_t word = 0;
  for (int i = 0; i < 4 && first + i < n; ++i) word |= uint32_t(codes[first + i]) << (8 * i);
  uint32_t lo, hi;
  Kv::Converter::convert(word, lo, hi);  // the exact routine; the mainloop's fast path shares convert_finite()
  const uint32_t halves[2] = {lo, hi};
  for (int i = 0; i < 4 && first + i < n; ++i) {
    const uint16_t bits = uint16_t(halves[i / 2] >> (16 * (i % 2)));
    out[first + i] = __half2float(__ushort_as_half(bits)) * Kv::kScale;
  }
}

template <class Cfg>
int convert_kv(const uint8_t* codes, float* out, int n, cudaStream_t stream) {
  using Kv = typename Cfg::Kv;
  if constexpr (!Kv::kIsFp8) {
    return int(cudaErrorNotSupported);
  } else {
    constexpr int kThreads = 128;
    const int words = (n + 3) / 4;
    if (words > 0) convert_kv_kernel<Kv><<<(words + kThreads - 1) / kThreads, kThreads, 0, stream>>>(codes, out, n);
    return int(cudaGetLastError());
  }
}

}  // namespace fig
