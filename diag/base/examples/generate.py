"""A Llama-architecture model from `transformers` generating on flashinfer_gen's kernels: our append
writes each token's K/V into a paged cache (bf16, or FP8 e4m3 with per-layer scales), our prefill
attends the prompts, our decode each new token (eagerly re-planned, or captured once in a CUDA
graph and re-planned every step). Everything else (embeddings, projections, RoPE, MLP, norms) is
the `transformers` model's own modules, in bf16.

It reports (and writes to bench/results/generate-<gpu>.json):
  accuracy  teacher-forced next-token log-probs over `--steps` steps x `--batch` ragged prompts
            against the same model in float32 through `transformers` (its eager attention): the
            max abs log-prob difference of our bf16 cache beside that of `transformers` run in
            bf16; for the e4m3 cache its top-1 agreement with our bf16 cache, and its difference
            from the float32 model whose K/V carry the same e4m3 rounding (the reference built
            from the same dequantised values, as every kernel test's);
  speed     tokens/s for `--speed-batch` prompts of `--speed-prompt` tokens and `--speed-new` new
            tokens (greedy), bf16 and e4m3 caches, eager and CUDA-graph decode, beside
            `transformers`' own `generate` (bf16, its default attention) on the same model.
Random weights by default (LlamaConfig: 4 layers, hidden 4096, 32/8 heads, head dim 128);
`--checkpoint PATH` loads a real one instead. On random weights the next token is a near-tie
(bf16 rounding alone flips the top-1 token against float32 in a third of the positions), so the
accuracy is measured again (`accuracy_trained`) after `--train-steps` steps of training on the
bytes of Python's standard library, on held-out files: a model whose predictions have a real
model's confident tokens, which no checkpoint download is needed for.

usage: python examples/generate.py [--quick] [--checkpoint PATH] [--out PATH]
       (needs `pip install -e '.[hf]'` and a GPU)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import flashinfer_gen  # noqa: E402

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
# An FP8 cache's scale is the prompt's largest |K| (|V|) of the layer over half the format's
# range: decode tokens up to twice the prompt's largest still encode, larger ones saturate.
FP8_HEADROOM = 2.0
WORKSPACE_BYTES = 128 << 20


def make_model(layers=4, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=11008, vocab=32000,
               seed=0, checkpoint: str | None = None):
    """A float32 LlamaForCausalLM on the GPU: random weights from `seed`, or a checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM
    if checkpoint:
        return LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32,
                                                attn_implementation="eager").cuda().eval()
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=intermediate,
                         vocab_size=vocab, max_position_embeddings=8192)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"  # the float32 reference: transformers' own attention
    return model.eval()


def as_dtype(model, dtype, attn_implementation: str):
    """A copy of `model` in `dtype` using `transformers`' attention `attn_implementation`."""
    import copy
    other = copy.deepcopy(model).to(dtype)
    other.config._attn_implementation = attn_implementation
    return other.eval()


