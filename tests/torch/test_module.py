"""latte_rs.torch: the torch.nn.Module face over the Rust core, against the official PyTorch model and train step.

The golden file comes from tests/torch/fixtures/make_torch_module_golden.py, which runs the official Latte code (model,
create_diffusion, AdamW, clip_grad_norm_, update_ema); with LATTE_REPO set the comparison also runs live.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import latte_rs  # noqa: E402
from conftest import fixture_script, load_official_case  # noqa: E402
from latte_rs.torch import LatteModule, TorchDiffusion, create_diffusion, update_ema  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _script():
    return fixture_script(FIXTURES / "make_torch_module_golden.py")


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURES / "torch_module.npz") as z:
        return {k: z[k] for k in z.files}


def _module(golden) -> LatteModule:
    m = LatteModule(latte_rs.LatteConfig(**json.loads(str(golden["config"]))))
    m.load_state_dict({k[5:]: torch.from_numpy(golden[k]) for k in golden if k.startswith("init/")})
    return m


def _inputs(golden) -> dict:
    return {k: golden[k] for k in ("x", "t", "y", "w", "batches", "labels", "timesteps", "noise")}


def _check_gradients(m, golden, want) -> None:
    got = _script().gradients(m, _inputs(golden))
    names = [k for k in want if k.startswith("grad/")]
    assert len(names) == len(m.core.trainable_parameter_names)
    for k in [*names, "grad_x", "out"]:
        rel = np.linalg.norm(got[k] - want[k]) / np.linalg.norm(want[k])
        assert rel < 1e-5, (k, rel)
        assert np.abs(got[k]).max() > 0, k  # every parameter receives a gradient


def test_state_dict_has_the_official_keys_in_the_official_order(golden):
    m = _module(golden)
    official = [k[5:] for k in golden if k.startswith("init/")]
    assert list(m.state_dict()) == official
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == set(m.core.trainable_parameter_names)
    assert {"pos_embed", "temp_embed"} <= set(official) - trainable  # fixed tables, as the official Parameters


def test_gradients_equal_the_official_model(golden):
    _check_gradients(_module(golden), golden, golden)


def test_official_train_step_twenty_steps_equal_the_official_model(golden):
    m = _module(golden)
    got = _script().train_loop(m, create_diffusion(timestep_respacing=""), _inputs(golden))
    np.testing.assert_allclose(got["loss"], golden["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], golden["grad_norm"], rtol=1e-5)
    assert abs(golden["loss"][-1] - golden["loss"][0]) > 1e-3  # the steps did something
    for k in golden:
        if k.startswith(("final/", "ema/")):
            np.testing.assert_allclose(got[k], golden[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The Rust model is the module's parameters: it computes with the trained weights.
    state = m.core.state_dict()
    for k in golden:
        if k.startswith("final/"):
            np.testing.assert_array_equal(state[k[6:]], got[k])


@pytest.mark.skipif(not os.environ.get("LATTE_REPO"), reason="set LATTE_REPO to an official Latte checkout")
def test_live_against_the_official_code(golden):
    live = _script().reference(Path(os.environ["LATTE_REPO"]))
    m = _module(live)
    _check_gradients(m, live, live)
    got = _script().train_loop(_module(live), create_diffusion(timestep_respacing=""), _inputs(live))
    np.testing.assert_allclose(got["loss"], live["loss"], rtol=1e-5)


def test_forward_matches_the_core_and_sees_in_place_updates(rng):
    cfg = latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2, input_size=8, num_frames=2, num_classes=3)
    m = LatteModule(cfg, seed=1)
    x = rng.standard_normal((2, 2, 4, 8, 8)).astype(np.float32)
    t, y = np.array([3, 700]), np.array([0, 2])
    m.eval()
    np.testing.assert_array_equal(m(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).detach().numpy(),
                                  m.core(x, t, y))
    with torch.no_grad():
        m.final_layer.linear.bias.add_(0.5)
    np.testing.assert_array_equal(m.core.state_dict()["final_layer.linear.bias"],
                                  m.final_layer.linear.bias.detach().numpy())
    with_cfg = m.forward_with_cfg(torch.from_numpy(x), torch.from_numpy(t), torch.tensor([1, 3]), cfg_scale=4.0)
    want = m.core.forward_with_cfg(x, t, np.array([1, 3]), 4.0)
    np.testing.assert_allclose(with_cfg.detach().numpy(), want, atol=1e-6)


def test_deepcopy_is_an_independent_model():
    m = LatteModule(latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2, input_size=8, num_frames=2))
    ema = copy.deepcopy(m).requires_grad_(False)
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        m.x_embedder.proj.bias.add_(1.0)
    assert not torch.equal(m.x_embedder.proj.bias, ema.x_embedder.proj.bias)
    update_ema(ema, m, decay=0.0)
    assert torch.equal(m.x_embedder.proj.bias, ema.x_embedder.proj.bias)
    np.testing.assert_array_equal(ema.core.state_dict()["x_embedder.proj.bias"],
                                  m.x_embedder.proj.bias.detach().numpy())


def test_float64_module_passes_a_finite_difference_check():
    cfg = latte_rs.LatteConfig(depth=2, hidden_size=16, num_heads=2, input_size=4, num_frames=2, patch_size=2,
                               learn_sigma=False)
    m = LatteModule(cfg, seed=3, dtype="float64")
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([500])

    def f(x, w, b):
        m.final_layer.linear.weight.data.copy_(w)
        return (m(x, t) * b).sum()

    # torch's gradcheck through the Rust backward, towards the input.
    w0 = m.final_layer.linear.weight.detach().clone()
    b = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: (m(x, t) * b).sum(), (x,), eps=1e-6, atol=1e-6)
    # And towards a parameter: central differences on a few entries.
    loss = f(x.detach(), w0, b)
    loss.backward()
    g = m.final_layer.linear.weight.grad.clone()
    for idx in [(0, 0), (3, 5), (7, 15)]:
        w = w0.clone()
        w[idx] += 1e-6
        up = f(x.detach(), w, b).item()
        w[idx] -= 2e-6
        down = f(x.detach(), w, b).item()
        assert abs((up - down) / 2e-6 - g[idx].item()) < 1e-5 * max(1.0, abs(g[idx].item()))
    m.final_layer.linear.weight.data.copy_(w0)


def test_bad_use_gets_a_clear_error():
    cfg = latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2, input_size=8, num_frames=2)
    m = LatteModule(cfg)
    x, t = torch.randn(1, 2, 4, 8, 8), torch.tensor([5])
    out = m(x, t)
    out.sum().backward(retain_graph=True)  # torch's rules: a retained graph runs backward again
    first = m.final_layer.linear.weight.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(m.final_layer.linear.weight.grad, 2 * first)
    ref = out.grad_fn.graph
    assert ref() is None  # the Rust graph (the activations) is freed with torch's saved tensors
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(m(xg, t).sum(), xg, create_graph=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        LatteModule(model=latte_rs.LatteModel(cfg, dtype="bfloat16"))
    with pytest.raises(TypeError, match="text_embedding"):
        m(x, t, text_embedding=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="use_fp16"):
        m(x, t, use_fp16=True)
    with pytest.raises(ValueError, match="x: expected"):
        m(torch.randn(1, 3, 4, 8, 8), t)
    m.double()
    with pytest.raises(RuntimeError, match="no longer shares memory"):
        m(x.double(), t)
    with pytest.raises(TypeError, match="pickle"):
        import pickle

        pickle.dumps(LatteModule(cfg))


def test_torch_diffusion_matches_the_native_loss(rng):
    """TorchDiffusion.training_losses equals GaussianDiffusion.training_losses on the same model output."""
    d = latte_rs.GaussianDiffusion()
    td = TorchDiffusion(d)
    x0 = rng.standard_normal((3, 2, 4, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    out = rng.standard_normal((3, 2, 8, 4, 4)).astype(np.float32) * 0.5
    t = np.array([0, 10, 999])
    got = td.training_losses(lambda x_t, ts: torch.from_numpy(out), torch.from_numpy(x0), torch.from_numpy(t),
                             noise=torch.from_numpy(noise))
    want = d.training_losses(out, x0, t, noise)
    for k in ("loss", "mse", "vb"):
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_image_video_joint_forward_equals_the_official_latte_img():
    """latte_img's forward(x, t, y, y_image=[...], use_image_num) on the official golden case (train mode)."""
    case = load_official_case("v1_img_class")
    m = LatteModule(latte_rs.LatteConfig(**case["config"]))
    m.load_state_dict({k: torch.from_numpy(v) for k, v in case["params"].items()})
    m.train()  # class_dropout_prob is 0 in this case: no labels are dropped
    y_image = list(torch.from_numpy(case["y_image"]).unbind(0))  # the official code's list of per-clip labels
    out = m(torch.from_numpy(case["x"]), torch.from_numpy(case["t"]), torch.from_numpy(case["y"]), y_image=y_image,
            use_image_num=case["config"]["use_image_num"])
    np.testing.assert_allclose(out.detach().numpy(), case["out"], rtol=1e-4, atol=2e-5)


def test_from_checkpoint_and_state_dict_round_trip(tmp_path):
    cfg = latte_rs.LatteConfig(depth=2, hidden_size=32, num_heads=2, input_size=8, num_frames=2, num_classes=3)
    m = LatteModule(cfg, seed=4)
    m.core.save(tmp_path / "m.safetensors")
    loaded = LatteModule.from_checkpoint(tmp_path / "m.safetensors")
    for (n, p), (n2, q) in zip(m.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == n2 and torch.equal(p, q)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    fresh = LatteModule(cfg, seed=9)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"))
    np.testing.assert_array_equal(fresh.core.state_dict()["blocks.0.attn.qkv.weight"],
                                  m.core.state_dict()["blocks.0.attn.qkv.weight"])
