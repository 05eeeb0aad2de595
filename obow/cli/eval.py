"""`obow linear | semisup | fewshot | knn | svm`: the evaluation protocols.

Flags keep the original scripts' names where they apply (`--batch-norm`, `--cos-schedule`, `--schedule`,
`--lr-decay`, `--precache`, `--cache-5crop`, `--percentage`, `--lr-head`, `--fewshot-n/k/q`, ...). List
values take one argument separated by commas or spaces: `--schedule 10,20` or `--schedule "10 20"`.
Unset options keep the spec's defaults, which depend on the dataset (image size, normalisation).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

DATASETS = ["FashionMNIST", "MNIST", "ImageNet", "ImageFolder", "FoolboxImageNet", "Synthetic"]
SPLITS = click.Choice(["train", "val", "test"])


def _numbers(cast: Callable[[str], Any]) -> Callable:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
        if value is None:
            return None
        try:
            return [cast(v) for v in re.split(r"[,\s]+", value.strip()) if v]
        except ValueError:
            raise click.BadParameter(f"expected numbers separated by commas or spaces, got '{value}'") from None

    return parse


def common_options(func: Callable) -> Callable:
    options = [
        click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
                     help="OBoW Lab checkpoint, or an official OBoW / torchvision file."),
        click.option("--dataset", type=click.Choice(DATASETS), default="FashionMNIST", show_default=True),
        click.option("--data-dir", default=None, help="Dataset folder (ImageFolder: with train/ and val/)."),
        click.option("--dst-dir", default=None, type=click.Path(file_okay=False),
                     help="Output folder (default: eval_<kind>/ beside the checkpoint)."),
        click.option("--train-split", type=SPLITS, default=None),
        click.option("--test-split", type=SPLITS, default=None),
        click.option("--subset", type=int, default=None, help="First N training images of each class."),
        click.option("--test-subset", type=int, default=None, help="First N test images of each class."),
        click.option("--resize", type=int, default=None, help="Shorter side before the crop (dataset default)."),
        click.option("--size", type=int, default=None, help="Crop size (dataset default)."),
        click.option("-b", "--batch-size", type=int, default=None),
        click.option("-j", "--workers", type=int, default=None),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None),
        click.option("--seed", type=int, default=None),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def optim_options(func: Callable) -> Callable:
    options = [
        click.option("--epochs", type=int, default=None),
        click.option("--lr", type=float, default=None),
        click.option("--momentum", type=float, default=None),
        click.option("--wd", type=float, default=None, help="Weight decay."),
        click.option("--nesterov", is_flag=True),
        click.option("--cos-schedule", is_flag=True, help="Cosine lr decay instead of the step schedule."),
        click.option("--schedule", callback=_numbers(int), default=None, help="Step milestones, e.g. 15,30,45."),
        click.option("--lr-decay", type=float, default=None),
        click.option("--eval-every", type=int, default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


RENAMED = {"fewshot_n": "n_way", "fewshot_k": "k_shot", "fewshot_q": "n_query", "novel_classes": "novel_classes_file"}
NOT_SPEC = {"dst_dir", "quiet", "places", "cache_5crop"}


def _spec_fields(options: dict[str, Any]) -> dict[str, Any]:
    fields = {}
    for key, value in options.items():
        if key in NOT_SPEC or value is None or value is False or value == ():
            continue
        fields[RENAMED.get(key, key)] = value
    return fields


def _run(kind: str, options: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    from obow.config.eval import EVAL_SPECS
    from obow.config.presets import validated_spec
    from obow.reporting import ConsoleReporter
    from obow.runs import run

    spec = validated_spec(EVAL_SPECS[kind], {**(base or {}), **_spec_fields(options)})
    out = Path(options["dst_dir"]) if options.get("dst_dir") else Path(options["checkpoint"]).parent / f"eval_{kind}"
    reporter = ConsoleReporter(log_dir=out / "logs", show_progress=not options.get("quiet"), name=f"obow.{kind}")
    try:
        result = run(kind, spec, out, reporter)
    finally:
        reporter.close()
    click.echo((out / "results.txt").read_text().rstrip())
    click.echo(f"results: {out / 'results.json'}")
    return result


@click.command("linear")
@common_options
@optim_options
@click.option("-n", "--batch-norm", is_flag=True, help="Non-affine BatchNorm before the linear layer (Places205).")
@click.option("--places", is_flag=True,
              help="Places205 protocol defaults: --batch-norm, wd 1e-5, lr 0.01, 28 epochs, schedule 10,20.")
@click.option("--train-aug", type=click.Choice(["random_resized_crop", "resize_random_crop"]), default=None)
@click.option("--precache", is_flag=True, help="Cache features of fixed views once; epochs then skip the network.")
@click.option("--cache-dir", default=None, help="Feature cache folder (default: <dst-dir>/cache_features).")
@click.option("--cache-5crop", is_flag=True, help="Cache FiveCrop + flips (10 views) instead of center + flip.")
@click.option("--drop-cache", is_flag=True, help="Delete the feature cache after training (as the original).")
def linear_command(**options: Any) -> None:
    """Linear probe on frozen student features (ImageNet or Places205 protocol); reports top-1/top-5."""
    from obow.config.eval import places205_defaults

    base = places205_defaults() if options["places"] else {}
    if options["cache_5crop"]:
        options["cache_views"] = "ten_crop"
    if options.pop("drop_cache"):
        options["keep_cache"] = False
    _run("linear", options, base)


@click.command("semisup")
@common_options
@optim_options
@click.option("--percentage", type=float, default=None, help="Labelled percentage of each class (1, 10, ...).")
@click.option("--split-file", default=None, type=click.Path(dir_okay=False),
              help="Standard split list, one image file name per line (e.g. SimCLR's 1percent.txt).")
@click.option("--lr-head", type=float, default=None, help="Learning rate of the linear head.")
def semisup_command(**options: Any) -> None:
    """Fine-tune the whole network on a labelled fraction; reports top-1/top-5."""
    _run("semisup", options)


@click.command("fewshot")
@common_options
@click.option("--split", type=SPLITS, default=None, help="Split the episodes come from (default: val).")
@click.option("--episodes", type=int, default=None)
@click.option("--fewshot-n", type=int, default=None, help="Classes per episode (n-way).")
@click.option("--fewshot-k", callback=_numbers(int), default=None, help="Shots, several allowed: 1,5.")
@click.option("--fewshot-q", type=int, default=None, help="Queries per class and episode.")
@click.option("--novel-classes", default=None, type=click.Path(dir_okay=False),
              help='JSON {"novel_classes": [names or indices]}.')
@click.option("--novel-key", default=None, help="Key of the class list in that file (official: novel_classes_2).")
@click.option("--novel-fraction", type=float, default=None, help="Seeded share of classes used as novel.")
@click.option("--scale", type=float, default=None, help="Cosine scale of the prototype classifier.")
def fewshot_command(**options: Any) -> None:
    """Few-shot accuracy of a cosine prototype classifier over seeded episodes, with 95% intervals."""
    _run("fewshot", options)


@click.command("knn")
@common_options
@click.option("-k", "--k", "k", callback=_numbers(int), default=None, help="Neighbours, several allowed: 20,200.")
@click.option("--temperature", type=float, default=None)
def knn_command(**options: Any) -> None:
    """Weighted kNN top-1 on L2-normalised features."""
    _run("knn", options)


@click.command("svm")
@common_options
@click.option("--costs", callback=_numbers(float), default=None, help="SVM cost grid, e.g. 0.05,0.1,0.3,0.5,1,3,5.")
@click.option("--folds", type=int, default=None, help="Cross-validation folds.")
@click.option("--normalize", type=click.Choice(["none", "l2", "bn"]), default=None,
              help="Feature normalisation: bn (pool5_bn-like, default), l2 or none (pool5).")
@click.option("--labels-file", default=None, type=click.Path(dir_okay=False),
              help='Multi-label JSON {"classes": [...], "labels": {"<image file name>": [classes]}}.')
def svm_command(**options: Any) -> None:
    """VOC07-style linear SVMs per class with cross-validated costs; reports mAP."""
    _run("svm", options)


COMMANDS = [linear_command, semisup_command, fewshot_command, knn_command, svm_command]
