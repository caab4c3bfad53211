"""Hugging Face Hub ids wherever a path is accepted (``latte_rs.hub``), offline: every loader, both pipelines, the
training config and the CLI read the project's own tiny models from a cache laid out as huggingface_hub lays it
out (hub_cache.py), with revisions (a tag, a commit hash) and subfolders; a local path of the same spelling wins;
an id missing offline, and an id without huggingface_hub installed, are errors that say what to do."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

import latte_rs
from conftest import TINY_VAE, fixture_script
from latte_rs import hub
from latte_rs.cli import main
from latte_rs.demo import TINY_MODEL
from latte_rs.tiny_t2v import TINY_T2V

huggingface_hub = pytest.importorskip("huggingface_hub")
torch = pytest.importorskip("torch")
# A helper module beside this one (the suite's importlib mode puts only tests/ on the path).
hub_cache = fixture_script(Path(__file__).parent / "hub_cache.py")
add_commit, folder_files = hub_cache.add_commit, hub_cache.folder_files

T2V = "latte-rs/tiny-t2v"
MODELS = "latte-rs/tiny-models"
TRANSFORMER_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@dataclass
class Cache:
    root: Path
    t2v_v0: str  # the commit the tag "v0" of T2V names: its transformer's weights halved
    models_old: str  # a commit of MODELS no ref names (reached by its hash): tiny_synthetic.safetensors re-drawn


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    """Two repositories: T2V, the built-in text-to-video pipeline folder (main) and a tag v0 whose transformer
    differs; MODELS, the built-in class model file, an official-format ``.pt`` of it under ``official/``, the
    same model as a ``LatteModel.save`` file under ``latte/`` and the tiny VAE under ``vae/`` (main), and an
    older commit with a re-drawn model file."""
    root = tmp_path_factory.mktemp("hf") / "hub"
    pipeline = folder_files(TINY_T2V)
    v0 = dict(pipeline)
    halved = {k: v * np.float32(0.5) for k, v in load_safetensors(pipeline[TRANSFORMER_WEIGHTS]).items()}
    v0[TRANSFORMER_WEIGHTS] = save_safetensors(halved)
    t2v_v0 = add_commit(root, T2V, v0, refs=("v0",))
    add_commit(root, T2V, pipeline, refs=("main",))

    work = tmp_path_factory.mktemp("models")
    model = latte_rs.LatteModel.from_checkpoint(str(TINY_MODEL))
    torch.save({"ema": {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}},
               work / "tiny.pt")
    model.save(str(work / "model.safetensors"))
    latte_rs.LatteModel(model.config, seed=1).save(str(work / "redrawn.safetensors"))
    files = {"tiny_synthetic.safetensors": TINY_MODEL.read_bytes(), "official/tiny.pt": (work / "tiny.pt").read_bytes(),
             "latte/model.safetensors": (work / "model.safetensors").read_bytes(), **folder_files(TINY_VAE, "vae/")}
    models_old = add_commit(root, MODELS, {**files, "tiny_synthetic.safetensors": (work / "redrawn.safetensors")
                                           .read_bytes()})
    add_commit(root, MODELS, files, refs=("main",))
    return Cache(root, t2v_v0, models_old)


@pytest.fixture
def offline(cache, monkeypatch, tmp_path) -> Cache:
    """HF_HUB_CACHE at the cache and HF_HUB_OFFLINE=1, in the environment and in huggingface_hub's constants (read
    once at its import, which another test may have done); the working directory empty, so no local folder
    shadows an id unless a test makes one."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache.root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return cache


def test_the_cache_is_laid_out_as_huggingface_hub_lays_it_out(cache):
    info = {repo.repo_id: repo for repo in huggingface_hub.scan_cache_dir(cache.root).repos}
    assert set(info) == {T2V, MODELS}
    t2v = {rev.commit_hash: rev for rev in info[T2V].revisions}
    assert {ref for rev in t2v.values() for ref in rev.refs} == {"main", "v0"}
    assert "v0" in t2v[cache.t2v_v0].refs
    files = {f.file_name for rev in info[MODELS].revisions for f in rev.files}
    assert {"tiny.pt", "model.safetensors", "diffusion_pytorch_model.safetensors"} <= files
    snapshot = cache.root / "models--latte-rs--tiny-t2v" / "snapshots" / cache.t2v_v0
    link = snapshot / TRANSFORMER_WEIGHTS
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert huggingface_hub.snapshot_download(T2V, revision="v0", local_files_only=True,
                                             cache_dir=cache.root) == str(snapshot)


