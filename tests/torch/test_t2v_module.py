"""latte_rs.torch.LatteT2VModule: latte-rs as the transformer inside diffusers' LattePipeline, against diffusers' own
LatteTransformer3DModel (same weights): the parameters and their order, the forward, the pipeline's frames and a
fine-tuning step's gradients, on the built-in tiny text-to-video model and on a random Latte-1-shaped model (Latte-1's
width and caption channels, two layers, 8x8 latents, made here with diffusers and saved as a diffusers folder)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import latte_rs  # noqa: E402
from conftest import TINY_VAE, TorchTokenizer  # noqa: E402
from latte_rs.tiny_t2v import TINY_T2V  # noqa: E402
from latte_rs.torch import LatteT2VModule  # noqa: E402

# diffusers' Latte-1 transformer config (maxin-cn/Latte-1, transformer/config.json) with 2 of its 28 layers and
# 8x8 latents, so both transformers run on a small CPU in seconds.
LATTE1_SHAPED = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=2,
                     cross_attention_dim=1152, attention_bias=True, sample_size=8, patch_size=2,
                     activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                     norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, video_length=16)


def _diffusers():
    return pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def latte1_folder(tmp_path_factory):
    """A random Latte-1-shaped transformer made by diffusers (its own initialisation, seed 0), as a diffusers
    folder."""
    diffusers = _diffusers()
    folder = tmp_path_factory.mktemp("latte1") / "transformer"
    torch.manual_seed(0)
    diffusers.LatteTransformer3DModel(**LATTE1_SHAPED).save_pretrained(folder)
    return folder


def _pair(folder):
    """diffusers' transformer and ours over the same folder."""
    ref = _diffusers().LatteTransformer3DModel.from_pretrained(folder)
    return ref, LatteT2VModule.from_pretrained(folder)