class PagedLlama:
    """The model's bf16 modules with attention on flashinfer_gen over a paged KV cache.

    Request b owns up to `max_len` tokens in pages drawn at random from one pool (a non-contiguous
    page table, as a serving engine's allocator leaves it). prefill() plans and runs the prompts;
    decode() appends one token per request; with graph=True the decode step is captured once (at
    its second call) and replayed, each step re-planned into the wrapper's fixed buffers."""

    def __init__(self, model_bf16, batch: int, max_len: int, kv_dtype: torch.dtype, page_size: int = 16,
                 graph: bool = False, seed: int = 0):
        cfg = model_bf16.config
        self.model, self.lm_head = model_bf16.model, model_bf16.lm_head
        self.hq, self.hk = cfg.num_attention_heads, cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.kv_dtype, self.page, self.batch, self.graph = kv_dtype, page_size, batch, graph
        self.pages_per = -(-max_len // page_size)
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randperm(batch * self.pages_per, generator=gen).to(torch.int32).view(batch, self.pages_per)
        layers = len(self.model.layers)
        # one [pages, 2, page, kv heads, dim] tensor per layer (FlashInfer's combined NHD layout)
        self.cache = [torch.empty(batch * self.pages_per, 2, page_size, self.hk, self.d, dtype=kv_dtype,
                                  device="cuda") for _ in range(layers)]
        self.k_scale = [None] * layers
        self.v_scale = [None] * layers
        self.prefill_wrapper = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(
            torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda"), "NHD")
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda")
        if graph:
            self.buffers = (torch.empty(batch + 1, dtype=torch.int32, device="cuda"),
                            torch.empty(batch * self.pages_per, dtype=torch.int32, device="cuda"),
                            torch.empty(batch, dtype=torch.int32, device="cuda"))
            self.decode_wrapper = flashinfer_gen.BatchDecodeWithPagedKVCacheWrapper(
                workspace, "NHD", use_cuda_graph=True, paged_kv_indptr_buffer=self.buffers[0],
                paged_kv_indices_buffer=self.buffers[1], paged_kv_last_page_len_buffer=self.buffers[2])
            self.step_ids = torch.zeros(batch, dtype=torch.long, device="cuda")
            self.step_positions = torch.zeros(batch, dtype=torch.int32, device="cuda")
            self.step_batch = torch.arange(batch, dtype=torch.int32, device="cuda")
            self.cuda_graph = None
            self.steps = 0
        else:
            self.decode_wrapper = flashinfer_gen.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
        self.lens = None

    # ---- the page table ----------------------------------------------------------------------
    def page_layout(self, lens: torch.Tensor):
        """(indptr, indices, last_page_len) on the device for sequences of `lens` tokens (host int64)."""
        pages = (lens + self.page - 1) // self.page
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages.cumsum(0)]).to(torch.int32)
        indices = torch.cat([self.table[b, : int(pages[b])] for b in range(self.batch)])
        last = (lens - (pages - 1) * self.page).to(torch.int32)
        return indptr.cuda(), indices.cuda(), last.cuda()

    # ---- the model ---------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, batch_indices: torch.Tensor, wrapper, layout,
                calibrate: bool = False) -> torch.Tensor:
        """Logits (fp32) of tokens `ids` ([T]) at `positions` ([T] int32) of requests
        `batch_indices`, their K/V appended to the cache first, attention by `wrapper` (planned)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        indptr, indices, last = layout
        t = ids.shape[0]
        h = self.model.embed_tokens(ids)
        cos, sin = self.model.rotary_emb(h[None], positions[None].long())
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(t, self.hq, self.d)
            k = attn.k_proj(x).view(t, self.hk, self.d)
            v = attn.v_proj(x).view(t, self.hk, self.d)
            q, k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
            q, k = q[0].transpose(0, 1).contiguous(), k[0].transpose(0, 1).contiguous()
            if calibrate and self.kv_dtype in FP8_MAX:  # once, at the prompts (a host sync, outside graphs)
                self.k_scale[i] = max(float(k.abs().max()), 1e-6) * FP8_HEADROOM / FP8_MAX[self.kv_dtype]
                self.v_scale[i] = max(float(v.abs().max()), 1e-6) * FP8_HEADROOM / FP8_MAX[self.kv_dtype]
            flashinfer_gen.append_paged_kv_cache(k, v, batch_indices, positions, self.cache[i], indices, indptr, last,
                                                 "NHD", k_scale=self.k_scale[i], v_scale=self.v_scale[i])
            o = wrapper.run(q, self.cache[i], k_scale=self.k_scale[i], v_scale=self.v_scale[i])
            h = h + attn.o_proj(o.reshape(t, self.hq * self.d))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm_head(self.model.norm(h)).float()

    @torch.inference_mode()
    def prefill(self, prompts: list[torch.Tensor]) -> torch.Tensor:
        """Logits [B, vocab] after each prompt (token ids on the GPU, ragged)."""
        self.lens = torch.tensor([p.numel() for p in prompts], dtype=torch.int64)
        qo_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), self.lens.cumsum(0)]).to(torch.int32).cuda()
        layout = self.page_layout(self.lens)
        self.prefill_wrapper.plan(qo_indptr, *layout, self.hq, self.hk, self.d, self.page, causal=True,
                                  q_data_type=torch.bfloat16, kv_data_type=self.kv_dtype)
        batch_indices, positions = flashinfer_gen.get_batch_indices_positions(qo_indptr, self.lens.cuda(),
                                                                              int(self.lens.sum()))
        logits = self.forward(torch.cat(prompts), positions, batch_indices, self.prefill_wrapper, layout,
                              calibrate=True)
        return logits[qo_indptr[1:].long() - 1]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] after appending `tokens` ([B]) to every request."""
        self.lens += 1
        if not self.graph:
            layout = self.page_layout(self.lens)
            self.decode_wrapper.plan(*layout, self.hq, self.hk, self.d, self.page, q_data_type=torch.bfloat16,
                                     kv_data_type=self.kv_dtype)
            positions = (self.lens - 1).to(torch.int32).cuda()
            batch_indices = torch.arange(self.batch, dtype=torch.int32, device="cuda")
            return self.forward(tokens, positions, batch_indices, self.decode_wrapper, layout)
        # graph mode: the plan fills the wrapper's buffers, which the captured append reads too
        self.decode_wrapper.plan(*self.page_layout(self.lens), self.hq, self.hk, self.d, self.page,
                                 q_data_type=torch.bfloat16, kv_data_type=self.kv_dtype)
        self.step_ids.copy_(tokens)
        self.step_positions.copy_((self.lens - 1).to(torch.int32))
        run = lambda: self.forward(self.step_ids, self.step_positions, self.step_batch,  # noqa: E731
                                   self.decode_wrapper, self.buffers)
        self.steps += 1
        if self.steps == 1:  # the first step runs eagerly (it loads the instances, warms the allocator)
            return run()
        if self.cuda_graph is None:
            self.cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.cuda_graph):
                self.graph_logits = run()
        self.cuda_graph.replay()
        return self.graph_logits.clone()


