"""One flag vocabulary across ``neuroseg``: -o/--output, --n-tiles, --steps, --init-from,
--max-minutes and --device; the old spellings (--out, --tiles, --iterations, --init) are hidden
aliases that parse to the same values."""

import pytest

from napari_neuroseg.cli import build_parser

CASES = [
    (["nuclei", "in.tif"], ["-o", "o.tif", "--n-tiles", "1", "2", "2"], ["--out", "o.tif", "--tiles", "1", "2", "2"]),
    (["neurons", "in.zarr"], ["--output", "o.tif", "--n-tiles", "1", "2", "2"],
     ["--out", "o.tif", "--tiles", "1", "2", "2"]),
    (["batch", "nuclei", "in.tif"], ["-o", "out", "--n-tiles", "1,2,2"], ["--out", "out", "--tiles", "1,2,2"]),
    (["train", "nuclei", "--synthetic", "1"], ["-o", "m", "--steps", "5", "--init-from", "A"],
     ["--out", "m", "--iterations", "5", "--init", "A"]),
    (["train", "neurons", "--synthetic"], ["-o", "m", "--steps", "5", "--init-from", "A"],
     ["--out", "m", "--iterations", "5", "--init", "A"]),
]


@pytest.mark.parametrize("head, new, old", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_old_spellings_parse_like_the_shared_ones(head, new, old):
    p = build_parser()
    a, b = vars(p.parse_args([*head, *new])), vars(p.parse_args([*head, *old]))
    for d in (a, b):
        d.pop("func", None)
    assert a == b
    assert a.get("output") in ("o.tif", "out", "m")


@pytest.mark.parametrize("argv", [["nuclei"], ["neurons"], ["train", "nuclei"], ["train", "neurons"]])
def test_help_lists_only_the_shared_spellings(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    text = capsys.readouterr().out
    for old in ("--out ", "--tiles", "--iterations", "--init "):
        assert old not in text
    assert "--output" in text and "--device" in text