def _inputs(cfg, batch: int = 2, tokens: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = cfg["sample_size"]
    return dict(hidden_states=torch.randn(batch, cfg["in_channels"], cfg["video_length"], size, size, generator=g),
                timestep=torch.tensor([999, 37][:batch]),
                encoder_hidden_states=torch.randn(batch, tokens, cfg["caption_channels"], generator=g))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference over the reference's largest magnitude."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(params=["tiny_t2v", "latte1_shaped"])
def folder(request):
    return TINY_T2V / "transformer" if request.param == "tiny_t2v" else request.getfixturevalue("latte1_folder")


def test_parameters_are_diffusers_in_diffusers_order_over_the_rust_memory(folder):
    ref, ours = _pair(folder)
    assert list(ours.state_dict()) == [n for n, _ in ref.named_parameters()]
    assert all(torch.equal(p, ref.state_dict()[n]) for n, p in ours.named_parameters())
    assert ours.dtype == ref.dtype == torch.float32 and ours.device == ref.device
    for key in ("in_channels", "out_channels", "sample_size", "patch_size", "video_length", "caption_channels"):
        assert ours.config[key] == getattr(ours.config, key) == ref.config[key]
    assert ours.out_channels == ref.out_channels
    # No copies: an in-place update of a torch parameter is the Rust model's weight.
    p = ours.get_parameter("proj_out.bias")
    with torch.no_grad():
        p.add_(1.0)
    np.testing.assert_array_equal(ours.core.state_dict()["proj_out.bias"], p.detach().numpy())


def test_forward_equals_diffusers(folder):
    ref, ours = _pair(folder)
    inputs = _inputs(dict(ref.config))
    with torch.no_grad():
        for temporal in (True, False):
            want = ref(**inputs, enable_temporal_attentions=temporal).sample
            got = ours(**inputs, enable_temporal_attentions=temporal)
            assert type(got) is type(ref(**inputs)) and got.sample.shape == want.shape
            assert _rel(got.sample, want) <= 1e-5, temporal
        (tup,) = ours(**inputs, return_dict=False)
        assert torch.equal(tup, ours(**inputs)[0])
        # A mask that keeps every token (diffusers' two formats) changes nothing.
        b, s = inputs["encoder_hidden_states"].shape[:2]
        for mask in (torch.ones(b, s, dtype=torch.bool), torch.zeros(b, 1, s)):
            assert torch.equal(ours(**inputs, encoder_attention_mask=mask).sample, tup)


class _PixelSpace(torch.nn.Module):
    """The "VAE" of a pixel-space model for diffusers' pipeline: no down-sampling, decoding is the identity."""

    config = SimpleNamespace(block_out_channels=[3], scaling_factor=1.0)
    device, dtype = torch.device("cpu"), torch.float32

    def decode(self, z, **_):
        return SimpleNamespace(sample=z)


def _frames(pipe, transformer, **kwargs) -> np.ndarray:
    pipe.transformer = transformer
    with torch.no_grad():
        out = pipe(generator=torch.Generator().manual_seed(0), output_type="np", num_inference_steps=3,
                   guidance_scale=4.0, **kwargs)
    return np.asarray(out.frames)


def test_lattepipeline_gives_diffusers_frames_on_the_tiny_model():
    """The built-in pixel-space model with its T5 encoder (transformers') and tokenizer, DDPM sampling with the
    step noise from the torch generator: both transformers give the same frames."""
    diffusers = _diffusers()
    transformers = pytest.importorskip("transformers")
    from latte_rs.text import T5Tokenizer

    ref, ours = _pair(TINY_T2V / "transformer")
    pipe = diffusers.LattePipeline(
        tokenizer=TorchTokenizer(T5Tokenizer(TINY_T2V / "tokenizer")),
        text_encoder=transformers.T5EncoderModel.from_pretrained(TINY_T2V / "text_encoder"), vae=_PixelSpace(),
        transformer=ours, scheduler=diffusers.DDPMScheduler.from_pretrained(TINY_T2V / "scheduler"))
    prompts = ["a red disc moving left", "a blue square moving up"]
    kwargs = dict(prompt=prompts, negative_prompt="", video_length=8, height=16, width=16, clean_caption=False)
    got = _frames(pipe, ours, **kwargs)
    want = _frames(pipe, ref, **kwargs)
    assert got.shape == want.shape == (2, 8, 16, 16, 3)
    print(f"tiny_t2v frames: max abs difference {np.abs(got - want).max():.3g}")
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(got[0] - got[1]).max() > 0.1  # the prompts reached the transformer


def test_lattepipeline_gives_diffusers_frames_on_a_latte1_shaped_model(latte1_folder):
    """Latte-1's shapes (1152 wide, 4096-d T5 features, 16 frames) under the tiny VAE, from prompt features."""
    diffusers = _diffusers()
    ref, ours = _pair(latte1_folder)
    pipe = diffusers.LattePipeline(tokenizer=None, text_encoder=None,
                                   vae=diffusers.AutoencoderKL.from_pretrained(TINY_VAE), transformer=ours,
                                   scheduler=diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False))
    g = torch.Generator().manual_seed(1)
    kwargs = dict(prompt_embeds=torch.randn(1, 9, 4096, generator=g),
                  negative_prompt=None, negative_prompt_embeds=torch.randn(1, 9, 4096, generator=g), video_length=16,
                  height=16, width=16)
    got = _frames(pipe, ours, **kwargs)
    want = _frames(pipe, ref, **kwargs)
    assert got.shape == want.shape == (1, 16, 16, 16, 3)
    print(f"Latte-1-shaped frames: max abs difference {np.abs(got - want).max():.3g}")
    assert np.abs(got - want).max() <= 1e-5


def _norm_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm of the difference over the reference's norm."""
    return float((a - b).norm() / b.norm())


