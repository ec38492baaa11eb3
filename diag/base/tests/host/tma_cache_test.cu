// Host test of KvTensorMaps::cached_with (templates/tma_paged_kv.cuh), no GPU: the encoding
// step is a counter. An engine's layers, each with its own cache at a 2 MiB-aligned address,
// cycled through in turn, encode each cache's maps once; every part of the key is compared; a
// set holding more caches than its ways replaces its least recently used one.
// Prints "ok" or the first failed check and exits non-zero.
#include <cstdint>
#include <cstdio>
#include "tma_paged_kv.cuh"

namespace {
using fig::KvTensorMaps;
int encodes = 0;

KvTensorMaps count_encode(const FigPagedKv&, int, int, int) {
  KvTensorMaps maps{};
  maps.rows = ++encodes;  // tells which encode a returned entry came from
  return maps;
}

FigPagedKv cache_at(uintptr_t k) {
  FigPagedKv kv{};
  kv.k_cache = reinterpret_cast<const void*>(k);
  kv.v_cache = reinterpret_cast<const void*>(k + (uintptr_t(1) << 21));
  kv.stride_page = 16 * 8 * 128;
  kv.stride_slot = 8 * 128;
  kv.stride_head = 128;
  kv.page_size = 16;
  kv.num_kv_heads = 8;
  return kv;
}

int lookup(const FigPagedKv& kv, int head_dim = 128, int tile_keys = 128, int element = fig::kTmaBF16) {
  return KvTensorMaps::cached_with(kv, head_dim, tile_keys, element, count_encode).rows;
}

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::printf("FAILED line %d: %s (encodes %d)\n", __LINE__, #cond, encodes);    \
      return 1;                                                                      \
    }                                                                                \
  } while (0)
}  // namespace

int main() {
  constexpr int kLayers = 32;
  const uintptr_t base = uintptr_t(1) << 40;
  const uintptr_t step = uintptr_t(64) << 21;  // 128 MiB a layer: every layer's low 27 bits alike
  int sets[KvTensorMaps::kSets] = {};
  for (int layer = 0; layer < kLayers; ++layer) ++sets[KvTensorMaps::set_of(cache_at(base + layer * step).k_cache)];
  for (int n : sets) CHECK(n <= KvTensorMaps::kWays);  // the hash spreads them (else the next check is moot)
  for (int round = 0; round < 5; ++round)
    for (int layer = 0; layer < kLayers; ++layer) CHECK(lookup(cache_at(base + layer * step)) == layer + 1);
  CHECK(encodes == kLayers);

  // every part of the key is compared: each change below is a new entry (a fresh encode)
  const FigPagedKv kv = cache_at(base);
  FigPagedKv other = kv;
  other.v_cache = reinterpret_cast<const void*>(base + 4096);
  CHECK(lookup(other) == kLayers + 1);
  other = kv;
  other.stride_page *= 2;
  CHECK(lookup(other) == kLayers + 2);
  other = kv;
  other.stride_head = 256;
  CHECK(lookup(other) == kLayers + 3);
  other = kv;
  other.page_size = 32;
  CHECK(lookup(other) == kLayers + 4);
  other = kv;
  other.num_kv_heads = 4;
  CHECK(lookup(other) == kLayers + 5);
  CHECK(lookup(kv, 64) == kLayers + 6);
  CHECK(lookup(kv, 128, 64) == kLayers + 7);
  CHECK(lookup(kv, 128, 128, fig::kTmaF16) == kLayers + 8);
  CHECK(lookup(kv, 128, 128, fig::kTmaByte) == kLayers + 9);

  // kWays + 1 caches of one set, used in turn: the least recently used one is replaced each time
  uintptr_t same[KvTensorMaps::kWays + 1];
  const int set = KvTensorMaps::set_of(reinterpret_cast<const void*>(uintptr_t(1) << 44));
  int found = 0;
  for (uintptr_t a = uintptr_t(1) << 44; found < KvTensorMaps::kWays + 1; a += uintptr_t(1) << 21)
    if (KvTensorMaps::set_of(reinterpret_cast<const void*>(a)) == set) same[found++] = a;
  const int before = encodes;
  for (int i = 0; i < KvTensorMaps::kWays; ++i) lookup(cache_at(same[i]));  // fills the set
  CHECK(encodes == before + KvTensorMaps::kWays);
  for (int i = 1; i < KvTensorMaps::kWays; ++i) lookup(cache_at(same[i]));  // hits: same[0] is the oldest
  CHECK(encodes == before + KvTensorMaps::kWays);
  lookup(cache_at(same[KvTensorMaps::kWays]));  // replaces same[0]
  CHECK(encodes == before + KvTensorMaps::kWays + 1);
  for (int i = 1; i <= KvTensorMaps::kWays; ++i) lookup(cache_at(same[i]));  // all held
  CHECK(encodes == before + KvTensorMaps::kWays + 1);
  lookup(cache_at(same[0]));  // was replaced
  CHECK(encodes == before + KvTensorMaps::kWays + 2);
  std::printf("ok\n");
  return 0;
}
