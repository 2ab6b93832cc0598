"""The main job on the bundled samples and model: reconstructions, metrics and saliency maps."""

from __future__ import annotations

from pathlib import Path

from microcae.data.images import find_images
from microcae.evaluation.comparison import compare_images, write_comparison
from microcae.figures.reconstruction import plot_reconstructions
from microcae.models.registry import load_model
from microcae.pipelines.reconstruct import reconstruct_files
from microcae.pipelines.saliency_files import saliency_files
from microcae.util.table_writer import write_table

SAMPLES_DIR = Path(__file__).parents[1] / "assets" / "samples"
"""Public-licence micrographs shipped with the package (see ATTRIBUTION.md there)."""
COMPARISON_SAMPLE = "aisi1045_core.png"
"""The sample whose first tile the demo compares across relevance methods (ferrite-pearlite)."""


def run_demo(out_dir: str | Path, model_path: str | Path | None = None,
             progress: bool = True) -> dict[str, Path]:
    """Run reconstruction, saliency and the method comparison on the bundled samples.

    Returns
    -------
    dict
        Name -> path of every file or folder written under ``out_dir``.
    """
    out_dir = Path(out_dir)
    model = load_model(model_path)
    samples = find_images([SAMPLES_DIR])
    written: dict[str, Path] = {}
    reconstructions = reconstruct_files(samples, model, out_dir / "reconstructions", progress)
    rows = [{"image": r.path.name, **r.scores.as_dict()} for r in reconstructions]
    tables = write_table(rows, out_dir, "reconstruction_metrics")
    written["metrics table"] = tables["md"]
    written["reconstructions figure"] = plot_reconstructions(
        [r.original for r in reconstructions], [r.reconstruction for r in reconstructions],
        [r.path.stem for r in reconstructions], out_dir / "reconstructions.png",
        [f"PSNR {r.scores.psnr_db:.1f} dB, SSIM {r.scores.ssim:.3f}" for r in reconstructions],
    )
    written["reconstructed images"] = out_dir / "reconstructions"
    maps = saliency_files(samples, model.encoder, out_dir / "saliency", progress=progress)
    written["saliency maps (complex-step relevance, exact)"] = out_dir / "saliency"
    written["saliency figure"] = maps[0].figure
    comparison = compare_images(model, [SAMPLES_DIR / COMPARISON_SAMPLE], tiles_per_image=1,
                                sanity_check=False, progress=progress)
    files = write_comparison(comparison, out_dir / "comparison")
    written["method comparison figure"] = files[f"figure:{Path(COMPARISON_SAMPLE).stem}"]
    written["method comparison table"] = files["markdown"]
    return written
