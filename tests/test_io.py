"""Pictures, atomic writes, results.json, the gallery and resumable run state."""
import json
import os

import numpy as np
import pytest

from kvjax.errors import KvjaxError
from kvjax.io import atomic, figures, pictures, report
from kvjax.io.run_state import RunStore


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic.write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(p) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary left behind


def test_atomic_writes_get_a_plain_open_files_permissions(tmp_path):
    """Not mkstemp's 0600: a gallery must be readable by a web server or colleagues."""
    old = os.umask(0o027)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "a.txt").st_mode & 0o777
    assert mode == os.stat(plain).st_mode & 0o777 == 0o640


def test_gif_round_trip_keeps_frames(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (5, 12, 10, 3)).astype(np.float32)
    frames[2] = 0.5  # a flat frame stays flat (no dithering)
    pictures.save_gif(tmp_path / "v.gif", frames, scale=2)
    back = pictures.read_gif(tmp_path / "v.gif")
    assert back.shape == (5, 24, 20, 3)
    want = pictures.upscale(pictures.to_uint8(frames), 2).astype(int)
    assert np.abs(back.astype(int) - want).mean() < 6  # a 256-colour palette per frame
    assert np.all(back[2] == back[2, 0, 0])


def test_motion_frames_draw_the_flow_colours():
    v = np.zeros((3, 32, 32, 2), np.float32)
    v[..., 0] = 1.0  # content moving right: red in the colour code
    frames = figures.motion_frames(v, 1.0, arrows=False)
    assert frames.shape[0] == 3 and frames.dtype == np.uint8
    red = (frames[..., 0] > 200) & (frames[..., 1] < 60) & (frames[..., 2] < 60)
    assert red.mean() > 0.2


def test_motion_frames_arrows_point_where_content_moves():
    """The arrows' white pixels lean towards their heads: up for content moving up (image
    v_y < 0), down for down, right for right; the arrows never leave the frame."""
    def white_centroid(vx, vy):
        v = np.zeros((1, 32, 32, 2), np.float32)
        v[..., 0], v[..., 1] = vx, vy
        frame = figures.motion_frames(v, 1.0, arrows=True)[0].astype(int)
        main = frame[:, : int(0.7 * frame.shape[1])]  # the field's axes, not the legend
        field = np.argwhere(main.max(-1) - main.min(-1) > 100)  # the saturated flow colours
        (r0, c0), (r1, c1) = field.min(0), field.max(0)   # the image's box in the figure
        inside = frame[r0:r1 + 1, c0:c1 + 1]
        return np.argwhere(inside.min(-1) > 230).mean(0)  # (row, col) of the arrows' pixels
    up, down = white_centroid(0.0, -1.0), white_centroid(0.0, 1.0)
    left, right = white_centroid(-1.0, 0.0), white_centroid(1.0, 0.0)
    assert up[0] < down[0] - 1 and abs(up[1] - down[1]) < 1
    assert right[1] > left[1] + 1 and abs(right[0] - left[0]) < 1


def _entries():
    files = {k: f"k0000_{k}.png" for k in ("stage1", "texture", "motion", "reconstruction")}
    nums = dict(activation=2.5, activation_start=0.1, recon_mse=1e-3, direction_deg=90.0,
                speed_px_per_frame=0.7, motion_fraction=0.4)
    bad = dict(nums, activation=float("nan"))
    return [report.kernel_entry(3, bad, files, False), report.kernel_entry(1, nums, files, True)]


def test_results_json_schema_and_nan_as_null(tmp_path):
    path = report.write_results(str(tmp_path), "i3d", "Mixed_3b", {"steps1": 5}, _entries())
    doc = json.loads(open(path).read())
    assert set(doc) == {"model", "layer", "config", "kernels"}
    assert [k["kernel"] for k in doc["kernels"]] == [1, 3]
    first = doc["kernels"][0]
    assert set(first) == {"kernel", "activation", "activation_start", "recon_mse",
                          "direction_deg", "speed_px_per_frame", "motion_fraction", "finite",
                          "files"}
    assert doc["kernels"][1]["activation"] is None and doc["kernels"][1]["finite"] is False


def test_index_html_lists_every_kernel_and_picture(tmp_path):
    path = report.write_index(str(tmp_path), "i3d", "Mixed_3b", _entries(), "sheet.png")
    page = open(path).read()
    assert page.count("<tr><td") == 2 and "sheet.png" in page and "k0000_motion.png" in page
    assert "sortBy(5, true)" in page  # sorted by motion fraction on load
    assert ">90</td>" in page
    e = _entries()[1]
    e["direction_deg"] = 359.6   # to the degree that is 0, not 360
    page = open(report.write_index(str(tmp_path), "i3d", "M", [e], "s.png")).read()
    assert ">0</td>" in page and ">360<" not in page


def test_run_store_resumes_finished_chunks_and_refuses_other_settings(tmp_path):
    store = RunStore(tmp_path)
    settings = {"model": "i3d", "layer": "Conv3d_1a_7x7", "kernels": [0, 1, 2, 3], "seed": 0}
    assert store.start(settings, resume=False) == settings
    vids = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    store.save_chunk({"kernels": np.array([2, 3]), "videos": vids,
                      "summary": {"speed": np.array([0.5, 1.5], np.float32)}})
    os.makedirs(tmp_path / "state" / "chunk-00000-00001-2.orbax-checkpoint-tmp-123")  # killed
    again = RunStore(tmp_path)
    again.start(settings, resume=False)
    done = again.finished()
    assert sorted(done) == [2, 3]
    np.testing.assert_array_equal(done[3]["videos"], vids[1])
    assert float(done[2]["summary"]["speed"]) == 0.5
    assert not any("tmp" in n for n in os.listdir(tmp_path / "state"))
    with pytest.raises(KvjaxError, match="layer differ"):
        again.start(dict(settings, layer="Mixed_3b"), resume=False)
    assert again.start(dict(settings, layer="Mixed_3b"), resume=True) == settings


def test_motion_colour_scale_ignores_a_kernel_with_nan_motion():
    from kvjax.commands.visualize import _speed_scale
    v = np.zeros((3, 4, 8, 8, 2), np.float32)
    v[..., 0] = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    clean = _speed_scale(v)
    v[1, 2, 3, 3] = np.nan
    assert _speed_scale(v) == pytest.approx(clean) and 2.9 < clean <= 3.0
    assert _speed_scale(np.full((2, 2), np.nan)) == 1e-3


def test_a_kernel_is_finite_only_if_all_its_arrays_are():
    from kvjax.pipeline import _all_finite
    a, b = np.zeros((3, 2, 2)), np.zeros((3, 5))
    a[1, 0, 0], b[2, 4] = np.inf, np.nan
    np.testing.assert_array_equal(_all_finite(a, b), [True, False, False])


def test_signals_are_held_while_a_writer_works_then_delivered():
    """Inside signals_deferred a SIGTERM waits (orbax's writer threads finish, the cleanup
    sees no half-written folder); at its end it is delivered to the handler in place."""
    import signal
    import time

    from kvjax.io import atomic

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        went_on = []
        with pytest.raises(Stop):
            with atomic.signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                went_on.append(True)  # not stopped here
        assert went_on == [True]
        assert signal.getsignal(signal.SIGTERM) is stop  # handler back in place
        with atomic.signals_deferred():  # nothing caught: nothing delivered
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