def test_the_text_to_video_loaders_resolve_ids_with_subfolder_and_revision(offline):
    local = latte_rs.LatteT2VTransformer.from_pretrained(TINY_T2V / "transformer")
    assert _same(latte_rs.LatteT2VTransformer.from_pretrained(T2V, subfolder="transformer"), local)
    assert _same(latte_rs.LatteT2VTransformer.from_pretrained(f"{T2V}/transformer"), local)
    assert _same(latte_rs.LatteT2VTransformer.from_checkpoint(T2V, subfolder="transformer"), local)
    old = latte_rs.LatteT2VTransformer.from_pretrained(T2V, subfolder="transformer", revision="v0")
    by_hash = latte_rs.LatteT2VTransformer.from_pretrained(T2V, subfolder="transformer", revision=offline.t2v_v0)
    assert _same(old, by_hash) and not _same(old, local)
    assert np.array_equal(_weights(old)["proj_out.weight"], _weights(local)["proj_out.weight"] * 0.5)
    assert latte_rs.LatteT2VConfig.from_pretrained(T2V, subfolder="transformer") == local.config
    assert latte_rs.open_model(T2V).kind == "text"  # the pipeline folder above the transformer
    encoder = latte_rs.T5TextEncoder.from_pretrained(T2V, subfolder="text_encoder", revision="v0")
    tokenizer = latte_rs.text.T5Tokenizer(T2V, subfolder="tokenizer")
    ids = tokenizer(["a red square moving left"], max_length=16)
    local_encoder = latte_rs.T5TextEncoder.from_pretrained(TINY_T2V / "text_encoder")
    assert np.array_equal(encoder(ids["input_ids"], ids["attention_mask"]),
                          local_encoder(ids["input_ids"], ids["attention_mask"]))


def test_the_torch_module_for_diffusers_resolves_ids(offline):
    """LatteT2VModule.from_pretrained takes what diffusers' LatteTransformer3DModel.from_pretrained takes."""
    pytest.importorskip("torch")
    from latte_rs.torch import LatteT2VModule

    local = LatteT2VModule.from_pretrained(TINY_T2V / "transformer")
    old = LatteT2VModule.from_pretrained(T2V, subfolder="transformer", revision="v0")
    assert np.array_equal(old.state_dict()["proj_out.weight"].numpy(),
                          local.state_dict()["proj_out.weight"].numpy() * 0.5)


def test_the_text_pipeline_from_an_id_samples_what_the_local_folder_samples(offline):
    kwargs = dict(num_inference_steps=2, seed=0, progress=False)
    local = latte_rs.LatteT2VPipeline.from_pretrained(TINY_T2V)("a red square moving left", **kwargs).frames
    assert np.array_equal(latte_rs.LatteT2VPipeline.from_pretrained(T2V)("a red square moving left", **kwargs).frames,
                          local)
    old = latte_rs.LatteT2VPipeline.from_pretrained(T2V, revision="v0")("a red square moving left", **kwargs).frames
    assert not np.array_equal(old, local)


def test_the_class_loaders_resolve_files_in_a_repository(offline):
    local = latte_rs.LatteModel.from_checkpoint(str(TINY_MODEL))
    assert _same(latte_rs.LatteModel.from_checkpoint(MODELS, filename="tiny_synthetic.safetensors"), local)
    assert _same(latte_rs.LatteModel.from_checkpoint(MODELS, subfolder="official", filename="tiny.pt", num_heads=4),
                 local)
    assert _same(latte_rs.LatteModel.from_checkpoint(f"{MODELS}/official/tiny.pt", num_heads=4), local)
    assert _same(latte_rs.LatteModel.load(MODELS, subfolder="latte", filename="model.safetensors"), local)
    old = latte_rs.LatteModel.from_checkpoint(MODELS, filename="tiny_synthetic.safetensors",
                                              revision=offline.models_old)
    assert not _same(old, local)
    opened = latte_rs.open_model(MODELS, filename="tiny_synthetic.safetensors", kind="latte")
    assert _same(opened.model, local)
    pipe = latte_rs.LattePipeline.from_pretrained(MODELS, filename="tiny_synthetic.safetensors")
    assert _same(pipe.model, local)
    vae = latte_rs.VideoVAE.from_pretrained(MODELS, subfolder="vae")
    frames = np.zeros((1, 2, 3, 16, 16), np.float32)
    assert np.array_equal(vae.encode(frames, sample=False), latte_rs.VideoVAE.from_pretrained(TINY_VAE)
                          .encode(frames, sample=False))


