"""OBoW pretraining: `run_pretrain(spec, out_dir, reporter)`, used by the CLI and the lab's worker.

Resume is exact: the data order and every augmentation are functions of (seed, epoch, sample index),
and the checkpoint holds the model (with its vocabulary buffers), the optimizer, the iteration and the
RNG state, so an interrupted run continued from a checkpoint computes the same losses as one that was
never interrupted (on CPU; GPU kernels are not bitwise deterministic).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obow import distributed as dist_utils
from obow.config.pretrain import PretrainSpec
from obow.devices import check_precision, resolve_device
from obow.errors import CheckpointError, ConfigError, StopRequested
from obow.hashing import sha256_of
from obow.io.atomic import write_atomic
from obow.io.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT, load_training_checkpoint, save_checkpoint
from obow.models.health import UsageWindow, mean_queue_age
from obow.models.obow import OBoW, build_obow
from obow.procs import exit_with_parent
from obow.reporting import NullReporter, Reporter, start_phase
from obow.train.checkpoint import checkpoint_name, list_checkpoints, usable_checkpoint
from obow.train.data import PretrainData, build_pretrain_data
from obow.train.schedules import fitted_learning_rate, learning_rate, steps_within_budget
from obow.train.threads import available_cores, training_threads


class MeanMeter:
    """Per-key running means; a key absent from some steps is averaged over the steps that had it."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] += value
            self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: total / self.counts[key] for key, total in self.sums.items()}


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    iteration_in_epoch: int = 0  # completed iterations into `epoch`
    global_iteration: int = 0


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(model: OBoW, spec: PretrainSpec) -> torch.optim.SGD:
    """One SGD group over every trainable parameter (student, generators, monitor), as the original.

    On CPU and CUDA the fused kernel updates every parameter in one call instead of a Python loop over
    the ~60 tensors: the same numbers bit for bit (checked on CPU in float32 and float64; the exact-step
    test pins it to a loop re-implementation) in a third of the time on a ResNet18 (7 against 23 ms on one
    CPU thread); about 1% of issue 12's "small" step at 2 threads, more where the network is tiny."""
    o = spec.optim
    params = model.trainable_parameters()
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov, fused=fused
    )


