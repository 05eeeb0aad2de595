"""Hand examples and naive-loop references for the evaluation maths (no network, no data files)."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from obow.config.eval import FewshotSpec, KnnSpec, LinearSpec, SemisupSpec, places205_defaults
from obow.data.sources import FileListSource, synthetic_source
from obow.errors import ConfigError, DataError
from obow.eval.common import epoch_lr, topk_correct
from obow.eval.fewshot import make_episodes, mean_and_ci95, prototype_logits
from obow.eval.splits import balanced_split, read_split, split_file_name, write_split
from obow.eval.svm import (
    average_precision,
    choose_cost,
    interpolated_ap,
    label_matrix,
    normalise_features,
    voc07_ap,
)


def naive_prototype_scores(support, support_labels, queries, n_way, scale):
    scores = []
    for q in queries.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        row = []
        for c in range(n_way):
            members = [s for s, label in zip(support.tolist(), support_labels.tolist(), strict=True) if label == c]
            normed = [[v / math.sqrt(sum(x * x for x in s)) for v in s] for s in members]
            mean = [sum(col) / len(normed) for col in zip(*normed, strict=True)]
            mn = math.sqrt(sum(v * v for v in mean))
            row.append(scale * sum(a * b for a, b in zip(q, mean, strict=True)) / (qn * mn))
        scores.append(row)
    return torch.tensor(scores)


def test_prototype_classifier_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    support, queries = torch.randn(12, 5, generator=g), torch.randn(7, 5, generator=g)
    labels = torch.arange(4).repeat_interleave(3)
    got = prototype_logits(support, labels, queries, n_way=4, scale=10.0)
    assert torch.allclose(got, naive_prototype_scores(support, labels, queries, 4, 10.0), atol=1e-5)


def test_prototype_normalises_support_before_averaging():
    # the long vector would dominate an un-normalised mean and flip the decision
    support = torch.tensor([[100.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = prototype_logits(support, labels, torch.tensor([[0.2, 1.0]]), n_way=2)
    assert scores.shape == (1, 2) and math.isclose(float(scores[0, 0]), 10 * (0.2 + 1) / math.sqrt(1.04) / math.sqrt(2),
                                                   rel_tol=1e-5)


def test_confidence_interval_hand_example():
    mean, ci = mean_and_ci95([50.0, 70.0, 60.0, 80.0])
    assert mean == 65.0 and math.isclose(ci, 1.96 * math.sqrt(125.0) / 2)


def test_average_precision_hand_examples():
    # positives at ranks 1, 3, 5: (1/1 + 2/3 + 3/5) / 3
    assert math.isclose(average_precision(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 0, 1])),
                        (1 + 2 / 3 + 3 / 5) / 3)
    # a tie between a positive and a negative counts as one threshold: (1 + 2/3 + 3/4) / 3
    assert math.isclose(average_precision(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 1])),
                        (1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == 1.0
    assert math.isnan(average_precision(np.array([1.0, 2.0]), np.array([0, 0])))


def test_average_precision_agrees_with_sklearn_on_random_scores():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        labels = rng.integers(0, 2, 40)
        assert math.isclose(average_precision(scores, labels), average_precision_score(labels, scores))


def test_interpolated_ap_hand_example():
    # precision per rank 0, 1/2, 2/3 -> envelope 2/3 at both positives; non-interpolated gives (1/2 + 2/3) / 2
    scores, labels = np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1])
    assert math.isclose(interpolated_ap(scores, labels), 2 / 3)
    assert math.isclose(average_precision(scores, labels), (1 / 2 + 2 / 3) / 2)


def test_multilabel_targets_with_ignored_pairs(tmp_path):
    source = FileListSource([tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"], [0, 0, 0], ["all"])
    labels = tmp_path / "labels.json"
    labels.write_text('{"classes": ["cat", "dog"], "labels": {"a.jpg": ["cat"], "b.jpg": [1, "cat"], "c.jpg": []},'
                      ' "ignore": {"c.jpg": ["dog"]}}')
    matrix, classes = label_matrix(source, str(labels), "train")
    assert classes == ["cat", "dog"] and matrix.tolist() == [[1, 0], [1, 1], [0, -1]]
    labels.write_text('{"classes": ["cat"], "labels": {"a.jpg": ["cow"], "b.jpg": [], "c.jpg": []}}')
    with pytest.raises(DataError, match=r"labels entry 0 of image 'a\.jpg' is not one of its"):
        label_matrix(source, str(labels), "train")
    labels.write_text('{"classes": ["cat"], "labels": {"a.jpg": []}}')
    with pytest.raises(DataError, match="no entry for 2 train images"):
        label_matrix(source, str(labels), "train")


def test_voc07_eleven_point_hand_example():
    # recall/precision per rank: (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2), (1, 3/5)
    got = voc07_ap(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 0, 1]))
    assert math.isclose(got, (4 * 1 + 3 * (2 / 3) + 4 * 0.6) / 11)


def test_svm_cost_choice_on_separable_data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(4, 1, (30, 4))])
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    best, cv = choose_cost(x, y, [0.1, 1.0], folds=3, seed=0, max_iter=2000)
    assert set(cv) == {0.1, 1.0} and cv[best] > 0.95
    train, test = normalise_features(x, x[:5], "bn")
    assert np.allclose(train.mean(0), 0, atol=1e-9) and np.allclose(test, train[:5])
    unit, _ = normalise_features(x, x, "l2")
    assert np.allclose(np.linalg.norm(unit, axis=1), 1)


def test_balanced_split_is_deterministic_and_class_balanced():
    targets = [c for c in range(4) for _ in range(50)] + [4] * 7
    a = balanced_split(targets, 5, 10.0, seed=3)
    assert a == balanced_split(targets, 5, 10.0, seed=3) and a != balanced_split(targets, 5, 10.0, seed=4)
    per_class = np.bincount(np.asarray(targets)[a], minlength=5)
    assert per_class.tolist() == [5, 5, 5, 5, 1]  # round(10% of 7) = 1, never 0
    assert len(set(a)) == len(a) and split_file_name(1.0, 0) == "split_1pct_seed0.txt"


def test_split_files_round_trip_and_match_by_file_name(tmp_path):
    source = FileListSource([tmp_path / f"n0_{i}.JPEG" for i in range(6)], [0, 0, 0, 1, 1, 1], ["a", "b"])
    write_split(tmp_path / "ours.txt", source, [1, 4])
    assert read_split(tmp_path / "ours.txt", source) == [1, 4]
    (tmp_path / "simclr.txt").write_text("n0_5.JPEG\nn0_0.JPEG\n")
    assert read_split(tmp_path / "simclr.txt", source) == [0, 5]
    (tmp_path / "bad.txt").write_text("n0_9.JPEG\n")
    with pytest.raises(DataError, match="not in the training split"):
        read_split(tmp_path / "bad.txt", source)
    memory = synthetic_source(num_images=8, size=8)
    (tmp_path / "idx.txt").write_text("3\n1\n")
    assert read_split(tmp_path / "idx.txt", memory) == [1, 3]


def test_episodes_deterministic_without_replacement():
    labels = [c for c in range(6) for _ in range(8)]
    eps = make_episodes(labels, list(range(6)), n_way=4, k_shot=2, n_query=3, episodes=20, seed=0)
    again = make_episodes(labels, list(range(6)), n_way=4, k_shot=2, n_query=3, episodes=20, seed=0)
    assert all(a[0] == b[0] and (a[1] == b[1]).all() and (a[2] == b[2]).all() for a, b in zip(eps, again, strict=True))
    for chosen, support, query in eps:
        assert len(set(chosen)) == 4 and support.shape == (4, 2) and query.shape == (4, 3)
        for row, c in enumerate(chosen):
            picked = np.r_[support[row], query[row]]
            assert len(set(picked.tolist())) == 5 and all(labels[i] == c for i in picked)


def test_episode_errors_are_clear():
    labels = [c for c in range(3) for _ in range(4)]
    with pytest.raises(ConfigError, match="n_way"):
        make_episodes(labels, [0, 1, 2], n_way=5, k_shot=1, n_query=1, episodes=1, seed=0)
    with pytest.raises(DataError, match="fewer than k_shot"):
        make_episodes(labels, [0, 1, 2], n_way=2, k_shot=4, n_query=1, episodes=1, seed=0)


def test_schedules_and_topk():
    assert epoch_lr(1.0, 0, 10, False, [3, 6], 0.1) == 1.0
    assert math.isclose(epoch_lr(1.0, 6, 10, False, [3, 6], 0.1), 0.01)
    assert math.isclose(epoch_lr(2.0, 5, 10, True, [], 0.1), 1.0)
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert topk_correct(logits, torch.tensor([0, 2]), ks=(1, 2, 5)) == {1: 0, 2: 2, 5: 2}


def test_spec_defaults_follow_the_dataset():
    fm = KnnSpec(checkpoint="x", dataset="FashionMNIST")
    assert (fm.resize, fm.size, fm.mean, fm.std) == (40, 40, [0.286] * 3, [0.353] * 3)
    inet = LinearSpec(checkpoint="x", dataset="ImageNet")
    assert (inet.resize, inet.size, inet.mean[0], inet.batch_norm) == (256, 224, 0.485, False)
    assert LinearSpec.model_validate(inet.model_dump(mode="json")) == inet
    assert KnnSpec(checkpoint="x").size == 40
    assert KnnSpec(checkpoint="x", dataset="MNIST", size=28, resize=32).size == 28
    places = LinearSpec(checkpoint="x", dataset="ImageFolder", **places205_defaults())
    assert places.batch_norm and places.schedule == [10, 20] and places.wd == 1e-5
    semi = SemisupSpec(checkpoint="x", dataset="ImageNet")
    assert (semi.lr, semi.lr_head, semi.lr_decay, semi.schedule) == (2e-4, 0.5, 0.2, [24, 32])
    assert FewshotSpec(checkpoint="x", k_shot=[5, 1, 5]).k_shot == [1, 5]
    with pytest.raises(ValidationError, match="extra"):
        KnnSpec(checkpoint="x", typo=1)
    with pytest.raises(ValidationError, match="size"):
        KnnSpec(checkpoint="x", resize=32, size=40)


def test_novel_classes_from_a_file_or_a_seed(tmp_path):
    from obow.eval.fewshot import novel_classes

    names = [f"n{i:02d}" for i in range(10)]
    official = tmp_path / "splits.json"
    official.write_text('{"label_names": [], "novel_classes_2": [7, 2, 2], "novel_classes": ["n05", 1]}')
    assert novel_classes(FewshotSpec(checkpoint="x", novel_classes_file=str(official), novel_key="novel_classes_2"),
                         names) == [2, 7]
    assert novel_classes(FewshotSpec(checkpoint="x", novel_classes_file=str(official)), names) == [1, 5]
    with pytest.raises(ConfigError, match="novel_classes_1"):
        novel_classes(FewshotSpec(checkpoint="x", novel_classes_file=str(official), novel_key="novel_classes_1"), names)
    seeded = novel_classes(FewshotSpec(checkpoint="x", novel_fraction=0.3, seed=4), names)
    assert len(seeded) == 3 and seeded == novel_classes(FewshotSpec(checkpoint="x", novel_fraction=0.3, seed=4), names)
