"""`latte-rs ablate` (latte_rs.ablation): the studies' configurations, reproducibility, resuming, the files and the
refusals. Tiny models, two or three steps: the whole file runs in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latte_rs import ablation, cli
from latte_rs.ablation import BASE_MODEL, STUDIES, ablate, flops_per_step, study_configurations
from latte_rs.training import load_config, model_config

# A model and data small enough for a step in milliseconds: 4 frames of 8x8 pixels, patches of 4, width 16.
TINY = dict(model={"hidden_size": 16, "num_heads": 2, "depth": 2},
            dataset={"dataset": "synthetic_time", "num_frames": 4, "image_size": 8, "local_batch_size": 2,
                     "num_clips": 32, "lr_warmup_steps": 0},
            eval_clips=2, sampling_steps=2, fvd=False, progress=False)

EXPECTED = {
    "variants": {"base": {}, "variant-2": {"variant": 2}, "variant-3": {"variant": 3}, "variant-4": {"variant": 4}},
    "patch": {"base": {}, "tubelet": {"patch_embed": "tubelet", "tubelet_size": 2}},
    "injection": {"base": {}, "all-tokens": {"injection": "tokens"}},
    "temporal": {"base": {}, "rope": {"temporal_position": "rope"}},
    "joint": {"base": {}, "joint": {"use_image_num": ablation.JOINT_IMAGES}, "image-init": {"image_init": True}},
}


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_names_its_configurations_with_one_factor_changed(study: str) -> None:
    configurations = study_configurations(study)
    assert configurations[0].key == "base" and not configurations[0].changes
    if study == "size":
        assert [c.key for c in configurations] == ["base", "size-B", "size-L", "size-XL"]
        for c in configurations[1:]:  # the one factor is the size: width, blocks and heads together
            assert set(c.changes) == {"hidden_size", "depth", "num_heads"}
            assert c.model_options(BASE_MODEL) == {**BASE_MODEL, **c.changes}
        widths = [c.model_options(BASE_MODEL)["hidden_size"] for c in configurations]
        assert widths == sorted(widths) and len(set(widths)) == 4
        return
    assert {c.key: dict(c.changes) for c in configurations} == EXPECTED[study]
    for c in configurations[1:]:
        options = c.model_options(BASE_MODEL)
        differing = {k for k in options if options[k] != BASE_MODEL.get(k)}
        assert differing == set(c.changes) - {"use_image_num", "image_init"}


def test_the_base_is_the_papers_best() -> None:
    assert {k: BASE_MODEL[k] for k in ("variant", "patch_embed", "injection", "temporal_position")} == {
        "variant": 1, "patch_embed": "frame", "injection": "adaln", "temporal_position": "absolute"}


def test_flops_follow_the_token_counts() -> None:
    cfg = load_config({**ablation.BASE_TRAINING, "model_config": BASE_MODEL})

    def flops(**changes):
        return flops_per_step(model_config({**cfg, "model_config": {**BASE_MODEL, **changes}}), 1)

    base = flops()
    assert flops(patch_embed="tubelet", tubelet_size=2) < 0.6 * base  # half the tokens
    assert flops(variant=4) < flops(variant=3) < base  # fewer MLPs, then one attention per block
    sizes = [flops(**c.changes) for c in study_configurations("size")]
    assert sizes == sorted(sizes)
    assert flops_per_step(model_config(cfg.copy() | {"model_config": BASE_MODEL}), 4) == 4 * base


def _table_without_timing(path: Path) -> str:
    """results.md without its last column (seconds per step, measured)."""
    return "\n".join(line.rsplit("|", 2)[0] if line.startswith("|") else line for line in path.read_text().splitlines())


def test_every_study_runs_and_writes_its_table_and_plot(tmp_path: Path) -> None:
    result = ablate("all", steps=2, seeds=1, eval_every=2, output_dir=tmp_path, **TINY)
    results = json.loads((tmp_path / "results.json").read_text())
    table = (tmp_path / "results.md").read_text()
    for study in STUDIES:
        assert (tmp_path / f"{study}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = results["studies"][study]["configurations"]
        assert [r["key"] for r in rows] == [c.key for c in study_configurations(study, result.results["settings"][
            "base_model"])]
        assert all(r["seeds_finished"] == 1 and r["final"]["pixel_fd"]["n"] == 1 for r in rows)
        assert f"## {study}" in table and results["studies"][study]["paper"] in table
    # The base, in every study, trained once; the image-init configuration's image model besides.
    keys = {c.key for s in STUDIES for c in study_configurations(s, BASE_MODEL | TINY["model"])}
    assert {p.name for p in (tmp_path / "runs").iterdir()} == keys | {"image-pretrain"}
    evals = json.loads((tmp_path / "runs" / "base" / "seed-0" / "evals.json").read_text())
    assert [e["step"] for e in evals] == [2] and {"direction", "motion_consistency"} <= set(evals[0])
    assert result.plots == [tmp_path / f"{s}.png" for s in STUDIES]


def test_same_seed_same_table_and_an_interrupted_study_resumes(tmp_path: Path, monkeypatch) -> None:
    ablate("temporal", steps=2, seeds=2, eval_every=1, output_dir=tmp_path / "whole", **TINY)

    # Interrupt the same study in the second seed of its second configuration, mid-run (after its first chunk of
    # training, before that chunk's evaluation).
    calls = []
    evaluate = ablation._evaluate

    def failing(model, out, settings, seed):
        calls.append(seed)
        if len(calls) == 2 * 2 + 2 + 1:  # base: 2 seeds x 2 evaluations; rope seed 0: 2; rope seed 1: the first
            raise KeyboardInterrupt
        return evaluate(model, out, settings, seed)

    monkeypatch.setattr(ablation, "_evaluate", failing)
    with pytest.raises(KeyboardInterrupt):
        ablate("temporal", steps=2, seeds=2, eval_every=1, output_dir=tmp_path / "cut", **TINY)
    monkeypatch.setattr(ablation, "_evaluate", evaluate)
    cut = tmp_path / "cut"
    assert not (cut / "runs" / "rope" / "seed-1" / "evals.json").exists()
    assert (cut / "runs" / "rope" / "seed-1" / "checkpoints" / "0000001").is_dir()

    trained = []
    train = ablation.train
    monkeypatch.setattr(ablation, "train", lambda cfg, **kw: trained.append((kw["output_dir"], kw["max_steps"]))
                        or train(cfg, **kw))
    ablate("temporal", steps=2, seeds=2, eval_every=1, output_dir=cut, **TINY)
    # Finished runs are not touched; the interrupted one continues from its checkpoint.
    assert trained == [(cut / "runs" / "rope" / "seed-1", step) for step in (1, 2)]
    assert _table_without_timing(cut / "results.md") == _table_without_timing(tmp_path / "whole" / "results.md")
    for key in ("base", "rope"):
        for seed in (0, 1):
            whole = json.loads((tmp_path / "whole" / "runs" / key / f"seed-{seed}" / "evals.json").read_text())
            resumed = json.loads((cut / "runs" / key / f"seed-{seed}" / "evals.json").read_text())
            timing = ("train_seconds", "eval_seconds")
            assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
                [{k: v for k, v in r.items() if k not in timing} for r in whole]


def test_the_shapes_data_is_scored_by_colour_and_shape(tmp_path: Path) -> None:
    shapes = {**TINY, "dataset": {**TINY["dataset"], "dataset": "synthetic", "label_by": "shape",
                                  "class_colours": True}}
    ablate("injection", steps=1, seeds=1, eval_every=1, output_dir=tmp_path, **shapes)
    evals = json.loads((tmp_path / "runs" / "base" / "seed-0" / "evals.json").read_text())
    assert {"colour", "shape", "motion_consistency", "pixel_fd"} <= set(evals[0]) and "direction" not in evals[0]
    reference = json.loads((tmp_path / "reference.json").read_text())
    assert reference["real_colour"] == 1.0


def test_a_study_folder_resumes_only_with_the_same_settings(tmp_path: Path) -> None:
    ablate("injection", steps=1, seeds=1, eval_every=1, output_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match=r"output_dir: .* steps=1; expected the same settings .* steps=2"):
        ablate("injection", steps=2, seeds=1, eval_every=1, output_dir=tmp_path, **TINY)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(study="sizes"), r"study: expected one of variants, .* or all, got 'sizes'"),
    (dict(steps=0), r"steps: expected an int >= 1, got 0"),
    (dict(seeds=1.5), r"seeds: expected an int >= 1, got 1.5"),
    (dict(eval_every=5, steps=4), r"eval_every: expected at most steps \(4\), got 5"),
    (dict(eval_clips=1), r"eval_clips: expected an int >= 2, got 1"),
    (dict(guidance_scale=0.5), r"guidance_scale: expected a finite number >= 1, got 0.5"),
    (dict(dataset="ucf"), r"dataset: expected one of synthetic_time, synthetic or a training config file, got 'ucf'"),
    (dict(dataset={"pixel_space": False}), r"dataset: .* pixel_space: true, got pixel_space: false"),
    (dict(dataset={"learning_rte": 1}), r"config: unknown keys \['learning_rte'\]"),
])
def test_bad_arguments_are_refused_by_name(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ablate(**{"output_dir": tmp_path, "progress": False, **kwargs})
    assert not (tmp_path / "ablation.json").exists()


# Run under torchrun by the test below: the study with TINY's settings, logging (per rank) every file ablate writes
# itself and every training call it makes.
TORCHRUN_SCRIPT = """
import json, os, sys
from pathlib import Path
from latte_rs import ablation

