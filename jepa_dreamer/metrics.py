"""The training metrics: running means kept on the device, and the line written every logging interval.

SheepRL's `MetricAggregator` (torchmetrics' `MeanMetric`) checks every update for NaN on the host: one
synchronisation per metric per gradient step. Here an update is an addition on the device, and `compute` reads every
mean with one transfer, once per logging interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.fabric.loggers import Logger
from torch import Tensor

log = logging.getLogger(__name__)
# Called with the policy step and the values of every logging interval (e.g. a W&B run of the search's)
LogSink = Callable[[int, dict[str, float]], None]


class MetricMeans:
    """The mean of each metric of `names` since the last `reset` (updates of other names are ignored)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self._sums: dict[str, Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def update(self, name: str, value: Tensor | float) -> None:
        if name not in self.names:
            return
        value = value.detach().float() if isinstance(value, Tensor) else float(value)
        self._sums[name] = self._sums[name] + value if name in self._sums else value
        self._counts[name] = self._counts.get(name, 0) + 1

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def compute(self) -> dict[str, float]:
        """The means of the metrics updated since the last reset."""
        on_device = [n for n, s in self._sums.items() if isinstance(s, Tensor)]
        values = dict(zip(on_device, torch.stack([self._sums[n] for n in on_device]).tolist())) if on_device else {}
        values.update({n: s for n, s in self._sums.items() if not isinstance(s, Tensor)})
        return {n: values[n] / self._counts[n] for n in sorted(values)}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()


class IntervalLog:
    """Every `metric.log_every` policy steps, and at the end: one line with the step, the gradient steps, the speed
    since the last line, the episodes' returns and the means of the metrics; the same values go to each of `sinks`
    (a TensorBoard logger, a callable such as a W&B run's; None is skipped)."""

    def __init__(
        self,
        cfg: dict[str, Any],
        world_size: int,
        sinks: list[Logger | LogSink | None],
        policy_step: int,
        gradient_steps: int,
    ) -> None:
        self.every = int(cfg.metric.log_every)
        self.total_steps = int(cfg.algo.total_steps)
        self.world_size = world_size
        self.sinks = [sink for sink in sinks if sink is not None]
        self.last_step = policy_step
        self.last_gradient_steps = gradient_steps
        self.last_time = time.perf_counter()

    def due(self, policy_step: int, last: bool) -> bool:
        return last or policy_step - self.last_step >= self.every

    def write(self, policy_step: int, gradient_steps: int, metrics: MetricMeans) -> None:
        now = time.perf_counter()
        seconds = max(now - self.last_time, 1e-9)
        episodes = metrics.count("Rewards/rew_avg")
        values = metrics.compute()
        metrics.reset()
        values["Params/replay_ratio"] = gradient_steps * self.world_size / max(policy_step, 1)
        values["Time/policy_steps_per_s"] = (policy_step - self.last_step) / seconds
        values["Time/gradient_steps_per_s"] = (gradient_steps - self.last_gradient_steps) / seconds
        played = (
            f"{episodes} episodes: return {values['Rewards/rew_avg']:.1f}, length {values['Game/ep_len_avg']:.0f}"
            if episodes
            else "no episode ended"
        )
        losses = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()) if not k.startswith(("Time/", "Game/")))
        log.info(
            f"step {policy_step}/{self.total_steps} | {gradient_steps} gradient steps | "
            f"{values['Time/policy_steps_per_s']:.1f} policy steps/s, {values['Time/gradient_steps_per_s']:.2f} "
            f"gradient steps/s | {played} | {losses}"
        )
        for sink in self.sinks:
            if isinstance(sink, Logger):
                sink.log_metrics(values, policy_step)
            else:
                sink(policy_step, values)
        self.last_step, self.last_time, self.last_gradient_steps = policy_step, now, gradient_steps
