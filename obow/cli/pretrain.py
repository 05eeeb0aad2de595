"""`obow pretrain` and `obow presets`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from obow.config import list_presets, load_pretrain_config, preset_dict
from obow.errors import ConfigError, StopRequested
from obow.reporting import ConsoleReporter


@click.command("pretrain")
@click.option("--config", "config", required=True, help="Preset name (see `obow presets`) or a YAML file.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Dataset folder.")
@click.option(
    "--dst-dir",
    type=click.Path(file_okay=False),
    default="experiments",
    show_default=True,
    help="Output root; the run goes to DST_DIR/<config name>/.",
)
@click.option("-j", "--workers", type=int, default=None, help="Data-loading processes per training process.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the output folder.")
@click.option("--gpus", type=int, default=None, help="Train with DDP over this many GPUs of this node.")
@click.option("--multiprocessing-distributed", is_flag=True, help="DDP over all visible GPUs (as the original).")
@click.option("--nproc", type=int, default=None, help="DDP processes on CPU (gloo), for testing distributed runs.")
@click.option("--seed", type=int, default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for the networks (vocabulary maths stays fp32).")
@click.option("--channels-last", is_flag=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the student.")
@click.option(
    "--time-budget", type=float, default=None,
    help="End the run after N seconds (final monitor and checkpoint); --resume continues it.",
)
@click.option("-p", "--print-freq", type=int, default=None)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override any config value, e.g. --set optim.num_epochs=5 (repeatable).",
)
def pretrain_command(
    config: str,
    data_dir: str | None,
    dst_dir: str,
    workers: int | None,
    resume: bool,
    gpus: int | None,
    multiprocessing_distributed: bool,
    nproc: int | None,
    seed: int | None,
    device: str | None,
    bf16: bool,
    channels_last: bool,
    compile_: bool,
    time_budget: float | None,
    print_freq: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Self-supervised OBoW pretraining."""
    extra = list(overrides)
    runtime = {
        "workers": workers,
        "seed": seed,
        "device": device,
        "time_budget_s": time_budget,
        "print_freq": print_freq,
    }
    if data_dir is not None:
        extra.append(f"data.data_dir={json.dumps(str(Path(data_dir).resolve()))}")
    if gpus is not None and multiprocessing_distributed:
        raise ConfigError("give either --gpus N or --multiprocessing-distributed, not both")
    if multiprocessing_distributed:
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError("--multiprocessing-distributed needs GPUs; use --nproc N for CPU processes")
    if gpus is not None and nproc is not None:
        raise ConfigError("give either --gpus or --nproc")
    if gpus is not None:
        runtime.update(num_processes=gpus, device="cuda")
    if nproc is not None:
        runtime.update(num_processes=nproc, device="cpu")
    if bf16:
        runtime["precision"] = "bf16"
    runtime.update({k: True for k, on in (("channels_last", channels_last), ("compile", compile_)) if on})
    extra += [f"runtime.{k}={json.dumps(v)}" for k, v in runtime.items() if v is not None]
    spec = load_pretrain_config(config, extra)
    from obow.train.checkpoint import latest_checkpoint
    from obow.train.engine import run_pretrain

    out_dir = Path(dst_dir) / spec.name
    if latest_checkpoint(out_dir) is not None and not resume:
        raise ConfigError(
            f"'{out_dir}' already holds checkpoints; pass --resume to continue it, or choose another --dst-dir"
        )
    reporter = ConsoleReporter(out_dir / "logs")
    reporter.log(f"OBoW pretraining '{spec.name}' -> {out_dir}")
    try:
        result = run_pretrain(spec, out_dir, reporter)
    except StopRequested as stop:
        reporter.close()
        click.echo(f"{stop}; the checkpoint is saved, continue with --resume")
        return
    reporter.close()
    click.echo(f"done: {result['epochs']} epochs, {result['iterations']} iterations; checkpoints in {out_dir}")


@click.command("presets")
@click.argument("name", required=False)
def presets_command(name: str | None) -> None:
    """List the presets, or print one as YAML."""
    import yaml

    if name is None:
        for preset in list_presets():
            click.echo(preset)
        # sweep examples (bodies of the lab's POST /api/v1/sweeps) live beside the presets they search
        from importlib.resources import files

        for group in sorted((p for p in files("obow").joinpath("presets").iterdir() if p.is_dir()), key=str):
            sweeps = group.joinpath("sweeps")
            found = [p for p in sweeps.iterdir() if p.name.endswith(".yaml")] if sweeps.is_dir() else []
            for path in sorted(found, key=str):
                click.echo(f"sweep example: {path}  (obow lab sweep create --file {path})")
        return
    click.echo(yaml.safe_dump(preset_dict(name), sort_keys=False))


COMMANDS = [pretrain_command, presets_command]
