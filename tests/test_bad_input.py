"""Bad input and faults at the boundaries: every case ends as one typed error (one
``error:`` line on the command line, no traceback) and nothing good is lost.

Each test names the hole it closes; the command-line ones call ``interp.cli.main`` in
this process (the same code path as ``python -m interp``, without a new interpreter per
case).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from interp.cli import main
from interp.errors import (
    ArtifactCorruptError,
    ConfigError,
    JobError,
    ModelLoadError,
    NonFiniteError,
    PromptError,
)
from interp.store import Store


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run a command in this process; (exit code, stderr). Asserts the error contract:
    on failure exactly one ``error:`` line and no traceback."""
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if rc != 0:
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1, err
    return rc, err


# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("argv,want", [
    (["models", "check", "organism:base", "--device", "tpu"], "unknown device 'tpu'"),
    (["adapters", "train", "--set", "steps=abc"], "steps must be an integer, got 'abc'"),
    (["adapters", "train", "--set", "lr=nan"], "lr must be a finite number"),
    (["adapters", "train", "--set", "max_len=0"], "max_len must be >= 2"),
    (["adapters", "train", "--set", "stepz=3"], "unknown training option(s): stepz"),
    (["adapters", "sweep", "--set", "l1_values=[0.1, \"x\"]"], "l1_values[1] must be a number"),
    (["length", "build", "--set", "n_eval=abc"], "n_eval must be an integer"),
    (["length", "build", "--set", "top_p=2"], "top_p must be <= 1"),
    (["jobs", "submit", "adapters.train", "--spec", "{steps: 3"], "--spec is not valid JSON"),
    (["jobs", "submit", "adapters.train", "--spec", "[1, 2]"], "--spec must be a JSON object"),
    (["jobs", "submit", "vectors.sweep", "--spec", '{"alphas": [1, NaN]}'],
     "alphas[1] must be a finite number"),
    (["vectors", "stats", "--layers", "1-x"], "--layers must be an integer"),
])
def test_bad_command_line_values_are_one_error_line(capsys, tmp_cache, argv, want):
    """Hole: --device tpu, malformed --spec JSON, --set key=abc with a wrong type printed
    tracebacks; each is now one line naming the option."""
    rc, err = _cli(capsys, *argv)
    assert rc == 1 and want in err, err


def test_unavailable_mps_is_one_error_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    rc, err = _cli(capsys, "models", "check", "organism:base", "--device", "mps")
    assert rc == 1 and "MPS" in err and "not available" in err


def test_unexpected_exception_is_one_line(capsys, monkeypatch):
    import interp.store_cli as sc

    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(sc, "_cmd_check", boom)
    rc, err = _cli(capsys, "store", "check")
    assert rc == 1 and "unexpected ZeroDivisionError" in err and "-v" in err


# ------------------------------------------------------------------ models
def _without_layer(src: Path, dst: Path, layer: int) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if f"layers.{layer}." not in k},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_checkpoint_missing_a_layer_is_refused(tmp_path, tiny_qwen_dir, capsys):
    """Hole: a checkpoint whose config says 2 layers but whose weights lack one loaded
    with random weights and `models check` said ok."""
    from interp.models import load_model

    bad = _without_layer(tiny_qwen_dir, tmp_path / "bad", 1)
    with pytest.raises(ModelLoadError, match=r"lack \d+ weight tensor"):
        load_model(str(bad), device="cpu")
    rc, err = _cli(capsys, "models", "check", str(bad), "--device", "cpu")
    assert rc == 1 and "random weights" in err


