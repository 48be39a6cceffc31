"""The `kvjax` command as a user runs it: a real process, exit codes, files on disk."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

TINY = ["--size", "4,32,32", "--steps1", "6", "--steps2", "6", "--seed", "3"]


@pytest.fixture(scope="module")
def kvjax(tmp_path_factory):
    """Runs `python -m kvjax.cli ARGS` (popen=True: started, not waited for).

    The runs of this module share one fresh JAX persistent compilation cache, so a program
    of the same shapes compiles once here, not once per process (~10 s each on a 2-core
    CPU). Nothing asserted depends on it: exit codes, messages, files and numbers are those
    of a run without the cache, which users get unless they set JAX_COMPILATION_CACHE_DIR.
    """
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla")))

    def run(*args, popen=False):
        cmd = [sys.executable, "-m", "kvjax.cli", *args]
        if popen:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return run


def test_layers_prints_the_i3d_table(kvjax):
    r = kvjax("layers")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [l for l in lines if l.startswith(("Conv3d", "MaxPool", "Mixed", "Logits"))]
    assert len(rows) == 128
    row = next(l.split() for l in rows if l.startswith("Mixed_3b/Branch_1/Conv3d_0b_3x3 "))
    assert row[1:3] == ["128", "16x28x28"]


def test_a_reader_gone_ends_the_output_quietly(tmp_path):
    # `kvjax layers | head -1` and the like: the pipe's reader is gone before kvjax writes
    # (here it never existed). kvjax stops with exit code 1 and no traceback, neither from
    # its own print nor from Python's flush of stdout at exit.
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "kvjax.cli", "layers"], stdout=write,
                           stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        os.close(write)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,msg", [
    (["--model", "i3dx"], "unknown model 'i3dx'; closest: i3d"),
    (["--layer", "Mixed3b"], "unknown layer 'Mixed3b'.*closest: Mixed_3b"),
    (["--kernels", "60-70"], "out of range.*64 kernels, 0-63"),
    (["--layer", "Mixed_3b", "--kernels", "x"], "cannot read kernels"),
    (["--layer", "Logits", "--kernels", "0"],  # TINY's 4x32x32 is fed to the model as it is
     "'Logits' is out of reach of a model input of 4x32x32.*deepest it reaches is Mixed_"),
])
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(tmp_path, capsys, args, msg):
    """In this process (cli.main, what `python -m kvjax.cli` exits with); the exit code of a
    real process is checked by the tests of --out below."""
    from kvjax import cli
    out = tmp_path / "out"
    assert cli.main(["visualize", *args, "--out", str(out), *TINY]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvjax visualize: error:")
    assert re.search(msg, err[0]), err[0]
    assert not out.exists()


@pytest.mark.parametrize("args,msg", [
    (["--size", "4,33,32"], r"divisible by coarse_factor \(2\); got size \(4, 33, 32\)"),
    (["--size", "16,224,224", "--layer", "Logits"],  # Logits reaches 224 px, not 112
     "--coarse-steps: the coarse phase's model input is too small: layer 'Logits' is out of "
     "reach of a model input of 16x112x112"),
])
def test_coarse_steps_that_cannot_run_are_refused_first(tmp_path, capsys, args, msg):
    from kvjax import cli
    out = tmp_path / "out"
    assert cli.main(["visualize", "--coarse-steps", "4", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(msg, err[0]), err
    assert not out.exists()


@pytest.mark.parametrize("seed", ["9223372036854775808", "4294967296", "-1", "1.5"])
def test_a_seed_jax_cannot_take_is_refused_by_the_parser(tmp_path, capsys, seed):
    """Checked with the arguments, before anything is written; 2**32 and over would repeat
    smaller seeds (jax.random.key keeps 32 bits) or overflow."""
    from kvjax import cli
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["visualize", "--seed", seed, "--kernels", "0", "--out", str(out), *TINY[:2]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"argument --seed: seed must be an integer 0 to 4294967295, got "
                            f"{seed!r}"), err
    assert not out.exists()
    assert cli._seed("4294967295") == 4294967295 and cli._seed("0") == 0


def test_out_that_cannot_be_a_folder_is_refused(kvjax, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("keep me")
    for out in (afile, afile / "below"):
        r = kvjax("visualize", "--out", str(out), *TINY)
        assert r.returncode == 2 and "--out" in r.stderr, r.stderr
    assert afile.read_text() == "keep me"


def test_out_holding_other_files_is_refused_and_left_alone(kvjax, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("my project page")
    (out / "notes.txt").write_text("mine")
    r = kvjax("visualize", "--out", str(out), *TINY)
    assert r.returncode == 2 and "did not write (index.html, notes.txt)" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == ["index.html", "notes.txt"]
    assert (out / "index.html").read_text() == "my project page"
    (out / "notes.txt").unlink()  # a lone index.html is not a kvjax run's either (no run.json)
    r = kvjax("visualize", "--out", str(out), *TINY)
    assert r.returncode == 2 and "did not write (index.html)" in r.stderr, r.stderr


def _results(out):
    return {k["kernel"]: k for k in json.loads((out / "results.json").read_text())["kernels"]}


def _run_past_its_first_chunk(kvjax, tmp_path):
    """(out folder, args, process) of a 4-kernel run of 4 chunks started and waited on until
    its first chunk is saved (the process still running)."""
    out = tmp_path / "run"
    args = ["visualize", "--kernels", "0-3", "--chunk", "1", "--out", str(out), *TINY]
    proc = kvjax(*args, popen=True)
    state = out / "state"
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        if state.is_dir() and [n for n in os.listdir(state) if "tmp" not in n]:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before its first chunk: " + proc.stdout.read()
    return out, args, proc


def test_killed_run_resumes_keeping_finished_kernels(kvjax, tmp_path):
    """Kill a real run after its first chunk, rerun into the same folder, compare with a
    run that was never interrupted (same settings: its programs come from the compilation
    cache; that other chunk sizes change nothing is checked in the library's tests)."""
    out, args, proc = _run_past_its_first_chunk(kvjax, tmp_path)
    state = out / "state"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted(n for n in os.listdir(state) if "tmp" not in n)
    assert 1 <= len(first) < 4

    r = kvjax(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"({len(first)} already done)" in r.stdout
    resumed = _results(out)
    assert sorted(resumed) == [0, 1, 2, 3]
    for k, e in resumed.items():
        for f in e["files"].values():
            assert (out / f).stat().st_size > 0

    fresh_out = tmp_path / "fresh"
    r = kvjax("visualize", "--kernels", "0-3", "--chunk", "1", "--out", str(fresh_out), *TINY)
    assert r.returncode == 0, r.stderr
    fresh = _results(fresh_out)
    for k in range(4):
        for name in ("activation", "direction_deg", "speed_px_per_frame"):
            np.testing.assert_allclose(resumed[k][name], fresh[k][name], rtol=2e-4, atol=1e-5)

    # The same command again finds everything done and recomputes nothing.
    r = kvjax(*args)
    assert r.returncode == 0 and "(4 already done)" in r.stdout and "0 chunk(s)" in r.stdout


@pytest.mark.parametrize("sig, code, how", [(signal.SIGINT, 130, "interrupted"),
                                            (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_is_one_line_and_keeps_finished_kernels(kvjax, tmp_path, sig, code, how):
    """SIGINT (Ctrl-C) or SIGTERM after the first chunk: exit 130 / 143 and one line saying
    what is kept, no traceback; the same command then goes on from the kernels finished."""
    out, args, proc = _run_past_its_first_chunk(kvjax, tmp_path)
    state = out / "state"
    proc.send_signal(sig)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, output
    assert "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == (
        f"kvjax visualize: {how}; the kernels it finished are kept: run the same "
        "command again to continue"), output
    done = len([n for n in os.listdir(state) if "tmp" not in n])
    r = kvjax(*args)
    assert r.returncode == 0 and f"({done} already done)" in r.stdout, r.stdout + r.stderr


def test_resume_goes_on_with_the_saved_runs_settings(kvjax, tmp_path):
    """--resume with other flags (size, seed, preset) continues the saved run as it was:
    a kernel recomputed then equals the one computed first, and the user is told."""
    out = tmp_path / "run"
    args = ["visualize", "--kernels", "0-1", "--chunk", "1", "--out", str(out)]
    r = kvjax(*args, *TINY)
    assert r.returncode == 0, r.stderr
    first = _results(out)
    state = out / "state"
    (lost,) = [n for n in os.listdir(state) if n.startswith("chunk-00001-")]
    import shutil
    shutil.rmtree(state / lost)  # as if the run had been killed before kernel 1 was saved
    other = ["--size", "4,48,48", "--steps1", "6", "--steps2", "6", "--seed", "4",
             "--preset", "paper"]
    r = kvjax(*args, *other, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "with its own settings" in r.stdout and "(1 already done)" in r.stdout
    assert all(k in r.stdout for k in ("overrides", "preset", "seed")), r.stdout
    again = _results(out)
    for name in ("activation", "direction_deg", "speed_px_per_frame"):
        np.testing.assert_allclose(again[1][name], first[1][name], rtol=2e-4, atol=1e-5)
    assert json.loads((out / "run.json").read_text())["seed"] == 3
