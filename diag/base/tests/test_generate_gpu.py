"""examples/generate.py on a small Llama config (2 layers, hidden 512, 8/2 heads, head dim 64,
random weights): our prefill, decode and append in a teacher-forced generation loop against the
same model run by `transformers` in float32 (its eager attention).

Bars: our bf16 cache's max abs log-prob error against float32 is at most 1.5x that of
`transformers`' own bf16 eager run of the same sequences (issue 14's bar: both run the same bf16
projections and MLP; the factor leaves room for a different but equally rounded attention, not
for a wrong key or mask, which moves log-probs by O(1)). The e4m3 run must be finite; its accuracy is reported
(examples/generate.py, README) but not held to a bar on random weights. Issue 14's FP8 bar,
top-1 agreement with the bf16 cache >= 95%, measures the model on random weights, not the
kernels: the top-1 token is a near-tie there (bf16 alone flips it against float32 in a third of
the positions of the 4-layer model). test_fp8_cache_keeps_a_trained_models_top1 holds the bar on
the same config after a short training, whose predictions have confident tokens as a real
model's do.
And the float32 model with the same e4m3 K/V rounding is no tighter reference end to end: a
bf16-rounded K lands on the other side of an e4m3 rounding boundary about once in 2^(8-4) = 16
elements, a whole e4m3 step (2^-4) where bf16's difference was 2^-8, so the small model here
differs from it by 2.9x transformers' bf16 error (the 4-layer model by 1.1x). The kernels' FP8
paths are checked element-exact against the same dequantised values in the decode, prefill and
append tests. The CUDA-graph decode loop matches the eager one, for both caches. Skips without
transformers (`pip install -e '.[hf]'`)."""
import sys
from pathlib import Path

import pytest
import torch

from conftest import requires_gpu

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]
transformers = pytest.importorskip("transformers", reason="transformers is the optional extra '.[hf]'")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import generate  # noqa: E402


@pytest.fixture(scope="module")
def model32():
    return generate.make_model(layers=2, hidden=512, heads=8, kv_heads=2, head_dim=64, intermediate=1024,
                               vocab=512, seed=3)


def test_teacher_forced_logprobs_match_transformers(model32):
    acc = generate.accuracy(model32, batch=4, steps=16, seed=5, max_prompt=200)
    err = acc["max_abs_logprob_err"]
    assert all(v < float("inf") for v in err.values()), err  # NaN or inf anywhere fails
    assert err["ours_bf16"] <= 1.5 * err["transformers_bf16_eager"], acc
    # graph replay runs the same kernels on the same inputs as the eager loop
    assert acc["graph_vs_eager_max_abs"] <= 1e-3, acc


def test_fp8_cache_keeps_a_trained_models_top1(model32):
    """Issue 14's FP8 bar on a model with a real model's confident predictions: the small config
    trained 300 steps on the bytes of Python's standard library (examples/generate.py's train()),
    teacher-forced on held-out files. The e4m3 cache's top-1 token agrees with our bf16 cache's in
    at least 95% of the positions, and the bf16 bar still holds."""
    import copy
    model = copy.deepcopy(model32)
    train_text, held_out = generate.text_corpus()
    training = generate.train(model, train_text, 300, batch=8, seq=256, lr=1e-3)
    assert training["last_loss"] < 0.6 * training["first_loss"], training  # it learned something
    acc = generate.accuracy(model, batch=8, steps=32, seed=6, max_prompt=200, text=held_out)
    assert acc["top1_agreement"]["ours_e4m3_vs_ours_bf16"] >= 0.95, acc
    err = acc["max_abs_logprob_err"]
    assert err["ours_bf16"] <= 1.5 * err["transformers_bf16_eager"], acc


def test_greedy_generation_eager_and_graph_agree(model32):
    """Greedy decoding: the eager and the CUDA-graph loops produce the same tokens, for both caches."""
    hf16 = generate.as_dtype(model32, torch.bfloat16, "eager")
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 512, (n,), generator=gen).cuda() for n in (1, 37, 16, 100)]
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        eager, _, _ = generate.our_generate(hf16, prompts, 12, kv_dtype, graph=False)
        graph, _, _ = generate.our_generate(hf16, prompts, 12, kv_dtype, graph=True)
        assert eager.shape == (4, 12) and torch.equal(eager, graph), (kv_dtype, eager, graph)