# ------------------------------------------------------------------ vectors export
def test_vectors_export_refuses_a_non_empty_folder_and_nan_alpha(tmp_path, tiny_pair_dirs,
                                                                  tiny_qwen_dir, capsys):
    """Holes: `vectors export --out DIR` deleted what DIR held; α = NaN was exported as an
    all-NaN checkpoint with exit 0."""
    from interp.vectors.task import TaskVector, export_edited_checkpoint

    tv = TaskVector.from_paths(*tiny_pair_dirs)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not empty"):
        export_edited_checkpoint(tiny_qwen_dir, tv, 1.0, out)
    assert (out / "thesis.tex").read_text() == "years of work"
    a, b = (str(p) for p in tiny_pair_dirs)
    rc, err = _cli(capsys, "vectors", "export", "--a", a, "--b", b, "--target",
                   str(tiny_qwen_dir), "--out", str(out))
    assert rc == 1 and "--force" in err and (out / "thesis.tex").exists()
    for alpha in ("nan", "inf"):
        rc, err = _cli(capsys, "vectors", "export", "--a", a, "--b", b, "--target",
                       str(tiny_qwen_dir), "--out", str(tmp_path / f"e-{alpha}"),
                       "--alpha", alpha)
        assert rc == 1 and "α must be a finite number" in err
        assert not (tmp_path / f"e-{alpha}").exists()
    with pytest.raises(NonFiniteError):       # finite α, overflowing weights
        export_edited_checkpoint(tiny_qwen_dir, tv, 1e39, tmp_path / "big")
    assert not (tmp_path / "big").exists()
    with pytest.raises(ConfigError, match="made from"):
        export_edited_checkpoint(tiny_qwen_dir, tv, 1.0, tiny_qwen_dir, overwrite=True)
    rc, _ = _cli(capsys, "vectors", "export", "--a", a, "--b", b, "--target",
                 str(tiny_qwen_dir), "--out", str(out), "--force")
    assert rc == 0 and not (out / "thesis.tex").exists()
    assert (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nan_alpha_is_refused_by_every_edit(tiny_pair_dirs, tiny_qwen_dir):
    from interp.models import load_model
    from interp.vectors.task import TaskVector, TaskVectorSweeper, apply_task_vector

    m = load_model(str(tiny_qwen_dir), device="cpu")
    tv = TaskVector.from_paths(*tiny_pair_dirs)
    before = {k: v.clone() for k, v in m.hooked.state_dict().items()}
    with pytest.raises(ConfigError), apply_task_vector(m, tv, float("nan")):
        pass
    with TaskVectorSweeper(m, tv) as sw, pytest.raises(ConfigError):
        sw.set_alpha(float("inf"))
    for k, v in m.hooked.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ adapters training
@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    from interp.models import load_model

    b, f = tiny_pair_dirs
    return (load_model(str(b), device="cpu", dtype="float32"),
            load_model(str(f), device="cpu", dtype="float32"))


def _spec(pair, tmp_path, **kw):
    base, reasoner = pair
    spec = dict(base=str(base.path), reasoner=str(reasoner.path), d_sae=16, steps=6,
                batch_size=4, max_len=12, data="random", ckpt_every=2, device="cpu",
                lr=3e-3, l1=1e-3, store_root=str(tmp_path / "store"), seed=5)
    spec.update(kw)
    return spec


def test_diverged_run_is_not_saved(pair, tmp_path):
    """Hole: a diverged run (lr 1e3, loss ~1e15) ended "done" and was saved and listed as
    a normal adapter set."""
    from interp import jobs

    st = jobs.run_inline("adapters.train", _spec(pair, tmp_path, lr=1e3, steps=30),
                         root=tmp_path / "j", raise_on_error=False)
    assert st.state == "failed" and "diverged" in st.error, st.error
    assert Store(tmp_path / "store").list("adapters") == []


def test_training_without_targets_is_refused(pair, tmp_path):
    """Hole: max_len=0 saved a run with loss 0."""
    from interp.adapters.train import TrainConfig

    for bad in (0, 1):
        with pytest.raises(ConfigError, match="max_len"):
            TrainConfig.from_dict(_spec(pair, tmp_path, max_len=bad))


def test_non_finite_adapter_weights_are_never_saved(pair, tmp_path):
    """Hole: weights were never checked for finiteness before a save."""
    from interp.adapters.io import save_adapters
    from interp.adapters.model import AdapterModel, build_hybrid
    from interp.adapters.module import AdapterSet
    from interp.adapters.train import Setup, TrainConfig

    base, reasoner = pair
    ad = AdapterSet(reasoner.n_layers, reasoner.cfg.d_model, 8, seed=0)
    with torch.no_grad():
        ad.layers[1].W_dec[3, 5] = float("nan")
    setup = Setup(AdapterModel(build_hybrid(base, reasoner), reasoner, ad), base, reasoner,
                  torch.device("cpu"), reasoner.tokenizer)
    store = Store(tmp_path / "s")
    with pytest.raises(NonFiniteError, match="1.W_dec"):
        save_adapters(setup, TrainConfig(base=str(base.path), reasoner=str(reasoner.path)),
                      store=store)
    assert store.list() == []


def test_rerunning_a_finished_config_keeps_its_artifact(pair, tmp_path):
    """Hole: re-running a finished training config overwrote a good artifact with an
    empty training summary. A rerun returns the saved result; even a forced rerun (the
    work folder already at the last step) leaves the artifact byte for byte."""
    from interp import jobs

    spec = _spec(pair, tmp_path)
    first = jobs.run_inline("adapters.train", spec, root=tmp_path / "j")
    art = Store(tmp_path / "store").load("adapters", first.result["key"])
    meta_bytes = (art.path / "meta.json").read_bytes()
    assert art.meta["training"]["final"]["loss"] > 0
    again = jobs.run_inline("adapters.train", spec, root=tmp_path / "j")
    forced = jobs.run_inline("adapters.train", spec, root=tmp_path / "j", force=True)
    assert again.result == first.result
    assert forced.result["key"] == first.result["key"] and forced.result["already_saved"]
    assert forced.result["final"] == art.meta["training"]["final"]
    assert (art.path / "meta.json").read_bytes() == meta_bytes


def test_adapter_save_stages_nothing_in_the_system_temp_dir(pair, tmp_path, monkeypatch):
    """Hole: a killed save left folders in the temp dir (the SAELens export was staged
    there). The export is written straight into the store's own temporary folder."""
    from interp.adapters.io import save_adapters
    from interp.adapters.model import AdapterModel, build_hybrid
    from interp.adapters.module import AdapterSet
    from interp.adapters.train import Setup, TrainConfig

    def no_temp(*a, **k):
        raise AssertionError("the system temp dir was used")

    monkeypatch.setattr(tempfile, "mkdtemp", no_temp)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp)
    base, reasoner = pair
    ad = AdapterSet(reasoner.n_layers, reasoner.cfg.d_model, 8, seed=0)
    setup = Setup(AdapterModel(build_hybrid(base, reasoner), reasoner, ad), base, reasoner,
                  torch.device("cpu"), reasoner.tokenizer)
    art = save_adapters(setup, TrainConfig(base=str(base.path), reasoner=str(reasoner.path)),
                        store=Store(tmp_path / "s"))
    assert sorted(p.name for p in art.path.iterdir()) == ["layer_0", "layer_1", "meta.json"]


