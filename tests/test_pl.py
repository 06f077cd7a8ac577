from __future__ import annotations

import anndata as ad
import matplotlib as mpl
import numpy as np
import pytest

mpl.use("Agg")
import matplotlib.pyplot as plt

import sc_noise2self as n2s


@pytest.fixture(scope="module")
def calibrated(simulation) -> ad.AnnData:
    a = ad.AnnData(simulation.counts.copy())
    n2s.pp.denoise(a, grid=list(range(1, 31)), n_splits=3, progress=False)
    return a


def test_calibration_plot_marks_the_choice(calibrated, tmp_path):
    ax = n2s.pl.calibration(calibrated, show=False, save=tmp_path / "curve.png")
    best = calibrated.uns["denoised"]["best"]
    assert ax.get_xlabel() == "number of principal components"
    assert "held-out mse" in ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"chosen: {best}" in labels and "mean over splits" in labels and "single split" in labels
    assert "no denoising" in labels
    assert len(ax.lines) == 3 + 1 + 1 + 1 + 1  # 3 splits, mean, no denoising, chosen line, chosen marker
    assert (tmp_path / "curve.png").stat().st_size > 0
    plt.close("all")


def test_a_plain_savefig_keeps_the_labels_inside_the_figure(calibrated):
    ax = n2s.pl.calibration(calibrated, show=False)
    figure = ax.figure
    figure.canvas.draw()  # what plt.savefig(path) renders, without bbox_inches="tight"
    inside = figure.bbox
    for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
        extent = label.get_window_extent()
        assert inside.x0 <= extent.x0 and extent.x1 <= inside.x1 and inside.y0 <= extent.y0 and extent.y1 <= inside.y1
    plt.close("all")


def test_calibration_into_given_axes(calibrated):
    _, ax = plt.subplots()
    assert n2s.pl.calibration(calibrated, ax=ax) is ax
    (mean,) = [line for line in ax.lines if line.get_label() == "mean over splits"]
    np.testing.assert_allclose(mean.get_ydata(), calibrated.uns["denoised"]["loss_mean"])
    plt.close("all")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ax": "left"}, "ax must be a matplotlib Axes"),
        ({"ax": 5}, "ax must be a matplotlib Axes"),
        ({"show": "yes"}, "show must be True or False"),
        ({"key": None}, "key must be the string"),
        ({"save": 5}, "save must be"),
    ],
    ids=["ax text", "ax number", "show text", "key None", "save number"],
)
def test_calibration_refuses_bad_arguments(calibrated, kwargs, match):
    with pytest.raises(ValueError, match=match):
        n2s.pl.calibration(calibrated, **kwargs)
    plt.close("all")


def test_calibration_without_denoise_says_what_to_do():
    with pytest.raises(ValueError, match=r"run sc_noise2self\.pp\.denoise"):
        n2s.pl.calibration(ad.AnnData(np.ones((3, 3))))


def test_autoencoder_grid_draws_epochs_along_x_and_a_curve_per_width(simulation):
    from sc_noise2self.denoisers import Autoencoder

    pytest.importorskip("torch")
    a = ad.AnnData(simulation.counts.copy())
    grid = n2s.tl.grid(bottleneck=[4, 16], epochs=[1, 2, 3])
    n2s.pp.denoise(a, method=Autoencoder(hidden=(16,), device="cpu"), grid=grid, key_added="ae", progress=False)
    ax = n2s.pl.calibration(a, key="ae", show=False)
    assert ax.get_xlabel() == "training epochs" and "adata.uns['ae']" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "bottleneck = 4" in labels and "bottleneck = 16" in labels
    assert sorted(ax.lines[0].get_xdata()) == [1, 2, 3]
    plt.close("all")


def test_save_follows_scanpys_convention(calibrated, tmp_path):
    import scanpy as sc

    figdir, sc.settings.figdir = sc.settings.figdir, tmp_path / "figures"
    try:
        n2s.pl.calibration(calibrated, show=False, save="_rank.png")
        n2s.pl.calibration(calibrated, show=False, save=True)
        n2s.pl.calibration(calibrated, show=False, save=str(tmp_path / "here.png"))
    finally:
        sc.settings.figdir = figdir
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == ["calibration.pdf", "calibration_rank.png"] and (tmp_path / "here.png").exists()
    with pytest.raises(ValueError, match="save must be"):
        n2s.pl.calibration(calibrated, show=False, save=3)
    plt.close("all")