def training_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor],
    lr: float,
    autocast: Any = None,
    iteration: int = 0,
    location_generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimisation step on a device batch: forward (EMA, targets, queue), backward, SGD.

    A function of its own so that a test can run exactly the engine's step against an independent
    re-implementation; `location_generator` fixes the queue-insert locations there.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    extra = {} if location_generator is None else {"location_generator": location_generator}
    with autocast if autocast is not None else contextlib.nullcontext():
        loss, values = network(*batch, **extra)
    if not math.isfinite(values["loss_total"]):
        raise FloatingPointError(f"loss became {values['loss_total']} at iteration {iteration}; lower optim.lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return values


def _in_format(group: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A [B, n, 3, s, s] crop group laid out so that its [B·n, 3, s, s] flatten has format `fmt`.

    5-D tensors have no channels-last format of their own (channels_last_3d would treat n as the
    channels), so the layout is set on the flattened batch and the view unflattened again.
    """
    b, n = group.shape[:2]
    return group.flatten(0, 1).contiguous(memory_format=fmt).unflatten(0, (b, n))


# A budgeted run lengthens its schedule only when the faster pace would leave more than this share unused.
LENGTHEN_MARGIN = 0.05


class Trainer:
    """Holds one process's model, optimizer and loader; `fit` runs the epochs."""

    def __init__(self, spec: PretrainSpec, out_dir: Path, reporter: Reporter, rank: int = 0, world: int = 1):
        self.spec, self.out_dir, self.reporter = spec, Path(out_dir), reporter
        self.rank, self.world = rank, world
        self.device = resolve_device(spec.runtime.device, rank, "runtime.device")
        check_precision(spec.runtime.precision, self.device)
        torch.manual_seed(spec.runtime.seed)
        random.seed(spec.runtime.seed)
        self.data: PretrainData = build_pretrain_data(spec, rank=rank, world_size=world)
        self.iters_per_epoch = self.data.iters_per_epoch
        if self.iters_per_epoch < 1:
            raise ConfigError(
                f"the dataset ({self.data.num_samples} images) is smaller than one batch "
                f"({spec.data.batch_size}); lower data.batch_size"
            )
        self.model: OBoW = build_obow(spec)
        self.model.total_iterations = self.iters_per_epoch * spec.optim.num_epochs
        if world > 1:
            dist_utils.broadcast_buffers(self.model)  # one initial vocabulary for all ranks
        self.model.to(self.device)
        if spec.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.network: nn.Module = self.model
        if world > 1:
            if self.device.type == "cuda":
                self.model.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.model.student)
                self.model.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.model.teacher)
            # Buffers are not re-broadcast: the vocabulary stays identical across ranks because every rank
            # inserts the same gathered features, which `check_ranks_agree` verifies.
            with warnings.catch_warnings():  # broadcast_buffers=False is still the way to skip the sync
                warnings.simplefilter("ignore", FutureWarning)
                self.network = nn.parallel.DistributedDataParallel(
                    self.model,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    broadcast_buffers=False,
                )
        if spec.runtime.compile:
            self.model.student.compile()
            self.model.teacher.compile()  # a no-grad graph of its own; the EMA updates its inputs in place
        self.optimizer = build_optimizer(self.model, spec)
        self.state = TrainState()
        # Length of a budget-fitted schedule (runtime.budget_schedule), fixed after the probe steps and kept
        # in the checkpoint so a resumed run follows the same curves; None: not (yet) fitted.
        self.schedule_iterations: int | None = None
        # Only a length fitted by this process may grow: a resumed run keeps (or shortens) the one it saved.
        self.fitted_in_this_process = False
        # The step whose epoch end last ran the monitors (or had none to run) and saved: a budget spent
        # during them ends the run there instead of measuring and saving the same step again.
        self._monitored_epoch_end_step: int | None = None
        self.health = UsageWindow(
            spec.model.per_level("num_words"), spec.runtime.health_window, spec.runtime.collapse_threshold
        )

    # -- checkpoints -------------------------------------------------------------------------------
    def restore(self, path: Path) -> None:
        payload = load_training_checkpoint(path, map_location=self.device)
        if not payload.get("optimizer"):
            raise CheckpointError(
                f"'{path.name}' was imported from another code base and has no optimizer state, so training "
                f"cannot continue from it; evaluate or export it, or start a new run"
            )
        saved = PretrainSpec.model_validate(payload["spec"])
        for section in ("model", "optim", "data"):
            ours, theirs = getattr(self.spec, section), getattr(saved, section)
            if section == "data":
                ours, theirs = ours.model_copy(update={"data_dir": None}), theirs.model_copy(update={"data_dir": None})
            if ours != theirs:
                raise CheckpointError(
                    f"checkpoint '{path}' was trained with a different '{section}' config; resume with the "
                    f"same config or choose another output folder"
                )
        try:
            self.model.load_state_dict(payload["model"], strict=True)
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint '{path}' does not fit this model: {str(err).splitlines()[0]}") from None
        self.state = TrainState(payload["epoch"], payload.get("iteration_in_epoch", 0), payload["iteration"])
        if payload.get("schedule_iterations") is not None:
            self._fix_schedule(int(payload["schedule_iterations"]))
        if payload.get("rng") is not None:
            _set_rng_state(payload["rng"])

    def save(self) -> Path | None:
        """Write the checkpoint of the current position (rank 0); prune superseded ones."""
        if self.rank != 0:
            return None
        st = self.state
        path = self.out_dir / checkpoint_name(st.epoch, st.iteration_in_epoch)
        payload = {
            "format": PRETRAIN_FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": st.epoch,
            "iteration_in_epoch": st.iteration_in_epoch,
            "iteration": st.global_iteration,
            "spec": self.spec.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            "schedule_iterations": self.schedule_iterations,
        }
        previous = list_checkpoints(self.out_dir)
        self.reporter.flush()  # every point up to this step is stored before the checkpoint exists
        try:
            save_checkpoint(payload, path)  # + its sha256 in SHA256SUMS, checked on every load
        except OSError as err:
            kept = f"; the previous checkpoint '{previous[-1][2].name}' is intact" if previous else ""
            raise CheckpointError(f"cannot write checkpoint '{path}': {err.strerror or err}{kept}") from None
        permanent = self.spec.optim.permanent
        for epoch, it, old in previous:
            if old == path:
                continue
            if it == 0 and permanent and epoch % permanent == 0:
                continue
            old.unlink(missing_ok=True)
        self.reporter.artifact(
            path,
            "checkpoint",
            {
                "epoch": st.epoch,
                "iteration": st.global_iteration,
                "size": path.stat().st_size,
                "sha256": sha256_of(path),
                "format": PRETRAIN_FORMAT,
            },
        )
        return path

    # -- training ----------------------------------------------------------------------------------
    def _stop_reason(self, deadline: float | None) -> str | None:
        """"stop" when the run is asked to stop (cancel, hand-off), "budget" when its time budget is spent,
        else None. Every rank gets the same answer, so all leave the loop at the same step."""
        stop = self.reporter.should_stop()
        spent = deadline is not None and time.monotonic() > deadline
        if self.world > 1:
            flags = torch.tensor([float(stop), float(spent)], device=self.device)
            torch.distributed.all_reduce(flags)
            stop, spent = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
        return "stop" if stop else "budget" if spent else None

    def _to_device(self, batch: tuple) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        teacher, groups, labels = self.data.device_batch(batch, self.device)
        fmt = torch.channels_last if self.spec.runtime.channels_last else torch.contiguous_format
        nb = self.device.type == "cuda"
        teacher = teacher.to(self.device, non_blocking=nb).contiguous(memory_format=fmt)
        groups = [_in_format(g.to(self.device, non_blocking=nb), fmt) for g in groups]
        return teacher, groups, labels.to(self.device, non_blocking=nb)

    # -- budget-fitted schedules ---------------------------------------------------------------------
    @property
    def budgeted(self) -> bool:
        return self.spec.runtime.budget_schedule and self.spec.runtime.time_budget_s is not None

    def _fix_schedule(self, total: int) -> None:
        """Fix the run's length: the lr cosine and the teacher-momentum cosine both end at `total` steps."""
        self.schedule_iterations = total
        self.model.total_iterations = total

    def _lr(self, epoch: int) -> float:
        st, optim = self.state, self.spec.optim
        if not self.budgeted:
            return learning_rate(optim, epoch, st.iteration_in_epoch, self.iters_per_epoch)
        # before the length is fitted (the probe steps) the nominal length stands in: the warm-up ramp and
        # the top of the cosine do not depend on it
        total = self.schedule_iterations or self.iters_per_epoch * optim.num_epochs
        return fitted_learning_rate(optim, st.global_iteration, total)

    def _budget_probe(self, started: float, deadline: float, probe: dict[str, float]) -> None:
        """Time `budget_probe_steps` steps after 3 unmeasured ones (loader start-up, first allocations), then
        fix the length to the steps the rest of the budget allows, less `budget_reserve`.

        After that the pace is re-measured every 5 probe windows. If the machine has slowed down so that
        the length would run past the budget, it is shortened to what still fits, so the schedules still
        end within the budget on a shared machine. If it has sped up so that the run would end more than
        `LENGTHEN_MARGIN` early, the length grows to what fits, but only in the first half of the run: a
        probe taken during a load spike would otherwise waste half the budget (seen: a 300-s run fitted to
        0.66 s/step that then ran at 0.30 s/step and stopped after 132 s), while a late change would lift
        an lr that has already been annealed. A resumed run keeps the length in its checkpoint (it may only
        shorten it), so it follows the same curves.
        """
        r, done = self.spec.runtime, self.state.global_iteration
        if "from_step" not in probe:
            if done - probe["first_step"] >= 3:
                probe["from_step"], probe["from_time"] = done, time.monotonic()
            return
        window = r.budget_probe_steps if self.schedule_iterations is None else 5 * r.budget_probe_steps
        if done - probe["from_step"] < window:
            return
        now = time.monotonic()
        per_step = (now - probe["from_time"]) / (done - probe["from_step"])
        if self.world > 1:  # every rank must fix the same length: the slowest rank's pace
            pace = torch.tensor([per_step], device=self.device)
            torch.distributed.all_reduce(pace, op=torch.distributed.ReduceOp.MAX)
            per_step = float(pace.item())
        probe["from_step"], probe["from_time"] = done, now
        remaining = (deadline - now) * (1.0 - r.budget_reserve)
        nominal = self.iters_per_epoch * self.spec.optim.num_epochs
        total = steps_within_budget(done, per_step, remaining, nominal)
        if self.world > 1:  # each rank's clock differs a little: every rank takes the shortest length
            agreed = torch.tensor([total], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            total = int(agreed.item())
        if self.schedule_iterations is None:
            self._fix_schedule(total)
            self.fitted_in_this_process = True
            self.reporter.log(
                f"time budget: {per_step:.3f} s/step over {window} steps, {now - started:.0f} s used; the "
                f"schedule is fitted to {total} steps ({total / self.iters_per_epoch:.2f} epochs, nominal {nominal})"
            )
            return
        current = self.schedule_iterations
        if total < current:
            self.reporter.log(
                f"time budget: at step {done} the pace fell to {per_step:.3f} s/step; the schedule is shortened from "
                f"{current} to {total} steps to end within the budget"
            )
            self._fix_schedule(total)
        elif total > current * (1.0 + LENGTHEN_MARGIN) and done < current / 2 and self.fitted_in_this_process:
            self.reporter.log(
                f"time budget: at step {done} the pace rose to {per_step:.3f} s/step; the schedule is lengthened from "
                f"{current} to {total} steps to use the budget"
            )
            self._fix_schedule(total)

    def fit(self) -> dict[str, Any]:
        spec, st, rep = self.spec, self.state, self.reporter
        started = time.monotonic()
        deadline = started + spec.runtime.time_budget_s if spec.runtime.time_budget_s else None
        probe: dict[str, float] = {"first_step": st.global_iteration}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=spec.runtime.precision == "bf16")
        last_values: dict[str, float] = {}
        if spec.runtime.knn_monitor_at_start and spec.runtime.knn_monitor_every and st.global_iteration == 0:
            initial = self.epoch_end_monitors(0, final=True)
            if initial and self.rank == 0:
                rep.metrics(0, initial)
                rep.log("untrained student: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(initial.items())))
        start_phase(rep, "training", self._total_iterations(), "iterations", done=st.global_iteration)
        self.network.train()
        budget_spent = False
        while st.epoch < spec.optim.num_epochs and not self._schedule_done() and not budget_spent:
            epoch = st.epoch
            window, epoch_meter = MeanMeter(), MeanMeter()
            window_start, window_images = time.perf_counter(), 0
            loader = self.data.loader(epoch, start_iteration=st.iteration_in_epoch)
            for batch in loader:
                if self._schedule_done():
                    break
                reason = self._stop_reason(deadline)
                if reason == "stop":
                    self.save()
                    raise StopRequested(f"stopped at epoch {epoch} iteration {st.iteration_in_epoch}")
                if reason == "budget":  # the run's own length: it ends like a finished run, not a cancelled one
                    budget_spent = True
                    break
                lr = self._lr(epoch)
                teacher, groups, labels = self._to_device(batch)
                values = training_step(
                    self.network, self.optimizer, (teacher, groups, labels), lr, autocast, st.global_iteration
                )
                st.iteration_in_epoch += 1
                st.global_iteration += 1
                if self.budgeted and deadline is not None:
                    self._budget_probe(started, deadline, probe)
                values["lr"] = lr
                window.add(values)
                epoch_meter.add(values)
                self._report_health()
                if self.rank == 0:
                    # per step: the ETA's rate, no silent phase
                    rep.progress(st.global_iteration, self._total_iterations())
                window_images += teacher.shape[0] * self.world
                if st.global_iteration % spec.runtime.print_freq == 0 or st.iteration_in_epoch == self.iters_per_epoch:
                    elapsed = time.perf_counter() - window_start
                    last_values = window.means()
                    last_values["img_per_s"] = window_images / max(elapsed, 1e-9)
                    last_values["epoch"] = epoch + st.iteration_in_epoch / self.iters_per_epoch
                    if self.rank == 0:
                        rep.metrics(st.global_iteration, last_values)
                        rep.progress(st.global_iteration, self._total_iterations())
                        shown = ", ".join(
                            f"{k}={last_values[k]:.4g}" for k in sorted(last_values) if k.startswith(("loss", "perp_b"))
                        )
                        rep.log(
                            f"epoch {epoch + 1}/{spec.optim.num_epochs} it {st.iteration_in_epoch}/"
                            f"{self.iters_per_epoch}: {shown}, lr={lr:.4g}, {last_values['img_per_s']:.1f} img/s"
                        )
                    window = MeanMeter()
                    window_start, window_images = time.perf_counter(), 0
                every = spec.runtime.save_every_iters
                if every and st.global_iteration % every == 0 and st.iteration_in_epoch < self.iters_per_epoch:
                    self.save()
            # spent during the epoch-end monitors: their results and checkpoint are this step's final ones,
            # unless the end-of-run recalibration has yet to change the student
            at_epoch_end = st.iteration_in_epoch == 0 and self._monitored_epoch_end_step == st.global_iteration
            if budget_spent and at_epoch_end and not self.spec.runtime.bn_recalibration_images:
                if self.rank == 0:
                    rep.log(f"time budget spent at the end of epoch {st.epoch}: its monitors and checkpoint end it")
                break
            if (budget_spent or self._schedule_done()) and st.iteration_in_epoch < self.iters_per_epoch:
                # a run that ends inside an epoch (its fitted schedule is done, or its time budget is spent):
                # the same monitors as at an epoch end, then its final checkpoint at that position
                summary = {f"epoch/{k}": v for k, v in epoch_meter.means().items() if k != "lr"}
                self.recalibrate_student()
                summary.update(self.epoch_end_monitors(st.epoch + 1, final=True))
                if self.rank == 0:
                    rep.metrics(st.global_iteration, summary)
                    rep.progress(st.global_iteration, self._total_iterations())
                    what = "time budget spent" if budget_spent else "budgeted schedule done"
                    rep.log(
                        f"{what} at epoch {epoch + 1} iteration {st.iteration_in_epoch}: "
                        + ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary.items()))
                    )
                self.save()
                break
            st.epoch += 1
            st.iteration_in_epoch = 0
            summary = {f"epoch/{k}": v for k, v in epoch_meter.means().items() if k != "lr"}
            final = self._schedule_done() or st.epoch >= spec.optim.num_epochs
            if not final and deadline is not None:  # spent in this epoch's last steps: this epoch end is the last
                budget_spent = final = self._stop_reason(deadline) == "budget"
            if final:
                self.recalibrate_student()
            summary.update(self.epoch_end_monitors(st.epoch, final=final))
            if self.rank == 0 and not final:
                # back from a monitor's phases
                start_phase(rep, "training", self._total_iterations(), "iterations", done=st.global_iteration)
            if self.rank == 0:
                rep.metrics(st.global_iteration, summary)
                spent = " (time budget spent: the run ends here)" if budget_spent else ""
                values = ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary.items()))
                rep.log(f"epoch {st.epoch} done{spent}: {values}")
            self.save()
            if self._monitors_due(st.epoch, final) or not spec.runtime.knn_monitor_every:
                self._monitored_epoch_end_step = st.global_iteration
        # whole epochs as an int; a budget-fitted run that ended inside an epoch as a fraction
        part = st.iteration_in_epoch / self.iters_per_epoch
        return {
            "epochs": round(st.epoch + part, 4) if st.iteration_in_epoch else st.epoch,
            "iterations": st.global_iteration,
            "schedule_iterations": self.schedule_iterations,
            "time_budget_spent": budget_spent,
            "last_metrics": last_values,
        }

    def _total_iterations(self) -> int:
        return self.schedule_iterations or self.iters_per_epoch * self.spec.optim.num_epochs

    def _schedule_done(self) -> bool:
        return self.schedule_iterations is not None and self.state.global_iteration >= self.schedule_iterations

    def _report_health(self) -> None:
        summary = self.health.add(self.model.last_usage_counts)
        if summary is None or self.rank != 0:
            return
        for i, level in enumerate(self.model.bow_extractor.levels):
            steps = int(level._track_num_batches.item())
            summary[f"queue_age_lev@{i}"] = mean_queue_age(level.num_words, self.spec.data.batch_size, steps)
            if summary[f"collapse_lev@{i}"]:
                self.reporter.log(
                    f"vocabulary collapse warning: level {self.model.bow_levels[i]} used only "
                    f"{100 * summary[f'words_used_lev@{i}']:.1f}% of its {level.num_words} words over the last "
                    f"{self.health.window} steps",
                    "warning",
                )
        self.reporter.metrics(self.state.global_iteration, summary)

    def recalibrate_student(self) -> None:
        """`runtime.bn_recalibration_images`: the student's BN statistics from clean teacher-size views of a
        seeded subset of the training split, once, at the end (every rank alike, on the same images)."""
        count = self.spec.runtime.bn_recalibration_images
        if not count:
            return
        from obow.models.batchnorm import recalibrate_batchnorm
        from obow.train.monitor import clean_views

        views = clean_views(self.spec, "train", count, self.spec.runtime.seed + 2)
        reporter = self.reporter if self.rank == 0 else None
        recalibrate_batchnorm(self.model.student, views, self.device, reporter=reporter)
        if self.rank == 0:
            self.reporter.log(f"student BatchNorm statistics re-estimated on {len(views)} clean views")

    def _monitors_due(self, completed_epochs: int, final: bool) -> bool:
        """Whether this epoch end runs the monitors: the same answer on every rank."""
        every = self.spec.runtime.knn_monitor_every
        return bool(every) and (final or completed_epochs % every == 0)

    def epoch_end_monitors(self, completed_epochs: int, final: bool = False) -> dict[str, float]:
        """The kNN monitor every `knn_monitor_every` epochs and, with a monitor at all, at the run's end."""
        if not self._monitors_due(completed_epochs, final) or self.rank != 0:
            return {}
        from obow.train.monitor import knn_monitor

        return knn_monitor(self.model.student, self.spec, self.device, self.reporter)