def test_a_fine_tuning_step_matches_diffusers_gradients(folder):
    """MSE to a target, backward, AdamW: every parameter's gradient (by diffusers name) and the latents' gradient
    equal diffusers' under torch autograd; after the step both transformers give the same output.

    The keys' biases (``to_k.bias``) get a gradient of exactly zero in exact arithmetic (softmax does not change
    when every score of a query moves by the same q·b): both are float noise, 1e-8 of the largest gradient, and are
    checked against that scale. The others agree to 1e-5 relative (norm of the difference over the norm); the
    largest element differs from diffusers' by less than 1e-5 of the largest gradient."""
    ref, ours = _pair(folder)
    inputs = _inputs(dict(ref.config), seed=3)
    target = torch.randn(ref(**inputs).sample.shape, generator=torch.Generator().manual_seed(4))
    losses, grads = [], []
    for model in (ref, ours):
        x = inputs["hidden_states"].clone().requires_grad_(True)
        loss = torch.nn.functional.mse_loss(model(**{**inputs, "hidden_states": x}).sample, target)
        loss.backward()
        losses.append(loss.item())
        grads.append({"hidden_states": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    want, got = grads
    assert abs(losses[0] - losses[1]) <= 1e-6 * losses[0]
    assert got.keys() == want.keys() and len(want) == len(list(ref.parameters())) + 1
    scale = max(float(g.abs().max()) for g in want.values())
    diffs = {n: float((got[n] - want[n]).abs().max()) for n in want}
    rels = {n: _norm_rel(got[n], want[n]) for n in want if not n.endswith("to_k.bias")}
    worst = max(rels, key=rels.get)
    label = "tiny_t2v" if folder.parent.name == "tiny_t2v" else "Latte-1-shaped"
    print(f"{label}: largest gradient {scale:.3g}; largest difference {max(diffs.values()):.3g} "
          f"({max(diffs, key=diffs.get)}); worst relative {rels[worst]:.3g} ({worst})")
    for name in want:
        assert diffs[name] <= 1e-5 * scale, name
        if name.endswith("to_k.bias"):
            assert max(float(want[name].abs().max()), float(got[name].abs().max())) <= 1e-6 * scale, name
        else:
            assert want[name].abs().max() > 1e-6 * scale and rels[name] <= 1e-5, name
    for model in (ref, ours):
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0).step()
    with torch.no_grad():
        assert _rel(ours(**inputs).sample, ref(**inputs).sample) <= 1e-5


def test_autograd_rules_and_errors():
    cfg = dict(num_attention_heads=2, attention_head_dim=8, num_layers=1, cross_attention_dim=16, sample_size=8,
               caption_channels=12, video_length=3)
    m = LatteT2VModule(cfg, seed=1)
    inputs = _inputs(m.config.to_dict(), batch=1)
    out = m(**inputs).sample
    out.sum().backward(retain_graph=True)
    first = m.get_parameter("proj_out.weight").grad.clone()
    out.sum().backward()  # the graph was retained: gradients add up
    torch.testing.assert_close(m.get_parameter("proj_out.weight").grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()
    # An independent copy (an EMA): same outputs, its own memory.
    ema = copy.deepcopy(m)
    with torch.no_grad():
        assert torch.equal(ema(**inputs).sample, m(**inputs).sample)
        ema.get_parameter("proj_out.bias").add_(1.0)
        assert not torch.equal(ema(**inputs).sample, m(**inputs).sample)
    with pytest.raises(ValueError, match="encoder_attention_mask: a mask that drops caption tokens"):
        m(**inputs, encoder_attention_mask=torch.tensor([[1, 1, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="encoder_hidden_states: gradients towards the caption features"):
        m(**{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone().requires_grad_(True)})
    with pytest.raises(ValueError, match="timestep: required"):
        m(inputs["hidden_states"], encoder_hidden_states=inputs["encoder_hidden_states"])
    with pytest.raises(TypeError, match="torch_dtype: LatteT2VModule runs torch.float32 or torch.float64"):
        LatteT2VModule.from_pretrained(TINY_T2V, subfolder="transformer", torch_dtype=torch.float16)
    assert LatteT2VModule.from_pretrained(TINY_T2V, subfolder="transformer", torch_dtype="float64").dtype == \
        torch.float64
    m.get_parameter("proj_out.bias").data = torch.zeros(8)
    with pytest.raises(RuntimeError, match="'proj_out.bias' no longer shares memory"):
        m(**inputs)
    with pytest.raises(TypeError, match="model: expected a latte_rs.LatteT2VTransformer"):
        LatteT2VModule(model=latte_rs.LatteModel(latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2)))


def test_gradient_checkpointing_is_refused_as_diffusers_refuses_it():
    """diffusers' training scripts call ``enable_gradient_checkpointing()``; this module does not checkpoint, so
    it refuses as diffusers' own models without support do (a ValueError), rather than training without it."""
    module = LatteT2VModule.from_pretrained(TINY_T2V / "transformer")
    assert module._supports_gradient_checkpointing is False
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        module.enable_gradient_checkpointing()