def test_the_cli_samples_from_ids(offline, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--steps", "2", "--format", "png", "--no-progress", "--output-dir", str(out)]
    assert main(["sample", MODELS, "--filename", "tiny_synthetic.safetensors", "--revision", offline.models_old,
                 "--classes", "0", *common]) == 0
    assert json.loads(capsys.readouterr().out)["videos"] == 1
    assert main(["sample", T2V, "--revision", "v0", "--prompt", "a red square moving left", *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 8 and (out / "grid.png").is_file()


def test_the_cli_encodes_and_trains_from_ids(offline, tmp_path, capsys):
    cache_dir = tmp_path / "latents"
    assert main(["encode", "--set", f"pretrained_model_path={MODELS}", "--set", "num_frames=2", "--set",
                 "image_size=16", "--set", "num_clips=2", "--output", str(cache_dir), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["clips"] == 2
    settings = dict(model="LatteT2V", dataset="synthetic_captions", pixel_space="true", video_length=8,
                    image_size=16, pretrained_model_path=T2V, revision="v0", model_max_length=16, num_clips=4,
                    local_batch_size=2, caption_dropout_prob=0.5)
    argv = ["train", "--steps", "1", "--output-dir", str(tmp_path / "run"), "--no-progress"]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1


def test_a_missing_id_offline_names_the_id_and_the_cache(offline):
    with pytest.raises(FileNotFoundError) as err:
        latte_rs.LatteT2VPipeline.from_pretrained("latte-rs/no-such-model")
    assert "latte-rs/no-such-model" in str(err.value) and str(offline.root) in str(err.value)
    with pytest.raises(FileNotFoundError, match="v9"):
        latte_rs.open_model(T2V, revision="v9")
    with pytest.raises(FileNotFoundError, match="missing.pt") as err:
        latte_rs.LatteModel.from_checkpoint(MODELS, filename="missing.pt")
    assert MODELS in str(err.value) and str(offline.root) in str(err.value)


def test_a_local_folder_of_the_same_spelling_wins(offline):
    shadow = Path(T2V)  # relative to the (empty) working directory
    shutil.copytree(TINY_T2V, shadow)
    weights = load_safetensors((shadow / TRANSFORMER_WEIGHTS).read_bytes())
    (shadow / TRANSFORMER_WEIGHTS).write_bytes(save_safetensors({k: -v for k, v in weights.items()}))
    shadowed = latte_rs.LatteT2VTransformer.from_pretrained(T2V, subfolder="transformer", revision="v0")
    assert np.array_equal(_weights(shadowed)["proj_out.weight"], -weights["proj_out.weight"])
    assert hub.resolve(T2V, subfolder="transformer") == shadow / "transformer"


def test_paths_that_are_no_ids_reach_the_loader_unchanged(offline):
    for path in ("missing.pt", "./a/b.pt", "/no/such/file.pt"):
        assert hub.resolve(path) == Path(path)
    Path("runs").mkdir()  # a typo under a local folder is a missing file, not a Hub repository "runs/..."
    assert not hub.is_hub_id("runs/missing.pt") and hub.is_hub_id(MODELS)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        latte_rs.LatteModel.from_checkpoint("runs/missing.pt")


def test_without_huggingface_hub_an_id_says_how_to_install_it(offline, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    for load in (lambda: latte_rs.LatteT2VPipeline.from_pretrained(T2V),
                 lambda: latte_rs.LatteModel.from_checkpoint(MODELS, filename="tiny_synthetic.safetensors"),
                 lambda: latte_rs.VideoVAE.from_pretrained(MODELS, subfolder="vae")):
        with pytest.raises(ImportError, match=r"pip install 'latte-rs\[hub\]'"):
            load()
    assert main(["sample", MODELS, "--filename", "tiny_synthetic.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latte-rs: error: CHECKPOINT:") and "pip install 'latte-rs[hub]'" in err
    assert latte_rs.open_model(TINY_MODEL).kind == "latte"  # local paths need no huggingface_hub
