"""`obow convert` and `obow import`."""

from __future__ import annotations

from pathlib import Path

import click

from obow.config.export import ExportSpec, ImportSpec
from obow.errors import ConfigError


def _validated(cls, **fields):
    from pydantic import ValidationError

    from obow.config.presets import format_validation_error

    try:
        return cls(**fields)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


@click.command("convert")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="OBoW Lab checkpoint, or an official OBoW / torchvision file.")
@click.option("--format", "fmt", type=click.Choice(["torchvision", "caffe2", "detectron2", "safetensors"]),
              default="torchvision", show_default=True)
@click.option("--no-fc", is_flag=True, help="torchvision: leave out the BoW classifier fc.")
@click.option("--plain", is_flag=True, help="torchvision: a plain state dict, not {'network': ...}.")
@click.option("--rgb2bgr", is_flag=True, help="caffe2: flip conv1's input channels for BGR readers.")
@click.option("--dst", default=None, help="Output folder, or a file name ending in the format's suffix.")
def convert_command(checkpoint: str, fmt: str, no_fc: bool, plain: bool, rgb2bgr: bool, dst: str | None) -> None:
    """Export the student for torchvision, Detectron(2) / the fair SSL benchmark (Caffe2), or safetensors."""
    from obow.export.run import run_export
    from obow.reporting import ConsoleReporter

    out_dir, name = Path(checkpoint).parent, None
    if dst is not None:
        target = Path(dst)
        if target.suffix in (".pkl", ".tar", ".pth", ".safetensors", ".pt"):
            out_dir, name = target.parent, target.name
        else:
            out_dir = target
    spec = _validated(ExportSpec, checkpoint=checkpoint, format=fmt, no_fc=no_fc, plain=plain, rgb2bgr=rgb2bgr,
                      output_name=name)
    record = run_export(spec, out_dir, ConsoleReporter(show_progress=False))
    click.echo(f"{out_dir / record['file']}  sha256={record['sha256']}  ({record['size']} bytes)")


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dst-dir", required=True, type=click.Path(file_okay=False))
@click.option("--name", default=None, help="Output file name (default: imported_<stem>.pt).")
def import_command(file: str, dst_dir: str, name: str | None) -> None:
    """Import an official OBoW checkpoint (model_net / feature_extractor_net) or a torchvision ResNet file."""
    from obow.export.run import run_import
    from obow.reporting import ConsoleReporter

    spec = _validated(ImportSpec, path=file, name=name)
    result = run_import(spec, Path(dst_dir), ConsoleReporter(show_progress=False))
    click.echo(f"{result['path']}  ({result['kind']} checkpoint from a {result['layout']} file, {result['arch']})")


COMMANDS = [convert_command, import_command]
