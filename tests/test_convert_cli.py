"""`kvjax convert` and `kvjax inspect` as a user runs them, on a real PyTorch state_dict on disk.

One randomly initialised r3d_18 (torchvision layout, built from tests/torch_refs.py, eval
mode) is saved with torch.save and converted once by a real `python -m kvjax.cli` process;
the other commands run in-process through `kvjax.cli.main`, which is what the process runs.
"""
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kvjax  # noqa: E402
import torch_refs  # noqa: E402
from kvjax.cli import main  # noqa: E402
from kvjax.io import model_checkpoint  # noqa: E402

ARCH = "r3d_18"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference module, its state_dict, SRC, DST, the finished `kvjax convert` process)."""
    d = tmp_path_factory.mktemp("convert_cli")
    torch.manual_seed(0)
    ref = torch_refs.randomize(torch_refs.VideoResNet(ARCH, num_classes=5))
    src = torch_refs.save_state_dict(ref, d / "r3d_18.pth")
    dst = str(d / "r3d_18-kvjax")
    proc = subprocess.run([sys.executable, "-m", "kvjax.cli", "convert", src, dst,
                           "--arch", ARCH], capture_output=True, text=True, timeout=600)
    return ref, ref.state_dict(), src, dst, proc


def _counts(sd):
    """(tensors the r3d_18 table maps, tensors it declares irrelevant) of a state_dict."""
    ignored = [k for k in sd if k.endswith("num_batches_tracked")]
    return len(sd) - len(ignored), len(ignored)


# ------------------------------------------------------------------------------- convert

def test_convert_exits_0_and_prints_what_it_checked(converted):
    _, sd, src, dst, proc = converted
    assert proc.returncode == 0, proc.stderr
    mapped, ignored = _counts(sd)
    out = proc.stdout
    assert out.startswith(f"converted {src} ({len(sd)} tensors, {ignored} declared irrelevant")
    assert f"-> {dst}\n" in out and f"arch {ARCH}, config {{'num_classes': 5}}" in out
    assert f"checked: {mapped} tensors read back bit-identical to the source" in out
    assert "finite at all 40 layers" in out
    assert "not checked here" in out and "tests/test_convert_video_resnet.py" in out
    assert f"kvjax layers --model {ARCH} --checkpoint {dst}" in out
    assert sorted(os.listdir(os.path.dirname(dst))) == ["r3d_18-kvjax", "r3d_18.pth"]


def test_manifest_names_arch_source_and_checks(converted):
    _, sd, src, dst, proc = converted
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(dst, "manifest.json")) as f:
        man = json.load(f)
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    mapped, ignored = _counts(sd)
    assert man["arch"] == ARCH and man["config"] == {"num_classes": 5}
    assert man["source"]["sha256"] == digest and man["source"]["path"] == os.path.abspath(src)
    assert man["tensors"] == mapped
    parity = man["parity"]
    assert parity["weights_round_trip"] == {"checked": mapped, "ignored": ignored,
                                            "max_abs_error": 0.0}
    n_layers = len(kvjax.load_model(ARCH, checkpoint=dst).layers())
    assert parity["forward"] == {"finite": True, "layers": n_layers,
                                 "input_size": [16, 112, 112], "seed": 0}
    pt = parity["pytorch_parity"]
    assert pt["checked_at_convert"] is False and pt["tolerance"] == torch_refs.TOL
    assert os.path.isfile(os.path.join(REPO, pt["test"]))


def test_layers_command_reads_the_converted_checkpoint(converted, capsys):
    dst = converted[3]
    assert main(["layers", "--model", ARCH, "--checkpoint", dst]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{ARCH}:") and lines[2].split()[:2] == ["layer", "kernels"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[3:]}
    assert len(rows) == 40
    assert rows["stem/conv"] == ["64", "16x56x56"] and rows["layer4"] == ["512", "2x7x7"]
    assert rows["avgpool"] == ["512", "1x1x1"] and rows["fc"] == ["5", "pre-activation"]


def test_loaded_model_matches_pytorch_at_one_layer(converted):
    ref, dst = converted[0], converted[3]
    model = kvjax.load_model(ARCH, checkpoint=dst)
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 32, 32, 3)).astype(np.float32)
    mean = np.asarray(torch_refs.KINETICS_MEAN, np.float32)
    std = np.asarray(torch_refs.KINETICS_STD, np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(((x - mean) / std).transpose(0, 4, 1, 2, 3)))
    got = torch_refs.all_layers(model, x, until="layer2")
    errs = torch_refs.compare(got, want, names=["layer2"])  # asserts <= 1e-4 of scale
    assert got["layer2"].shape == (1, 4, 8, 8, 128) and errs["layer2"] <= torch_refs.TOL


# ---------------------------------------------------------------------- refused inputs

def _tree(root):
    """{relative path: file bytes or None for a folder} of everything under `root`."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            p = os.path.join(folder, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(tmp, src):
    with open(tmp / "evil.pth", "wb") as f:
        pickle.dump({"stem.0.weight": _RunsCode(tmp / "MARKER")}, f)
    return str(tmp / "evil.pth"), str(tmp / "out"), ARCH