out, log = Path(sys.argv[1]), Path(sys.argv[2]) / f"rank-{os.environ['RANK']}.log"
write, train = ablation.atomic_write_text, ablation.train

def logged_write(path, text):
    with open(log, "a") as f:
        f.write(f"write {Path(path).relative_to(out)}\\n")
    write(path, text)

def logged_train(cfg, **kw):
    with open(log, "a") as f:
        f.write(f"train {Path(kw['output_dir']).relative_to(out)} {kw['max_steps']}\\n")
    return train(cfg, **kw)

ablation.atomic_write_text, ablation.train = logged_write, logged_train
ablation.ablate("temporal", steps=2, seeds=1, eval_every=1, output_dir=out, **json.loads(sys.argv[3]))
"""


def _torchrun(script: Path, out: Path, log: Path) -> subprocess.CompletedProcess:
    """The study of TORCHRUN_SCRIPT on two gloo ranks over loopback, started by torchrun."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log.mkdir(exist_ok=True)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), str(out), str(log),
                           json.dumps(TINY)], capture_output=True, text=True, timeout=180, env=env)


def test_torchrun_trains_on_every_rank_and_rank_0_evaluates_writes_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script, out, log = tmp_path / "study.py", tmp_path / "study", tmp_path / "log"
    script.write_text(TORCHRUN_SCRIPT)
    done = _torchrun(script, out, log)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["world_size"] == 2
    table = (out / "results.md").read_text()
    assert table.startswith("# Latte design study (synthetic_time, 2 steps, 1 seeds, 2 processes)")
    assert (out / "temporal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = results["studies"]["temporal"]["configurations"]
    assert [r["seeds_finished"] for r in rows] == [1, 1]
    # A step is 2 ranks x local_batch_size clips: the FLOPs count both.
    cfg = load_config({**ablation.BASE_TRAINING, **TINY["dataset"], "model_config": BASE_MODEL | TINY["model"]})
    assert rows[0]["flops_per_step"] == flops_per_step(model_config(cfg), 2 * TINY["dataset"]["local_batch_size"])
    for key in ("base", "rope"):
        evals = json.loads((out / "runs" / key / "seed-0" / "evals.json").read_text())
        assert [e["step"] for e in evals] == [1, 2] and "direction" in evals[0]
        manifest = json.loads((out / "runs" / key / "seed-0" / "checkpoints" / "0000002" / "trainer.json").read_text())
        assert manifest["step"] == 2 and len(manifest["rank_rngs"]) == 2  # trained data-parallel
    # Both ranks trained every chunk, in the same order; only rank 0 wrote ablate's files.
    first = {rank: (log / f"rank-{rank}.log").read_text().splitlines() for rank in (0, 1)}
    trains = [f"train runs/{key}/seed-0 {step}" for key in ("base", "rope") for step in (1, 2)]
    assert [line for line in first[0] if line.startswith("train")] == trains
    assert first[1] == trains
    writes = [line for line in first[0] if line.startswith("write")]
    assert {"write ablation.json", "write reference.json", "write results.json", "write results.md",
            "write runs/base/seed-0/evals.json", "write runs/rope/seed-0/evals.json"} == set(writes)

    # Rerunning the command resumes: nothing trains again, the runs' files are untouched.
    runs = {p: p.read_bytes() for p in (out / "runs").rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    for f in log.iterdir():
        f.unlink()
    again = _torchrun(script, out, log)
    assert again.returncode == 0, again.stderr[-4000:]
    second = {rank: (log / f"rank-{rank}.log").read_text().splitlines() if (log / f"rank-{rank}.log").exists()
              else [] for rank in (0, 1)}
    assert not [line for rank in (0, 1) for line in second[rank] if line.startswith("train")]
    assert second[1] == []
    assert {p: p.read_bytes() for p in (out / "runs").rglob("*") if p.is_file()} == runs
    assert {p: p.stat().st_mtime_ns for p in runs} == mtimes
    assert json.loads((out / "results.json").read_text())["studies"] == results["studies"]

    # The world size is a setting of the study: one process does not resume it.
    with pytest.raises(ValueError, match=r"output_dir: .* world_size=2; expected the same settings .* world_size=1"):
        ablate("temporal", steps=2, seeds=1, eval_every=1, output_dir=out, **TINY)


def test_the_command_line_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["ablate", "--study", "sizes"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--study: invalid choice: 'sizes'" in err
    assert cli.main(["ablate", "--dataset", "ucf", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latte-rs: error: dataset: expected one of")


def test_the_command_runs_a_study(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY["dataset"]))
    # The command line has no model-size option: a training config sets the data, the study the model.
    done = subprocess.run([sys.executable, "-m", "latte_rs.cli", "ablate", "--study", "temporal", "--dataset",
                           str(config), "--steps", "1", "--seeds", "1", "--eval-every", "1", "--eval-clips", "2",
                           "--sampling-steps", "1", "--no-fvd", "--no-progress", "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "## temporal" in done.stdout and (tmp_path / "o" / "temporal.png").is_file()