# ------------------------------------------------------------------ corrupt vs missing
def test_corrupt_demo_artifact_is_not_reported_missing(tmp_path, monkeypatch, capsys):
    """Hole: a corrupt artifact was reported as missing, and `report` then suggested
    --recompute, which would overwrite it."""
    from interp.store import config_key
    from interp.vectors import demo
    from interp.vectors.demo import full_spec, sweep_config

    monkeypatch.setattr(demo, "DEMO_ROOT", tmp_path / "demo")
    cfg = json.loads(json.dumps(sweep_config(full_spec(None), "sweep")))
    key = config_key("vectors.sweep", cfg)
    d = tmp_path / "demo" / "vectors.sweep" / key
    d.mkdir(parents=True)
    (d / "meta.json").write_text('{"kind": "vectors.sweep", "comp')
    rc, err = _cli(capsys, "report", "vectors", "--json")
    assert rc == 1 and "unreadable metadata" in err and "store check" in err
    assert "--recompute" not in err
    with pytest.raises(ArtifactCorruptError):
        demo.find_part(None, "sweep", Store(tmp_path / "demo"))


# ------------------------------------------------------------------ prompts vs context
def test_text_longer_than_the_context_is_a_prompt_error(tiny_qwen_dir):
    """Hole: prompts longer than the context failed inside with IndexError (Python API,
    the vectors page's own text, the length build)."""
    from interp.models import load_model
    from interp.vectors.lens import layer_token_kl, trace_lens

    m = load_model(str(tiny_qwen_dir), device="cpu")
    toks = [5] * (m.cfg.n_ctx + 1)
    with pytest.raises(PromptError, match="context of 128"):
        trace_lens(m, toks, lambda: torch.no_grad())
    with pytest.raises(PromptError, match="context of 128"):
        layer_token_kl(m, toks, lambda: torch.no_grad())


def test_length_build_with_long_prompts_is_one_error_line(tmp_cache, tiny_qwen_dir, capsys):
    long_prompt = " ".join(["1"] * 200) + " <think>"
    rc, err = _cli(capsys, "length", "build", "--model", str(tiny_qwen_dir), "--device", "cpu",
                   "--set", "source=prompts", "--set", f"prompts={json.dumps([long_prompt])}",
                   "--set", "n_direction=1")
    assert rc == 1 and "context of 128" in err


def test_job_kind_validation_happens_before_a_worker_starts(tmp_path):
    from interp import jobs

    with pytest.raises(ConfigError, match="steps must be an integer"):
        jobs.submit("adapters.train", {"steps": "abc"}, root=tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(JobError, match="unknown job kind"):
        jobs.submit("no.such", {}, root=tmp_path)
