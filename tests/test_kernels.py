import pytest

from kvjax.errors import KvjaxError
from kvjax.kernels import parse_kernels


@pytest.mark.parametrize("spec,want", [
    ("all", list(range(8))), ("0-3", [0, 1, 2, 3]), ("0,5,2", [0, 2, 5]),
    ("0-2,6", [0, 1, 2, 6]), ("3", [3]), (range(2), [0, 1]), ([7, 1, 1], [1, 7]), (4, [4]),
])
def test_specs(spec, want):
    assert parse_kernels(spec, 8) == want


@pytest.mark.parametrize("spec,msg", [
    ("0-8", "out of range.*8 kernels, 0-7"), ("9", "9"), ("a-b", "cannot read"),
    ("5-2", "backwards"), ("", "no kernels"), ([-1], "-1"),
    ("0-6400000000", "6400000000 out of range"),  # refused before the range is built
])
def test_bad_specs_name_the_valid_choices(spec, msg):
    with pytest.raises(KvjaxError, match=msg):
        parse_kernels(spec, 8, layer="Conv3d_1a_7x7")
