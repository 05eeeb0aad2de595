"""One and two full training steps pinned against an independent, loop-based re-implementation.

The reference below is written from the method description (shared/reference/obow_reference.md §2):
it shares nothing with `obow.models` except the ResNet backbones (copies of the same initial
networks; the backbone is plain torchvision-style code, not the method). Distances are explicit
differences, codes, pooling, the queue, the generators' BatchNorm, the losses, the EMA and SGD are
written out by hand, all in float64, so every quantity can be compared tightly. The queue-insert
locations come from a seeded `torch.Generator` that the reference draws from in the documented way
(`randint(0, positions, (B,))` per level, in level order, after that level's distances).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from obow.config import load_pretrain_config
from obow.models.obow import OBoW, build_obow
from obow.train.engine import build_optimizer, training_step

B, K, T = 4, 8, 10  # K = 2·B: the second step's insert wraps the queue pointer around
TOL = {"rtol": 1e-9, "atol": 1e-11}


# two crop types (one 32 px crop, two 16 px patches), so the step shares κ·G(V) between them
TWO_CROP_TYPES = ["data.num_img_crops=1", "data.num_img_patches=2", "data.img_patch_preresize=40",
                  "data.img_patch_size=16", "data.img_patch_jitter=4"]


def tiny_spec():
    return load_pretrain_config(
        "FashionMNIST/tiny", [f"data.batch_size={B}", f"model.bow_extractor_opts.num_words={K}", *TWO_CROP_TYPES]
    )


# -- the independent reference ---------------------------------------------------------------------
def manual_batch_norm(x, weight, bias, stats, momentum=0.1, eps=1e-5):
    """Training-mode BN over rows of [N, C]: batch statistics, running stats with the unbiased variance."""
    n = x.shape[0]
    mean = x.sum(dim=0) / n
    var = ((x - mean) ** 2).sum(dim=0) / n
    with torch.no_grad():
        stats["running_mean"] = (1 - momentum) * stats["running_mean"] + momentum * mean
        stats["running_var"] = (1 - momentum) * stats["running_var"] + momentum * var * n / (n - 1)
        stats["num_batches_tracked"] = stats["num_batches_tracked"] + 1
    y = (x - mean) / torch.sqrt(var + eps)
    return y * weight + bias if weight is not None else y


def row_normalise(x):
    return x / torch.sqrt((x * x).sum(dim=1, keepdim=True)).clamp_min(1e-12)


class Reference:
    """OBoW, one step at a time, from the description; every tensor float64."""

    def __init__(self, model: OBoW, spec) -> None:
        m = spec.model
        self.levels = list(m.bow_levels)
        self.inv_delta = [float(x) for x in m.per_level("inv_delta")]
        self.kappa = [float(x) for x in m.per_level("kappa")]
        self.base_alpha = m.alpha
        self.student = copy.deepcopy(model.student)
        self.teacher = copy.deepcopy(model.teacher)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.iteration = 0
        self.alpha = float(sd["_alpha"])
        self.gen = []
        for i in range(len(self.levels)):
            p = f"bow_predictor.layers_w.{i}.b{i}_"
            self.gen.append({
                "fc": sd[p + "fc.weight"].requires_grad_(),
                "bn_w": sd[p + "bn.weight"].requires_grad_(),
                "bn_b": sd[p + "bn.bias"].requires_grad_(),
                "last_w": sd[p + "last_layer.weight"].requires_grad_(),
                "last_b": sd[p + "last_layer.bias"].requires_grad_(),
                "stats": {s: sd[p + "bn." + s] for s in ("running_mean", "running_var", "num_batches_tracked")},
            })
        lv = "bow_extractor.levels.{}."
        self.queue = [sd[lv.format(i) + "_embedding"] for i in range(len(self.levels))]
        self.ptr = [int(sd[lv.format(i) + "_embedding_ptr"]) for i in range(len(self.levels))]
        self.mu = [float(sd[lv.format(i) + "_min_distance_mean"]) for i in range(len(self.levels))]
        self.tracked = [float(sd[lv.format(i) + "_track_num_batches"]) for i in range(len(self.levels))]
        self.scale = sd["bow_predictor.scale"]
        self.mon_w = sd["linear_classifier.prediction_layer.weight"].requires_grad_()
        self.mon_b = sd["linear_classifier.prediction_layer.bias"].requires_grad_()
        self.mon_stats = {
            s: sd["linear_classifier.batch_norm." + s] for s in ("running_mean", "running_var", "num_batches_tracked")
        }
        self.momentum_buffers: dict[int, torch.Tensor] = {}

    def trainable(self) -> list[torch.Tensor]:
        gen = [g[key] for g in self.gen for key in ("fc", "bn_w", "bn_b", "last_w", "last_b")]
        return [*self.student.parameters(), *gen, self.mon_w, self.mon_b]

    def generate(self, i: int, words: torch.Tensor) -> torch.Tensor:
        g = self.gen[i]
        h = row_normalise(words) @ g["fc"].t()
        h = torch.relu(manual_batch_norm(h, g["bn_w"], g["bn_b"], g["stats"]))
        return row_normalise(h @ g["last_w"].t() + g["last_b"])

    def level_targets(self, i: int, fmap: torch.Tensor, words: torch.Tensor, locations: torch.Generator):
        f = fmap[:, :, 1:-1, 1:-1]
        b, _c, h, w = f.shape
        k = words.shape[0]
        d = torch.empty(b, k, h, w, dtype=f.dtype)
        for n in range(b):
            for y in range(h):
                for x in range(w):
                    for j in range(k):
                        diff = f[n, :, y, x] - words[j]
                        d[n, j, y, x] = (diff * diff).sum()
        batch_min = float(d.min(dim=1).values.mean())
        self.mu[i] = 0.99 * self.mu[i] + 0.01 * batch_min  # before the codes
        self.tracked[i] += 1
        # queue: 3x3 local averages, one uniformly drawn position per image, FIFO at the pointer
        ah, aw = h - 2, w - 2
        picks = torch.randint(0, ah * aw, (b,), generator=locations)
        for n in range(b):
            y, x = divmod(int(picks[n]), aw)
            self.queue[i][self.ptr[i]] = f[n, :, y : y + 3, x : x + 3].mean(dim=(1, 2))
            self.ptr[i] = (self.ptr[i] + 1) % k
        codes = torch.empty_like(d)
        bow = torch.empty(b, k, dtype=f.dtype)
        for n in range(b):
            for y in range(h):
                for x in range(w):
                    codes[n, :, y, x] = torch.softmax(-(self.inv_delta[i] / self.mu[i]) * d[n, :, y, x], dim=0)
            pooled = codes[n].reshape(k, -1).max(dim=1).values
            bow[n] = pooled / pooled.sum()
        return bow, codes, batch_min

    def step(self, teacher_img, groups, labels, lr, momentum, weight_decay, total_iters, locations):
        out: dict = {"logits": [], "losses": {}}
        dictionary = [q.clone() for q in self.queue]
        weights = [self.scale[i] * self.generate(i, dictionary[i]) for i in range(len(self.levels))]
        for group in groups:
            feats = self.student(group.flatten(0, 1), taps=("pooled",))["pooled"]
            logits = []
            for w in weights:
                logits.append(torch.stack([(feats * w[j]).sum(dim=1) for j in range(w.shape[0])], dim=1))
            out["logits"].append(logits)
        with torch.no_grad():
            self.alpha = 1 - (1 - self.base_alpha) * 0.5 * (1 + math.cos(math.pi * self.iteration / total_iters))
            self.iteration += 1
            for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
                t.copy_(self.alpha * t + (1 - self.alpha) * s)
            maps = self.teacher(teacher_img, taps=tuple(self.levels))
            results = [self.level_targets(i, maps[lv], dictionary[i], locations) for i, lv in enumerate(self.levels)]
        out["targets"] = [r[0] for r in results]
        out["codes"] = [r[1] for r in results]
        out["min_distance"] = [r[2] for r in results]
        total = 0.0
        for group, logits in zip(groups, out["logits"], strict=True):
            n_crops = group.shape[1]
            per_level = []
            for z, target in zip(logits, out["targets"], strict=True):
                rows = z.shape[0]
                loss = 0.0
                for r in range(rows):
                    t = target[r // n_crops]  # image-major: img0crop0, img0crop1, ...
                    log_p = z[r] - torch.logsumexp(z[r], dim=0)
                    loss = loss + (torch.xlogy(t, t) - t * log_p).sum()
                per_level.append(loss / rows)
            group_loss = sum(per_level) / len(per_level)
            out["losses"][f"loss_crop{group.shape[-1]}"] = group_loss
            total = total + group_loss
        pooled = maps[self.levels[-1]].mean(dim=(2, 3))
        scores = manual_batch_norm(pooled, None, None, self.mon_stats) @ self.mon_w.t() + self.mon_b
        log_probs = scores - torch.logsumexp(scores, dim=1, keepdim=True)
        monitor = -sum(log_probs[n, labels[n]] for n in range(len(labels))) / len(labels)
        out["losses"]["loss_cls"] = monitor
        total = total + monitor
        out["losses"]["loss_total"] = total
        params = self.trainable()
        grads = torch.autograd.grad(total, params)
        with torch.no_grad():
            for j, (p, g) in enumerate(zip(params, grads, strict=True)):
                d = g + weight_decay * p
                buf = d.clone() if j not in self.momentum_buffers else momentum * self.momentum_buffers[j] + d
                self.momentum_buffers[j] = buf
                p.sub_(lr * buf)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {
            "_alpha": torch.tensor([self.alpha], dtype=torch.float64),
            "_iteration": torch.tensor([float(self.iteration)], dtype=torch.float64),
            "bow_predictor.scale": self.scale,
        }
        sd |= {"student." + k: v for k, v in self.student.state_dict().items()}
        sd |= {"teacher." + k: v for k, v in self.teacher.state_dict().items()}
        for i, g in enumerate(self.gen):
            p = f"bow_predictor.layers_w.{i}.b{i}_"
            sd |= {p + "fc.weight": g["fc"], p + "bn.weight": g["bn_w"], p + "bn.bias": g["bn_b"]}
            sd |= {p + "last_layer.weight": g["last_w"], p + "last_layer.bias": g["last_b"]}
            sd |= {p + "bn." + s: v for s, v in g["stats"].items()}
            lv = f"bow_extractor.levels.{i}."
            sd[lv + "_embedding"] = self.queue[i]
            sd[lv + "_embedding_ptr"] = torch.tensor([self.ptr[i]])
            sd[lv + "_track_num_batches"] = torch.tensor([self.tracked[i]], dtype=torch.float64)
            sd[lv + "_min_distance_mean"] = torch.tensor([self.mu[i]], dtype=torch.float64)
        sd |= {"linear_classifier.batch_norm." + s: v for s, v in self.mon_stats.items()}
        sd["linear_classifier.prediction_layer.weight"] = self.mon_w
        sd["linear_classifier.prediction_layer.bias"] = self.mon_b
        return sd


# -- the library's step, observed through hooks ----------------------------------------------------
def make_batch(spec, seed: int):
    g = torch.Generator().manual_seed(seed)
    d = spec.data
    teacher = torch.randn(B, 3, d.teacher_size, d.teacher_size, generator=g, dtype=torch.float64)
    groups = [
        torch.randn(B, d.num_img_crops, 3, d.image_crop_size, d.image_crop_size, generator=g, dtype=torch.float64),
        torch.randn(B, d.num_img_patches, 3, d.img_patch_size, d.img_patch_size, generator=g, dtype=torch.float64),
    ]
    labels = torch.randint(0, spec.model.num_classes, (B,), generator=g)
    return teacher, groups, labels


def observe(model: OBoW) -> dict:
    seen: dict = {"targets": [], "codes": [], "logits": []}

    def level_hook(_module, _inputs, out) -> None:  # a hook returning None leaves the output alone
        seen["targets"].append(out[0])
        seen["codes"].append(out[1])

    def predictor_hook(_module, _inputs, out) -> None:
        seen["logits"].append(out)

    for level in model.bow_extractor.levels:
        level.register_forward_hook(level_hook)
    model.bow_predictor.register_forward_hook(predictor_hook)
    return seen


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), **TOL)


@pytest.mark.parametrize("steps", [1, 2])
def test_training_steps_match_the_loop_reference(steps: int):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_obow(spec).double()
    model.total_iterations = T
    reference = Reference(model, spec)
    optimizer = build_optimizer(model, spec)
    o = spec.optim
    ours, theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for step in range(steps):
        teacher, groups, labels = make_batch(spec, seed=100 + step)
        seen = observe(model) if step == steps - 1 else None
        values = training_step(model, optimizer, (teacher, groups, labels), o.lr, location_generator=ours)
        ref = reference.step(teacher, groups, labels, o.lr, o.momentum, o.weight_decay, T, theirs)

    assert seen is not None
    for got, want in zip(seen["targets"], ref["targets"], strict=True):
        assert close(got, want)
    for got, want in zip(seen["codes"], ref["codes"], strict=True):
        assert close(got, want)
    assert len(seen["logits"]) == len(ref["logits"]) == 2  # one call per crop type
    for got_type, want_type in zip(seen["logits"], ref["logits"], strict=True):
        for got, want in zip(got_type, want_type, strict=True):
            assert close(got, want)
    for key, want in ref["losses"].items():
        assert values[key] == pytest.approx(float(want.detach()), rel=1e-9), key
    for i, want in enumerate(ref["min_distance"]):
        assert values[f"min_distance_lev@{i}"] == pytest.approx(want, rel=1e-9)
        assert values[f"temperature_mu_lev@{i}"] == pytest.approx(reference.mu[i], rel=1e-12)
    assert values["alpha"] == pytest.approx(reference.alpha, rel=1e-12)

    state, want_state = model.state_dict(), reference.state_dict()
    assert sorted(state) == sorted(want_state)
    for key, want in want_state.items():
        assert close(state[key], want.detach()), key
    # the generators' BN saw one batch of words per step (not one per crop type)
    for i in range(len(model.bow_levels)):
        assert int(state[f"bow_predictor.layers_w.{i}.b{i}_bn.num_batches_tracked"]) == steps
        assert int(state[f"bow_extractor.levels.{i}._embedding_ptr"]) == (steps * B) % K


def test_insert_locations_follow_the_generator():
    spec = tiny_spec()
    queues = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        model = build_obow(spec)
        model.total_iterations = T
        teacher, groups, labels = make_batch(spec, seed=1)
        with torch.no_grad():
            model(teacher.float(), [g.float() for g in groups], labels, torch.Generator().manual_seed(seed))
        queues.append(model.bow_extractor.levels[0].words.clone())
    assert torch.equal(queues[0], queues[1])
    assert not torch.equal(queues[0][:B], queues[2][:B])
