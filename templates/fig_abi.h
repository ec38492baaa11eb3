// The plain C ABI every generated library exports. Python mirrors FigDecodeParams with
// ctypes (flashinfer_gen/abi.py); fig_abi_version() and fig_decode_params_size() let the loader
// refuse a library whose struct does not match instead of passing it garbage.
#pragma once
#include <stdint.h>

#define FIG_ABI_VERSION 1

// Libraries are built with hidden visibility; only the entry points below are exported.
#define FIG_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

typedef struct FigDecodeParams {
  // q: [batch, num_qo_heads, head_dim], innermost dim contiguous; strides in elements.
  const void* q;
  int64_t q_stride_batch;
  int64_t q_stride_head;

  // Paged K and V: element pointers plus element strides, so NHD, HND and the combined
  // [pages, 2, ...] tensor are all the same kernel (only the strides differ).
  const void* k_cache;
  const void* v_cache;
  int64_t kv_stride_page;
  int64_t kv_stride_slot;
  int64_t kv_stride_head;

  // Page table (CSR over requests): pages of request b are kv_indices[kv_indptr[b] .. kv_indptr[b+1]).
  const int32_t* kv_indptr;   // [batch + 1]
  const int32_t* kv_indices;  // [kv_indptr[batch]]

  // Work list from plan(): one entry per CTA column; token ranges are [begin, end) of the request.
  const int32_t* work_request;  // [num_work]
  const int32_t* work_begin;    // [num_work]
  const int32_t* work_end;      // [num_work]
  const int32_t* work_partial;  // [num_work]: -1 writes out/lse directly, else a partial slot
  int32_t num_work;

  // Split-KV merge, only for requests that plan() split: merge item i combines partial
  // slots [merge_indptr[i], merge_indptr[i+1]) into request merge_request[i].
  const int32_t* merge_request;  // [num_merge]
  const int32_t* merge_indptr;   // [num_merge + 1]
  int32_t num_merge;
  float* partial_out;  // [num_partial, num_qo_heads, head_dim] fp32, already divided by the row sum
  float* partial_lse;  // [num_partial, num_qo_heads], base-2 log-sum-exp

  // out: [batch, num_qo_heads, head_dim] in the q dtype; lse: [batch, num_qo_heads] fp32 or NULL.
  void* out;
  int64_t out_stride_batch;
  int64_t out_stride_head;
  float* lse;

  int32_t batch;
  int32_t num_qo_heads;
  int32_t num_kv_heads;
  int32_t page_size;

  float sm_scale;         // applied to q.k before soft-cap
  float k_scale;          // dequantisation scale of K, folded into the logits scale
  float v_scale;          // dequantisation scale of V, applied to the output
  float logits_soft_cap;  // <= 0: off
} FigDecodeParams;

// Every library exports these.
int fig_abi_version(void);
int fig_decode_params_size(void);
const char* fig_instance_name(void);
// Launches decode (+ merge when plan() split a request). Returns a cudaError_t value.
int fig_decode_run(const FigDecodeParams* params, void* stream);
// CTAs of the decode kernel that fit on one SM, and the SM count of the current device.
int fig_decode_occupancy(int* ctas_per_sm, int* num_sms);
// CTAs per work item (KV heads x row groups), so plan() sizes its schedule exactly.
int fig_decode_grid_rows(int num_qo_heads, int num_kv_heads);
// Converts n FP8 codes with the instance's own KV conversion routine (hardware or software),
// as fp32 values with the routine's exponent bias undone. Returns cudaErrorNotSupported for 16-bit KV.
int fig_convert_kv(const uint8_t* codes, float* out, int n, void* stream);

#ifdef __cplusplus
}
#endif
