"""`run_words(spec, out_dir, reporter)`: the visual-word gallery of a pretraining checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision import transforms as T

from obow.analysis.words import collect_top_patches, write_gallery
from obow.config.pretrain import PretrainSpec
from obow.config.words import WordsSpec
from obow.data.sources import open_dataset
from obow.data.views import ViewDataset
from obow.errors import ConfigError
from obow.io.checkpoint import load_training_checkpoint
from obow.models.loaders import in_order_loader
from obow.models.obow import build_obow
from obow.reporting import Reporter, check_stop, start_phase


def run_words(spec: WordsSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    payload = load_training_checkpoint(Path(spec.checkpoint))
    pre = PretrainSpec.model_validate(payload["spec"])
    model = build_obow(pre)
    model.load_state_dict(payload["model"])
    model.eval()
    levels = spec.levels or pre.model.bow_levels
    unknown = [lvl for lvl in levels if lvl not in pre.model.bow_levels]
    if unknown:
        raise ConfigError(f"levels {unknown} are not BoW levels of this model ({pre.model.bow_levels})")
    d = pre.data
    source = open_dataset(spec.dataset or d.dataset_name, spec.data_dir or d.data_dir, spec.split)
    view = T.Compose([T.Resize(d.teacher_resize), T.CenterCrop(d.teacher_size)])
    normalise = T.Compose([T.ToTensor(), T.Normalize(d.mean, d.std)])
    count = min(len(source), spec.max_images) if spec.max_images else len(source)
    dataset = ViewDataset(source, T.Compose([view, normalise]), range(count), target="index")
    total = len(dataset) * len(levels)
    done = 0
    start_phase(reporter, "collecting patches", total, "images")
    results = {}
    for n, level in enumerate(levels):
        if n:
            start_phase(reporter, "collecting patches", total, "images", done=done)
        i = pre.model.bow_levels.index(level)
        vocab = model.bow_extractor.levels[i]
        loader = in_order_loader(dataset, spec.batch_size, spec.workers)

        def progress(n: int) -> None:
            nonlocal done
            done += n
            reporter.progress(done, total)
            check_stop(reporter)

        top, usage, map_size = collect_top_patches(
            lambda x, level=level: model.teacher(x, taps=(level,))[level],
            loader,
            vocab.words,
            vocab.inv_delta,
            vocab._min_distance_mean,
            spec.patches,
            on_batch=progress,
        )
        start_phase(reporter, "writing gallery", len(levels), "levels", done=n)
        index = write_gallery(
            Path(out_dir), level, top, usage, map_size, model.teacher.stride[level], d.teacher_size,
            lambda image_id: view(source.get_image(image_id)), spec.words,
        )
        reporter.progress(n + 1, len(levels))
        used = float((usage > 0).float().mean())
        results[level] = {"words_shown": len(index["words"]), "words_used": used, "images": len(dataset)}
        for suffix, kind in ((".png", "words"), (".json", "words-index")):
            path = Path(out_dir) / f"visual_words_{level}{suffix}"
            reporter.artifact(path, kind, {"level": level, "format": suffix[1:]})
        reporter.log(f"{level}: {len(index['words'])} words shown, {100 * used:.1f}% of the vocabulary used")
    return {"levels": results}
