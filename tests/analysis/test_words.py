"""Visual-word gallery: the streaming top-k against a brute-force sort, boxes on a known pattern."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from obow.analysis.words import TopKPerWord, collect_top_patches, location_box, write_gallery


def test_streaming_top_k_equals_brute_force_sort():
    g = torch.Generator().manual_seed(0)
    k_words, per_word, n_images = 6, 3, 25
    scores = torch.rand(n_images, k_words, generator=g)
    locations = torch.randint(0, 9, (n_images, k_words), generator=g)
    top = TopKPerWord(k_words, per_word)
    for start in range(0, n_images, 4):  # uneven batches
        ids = torch.arange(start, min(start + 4, n_images))
        top.update(scores[ids], ids, locations[ids])
    for word in range(k_words):
        ranked = sorted(range(n_images), key=lambda i: -float(scores[i, word]))[:per_word]
        assert top.image_ids[word].tolist() == ranked
        assert top.locations[word].tolist() == [int(locations[i, word]) for i in ranked]
        assert torch.allclose(top.scores[word], scores[ranked, word])


def test_fewer_images_than_patches_leaves_empty_slots():
    top = TopKPerWord(2, 4)
    top.update(torch.tensor([[0.5, 0.1]]), torch.tensor([7]), torch.tensor([[0, 1]]))
    assert top.image_ids[0].tolist() == [7, -1, -1, -1]


def pooled_map(images: torch.Tensor) -> torch.Tensor:
    """A stand-in teacher: 8x8 average pooling of the grey channel, i.e. stride 8."""
    return F.avg_pool2d(images[:, :1], kernel_size=8, stride=8)


def test_a_known_pattern_lights_its_word_at_the_known_place(tmp_path: Path):
    size, stride = 64, 8
    images, truth = [], []
    for i, (cy, cx) in enumerate([(4, 2), (2, 5), (5, 5)]):
        img = torch.zeros(1, 3, size, size)
        img[:, :, cy * stride : (cy + 1) * stride, cx * stride : (cx + 1) * stride] = 1.0
        images.append(img)
        truth.append((i, cy, cx))
    batch = torch.cat(images)
    words = torch.tensor([[0.0], [1.0]])  # background word 0, bright-block word 1
    top, usage, map_size = collect_top_patches(
        pooled_map, [(batch, torch.arange(3))], words, inv_delta=10.0, mu=torch.tensor([0.1]), per_word=3
    )
    assert map_size == (6, 6)
    assert usage.tolist() == [3 * 36 - 3, 3]  # every location is background except one per image
    for image_id, loc in zip(top.image_ids[1].tolist(), top.locations[1].tolist(), strict=True):
        _, cy, cx = truth[image_id]
        y, x = divmod(loc, 6)
        assert (y + 1, x + 1) == (cy, cx)  # cropped map index + 1 = full map index
        x0, y0, x1, y1 = location_box(loc, map_size, stride, size)
        assert x0 <= cx * stride and (cx + 1) * stride <= x1 and y0 <= cy * stride and (cy + 1) * stride <= y1

    def load_view(image_id: int) -> Image.Image:
        return Image.fromarray((batch[image_id].permute(1, 2, 0).numpy() * 255).astype("uint8"))

    index = write_gallery(tmp_path, "block4", top, usage, map_size, stride, size, load_view, num_words=2)
    assert [w["word"] for w in index["words"]] == [0, 1]  # most used first
    saved = json.loads((tmp_path / "visual_words_block4.json").read_text())
    assert saved["words"][1]["patches"][0]["box"] == index["words"][1]["patches"][0]["box"]
    crop = load_view(saved["words"][1]["patches"][0]["image_id"]).crop(tuple(saved["words"][1]["patches"][0]["box"]))
    assert crop.convert("L").getextrema()[1] == 255  # the patch shows the bright block
    assert Image.open(tmp_path / "visual_words_block4.png").size[0] > 0


@pytest.mark.parametrize(("loc", "expected"), [(0, (4, 4, 20, 20)), (35, (44, 44, 60, 60))])
def test_location_box_corners(loc, expected):
    assert location_box(loc, (6, 6), 8, 64) == expected


def test_run_words_on_a_trained_checkpoint(tiny_checkpoint, tmp_path: Path):
    from obow.analysis.run_words import run_words
    from obow.config.words import WordsSpec
    from obow.reporting import RecordingReporter

    rep = RecordingReporter()
    spec = WordsSpec(checkpoint=str(tiny_checkpoint), split="test", max_images=64, words=5, patches=4, batch_size=32)
    result = run_words(spec, tmp_path, rep)
    assert set(result["levels"]) == {"block3", "block4"}
    index = json.loads((tmp_path / "visual_words_block4.json").read_text())
    assert len(index["words"]) == 5 and all(len(w["patches"]) == 4 for w in index["words"])
    ids = [p["image_id"] for p in index["words"][0]["patches"]]
    assert len(set(ids)) == len(ids) and all(0 <= i < 64 for i in ids)  # distinct images of the pass
    assert {kind for _, kind, _ in rep.artifacts} == {"words", "words-index"}
    # per level: its patches, then its sheet; each phase resumes where the previous level left it
    assert rep.phases() == ["collecting patches", "writing gallery"] * 2
    last = {label: (done, total) for _, label, done, total in rep.progress_log}
    assert last == {"collecting patches": (128, 128), "writing gallery": (2, 2)}  # each phase ran to its end


def test_run_words_bad_input(tiny_checkpoint, tmp_path: Path):
    from pydantic import ValidationError

    from obow.analysis.run_words import run_words
    from obow.config.words import WordsSpec
    from obow.errors import CheckpointError
    from obow.reporting import NullReporter

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an OBoW Lab training checkpoint"):
        run_words(WordsSpec(checkpoint=str(foreign)), tmp_path / "a", NullReporter())
    vanilla_levels = WordsSpec(checkpoint=str(tiny_checkpoint), levels=["block3"], max_images=8)
    run_words(vanilla_levels, tmp_path / "b", NullReporter())
    assert (tmp_path / "b" / "visual_words_block3.png").exists()
    with pytest.raises(ValidationError, match="patches"):
        WordsSpec(checkpoint=str(tiny_checkpoint), patches=0)


def test_words_cli_bad_checkpoint_is_one_line(tmp_path: Path):
    from click.testing import CliRunner

    from obow.cli import main

    result = CliRunner().invoke(main, ["words", "--checkpoint", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: checkpoint") and "does not exist" in result.output
