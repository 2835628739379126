"""save_figure: HTML always and atomically; static formats only where a renderer exists."""

from __future__ import annotations

import os
import re

import plotly.io as pio
import pytest
from plotly.offline import get_plotlyjs

from emprobe import plot
from emprobe.errors import EmprobeError
from emprobe.plot import save as save_mod


@pytest.fixture
def fig():
    return plot.layer_curves([{"layer": i, "value": float(i)} for i in range(3)], title="t")


@pytest.fixture
def no_renderer(monkeypatch):
    monkeypatch.setattr(save_mod, "static_export_available", lambda: False)


@pytest.fixture
def fake_renderer(monkeypatch):
    """A stand-in renderer: records where plotly was asked to write, writes placeholder bytes."""
    calls = []

    def fake_write_image(fig, file, format, **kw):  # noqa: A002
        calls.append((file, format, kw))
        with open(file, "wb") as fh:
            fh.write(f"fake {format}".encode())

    monkeypatch.setattr(save_mod, "static_export_available", lambda: True)
    monkeypatch.setattr(pio, "write_image", fake_write_image)
    return calls


def test_html_is_written_offline_by_default(tmp_path, fig, no_renderer):
    written = save_mod.save_figure(fig, tmp_path / "figs" / "curve")
    assert written == [tmp_path / "figs" / "curve.html"]
    text = written[0].read_text()
    assert text.count(get_plotlyjs()) == 1 and not re.search(r"<script[^>]*\bsrc=", text)
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name.startswith(".")]  # no temp left


def test_include_plotlyjs_options(tmp_path, fig, no_renderer):
    cdn = save_mod.save_figure(fig, tmp_path / "cdn", include_plotlyjs="cdn")[0].read_text()
    assert "cdn.plot.ly" in cdn and get_plotlyjs() not in cdn
    d = save_mod.save_figure(fig, tmp_path / "d" / "a", include_plotlyjs="directory")[0]
    save_mod.save_figure(fig, tmp_path / "d" / "b", include_plotlyjs="directory")
    assert 'src="plotly.min.js"' in d.read_text()
    assert (tmp_path / "d" / "plotly.min.js").read_text() == get_plotlyjs()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a.html", "b.html", "plotly.min.js"]


def test_extension_in_path_is_dropped(tmp_path, fig, no_renderer):
    assert save_mod.save_figure(fig, tmp_path / "x.html") == [tmp_path / "x.html"]


def test_default_formats_skip_static_silently_without_renderer(tmp_path, fig, no_renderer, recwarn):
    assert save_mod.default_formats() == ("html",)
    save_mod.save_figure(fig, tmp_path / "a")
    assert not recwarn.list
    with pytest.warns(UserWarning, match="no static renderer"):
        written = save_mod.save_figure(fig, tmp_path / "b", formats=("html", "png"))
    assert [p.suffix for p in written] == [".html"]
    with pytest.raises(EmprobeError, match="no static renderer"):
        save_mod.save_figure(fig, tmp_path / "c", formats=("svg",), strict=True)


def test_static_formats_go_through_a_temp_file_when_a_renderer_exists(tmp_path, fig, fake_renderer):
    assert save_mod.default_formats() == ("html", "png", "svg")
    written = save_mod.save_figure(fig, tmp_path / "fig")
    assert [p.name for p in written] == ["fig.html", "fig.png", "fig.svg"]
    assert (tmp_path / "fig.png").read_bytes() == b"fake png"
    for file, _fmt, _kw in fake_renderer:
        assert os.path.basename(file).startswith(".fig.") and file.endswith(".tmp")
    assert fake_renderer[0][2] == {"scale": 2.0}


def test_failed_write_leaves_the_old_file_untouched(tmp_path, fig, monkeypatch):
    monkeypatch.setattr(save_mod, "static_export_available", lambda: True)
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")

    def broken(fig, file, format, **kw):  # noqa: A002
        with open(file, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(pio, "write_image", broken)
    with pytest.raises(RuntimeError):
        save_mod.save_figure(fig, tmp_path / "fig", formats=("png",))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_unknown_format_is_an_error(tmp_path, fig):
    with pytest.raises(EmprobeError, match="unknown format"):
        save_mod.save_figure(fig, tmp_path / "x", formats=("gif",))


def test_renderer_detection_matches_what_is_installed():
    import importlib.util

    if importlib.util.find_spec("kaleido") is None:
        save_mod.static_export_available.cache_clear()
        assert save_mod.static_export_available() is False