def _truncated(tmp, src):
    with open(src, "rb") as f:
        data = f.read()
    (tmp / "cut.pth").write_bytes(data[:len(data) // 2])
    return str(tmp / "cut.pth"), str(tmp / "out"), ARCH


def _dst_file(tmp, src):
    (tmp / "out").write_text("keep me")
    return src, str(tmp / "out"), ARCH


def _dst_full_folder(tmp, src):
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("keep me")
    return src, str(tmp / "out"), ARCH


def _dst_other_checkpoint(tmp, src):
    state = {"stem": {"kernel": np.ones((1, 1, 1, 3, 2), np.float32)}}
    model_checkpoint.save(tmp / "out", ARCH, state,
                          {"source": {"path": "/elsewhere/other.pth", "sha256": "0" * 64}})
    return src, str(tmp / "out"), ARCH


def _dst_below_a_file(tmp, src):
    (tmp / "afile").write_text("keep me")
    return src, str(tmp / "afile" / "out"), ARCH


@pytest.mark.parametrize("make,msg", [
    (lambda tmp, src: (src, str(tmp / "out"), "c3d"),
     r"does not match the model for architecture 'c3d'.*looks like a 'r3d_18' checkpoint "
     r"\(all tensors match\): try --arch r3d_18$"),
    (lambda tmp, src: (src, str(tmp / "out"), "r3d"),
     r"unknown architecture 'r3d'; closest: r3d_18.*; valid: c3d, flownets, mc3_18, "
     r"pytorch-i3d, r2plus1d_18, r3d_18, slowfast-i3d-r50, videogpt-vqvae$"),
    (_evil, r"evil\.pth: refusing to load (posix|os|nt)\.system from a pickle"),
    (_truncated, r"cut\.pth is a truncated or corrupt torch zip file"),
    (_dst_file, r"out exists already and is a file; .*choose a destination that does not exist"),
    (_dst_full_folder, r"out exists already and is a folder that is not empty"),
    (_dst_other_checkpoint, r"out exists already: a converted 'r3d_18' checkpoint of "
                            r"/elsewhere/other\.pth, not of this file.*remove it"),
    (_dst_below_a_file, r"cannot create .*afile/out: .*afile is a file, not a folder"),
], ids=["wrong-arch", "unknown-arch", "runs-code", "truncated", "dst-file",
        "dst-full-folder", "dst-other-checkpoint", "dst-below-file"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(converted, tmp_path, capsys,
                                                            make, msg):
    src, dst, arch = make(tmp_path, converted[2])
    before = _tree(tmp_path)
    assert main(["convert", src, dst, "--arch", arch]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvjax convert: error: "), err
    assert re.search(msg, err[0]), err[0]
    assert _tree(tmp_path) == before


def _unwritable_folder(tmp_path, monkeypatch):
    """A folder this process may not write in: a read-only one of tmp_path, or, for root
    (who writes anywhere permissions allow), a read-only kernel folder such as /proc/sys;
    where there is none, tmp_path's read-only folder with os.access reporting it so (what
    the permission check reads), so the refusal is always exercised."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if not os.access(locked, os.W_OK):
        return locked
    found = next((p for p in ("/proc/sys", "/sys") if os.path.isdir(p)
                  and not os.access(p, os.W_OK)), None)
    if found is not None:
        locked.chmod(0o755)
        return found
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **kw: False if (
        os.path.abspath(p) == str(locked) and mode & os.W_OK) else access(p, mode, *a, **kw))
    return locked


def test_unwritable_destination_exits_2(converted, tmp_path, capsys, monkeypatch):
    locked = _unwritable_folder(tmp_path, monkeypatch)
    before = sorted(os.listdir(locked))
    try:
        assert main(["convert", converted[2], os.path.join(locked, "kvjax-out"),
                     "--arch", ARCH]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"no permission to write in {locked}" in err[0], err
        assert sorted(os.listdir(locked)) == before
    finally:
        if str(locked).startswith(str(tmp_path)):
            os.chmod(locked, 0o755)


# ------------------------------------------------------------------------------- inspect

def test_inspect_source_lists_convs_and_guesses_arch(converted, capsys):
    sd, src = converted[1], converted[2]
    assert main(["inspect", src]) == 0
    out = capsys.readouterr().out
    convs = {k: v for k, v in sd.items() if k.endswith(".weight") and v.ndim == 5}
    assert f"guessed architecture: {ARCH} (all tensors match)" in out
    assert f"convert with `kvjax convert {src} DST --arch {ARCH}`" in out
    assert f"  {len(sd)} tensors, " in out
    kernels = sum(v.shape[0] for v in convs.values())
    assert f"convolution layers ({len(convs)}, {kernels} kernels" in out
    assert re.search(r"\n  layer4\.1\.conv2\.0 +512 kernels  \(512, 512, 3, 3, 3\)\n", out)
    assert re.search(r"\n  stem\.1\.running_var +\(64,\) +float32\n", out)


def test_inspect_converted_shows_arch_checks_and_network_order(converted, capsys):
    dst = converted[3]
    assert main(["inspect", dst]) == 0
    out = capsys.readouterr().out
    assert f"kvjax converted checkpoint, arch {ARCH}, config {{'num_classes': 5}}" in out
    assert "read back bit-identical" in out and "finite at all 40 layers" in out
    assert "tests/test_convert_video_resnet.py" in out

    model = kvjax.load_model(ARCH, checkpoint=dst)
    section = out.split("layers in network order (40;")[1].split("\n\n")[0].splitlines()[1:]
    listed = [(line.split()[0], int(line.split()[1])) for line in section]
    assert listed == [(l.name, l.channels) for l in model.layers()]

    convs = out.split("\nconvolution layers (")[1].split("\n\n")[0].splitlines()[1:]
    names = [line.split()[0] for line in convs]
    assert names[0] == "stem" and names != sorted(names)
    order = [names.index(n) for n in ("stem", "layer1_0/conv1/conv", "layer1_0/conv2/conv",
                                      "layer1_1/conv1/conv", "layer2_0/conv1/conv",
                                      "layer4_1/conv2/conv")]
    assert order == sorted(order)
    assert re.search(r"\n  layer4_1/conv2/conv +512 kernels  \(3, 3, 3, 512, 512\)\n", out)
