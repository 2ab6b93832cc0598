"""``microcae models``: the bundled models, their kinds and how they were trained."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("models", invoke_without_command=True)
@click.pass_context
def command(ctx: click.Context) -> None:
    """List the bundled models that --model accepts by name, with kind, size and training."""
    if ctx.invoked_subcommand is not None:
        return
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


@command.command("pack")
@click.argument("source")
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--note", default=None, help="Text appended to the provenance's note.")
@click.option("--force", is_flag=True, help="Replace an existing TARGET.")
def pack(source: str, target: Path, note: str | None, force: bool) -> None:
    """Write TARGET, a copy of model SOURCE with its convolution kernels stored as float16.

    Half the bytes for a codec; the copy is a model of its own (another fingerprint), which
    decodes the same on every machine. This is how the bundled codec levels are stored.
    """
    from microcae.models.registry import pack_model
    from microcae.util.errors import MicrocaeError

    if target.exists() and not force:
        raise MicrocaeError(f"{target} exists (use --force to replace it)")
    pack_model(source, target, note)
    click.echo(f"{target}: {target.stat().st_size / 1e6:.2f} MB")
