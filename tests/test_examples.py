"""Every example runs (quick settings) and says what it promises."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(  # this checkout's kvjax, as a user's
        filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), "--quick", *args],
                       capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_default_i3d_example(tmp_path):
    out = run_example("01_default_i3d.py", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert out.count("kernel ") >= 4 and "videos (4, 8, 32, 32, 3)" in out
    assert (tmp_path / "o" / "contact_sheet.png").stat().st_size > 1000


def test_own_flax_model_example(tmp_path):
    out = run_example("02_own_flax_model.py", cwd=tmp_path)
    assert [l.split(":")[0] for l in out.splitlines() if l.startswith("kernel")] == \
        ["kernel 0", "kernel 3", "kernel 7"]
