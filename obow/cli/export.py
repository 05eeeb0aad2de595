"""`obow convert` and `obow import`."""

from __future__ import annotations

from pathlib import Path

import click

from obow.config.export import ExportSpec, ImportSpec
from obow.config.presets import validated_spec
from obow.errors import ConfigError
from obow.io.export_formats import EXPORT_FORMATS, export_file_suffixes, formats_honouring

# --dst ending in one of these is a file name, anything else a folder: the formats' own endings, plus
# the generic weight-file endings people use
_FILE_SUFFIXES = export_file_suffixes() | {".pt", ".bin"}


def _checkpoint_of_config(config: str, dst_dir: str) -> Path:
    """The newest checkpoint of `obow pretrain --config CONFIG --dst-dir DST_DIR` (the original's
    `--convert-to-torchvision` usage)."""
    from obow.config import load_pretrain_config
    from obow.train.checkpoint import latest_checkpoint

    exp_dir = Path(dst_dir) / load_pretrain_config(config).name
    latest = latest_checkpoint(exp_dir)
    if latest is None:
        raise ConfigError(f"no checkpoint_*.pt in '{exp_dir}'; train it first or pass --checkpoint FILE")
    return latest


@click.command("convert")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="OBoW Lab checkpoint, or an official OBoW / torchvision file.")
@click.option("--config", default=None,
              help="Instead of --checkpoint: the newest checkpoint of this run (preset name or YAML) in --dst-dir.")
@click.option("--dst-dir", default="experiments", show_default=True, type=click.Path(file_okay=False),
              help="With --config: the pretraining output root (the run is DST_DIR/<config name>/).")
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="torchvision", show_default=True)
@click.option("--no-fc", is_flag=True, help="torchvision: leave out the BoW classifier fc.")
@click.option("--plain", is_flag=True, help="torchvision: a plain state dict, not {'network': ...}.")
@click.option("--rgb2bgr", is_flag=True, help="caffe2: flip conv1's input channels for BGR readers.")
@click.option("--dst", default=None,
              help="Output folder, or a file name ending in .pkl/.pth/.tar/.pt/.safetensors (default: beside the "
                   "checkpoint).")
def convert_command(checkpoint: str | None, config: str | None, dst_dir: str, fmt: str, no_fc: bool, plain: bool,
                    rgb2bgr: bool, dst: str | None) -> None:
    """Export the student for torchvision, Detectron(2) / the fair SSL benchmark (Caffe2), or safetensors."""
    from obow.export.run import run_export
    from obow.reporting import ConsoleReporter

    if (checkpoint is None) == (config is None):
        raise ConfigError("give exactly one of --checkpoint FILE and --config NAME (with --dst-dir)")
    source = Path(checkpoint) if checkpoint is not None else _checkpoint_of_config(str(config), dst_dir)
    for option, value in (("no_fc", no_fc), ("plain", plain), ("rgb2bgr", rgb2bgr)):
        if value and option not in EXPORT_FORMATS[fmt].options:
            honouring = " / ".join(formats_honouring(option))
            raise ConfigError(f"--{option.replace('_', '-')} applies to --format {honouring} only")
    out_dir, name = source.parent, None
    if dst is not None:
        target = Path(dst)
        if target.suffix in _FILE_SUFFIXES:
            out_dir, name = target.parent, target.name
        else:
            out_dir = target
    spec = validated_spec(ExportSpec, {"checkpoint": str(source), "format": fmt, "no_fc": no_fc, "plain": plain,
                                       "rgb2bgr": rgb2bgr, "output_name": name})
    click.echo(f"converting '{source}' to {fmt}")
    record = run_export(spec, out_dir, ConsoleReporter(show_progress=False))
    click.echo(f"{out_dir / record['file']}  sha256={record['sha256']}  ({record['size']} bytes)")
    for extra in record["extra_files"]:
        click.echo(f"{out_dir / extra}")
    click.echo(f"record: {out_dir / (record['file'] + '.json')}")


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dst-dir", required=True, type=click.Path(file_okay=False))
@click.option("--name", default=None, help="Output file name (default: imported_<stem>.pt).")
def import_command(file: str, dst_dir: str, name: str | None) -> None:
    """Import an official OBoW checkpoint (model_net / feature_extractor_net) or a torchvision ResNet file."""
    from obow.export.run import imported_name, run_import
    from obow.reporting import ConsoleReporter

    spec = validated_spec(ImportSpec, {"path": file, "name": name})
    dst = Path(dst_dir) / (spec.name or imported_name(Path(file)))
    if dst.exists():
        raise ConfigError(f"'{dst}' already exists; pass another --name or remove it first")
    result = run_import(spec, Path(dst_dir), ConsoleReporter(show_progress=False))
    levels = f", levels {', '.join(result['levels'])}" if result["levels"] else ""
    click.echo(f"{result['path']}  ({result['kind']} checkpoint from a {result['layout']} file, "
               f"{result['arch']}{levels})")


COMMANDS = [convert_command, import_command]
