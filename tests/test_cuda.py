"""What only a CUDA device runs: the fast path's folded attention on CUDA's kernels, its gradients, bf16 autocast,
``torch.compile`` with inductor's GPU code, training input augmented on the device, training and prediction on it.

The whole module is skipped without CUDA (CI has none); ``benchmarks/gpu_session.sh`` runs it on a lent GPU. The CPU
twins of these checks are in test_fast_path.py and test_training_recipe.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_fast_path import (
    CASES,
    PerturbationPrompts,
    _freeze,
    _reference_attention,
    _train_step_grads,
    make_encoder,
    max_rel_err,
    rel_err,
)

import losam_peft.fast_path as fp
from losam_peft import LoSamImageProcessor, LoSamPipeline
from losam_peft.data.samples import Sample
from losam_peft.data.synthetic import make_samples
from losam_peft.fast_path import enable_fast_path

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TOL = 1e-4
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """Exactness checks compare float32 with float32: TF32 matrix products would round to 10 bits."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("image_size,window_size,global_idx", CASES)
@pytest.mark.parametrize("mode", ["auto", "fold"])
def test_forward_matches_stock_on_cuda(image_size, window_size, global_idx, mode):
    encoder = make_encoder(image_size, window_size, global_idx).to(CUDA)
    x = torch.randn(2, 3, image_size, image_size, device=CUDA)
    with torch.no_grad():
        ref = encoder(x).last_hidden_state
        enable_fast_path(encoder, attention=mode)
        out = encoder(x).last_hidden_state
    assert out.is_cuda and rel_err(out, ref) < TOL, rel_err(out, ref)


