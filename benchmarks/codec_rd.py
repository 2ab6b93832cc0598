"""microcae against JPEG, WebP, JPEG 2000, JPEG XL and AVIF on the held-out test micrographs.

The images are the sources of a prepared set's test split (``manifest.json``, split
``"test"``), read whole from ``--images`` (the folder the set was prepared from), each centre-
cropped to at most ``--crop`` pixels a side (512 by default, for time on a shared 2-core
machine: the 1000 × 2570 optical image is cut to 512 × 512, the others are at most 512 px a
side and stay whole). The models are the ``--model`` values (bundled names or model
files), by default the bundled codec levels that exist plus ``study``, ``rd-study`` and
``rd-wide``. Writes ``codecs.json``, ``codecs.md``, ``codecs.csv`` and ``rd.png`` to ``--out``
(:func:`microcae.evaluation.codec_comparison.write_comparison`); throughput is measured on the
CPU this runs on, with ``--threads`` torch threads. ``--no-curves`` with ``--merge`` adds
models to an earlier run without measuring the classical curves again.

Usage::

    python benchmarks/codec_rd.py /work/main/runs/codec128 --images /work/shared/micrographs \\
        --out benchmarks/results/codec_rd --model runs/codec_q1.safetensors ... --model study
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


def test_sources(data: Path, images: Path) -> list[Path]:
    """Paths of the test-split source images of the prepared set ``data``, under ``images``."""
    manifest = json.loads((data / "manifest.json").read_text())
    return [images / source["file"] for source in manifest["sources"]
            if source["split"] == "test"]


def main() -> None:
    """Parse the arguments, run the comparison and write its files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="prepared set whose test split is measured")
    parser.add_argument("--images", type=Path, required=True, help="its source folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/codec_rd"))
    parser.add_argument("--model", action="append", default=None,
                        help="bundled name or model file (repeatable)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--no-curves", action="store_true",
                        help="measure only the models and the codecs at their bytes")
    parser.add_argument("--merge", type=Path, default=None,
                        help="codecs.json of an earlier run on the same images to add")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refine", type=int, default=0,
                        help="encode the models with this many latent refinement steps "
                             "(rows named <model>+refine<steps>); 0: no refinement")
    args = parser.parse_args()

    import torch

    from microcae.data.images import read_micrograph
    from microcae.evaluation.codec_comparison import (
        BPP_TARGETS,
        CodecComparison,
        compare_codecs,
        write_comparison,
    )
    from microcae.models.refinement import Refinement
    from microcae.models.registry import BUNDLED, codec_levels, load_model

    torch.set_num_threads(args.threads)
    names = args.model or [*codec_levels(), "study", "rd-study", "rd-wide"]
    models = [(name if name in BUNDLED else Path(name).stem, load_model(name)) for name in names]
    sources = test_sources(args.data, args.images)
    micrographs = [replace(read_micrograph(path), path=str(path.relative_to(args.images)))
                   for path in sources]
    refine = Refinement(steps=args.refine) if args.refine else None
    comparison = compare_codecs(micrographs, models, () if args.no_curves else BPP_TARGETS,
                                crop=args.crop, refine=refine)
    if args.merge is not None:
        earlier = CodecComparison.from_dict(json.loads(args.merge.read_text()))
        comparison = comparison.merged(earlier)
    title = (f"microcae vs classical codecs, test split of {args.data.name} "
             f"({len(sources)} images, centre crop ≤ {args.crop} px)")
    for path in write_comparison(comparison, args.out, title).values():
        print(path)


if __name__ == "__main__":
    main()
