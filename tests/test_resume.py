"""What a run folder may be continued with: the saved run's own settings, its own weights and
its own undamaged chunks; anything else is refused with one line naming what to do."""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kvjax.errors import CorruptFileError, KvjaxError
from kvjax.io.run_state import RunStore

# Two kernels of a layer deeper than the default one (192 kernels against 64), one per chunk.
ARGS = ["visualize", "--checkpoint", "w.ckpt", "--layer", "Conv3d_2c_3x3", "--kernels", "100,150",
        "--chunk", "1", "--size", "1,1,1", "--steps1", "1", "--steps2", "1"]


@pytest.fixture(scope="module")
def kvjax(tmp_path_factory):
    """Runs `python -m kvjax.cli ARGS` in the folder `cwd` (runs share a compilation cache,
    as in test_cli.py)."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla")))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))

    def run(*args, cwd):
        return subprocess.run([sys.executable, "-m", "kvjax.cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600)
    return run


@pytest.fixture(scope="module")
def finished(kvjax, tmp_path_factory):
    """A finished run in `run/`, made in the folder `ck/` with `--checkpoint w.ckpt` (a copy
    of the built-in I3D weights, given by a relative path)."""
    from kvjax.models.i3d import pretrained_path
    base = tmp_path_factory.mktemp("finished")
    (base / "ck").mkdir()
    shutil.copy(pretrained_path(), base / "ck" / "w.ckpt")
    r = kvjax(*ARGS, "--out", str(base / "run"), cwd=base / "ck")
    assert r.returncode == 0, r.stdout + r.stderr
    return base


def _copy_run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished / "run", out)
    return out


def _other_weights(path):
    """Write I3D weights other than the built-in ones (first kernel doubled) to `path`."""
    from kvjax.io import safe_pickle
    from kvjax.models.i3d import pretrained_path
    tree = safe_pickle.load(pretrained_path())
    tree["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"] *= 2
    with open(path, "wb") as f:
        pickle.dump(tree, f)


def _one_error_line(r, pattern):
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stdout + r.stderr
    assert err[0].startswith("kvjax visualize: error:") and pattern in err[0], err[0]


# -- the weights ----------------------------------------------------------------------------
def test_a_checkpoint_is_recorded_by_absolute_path_and_contents(finished):
    saved = json.loads((finished / "run" / "run.json").read_text())["checkpoint"]
    assert saved["path"] == str(finished / "ck" / "w.ckpt")
    assert len(saved["sha256"]) == 64


def test_the_same_path_text_from_elsewhere_is_not_the_same_weights(kvjax, finished, tmp_path):
    out = _copy_run(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _other_weights(elsewhere / "w.ckpt")
    run_json = (out / "run.json").read_text()
    r = kvjax(*ARGS, "--out", str(out), cwd=elsewhere)
    _one_error_line(r, "other settings (checkpoint differ); pass --resume")
    assert (out / "run.json").read_text() == run_json
    # --resume goes on with the weights the run started with, at their absolute path.
    r = kvjax(*ARGS, "--out", str(out), "--resume", cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ignoring the checkpoint given now" in r.stdout and "(2 already done)" in r.stdout
    assert (out / "run.json").read_text() == run_json


def test_weights_changed_at_the_checkpoint_path_are_refused(kvjax, finished, tmp_path):
    from kvjax.models.i3d import pretrained_path
    out = _copy_run(finished, tmp_path)
    run_json = (out / "run.json").read_text()
    weights = finished / "ck" / "w.ckpt"
    _other_weights(weights)
    try:
        for resume in ([], ["--resume"]):
            r = kvjax(*ARGS, "--out", str(out), *resume, cwd=finished / "ck")
            _one_error_line(r, f"the weights in {weights} changed since the run in {out} "
                               "started (sha256 ")
            assert "choose another --out for the new ones" in r.stderr
            assert (out / "run.json").read_text() == run_json
    finally:
        shutil.copy(pretrained_path(), weights)


def test_a_converted_checkpoint_is_identified_by_its_weights_not_its_files(tmp_path):
    """Converting the same file again writes new time stamps (manifest, orbax metadata): the
    identity stays, so a run can be resumed; other values, config or arch change it."""
    import time

    from kvjax.io import model_checkpoint
    from kvjax.io.run_state import weights_identity
    state = {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 1, 2, 3)}}
    ids = []
    for arch, config, scale in [("c3d", {"num_classes": 3}, 1), ("c3d", {"num_classes": 3}, 1),
                                ("c3d", {"num_classes": 3}, 2), ("c3d", {"num_classes": 4}, 1),
                                ("r3d_18", {"num_classes": 3}, 1)]:
        model_checkpoint.save(tmp_path / "ck", arch, {"conv": {"kernel": state["conv"]["kernel"]
                                                               * scale}}, {"config": config})
        ids.append(weights_identity(tmp_path / "ck")["sha256"])
        time.sleep(1.1)  # a new "created" second
    assert ids[0] == ids[1] and len(set(ids)) == 4
    # any other folder: its files' bytes
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "w.bin").write_bytes(b"1")
    before = weights_identity(tmp_path / "plain")["sha256"]
    (tmp_path / "plain" / "w.bin").write_bytes(b"2")
    assert weights_identity(tmp_path / "plain")["sha256"] != before


# -- the settings ---------------------------------------------------------------------------
def test_resume_checks_the_saved_settings_not_the_given_ones(kvjax, finished, tmp_path):
    """Kernel 150 is out of range of the default layer and the size cannot run coarse to
    fine: with --resume neither matters, the saved run's layer and sizes are checked."""
    out = _copy_run(finished, tmp_path)
    run_json = (out / "run.json").read_text()
    r = kvjax("visualize", "--out", str(out), "--resume", "--kernels", "150",
              "--size", "4,33,32", "--coarse-steps", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Conv3d_2c_3x3, 2 kernels; ignoring the kernels, overrides given now" in r.stdout
    assert "(2 already done)" in r.stdout and "0 chunk(s)" in r.stdout
    assert (out / "run.json").read_text() == run_json


# -- the chunks -----------------------------------------------------------------------------
def test_chunks_without_their_run_json_are_not_taken_for_another_run(kvjax, finished,
                                                                      tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(finished / "run" / "state", out / "state")  # no run.json, no pictures
    other = [a if a != "1,1,1" else "1,2,2" for a in ARGS]
    r = kvjax(*other, "--out", str(out), cwd=finished / "ck")
    _one_error_line(r, f"the saved chunk {out / 'state' / 'chunk-00100-00100-1'} was not "
                       "made with the settings of this run")
    assert "delete that folder" in r.stderr
    assert sorted(os.listdir(out)) == ["state"]


def test_a_chunk_of_another_run_is_refused_before_anything_is_written(tmp_path):
    mine, theirs = {"layer": "x", "kernels": [0, 1]}, {"layer": "y", "kernels": [0, 1]}
    RunStore(tmp_path / "b").start(theirs, resume=False)
    RunStore(tmp_path / "b").save_chunk({"kernels": np.array([1]), "v": np.ones((1, 2))})
    store = RunStore(tmp_path / "a")
    store.start(mine, resume=False)
    store.save_chunk({"kernels": np.array([0]), "v": np.zeros((1, 2))})
    shutil.copytree(tmp_path / "b" / "state" / "chunk-00001-00001-1",
                    tmp_path / "a" / "state" / "chunk-00001-00001-1")
    with pytest.raises(KvjaxError, match="chunk-00001-00001-1 was not made with the settings"):
        RunStore(tmp_path / "a").start(mine, resume=False)
    shutil.rmtree(tmp_path / "a" / "state" / "chunk-00001-00001-1")
    assert sorted(RunStore(tmp_path / "a").finished()) == [0]


def _damage_metadata(chunk):
    (chunk / "_METADATA").write_text("{not json")


def _truncate_data(chunk):
    for root, _, files in os.walk(chunk):
        for f in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(3)


@pytest.mark.parametrize("damage", [_damage_metadata, _truncate_data])
def test_a_damaged_chunk_is_named_and_the_others_are_kept(tmp_path, damage):
    settings = {"layer": "x", "kernels": [0, 1]}
    store = RunStore(tmp_path)
    store.start(settings, resume=False)
    for k in (0, 1):
        store.save_chunk({"kernels": np.array([k]), "v": np.full((1, 2), float(k))})
    chunk = tmp_path / "state" / "chunk-00001-00001-1"
    damage(chunk)
    message = f"saved chunk {re.escape(str(chunk))} is damaged.*delete that folder and run again"
    with pytest.raises(CorruptFileError, match=message):
        RunStore(tmp_path).start(settings, resume=False)
    shutil.rmtree(chunk)
    again = RunStore(tmp_path)
    again.start(settings, resume=False)
    assert sorted(again.finished()) == [0]


def late_noise(monkeypatch, caplog, fail, times=5, match=None):
    """What `fail()` (a failing orbax restore) leaves behind after it raised, as printed
    lines: tensorstore's reads still in flight call back into orbax's closed event loop
    (RuntimeError through sys.excepthook or sys.unraisablehook) and asyncio logs the Tasks whose
    errors nobody retrieved; kvjax.io.quiet_restore must drop all of it. Call it before any
    other failing restore: the hooks it records with replace those a failed restore leaves."""
    import gc
    import time
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(repr(u.exc_value)))
    monkeypatch.setattr(sys, "excepthook", lambda k, v, tb: printed.append(repr(v)))
    with caplog.at_level("ERROR", logger="asyncio"):
        for _ in range(times):
            with pytest.raises(CorruptFileError, match=match):
                fail()
        time.sleep(1.0)  # the late callbacks come within milliseconds
        gc.collect()     # unretrieved Tasks are logged when collected
    return printed + [r.getMessage().splitlines()[0] for r in caplog.records]


def test_a_damaged_chunk_leaves_no_late_tracebacks(tmp_path, monkeypatch, caplog):
    settings = {"layer": "x", "kernels": [0]}
    store = RunStore(tmp_path)
    store.start(settings, resume=False)
    store.save_chunk({"kernels": np.array([0]), "v": np.zeros((1, 2)), "w": np.ones((1, 3))})
    _truncate_data(tmp_path / "state" / "chunk-00000-00000-1")
    assert late_noise(monkeypatch, caplog, lambda: RunStore(tmp_path).finished()) == []


@pytest.mark.parametrize("damage", [_damage_metadata, _truncate_data])
def test_a_damaged_chunk_stops_the_command_with_one_line(kvjax, finished, tmp_path, damage):
    """One line, not a traceback (nor, for truncated data, tensorstore's late callbacks into
    orbax's closed event loop, each printed as 'Exception ignored')."""
    out = _copy_run(finished, tmp_path)
    damage(out / "state" / "chunk-00150-00150-1")
    r = kvjax(*ARGS, "--out", str(out), cwd=finished / "ck")
    _one_error_line(r, f"the saved chunk {out / 'state' / 'chunk-00150-00150-1'} is damaged")