def check_ranks_agree(model: OBoW, reporter: Reporter, when: str) -> None:
    """All ranks must hold the same parameters, vocabularies and schedule buffers; fail loudly if not."""
    tensors = [p.detach() for p in model.trainable_parameters()] + [
        b for name, b in model.named_buffers() if name.startswith("bow_extractor.") or name in ("_alpha", "_iteration")
    ]
    local = torch.stack([t.double().sum() for t in tensors] + [t.double().abs().sum() for t in tensors])
    gathered = dist_utils.gather_concat(local.unsqueeze(0))
    worst = float((gathered - gathered[0:1]).abs().max())
    scale = float(gathered.abs().max().clamp_min(1.0))
    if worst > 1e-6 * scale:
        raise RuntimeError(f"ranks disagree at the {when} of training (max difference {worst:.3g})")
    reporter.log(f"cross-rank check at the {when} of training: {gathered.shape[0]} ranks agree")


def _train_process(
    rank: int, world: int, spec: PretrainSpec, out_dir: Path, reporter: Reporter, init_method: str | None
) -> dict[str, Any]:
    device = resolve_device(spec.runtime.device, rank, "runtime.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist_utils.init_process_group(rank, world, backend, init_method or "")
    r = spec.runtime
    try:
        with training_threads(r.threads, device.type == "cpu", world, r.workers) as threads:
            if rank == 0:
                reporter.log(
                    f"torch threads: {threads} per process ({available_cores()} cores, {world} process(es), "
                    f"{r.workers} loader worker(s) each; runtime.threads sets it)"
                )
            trainer = Trainer(spec, out_dir, reporter if rank == 0 else NullReporter(), rank, world)
            latest = usable_checkpoint(out_dir, reporter if rank == 0 else None) if r.resume else None
            if latest is not None:
                trainer.restore(latest)
                if rank == 0:
                    reporter.log(
                        f"resumed from '{latest.name}' (epoch {trainer.state.epoch}, iteration "
                        f"{trainer.state.global_iteration})"
                    )
            if world > 1:
                check_ranks_agree(trainer.model, reporter if rank == 0 else NullReporter(), "start")
            result = trainer.fit()
            if world > 1:
                check_ranks_agree(trainer.model, reporter if rank == 0 else NullReporter(), "end")
            dist_utils.barrier()
            return result
    finally:
        if world > 1 and dist_utils.is_distributed():
            torch.distributed.destroy_process_group()


def _spawned_rank(rank: int, world: int, spec_json: dict, out_dir: str, init_method: str, parent: int) -> None:
    exit_with_parent(parent)  # a rank whose rank 0 died would wait in a collective for half an hour
    _train_process(rank, world, PretrainSpec.model_validate(spec_json), Path(out_dir), NullReporter(), init_method)


def run_pretrain(spec: PretrainSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Pretrain OBoW into `out_dir` (checkpoints, spec.yaml), resuming from its newest checkpoint.

    With `runtime.num_processes > 1` this process is rank 0 (it keeps the reporter) and the other ranks
    are spawned processes on the same node.
    """
    out_dir = Path(out_dir)
    import yaml

    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # atomic: a full disk must not leave an empty spec.yaml over the one an earlier attempt wrote
        write_atomic(out_dir / "spec.yaml", lambda handle: handle.write(text))
    except OSError as err:  # a full or read-only disk, before any training: one line naming the folder
        raise CheckpointError(
            f"cannot write to the output folder '{out_dir}': {err.strerror or err} (free space and write "
            f"permission)"
        ) from None
    world = spec.runtime.num_processes
    if world == 1:
        return _train_process(0, 1, spec, out_dir, reporter, None)
    if spec.runtime.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise ConfigError(f"runtime.num_processes={world} but only {torch.cuda.device_count()} GPUs are visible")
    init_method = spec.runtime.dist_url or f"tcp://127.0.0.1:{dist_utils.free_port()}"
    ctx = torch.multiprocessing.get_context("spawn")
    others = [
        ctx.Process(
            target=_spawned_rank,
            args=(r, world, spec.model_dump(mode="json"), str(out_dir), init_method, os.getpid()),
        )
        for r in range(1, world)
    ]
    for proc in others:
        proc.start()
    try:
        result = _train_process(0, world, spec, out_dir, reporter, init_method)
    except BaseException:
        for proc in others:
            proc.terminate()
        raise
    finally:
        for proc in others:
            proc.join()
    failed = [p.exitcode for p in others if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} training process(es) exited with codes {failed}")
    return result
