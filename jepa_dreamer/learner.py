"""The models and optimisers of DreamerV3-JEPA and one gradient step on a batch.

Everything DreamerV3 does comes from SheepRL by import (`world_model_loss`, `imagine`, the actor and critic losses,
`update`): the world-model step's loss gains `jepa_coef · L_jepa` and it updates the EMA target after its optimiser
step; the behaviour step is SheepRL's without its host synchronisations (`jepa_dreamer/behaviour.py`). With
`jepa_coef: 0` no JEPA module exists and the world-model step is SheepRL's. With `algo.compile_graph` the same update
is replayed as one CUDA graph (`jepa_dreamer/graphed.py`); `algo.compile_fused` compiles its parts first
(`jepa_dreamer/fused.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import hydra
import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v3.agent import PlayerDV3, build_agent
from sheeprl.algos.dreamer_v3.dreamer_v3 import world_model_loss, world_model_loss_kwargs
from sheeprl.algos.dreamer_v3.utils import Moments
from sheeprl.utils.compile import compiled, mark_gradient_step
from sheeprl.utils.fabric import autocast_cache_scope, update
from torch import Tensor, nn

from jepa_dreamer.behaviour import behaviour_learning
from jepa_dreamer.compiled import CompiledSteps, step_scope
from jepa_dreamer.fused import fused_scope, step_parts
from jepa_dreamer.graphed import GraphedStep, InPlaceMoments, check_graph_route, make_capturable
from jepa_dreamer.jepa import JEPAHeads, jepa_loss
from jepa_dreamer.metrics import MetricMeans


def _grad_norm(fabric: Fabric, loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The norm of d loss / d params, through `fabric.backward`: under mixed precision Fabric refuses any other
    backward pass (a loss scaler, when there is one, scales both norms of a ratio alike). The gradients are
    cleared again and the graph kept, for the step's own update."""
    for p in params:
        p.grad = None
    fabric.backward(loss, inputs=list(params), retain_graph=True)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None]))
    for p in params:
        p.grad = None
    return norm