# ---- a briefly trained model --------------------------------------------------------------------

def text_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) byte tokens (ids 0..255) of the Python standard library's own source, on
    every machine that runs this: the files in name order, every tenth one held out."""
    import sysconfig
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    parts = ([], [])
    for i, f in enumerate(files):
        parts[i % 10 == 9].append(f.read_bytes())
    return tuple(torch.frombuffer(bytearray(b"".join(p)), dtype=torch.uint8).long() for p in parts)


def train(model32, corpus: torch.Tensor, steps: int, batch: int = 16, seq: int = 512, lr: float = 3e-4,
          seed: int = 0) -> dict:
    """`steps` of AdamW (bf16 autocast, float32 weights) on random windows of byte tokens, so the
    model's next-token distributions have the confident tokens and the near-ties a real model's
    have, rather than random weights' flat ones. Returns the first and last losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model32.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    model32.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, corpus.numel() - seq - 1, (batch,), generator=gen)
        window = torch.stack([corpus[s: s + seq + 1] for s in starts.tolist()]).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model32(window[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model32.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model32.eval()
    del opt
    model32.zero_grad(set_to_none=True)
    return dict(steps=steps, batch=batch, seq=seq, lr=lr, first_loss=round(losses[0], 3),
                last_loss=round(sum(losses[-10:]) / len(losses[-10:]), 3), corpus="Python stdlib *.py bytes")


# ---- accuracy ----------------------------------------------------------------------------------

def teacher_sequences(vocab: int, batch: int, steps: int, seed: int, max_prompt: int, text: torch.Tensor | None = None):
    """Request b has a prompt of a random length in [16, max_prompt] followed by `steps` teacher
    tokens: random tokens, or a random window of `text` (byte tokens the model was not trained on)."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(16, max_prompt + 1, (batch,), generator=gen)
    if text is None:
        return [torch.randint(0, vocab, (int(n) + steps,), generator=gen).cuda() for n in lens], lens.tolist()
    starts = torch.randint(0, text.numel() - max_prompt - steps, (batch,), generator=gen).tolist()
    return [text[s: s + int(n) + steps].cuda() for s, n in zip(starts, lens)], lens.tolist()


@torch.inference_mode()
def reference_logprobs(model, seqs, prompt_lens, steps) -> torch.Tensor:
    """[B, steps, vocab] log-probs of the next token at positions prompt-1 .. prompt+steps-2, from a
    full forward of each sequence (one request at a time: no padding)."""
    out = []
    for seq, n in zip(seqs, prompt_lens):
        logits = model(seq[None, : n + steps - 1]).logits[0, n - 1: n + steps - 1].float()
        out.append(torch.log_softmax(logits, -1))
    return torch.stack(out)


@torch.inference_mode()
def our_logprobs(model_bf16, seqs, prompt_lens, steps, kv_dtype, graph=False):
    """The same log-probs from our loop: prefill of the prompts, then `steps - 1` decode steps fed
    the teacher tokens. Returns (log-probs, the run's per-layer K scales, V scales)."""
    ours = PagedLlama(model_bf16, len(seqs), max(prompt_lens) + steps, kv_dtype, graph=graph)
    lp = [torch.log_softmax(ours.prefill([s[:n] for s, n in zip(seqs, prompt_lens)]), -1)]
    for j in range(steps - 1):
        tokens = torch.stack([s[n + j] for s, n in zip(seqs, prompt_lens)])
        lp.append(torch.log_softmax(ours.decode(tokens), -1))
    return torch.stack(lp, 1), ours.k_scale, ours.v_scale


@torch.inference_mode()
def fp8_reference_logprobs(model32, seqs, prompt_lens, steps, kv_dtype, k_scales, v_scales) -> torch.Tensor:
    """reference_logprobs with the FP8 cache's rounding: the float32 model, its K and V replaced by
    the values our cache holds for them (x * (1 / scale), saturated, rounded to `kv_dtype`, times
    scale, with the scales our run used), dense causal attention in float32. Our FP8 run is then
    compared with the same quantised K/V, as every kernel test is."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    inner, fmax = model32.model, FP8_MAX[kv_dtype]
    hq, hk = model32.config.num_attention_heads, model32.config.num_key_value_heads

    def cached(x, scale):
        inv = torch.tensor(1.0 / scale, dtype=torch.float32)  # the kernel multiplies by fp32(1 / scale)
        return (x * inv.item()).clamp(-fmax, fmax).to(kv_dtype).float() * scale

    out = []
    for seq, n in zip(seqs, prompt_lens):
        ids = seq[: n + steps - 1]
        t = ids.numel()
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h[None], torch.arange(t, device=ids.device)[None])
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            d = attn.head_dim
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(t, hq, d).transpose(0, 1)[None]
            k = attn.k_proj(x).view(t, hk, d).transpose(0, 1)[None]
            v = attn.v_proj(x).view(t, hk, d).transpose(0, 1)[None]
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = cached(k, k_scales[i]), cached(v, v_scales[i])
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            h = h + attn.o_proj(o[0].transpose(0, 1).reshape(t, hq * d))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = model32.lm_head(inner.norm(h))[n - 1: n + steps - 1].float()
        out.append(torch.log_softmax(logits, -1))
    return torch.stack(out)


def accuracy(model32, batch, steps, seed=0, max_prompt=512, text: torch.Tensor | None = None) -> dict:
    vocab = model32.config.vocab_size
    seqs, prompt_lens = teacher_sequences(vocab, batch, steps, seed, max_prompt, text)
    ref = reference_logprobs(model32, seqs, prompt_lens, steps)
    hf16 = as_dtype(model32, torch.bfloat16, "eager")
    hf_bf16 = reference_logprobs(hf16, seqs, prompt_lens, steps)
    ours_bf16, _, _ = our_logprobs(hf16, seqs, prompt_lens, steps, torch.bfloat16)
    ours_bf16_graph, _, _ = our_logprobs(hf16, seqs, prompt_lens, steps, torch.bfloat16, graph=True)
    ours_e4m3, k_scales, v_scales = our_logprobs(hf16, seqs, prompt_lens, steps, torch.float8_e4m3fn, graph=True)
    del hf16
    ref_e4m3 = fp8_reference_logprobs(model32, seqs, prompt_lens, steps, torch.float8_e4m3fn, k_scales, v_scales)
    top1 = lambda a, b: float((a.argmax(-1) == b.argmax(-1)).double().mean())  # noqa: E731
    err = lambda a, r=ref: float((a - r).abs().max()) if torch.isfinite(a).all() else float("inf")  # noqa: E731
    # the gap between the reference's two likeliest tokens: near-ties are where top-1 may flip
    top2 = ref.topk(2, -1).values
    return dict(batch=batch, steps=steps, prompt_lens=prompt_lens, vocab=vocab,
                max_abs_logprob_err=dict(transformers_bf16_eager=err(hf_bf16), ours_bf16=err(ours_bf16),
                                         ours_bf16_graph=err(ours_bf16_graph), ours_e4m3=err(ours_e4m3),
                                         ours_e4m3_vs_fp32_with_e4m3_kv=err(ours_e4m3, ref_e4m3)),
                ours_bf16_over_transformers_bf16=err(ours_bf16) / max(err(hf_bf16), 1e-30),
                ours_e4m3_over_transformers_bf16=err(ours_e4m3, ref_e4m3) / max(err(hf_bf16), 1e-30),
                top1_agreement=dict(ours_bf16_vs_fp32=top1(ours_bf16, ref), transformers_bf16_vs_fp32=top1(hf_bf16, ref),
                                    ours_e4m3_vs_ours_bf16=top1(ours_e4m3, ours_bf16),
                                    ours_e4m3_vs_fp32=top1(ours_e4m3, ref),
                                    ours_e4m3_vs_fp32_with_e4m3_kv=top1(ours_e4m3, ref_e4m3),
                                    fp32_with_e4m3_kv_vs_fp32=top1(ref_e4m3, ref)),
                graph_vs_eager_max_abs=float((ours_bf16_graph - ours_bf16).abs().max()),
                reference_top1_margin_median=float((top2[..., 0] - top2[..., 1]).median()))


# ---- speed -------------------------------------------------------------------------------------

@torch.inference_mode()
def our_generate(model_bf16, prompts, new_tokens, kv_dtype, graph) -> tuple[torch.Tensor, float, float]:
    """Greedy generation; (tokens [B, new], seconds for the prompts, seconds for the decode steps)."""
    ours = PagedLlama(model_bf16, len(prompts), max(p.numel() for p in prompts) + new_tokens, kv_dtype, graph=graph)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    token = ours.prefill(prompts).argmax(-1)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    out = [token]
    for _ in range(new_tokens - 1):
        token = ours.decode(token).argmax(-1)
        out.append(token)
    torch.cuda.synchronize()
    return torch.stack(out, 1), t1 - t0, time.perf_counter() - t1


@torch.inference_mode()
def hf_generate(model, input_ids, new_tokens) -> float:
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def speed(model32, batch, prompt, new_tokens, seed=1) -> list[dict]:
    vocab = model32.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, prompt), generator=gen).cuda()
    prompts = list(input_ids)
    hf16 = as_dtype(model32, torch.bfloat16, "sdpa")
    rows = []
    for kv_dtype, name in ((torch.bfloat16, "bf16"), (torch.float8_e4m3fn, "e4m3")):
        for graph in (False, True):
            our_generate(hf16, prompts[:2], 4, kv_dtype, graph)  # warm-up: instances loaded, kernels cached
            _, t_prefill, t_decode = our_generate(hf16, prompts, new_tokens, kv_dtype, graph)
            total = t_prefill + t_decode
            rows.append(dict(library="flashinfer_gen", kv_cache=name, decode="cuda_graph" if graph else "eager",
                             batch=batch, prompt=prompt, new_tokens=new_tokens, seconds=round(total, 4),
                             prefill_seconds=round(t_prefill, 4),
                             tokens_per_s=round(batch * new_tokens / total, 1),
                             decode_tokens_per_s=round(batch * (new_tokens - 1) / t_decode, 1)))
            print(rows[-1], flush=True)
    hf_generate(hf16, input_ids[:2, :64], 4)  # warm-up
    seconds = hf_generate(hf16, input_ids, new_tokens)
    rows.append(dict(library="transformers", kv_cache="bf16 (DynamicCache)", decode="generate, sdpa attention",
                     batch=batch, prompt=prompt, new_tokens=new_tokens, seconds=round(seconds, 4),
                     tokens_per_s=round(batch * new_tokens / seconds, 1)))
    print(rows[-1], flush=True)
    return rows


def git_commit() -> str | None:
    if os.environ.get("FIG_COMMIT"):
        return os.environ["FIG_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a Llama checkpoint directory (default: random weights)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--speed-batch", type=int, default=32)
    ap.add_argument("--speed-prompt", type=int, default=1024)
    ap.add_argument("--speed-new", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=200,
                    help="after the random-weight accuracy, train this many steps on byte text and measure again "
                         "on held-out text (0: skip; ignored with --checkpoint)")
    ap.add_argument("--quick", action="store_true", help="2 layers, batch 4, 16 steps, speed at batch 8")
    ap.add_argument("--out", default=None, help="default bench/results/generate-<gpu>.json")
    args = ap.parse_args(argv)
    layers = 2 if args.quick else 4
    if args.quick:
        args.batch, args.steps, args.speed_batch, args.speed_new = 4, 16, 8, 32
    model32 = make_model(layers=layers, checkpoint=args.checkpoint)
    print(f"model: {sum(p.numel() for p in model32.parameters()) / 1e6:.0f} M parameters, "
          f"{model32.config.num_hidden_layers} layers", flush=True)
    acc = accuracy(model32, args.batch, args.steps)
    print(json.dumps(acc, indent=1), flush=True)
    trained = None
    if args.train_steps > 0 and not args.checkpoint:
        train_text, held_out = text_corpus()
        t0 = time.perf_counter()
        training = train(model32, train_text, args.train_steps)
        training["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"trained: {training}", flush=True)
        trained = dict(training=training, **accuracy(model32, args.batch, args.steps, text=held_out))
        print(json.dumps(trained, indent=1), flush=True)
    rows = speed(model32, args.speed_batch, args.speed_prompt, args.speed_new)
    gpu = torch.cuda.get_device_name()
    import transformers
    result = dict(device=gpu, commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), torch=torch.__version__, transformers=transformers.__version__,
        model=dict(checkpoint=args.checkpoint, layers=model32.config.num_hidden_layers,
                   hidden=model32.config.hidden_size, heads=model32.config.num_attention_heads,
                   kv_heads=model32.config.num_key_value_heads, vocab=model32.config.vocab_size),
        accuracy=acc, accuracy_trained=trained, speed=rows)
    out = Path(args.out) if args.out else \
        Path(__file__).resolve().parent.parent / "bench" / "results" / f"generate-{gpu.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
