"""`obow words`: the visual-word gallery."""

from __future__ import annotations

from pathlib import Path

import click

from obow.config.words import WordsSpec
from obow.reporting import ConsoleReporter


@click.command("words")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="OBoW Lab training checkpoint.")
@click.option("--data-dir", default=None, help="Dataset folder (default: the pretraining's).")
@click.option("--dataset", default=None, help="Dataset name (default: the pretraining's).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--level", "levels", multiple=True, type=click.Choice(["block3", "block4"]),
              help="BoW level(s) (default: all of the model's).")
@click.option("--words", type=int, default=64, show_default=True, help="Words to show, the most used first.")
@click.option("--patches", type=int, default=8, show_default=True, help="Patches per word.")
@click.option("--max-images", type=int, default=None, help="Only scan this many images.")
@click.option("--dst-dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: visual_words/ beside the checkpoint).")
def words_command(checkpoint: str, data_dir: str | None, dataset: str | None, split: str, levels: tuple[str, ...],
                  words: int, patches: int, max_images: int | None, dst_dir: str | None) -> None:
    """Top image patches of each visual word: one contact-sheet PNG and a JSON index per level."""
    from obow.analysis.run_words import run_words
    from obow.config.presets import validated_spec

    spec = validated_spec(WordsSpec, {"checkpoint": checkpoint, "data_dir": data_dir, "dataset": dataset,
                                      "split": split, "levels": list(levels) or None, "words": words,
                                      "patches": patches, "max_images": max_images})
    out = Path(dst_dir) if dst_dir else Path(checkpoint).parent / "visual_words"
    reporter = ConsoleReporter()
    result = run_words(spec, out, reporter)
    reporter.close()
    for level, info in result["levels"].items():
        click.echo(f"{out / f'visual_words_{level}.png'}  ({info['words_shown']} words, "
                   f"{100 * info['words_used']:.1f}% of the vocabulary used over {info['images']} images)")


COMMANDS = [words_command]