class Learner:
    """World model, actor, critic, target critic, their optimisers, the return normaliser and the JEPA heads."""

    def __init__(
        self,
        fabric: Fabric,
        cfg: dict[str, Any],
        observation_space: gym.spaces.Dict,
        actions_dim: Sequence[int],
        is_continuous: bool,
        state: dict[str, Any] | None = None,
    ) -> None:
        # The fused route is captured as the graph route is, its parts compiled first
        graph = cfg.algo.compile_graph or cfg.algo.compile_fused
        if graph:
            check_graph_route(fabric, cfg)
        self.fabric = fabric
        self.cfg = cfg
        self.actions_dim = tuple(int(d) for d in actions_dim)
        self.is_continuous = is_continuous
        self.jepa_coef = float(cfg.algo.jepa_coef)
        self.jepa_ema = float(cfg.algo.jepa_ema)
        self.wm_kwargs = world_model_loss_kwargs(cfg)
        state = state or {}
        self.world_model, self.actor, self.critic, self.target_critic, self.player = build_agent(
            fabric,
            actions_dim,
            is_continuous,
            cfg,
            observation_space,
            state.get("world_model"),
            state.get("actor"),
            state.get("critic"),
            state.get("target_critic"),
        )
        self.player: PlayerDV3
        # What the losses run: the parts themselves, or views of them with compiled code (our routes)
        self.parts = step_parts(
            cfg, self.world_model, self.actor, self.critic, self.target_critic, compiled(jepa_loss, fabric, cfg)
        )
        self._step_scope = (
            fused_scope if cfg.algo.compile_fused else step_scope if cfg.algo.compile_steps else contextlib.nullcontext
        )
        self.heads: JEPAHeads | None = None
        world_params = list(self.world_model.parameters())
        if self.jepa_coef > 0:
            self.heads = JEPAHeads(
                self.world_model.encoder.module,
                embed_dim=self.world_model.encoder.module.output_dim,
                recurrent_size=cfg.algo.world_model.recurrent_model.recurrent_state_size,
                hidden=int(cfg.algo.jepa_hidden),
                proj_dim=int(cfg.algo.jepa_proj_dim),
            ).to(fabric.device)
            if state.get("jepa") is not None:
                self.heads.load_state_dict(state["jepa"])
            world_params += self.heads.online_parameters()
        optimizers = [
            hydra.utils.instantiate(cfg.algo.world_model.optimizer, params=world_params, _convert_="all"),
            hydra.utils.instantiate(cfg.algo.actor.optimizer, params=self.actor.parameters(), _convert_="all"),
            hydra.utils.instantiate(cfg.algo.critic.optimizer, params=self.critic.parameters(), _convert_="all"),
        ]
        for opt, key in zip(optimizers, ("world_optimizer", "actor_optimizer", "critic_optimizer")):
            if key in state:
                opt.load_state_dict(state[key])
            if graph:
                make_capturable(opt)
        rssm = self.parts.world_model.rssm
        if isinstance(rssm, CompiledSteps):
            # Its compiled steps read the recurrent weights from one concatenation, made again after each update
            optimizers[0].register_step_post_hook(lambda *_: rssm.weights_changed())
        self.world_optimizer, self.actor_optimizer, self.critic_optimizer = fabric.setup_optimizers(*optimizers)
        moments_cfg = cfg.algo.actor.moments
        # On the device from the start: SheepRL's step replaces its state with device tensors at its first call, but
        # the graph route keeps the first ones (a copy through the host at every step, refused by a capture)
        self.moments = Moments(
            moments_cfg.decay, moments_cfg.max, moments_cfg.percentile.low, moments_cfg.percentile.high
        ).to(fabric.device)
        if "moments" in state:
            self.moments.load_state_dict(state["moments"])
        # The graph route: the update of `_update` captured once and replayed (its normaliser updated in place)
        self.graphed: GraphedStep | None = None
        if graph:
            self._in_place_moments = InPlaceMoments(self.moments)
            self._graph_metrics: list[str] = []
            self.graphed = GraphedStep(self._graph_update, fabric.device, self.named_state)
        self.gradient_steps = int(state.get("per_rank_gradient_steps", 0))
        # Whether every loss since the start was finite: kept on the device, read once per iteration
        self._finite = torch.ones((), dtype=torch.bool, device=fabric.device)

    def world_model_step(
        self, data: dict[str, Tensor], measure_ratio: bool, with_metrics: bool = True
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One optimiser step of the world model (and of the JEPA heads), then the EMA update of the target.

        Args:
            with_metrics: compute the metrics beyond the losses (entropies, JEPA cosine and target spread).
            measure_ratio: also measure the norm of the encoder's gradient from `jepa_coef · L_jepa` over the one from
                the DreamerV3 loss (two extra backward passes, so only now and then).
        """
        cfg, fabric = self.cfg, self.fabric
        # Every sequence starts an episode: the world model starts from its initial state
        data["is_first"][0, :] = 1.0
        mark_gradient_step(fabric, cfg)
        with autocast_cache_scope(fabric):
            dv3_loss, posteriors, recurrent_states, metrics = compiled(world_model_loss, fabric, cfg)(
                self.parts.world_model, data, **self.wm_kwargs, entropies=with_metrics
            )
            loss = dv3_loss
            if self.heads is not None:
                obs = {k: data[k] / 255.0 - 0.5 for k in self.wm_kwargs["cnn_keys"]}
                obs.update({k: data[k] for k in self.wm_kwargs["mlp_keys"]})
                with fabric.autocast():
                    jepa, jepa_metrics = self.parts.jepa_loss(
                        self.world_model.encoder,
                        self.heads,
                        obs,
                        recurrent_states,
                        cnn_keys=self.wm_kwargs["cnn_keys"],
                        mlp_keys=self.wm_kwargs["mlp_keys"],
                        erase_frac=float(cfg.algo.jepa_mask.erase_frac),
                        vec_dropout=float(cfg.algo.jepa_mask.vec_dropout),
                        metrics=with_metrics,
                    )
                loss = dv3_loss + self.jepa_coef * jepa
                metrics.update(jepa_metrics)
                if measure_ratio:
                    encoder_params = list(self.world_model.encoder.parameters())
                    metrics["Grads/encoder_jepa_over_recon"] = (
                        _grad_norm(fabric, self.jepa_coef * jepa, encoder_params)
                        / _grad_norm(fabric, dv3_loss, encoder_params)
                    ).detach()
        self._finite &= torch.isfinite(loss.detach())
        grads = update(
            fabric, loss, self.world_optimizer, cfg.algo.world_model.clip_gradients, error_if_nonfinite=False
        )
        if grads is not None:
            metrics["Grads/world_model"] = grads.mean().detach()
        if self.heads is not None:
            self.heads.update_ema(self.world_model.encoder.module, self.jepa_ema)
        return posteriors, recurrent_states, metrics

    def _update_target_critic(self) -> None:
        if self.gradient_steps % self.cfg.algo.critic.per_rank_target_network_update_freq == 0:
            tau = 1.0 if self.gradient_steps == 0 else float(self.cfg.algo.critic.tau)
            with torch.no_grad():
                torch._foreach_lerp_(list(self.target_critic.parameters()), list(self.critic.parameters()), tau)

    def train_step(self, data: dict[str, Tensor], metrics: MetricMeans | None, measure_ratio: bool) -> None:
        """One gradient step of DreamerV3-JEPA: target critic, world model (+ JEPA), then actor and critic; the step's
        metrics go to `metrics` when given."""
        if measure_ratio and self.graphed is not None:
            raise ValueError("a captured step (graph or fused route) does not measure the encoder-gradient ratio")
        with self._step_scope():
            self._update_target_critic()
            if self.graphed is None:
                step_metrics = self._update(data, self.moments, measure_ratio, metrics is not None)
            else:
                packed = self.graphed(data)
                # The next replay overwrites the graph's output: one copy keeps this step's values
                step_metrics = dict(zip(self._graph_metrics, packed.clone())) if metrics is not None else {}
        if metrics is not None:
            for name, value in step_metrics.items():
                metrics.update(name, value)
        self.gradient_steps += 1

    def _update(
        self, data: dict[str, Tensor], moments: nn.Module, measure_ratio: bool, with_metrics: bool
    ) -> dict[str, Tensor]:
        """The world model's update, then the actor's and the critic's on trajectories imagined from its states; their
        losses, and the other metrics `with_metrics`. The gradients are cleared at the end."""
        posteriors, recurrent_states, step_metrics = self.world_model_step(data, measure_ratio, with_metrics)
        behaviour = behaviour_learning(
            self.fabric,
            self.cfg,
            self.parts.world_model,
            self.parts.actor,
            self.parts.critic,
            self.parts.target_critic,
            self.actor_optimizer,
            self.critic_optimizer,
            moments,
            posteriors,
            recurrent_states,
            data["terminated"],
            self.is_continuous,
            self.actions_dim,
        )
        self._finite &= torch.isfinite(behaviour["policy_loss"]) & torch.isfinite(behaviour["value_loss"])
        step_metrics["Loss/policy_loss"] = behaviour["policy_loss"]
        step_metrics["Loss/value_loss"] = behaviour["value_loss"]
        if "actor_grads" in behaviour:
            step_metrics["Grads/actor"] = behaviour["actor_grads"]
        if "critic_grads" in behaviour:
            step_metrics["Grads/critic"] = behaviour["critic_grads"]
        for opt in (self.world_optimizer, self.actor_optimizer, self.critic_optimizer):
            opt.zero_grad(set_to_none=True)
        return step_metrics

    def _graph_update(self, data: dict[str, Tensor]) -> Tensor:
        """The step the graph route captures: `_update` with every metric, which costs nothing once captured, packed
        into one tensor whose entries `_graph_metrics` names."""
        step_metrics = self._update(data, self._in_place_moments, measure_ratio=False, with_metrics=True)
        self._graph_metrics = list(step_metrics)
        return torch.stack([value.float() for value in step_metrics.values()])

    def named_state(self) -> Iterator[tuple[str, Tensor]]:
        """Every tensor a gradient step reads and then writes, by name: the models' weights and buffers, the
        optimisers' states, the return normaliser's and the finiteness flag."""
        yield "finite", self._finite
        for part in ("world_model", "actor", "critic", "target_critic", "moments", "heads"):
            module = getattr(self, part)
            if module is not None:
                yield from ((f"{part}.{n}", t) for n, t in (*module.named_parameters(), *module.named_buffers()))
        for key in ("world_optimizer", "actor_optimizer", "critic_optimizer"):
            for i, state in enumerate(getattr(self, key).state.values()):
                yield from ((f"{key}.{i}.{n}", t) for n, t in state.items() if isinstance(t, Tensor))

    def raise_if_diverged(self, policy_step: int) -> None:
        """Fail fast on a NaN or infinite loss. One host sync, once per iteration (acting syncs there anyway):
        a diverged run is a failure with its step, never a low score."""
        if not bool(self._finite):
            raise FloatingPointError(f"non-finite loss at step {policy_step}")

    def state_dict(self) -> dict[str, Any]:
        """The learner's part of a checkpoint (the loop adds counters and the replay buffer)."""
        return {
            "world_model": self.world_model.state_dict(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "world_optimizer": self.world_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "moments": self.moments.state_dict(),
            "jepa": self.heads.state_dict() if self.heads is not None else None,
            "per_rank_gradient_steps": self.gradient_steps,
        }