def _prompted_encoder_on_cuda(image_size, window_size, global_idx):
    """A frozen random encoder with stand-in prompt layers on CUDA, an input batch of 2 and a target for its output."""
    encoder = make_encoder(image_size, window_size, global_idx)
    _freeze(encoder)
    prompts = PerturbationPrompts(encoder, encoder.config.hidden_size)
    encoder.to(CUDA), prompts.to(CUDA)
    x = torch.randn(2, 3, image_size, image_size, device=CUDA)
    target = torch.randn(2, 32, image_size // 16, image_size // 16, device=CUDA)
    return encoder, prompts, x, target


@pytest.mark.parametrize("image_size,window_size,global_idx", [(128, 4, (1,)), (96, 4, (1,)), (64, 14, (0,))])
def test_prompt_gradients_match_stock_on_cuda(image_size, window_size, global_idx):
    encoder, prompts, x, target = _prompted_encoder_on_cuda(image_size, window_size, global_idx)
    ref_out, ref_grads = _train_step_grads(encoder, prompts, x, target)
    enable_fast_path(encoder)
    out, grads = _train_step_grads(encoder, prompts, x, target)
    assert rel_err(out, ref_out) < TOL
    for name, g in ref_grads.items():
        assert g.abs().max() > 0, name
        assert max_rel_err(grads[name], g) < TOL, (name, max_rel_err(grads[name], g))


@pytest.mark.parametrize("heads,head_dim", [(12, 64), (16, 80)])  # vit_b/vit_l and vit_h global layers: 192, 208 wide
def test_folded_attention_runs_on_flash_in_bf16_and_is_close_to_float64(heads, head_dim):
    """At SAM's 64x64 grid the fold is hd + 128 wide; padded to a multiple of 8 it must run on the flash kernel (the
    context below allows no other), forward and backward, with bf16 errors like those of a written-out attention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    grid, seq = 64, 64 * 64
    leaves = [torch.randn(1, heads, seq, head_dim, device=CUDA) for _ in range(3)]
    leaves += [torch.randn(1, heads, grid, grid, grid, device=CUDA) * 0.5 for _ in range(2)]
    leaves = [t.to(torch.bfloat16) for t in leaves]
    grad_out = torch.randn(1, heads, seq, head_dim, device=CUDA).to(torch.bfloat16)
    scale = head_dim**-0.5
    ref_leaves = [t.double().requires_grad_() for t in leaves]
    _reference_attention(*ref_leaves, scale).backward(grad_out.double())
    ref_out = _reference_attention(*[t.detach() for t in ref_leaves], scale)

    def run(fn, **kw):
        mine = [t.clone().requires_grad_() for t in leaves]
        with sdpa_kernel(**kw) if kw else torch.enable_grad():
            out = fn(*mine, scale)
            out.backward(grad_out)
        return [rel_err(out.detach().double(), ref_out)] + [rel_err(a.grad.double(), b.grad) for a, b in
                                                            zip(mine, ref_leaves)]

    folded = run(fp.folded_rel_pos_attention, backends=[SDPBackend.FLASH_ATTENTION])
    written = run(_reference_attention)  # the same maths in bf16 eager ops
    for name, mine, plain in zip(("out", "query", "key", "value", "rel_h", "rel_w"), folded, written):
        assert mine < 2e-2 and mine < 2 * plain + 1e-3, (name, mine, plain)


def test_bf16_autocast_on_cuda_is_as_close_to_float64_as_stock_bf16():
    encoder, prompts, x, target = _prompted_encoder_on_cuda(128, 4, (1,))
    encoder.double(), prompts.double()
    ref_out, ref_grads = _train_step_grads(encoder, prompts, x.double(), target.double())
    encoder.float(), prompts.float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        stock_out, stock_grads = _train_step_grads(encoder, prompts, x, target)
        enable_fast_path(encoder)
        out, grads = _train_step_grads(encoder, prompts, x, target)
    fast_err, stock_err = rel_err(out.float(), ref_out), rel_err(stock_out.float(), ref_out)
    assert fast_err < 5e-2 and fast_err < 2 * stock_err + 1e-3, (fast_err, stock_err)
    for name, g in ref_grads.items():
        fast_err, stock_err = rel_err(grads[name], g), rel_err(stock_grads[name], g)
        assert fast_err < 5e-2 and fast_err < 2 * stock_err + 1e-3, (name, fast_err, stock_err)


def test_compiled_fast_path_on_cuda_matches_eager():
    """Inductor's GPU code for the fast path (forward and prompt gradients) against the eager fast path, float32."""
    encoder, prompts, x, target = _prompted_encoder_on_cuda(96, 4, (1,))
    enable_fast_path(encoder)
    ref_out, ref_grads = _train_step_grads(encoder, prompts, x, target)
    torch._dynamo.reset()
    compiled = torch.compile(encoder, backend="inductor")
    out, grads = _train_step_grads(compiled, prompts, x, target)
    assert rel_err(out, ref_out) < TOL
    for name, g in ref_grads.items():
        assert max_rel_err(grads[name], g) < TOL, (name, max_rel_err(grads[name], g))
    torch._dynamo.reset()


def _samples(n=2, seed=1):
    return [Sample(s.image, s.mask, s.id, s.fov) for s in make_samples("fundus", n, size=48, seed=seed)]


def test_training_samples_augment_on_cuda_as_on_cpu():
    from losam_peft.training import PreparedSamples  # (imported here: training imports datasets, the rest need not)

    samples = _samples(2)
    processor = LoSamImageProcessor(image_size=64)
    for jitter in ("bcs", "reference"):
        on_cpu = PreparedSamples(samples, processor, 2, device="cpu", jitter=jitter)
        on_gpu = PreparedSamples(samples, processor, 2, device="cuda", jitter=jitter)
        assert on_gpu.pixels[0].dtype == torch.uint8 and on_gpu.pixels[0].is_cuda
        for seeds in ([3, 11], [7, 7], [123, 5]):
            cpu_pixels, cpu_labels = on_cpu.batch([0, 1], seeds, augment=True)
            gpu_pixels, gpu_labels = on_gpu.batch([0, 1], seeds, augment=True)
            assert gpu_pixels.is_cuda and gpu_labels.is_cuda
            assert torch.equal(gpu_labels.cpu(), cpu_labels), (jitter, seeds)
            torch.testing.assert_close(gpu_pixels.cpu(), cpu_pixels, rtol=0, atol=1e-4)


def test_training_runs_on_cuda_and_its_adapter_predicts_there_as_on_cpu(tmp_path):
    from helpers import tiny_config

    from losam_peft import SamForSemanticSegmentation
    from losam_peft.training import TrainingConfig, train

    torch.manual_seed(0)
    SamForSemanticSegmentation(tiny_config()).save_pretrained(tmp_path / "base")
    config = TrainingConfig(output_dir=str(tmp_path / "run"), base=str(tmp_path / "base"), max_steps=4,
                            log_with="none", mixed_precision="bf16")
    result = train(config, _samples(), progress=False)
    assert result.steps == 4 and all(np.isfinite(r["loss"]) for r in result.history)
    record = json.loads((result.output_dir / "train_config.json").read_text())
    assert record["mixed_precision"] == "bf16"
    card = (result.output_dir / "README.md").read_text()
    assert "cuda" in card  # the card's training record names the device

    image = make_samples("fundus", 1, size=80, seed=9)[0].image
    on_gpu = LoSamPipeline.from_pretrained(result.output_dir, device="cuda", dtype="fp32")
    on_cpu = LoSamPipeline.from_pretrained(result.output_dir, device="cpu", dtype="fp32")
    a = on_gpu(image, return_probabilities=True)
    b = on_cpu(image, return_probabilities=True)
    assert a.label_map.shape == b.label_map.shape == image.shape[:2]
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-3)
    assert (a.label_map != b.label_map).mean() < 1e-3
