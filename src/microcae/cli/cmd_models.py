"""``microcae models``: the bundled models, their kinds and how they were trained."""

from __future__ import annotations

import click


@click.command("models")
def command() -> None:
    """List the bundled models that --model accepts by name, with kind, size and training."""
    from microcae.models.registry import BUNDLED, read_model_file

    for name, path in BUNDLED.items():
        if not path.is_file():
            continue
        stored = read_model_file(path)
        parameters = sum(p.numel() for p in stored.model.parameters())
        final = stored.provenance.get("final_eval") or stored.provenance.get("final_eval_mse", {})
        scores = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
        click.echo(f"{name}: {stored.model.kind}, {parameters:,} parameters, "
                   f"{path.stat().st_size / 1e6:.2f} MB"
                   f"{f'; final {scores}' if scores else ''}")
        note = stored.provenance.get("note")
        if note:
            click.echo(f"    {note}")
