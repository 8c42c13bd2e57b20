"""The JEPA parts on their own: masks, EMA arithmetic, where gradients flow, and `jepa_coef: 0` == DreamerV3."""

import copy
from collections import Counter

import pytest
import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v3.dreamer_v3 import world_model_learning, world_model_loss
from sheeprl.utils.utils import dotdict

from jepa_dreamer.jepa import JEPAHeads, context_view, erase_masks, jepa_loss
from jepa_dreamer.learner import Learner
from tests.helpers import ACTIONS, OBS_SPACE, resolved_cfg

T, B = 6, 3


@pytest.mark.parametrize("height,width", [(64, 64), (32, 48), (84, 84), (16, 128)])
@pytest.mark.parametrize("frac", [0.4, 0.6])
def test_every_mask_erases_the_asked_fraction(height, width, frac):
    masks = erase_masks((4, 50), height, width, frac, torch.device("cpu"))
    assert masks.shape == (4, 50, height, width)
    erased = masks.float().mean(dim=(-1, -2))
    # Within the rounding of the rectangles' height (column masks) or width (row masks) to whole pixels
    assert (erased - frac).abs().max() <= 0.5 / min(height, width) + 1e-6


def test_masks_are_drawn_independently_per_sample_and_step():
    torch.manual_seed(0)
    masks = erase_masks((5, 8), 64, 64, 0.6, torch.device("cpu")).flatten(0, 1)
    assert len({m.numpy().tobytes() for m in masks}) == 40
    # Masks differ in where they erase, not only in what: the erased rows (and columns) vary between masks
    assert len({tuple(m.any(dim=-1).tolist()) for m in masks}) > 20
    assert len({tuple(m.any(dim=-2).tolist()) for m in masks}) > 20


def test_masks_use_one_to_four_rectangles():
    torch.manual_seed(1)
    masks = erase_masks((400,), 64, 64, 0.5, torch.device("cpu"))
    counts: Counter[int] = Counter()
    for m in masks:
        # Count the rectangles along both axes: runs of columns (or rows) sharing the same erased span
        per_axis = []
        for mm in (m, m.T):
            erased = mm.any(dim=0)
            spans = [tuple(col.nonzero().flatten().tolist()) for col in mm.T[erased]]
            per_axis.append(sum(1 for i, sp in enumerate(spans) if i == 0 or sp != spans[i - 1]))
        counts[min(per_axis)] += 1
    # Every number of rectangles, each in a fair share of the masks (two neighbours at one height count as one)
    assert counts.keys() == {1, 2, 3, 4} and min(counts.values()) >= 40, counts


def test_context_view_zeroes_erased_pixels_and_drops_vector_entries():
    torch.manual_seed(0)
    image = torch.rand(T, B, 3, 64, 64) + 0.5  # never 0 before masking
    vector = torch.ones(T, B, 20_000)
    view = context_view({"rgb": image, "state": vector}, ["rgb"], ["state"], erase_frac=0.6, vec_dropout=0.2)
    zero = view["rgb"] == 0
    assert torch.equal(zero[:, :, 0], zero[:, :, 1]) and torch.equal(zero[:, :, 0], zero[:, :, 2])
    assert torch.equal(view["rgb"][~zero], image[~zero])
    assert abs(zero.float().mean().item() - 0.6) < 0.01
    dropped = (view["state"] == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005
    assert set(view["state"].unique().tolist()) == {0.0, 1.0}  # zeroed, not rescaled


def test_ema_update_is_the_convex_combination():
    encoder = torch.nn.Linear(4, 8)
    heads = JEPAHeads(encoder, embed_dim=8, recurrent_size=3, hidden=16, proj_dim=5)
    for p in heads.target_encoder.parameters():
        p.data.fill_(2.0)
    for p in encoder.parameters():
        p.data.fill_(12.0)
    heads.update_ema(encoder, decay=0.9)
    for p in heads.target_encoder.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.9 * 2.0 + 0.1 * 12.0))
    online = [p.clone() for p in heads.projector.parameters()]
    before = [p.clone() for p in heads.target_projector.parameters()]
    heads.update_ema(encoder, decay=0.5)
    for t, b, o in zip(heads.target_projector.parameters(), before, online):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randint(0, 256, (T, B, 3, 64, 64), generator=g).float(),
        "actions": torch.rand(T, B, ACTIONS, generator=g) * 2 - 1,
        "rewards": torch.rand(T, B, 1, generator=g),
        "terminated": torch.zeros(T, B, 1),
        "truncated": torch.zeros(T, B, 1),
        "is_first": torch.zeros(T, B, 1),
    }


def _learner(cfg: dotdict, seed: int = 0, precision: str = "32-true") -> Learner:
    torch.manual_seed(seed)
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    return Learner(fabric, cfg, OBS_SPACE, (ACTIONS,), is_continuous=True)


@pytest.mark.slow
def test_jepa_coef_zero_is_exactly_sheeprl_world_model_step():
    cfg = resolved_cfg("algo.jepa_coef=0")
    ours, reference = _learner(cfg), _learner(cfg)
    assert ours.heads is None
    n_world = sum(p.numel() for p in ours.world_model.parameters())
    assert sum(p.numel() for g in ours.world_optimizer.param_groups for p in g["params"]) == n_world
    torch.manual_seed(7)
    ours.world_model_step(_batch(), measure_ratio=False)
    torch.manual_seed(7)
    world_model_learning(reference.fabric, cfg, reference.world_model, reference.world_optimizer, _batch())
    for (name, p), q in zip(ours.world_model.named_parameters(), reference.world_model.parameters()):
        assert torch.equal(p, q), name
    # And the JEPA run starts from the same DreamerV3 loss but does change the update
    jepa = _learner(resolved_cfg("algo.jepa_coef=1.0"))
    torch.manual_seed(7)
    jepa.world_model_step(_batch(), measure_ratio=False)
    assert not torch.equal(next(jepa.world_model.encoder.parameters()), next(ours.world_model.encoder.parameters()))


def test_jepa_gradients_reach_encoder_projector_predictor_and_rssm_but_not_the_target():
    cfg = resolved_cfg("algo.jepa_coef=1.0")
    learner = _learner(cfg)
    data = _batch()
    data["is_first"][0] = 1
    kwargs = {k: v for k, v in learner.wm_kwargs.items()}
    _, _, recurrent_states, _ = world_model_loss(learner.world_model, data, **kwargs)
    obs = {"rgb": data["rgb"] / 255.0 - 0.5}
    loss, metrics = jepa_loss(
        learner.world_model.encoder,
        learner.heads,
        obs,
        recurrent_states,
        cnn_keys=["rgb"],
        mlp_keys=[],
        erase_frac=0.6,
        vec_dropout=0.2,
    )
    assert 0.0 <= metrics["Loss/jepa_loss"].item() <= 4 * 64**0.5
    loss.backward()
    groups = {
        "encoder": learner.world_model.encoder.parameters(),
        "projector": learner.heads.projector.parameters(),
        "predictor": learner.heads.predictor.parameters(),
        "rssm": learner.world_model.rssm.recurrent_model.parameters(),
    }
    for name, params in groups.items():
        norm = sum(p.grad.abs().sum().item() for p in params if p.grad is not None)
        assert norm > 0, f"no JEPA gradient into the {name}"
    for p in [*learner.heads.target_encoder.parameters(), *learner.heads.target_projector.parameters()]:
        assert not p.requires_grad and p.grad is None
    # The decoder has nothing to do with the JEPA loss
    assert all(p.grad is None for p in learner.world_model.observation_model.parameters())


# bf16-mixed is the precision of the GPU experiment: Fabric refuses a backward pass other than its own there
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_world_model_step_updates_the_ema_target_and_logs_the_jepa_metrics(precision):
    learner = _learner(resolved_cfg("algo.jepa_coef=1.0", "algo.jepa_ema=0.5"), precision=precision)
    target_before = copy.deepcopy(learner.heads.target_encoder.state_dict())
    _, _, metrics = learner.world_model_step(_batch(), measure_ratio=True)
    for key in ("Loss/jepa_loss", "JEPA/cosine", "JEPA/target_std", "Grads/encoder_jepa_over_recon"):
        assert torch.isfinite(metrics[key]), key
    assert metrics["Grads/encoder_jepa_over_recon"] > 0
    online = dict(learner.world_model.encoder.module.named_parameters())
    for name, p in learner.heads.target_encoder.named_parameters():
        torch.testing.assert_close(p, 0.5 * target_before[name] + 0.5 * online[name])


@pytest.mark.usefixtures("no_distribution_validation")  # as SheepRL's launcher sets it: NaNs reach the losses
def test_a_non_finite_loss_fails_with_its_step():
    learner = _learner(resolved_cfg("algo.jepa_coef=1.0"))
    learner.train_step(_batch(), None, measure_ratio=False)
    learner.raise_if_diverged(100)  # finite so far
    data = _batch()
    data["terminated"][2, 1] = float("nan")
    # The NaN weights make the imagination's sampling raise in the same step; the loop then names the cause
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        learner.train_step(data, None, measure_ratio=False)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1234"):
        learner.raise_if_diverged(1234)


class _Capture:
    """A metrics sink that keeps the last value of every metric (the learner calls `update`)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def update(self, name: str, value: torch.Tensor) -> None:
        self.values[name] = float(value)


@pytest.mark.slow
@pytest.mark.compile  # about 50 s of compilation on 2 cores, twice that beside another test: outside the budget
def test_compiled_recurrent_steps_train_like_the_plain_step():
    # Our compiled route (algo.compile_steps) from the same weights and random stream (`fallback_random`: compiled
    # random operators draw what eager ones draw): the same losses, gradient ratio and updated weights. As in
    # training, the ratio is measured at a later step than the first (the graphs' backward is compiled at the first),
    # and the graphs are compiled here, not read from a cache that an earlier process filled
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    metrics, weights = {}, {}
    for steps in (False, True):
        learner = _learner(resolved_cfg("algo.jepa_coef=1.0", f"algo.compile_steps={steps}"))
        capture = _Capture()
        torch.manual_seed(1)
        with inductor_config.patch(fallback_random=True, force_disable_caches=True):
            learner.train_step(_batch(), None, measure_ratio=False)
            learner.train_step(_batch(1), capture, measure_ratio=True)
        metrics[steps], weights[steps] = capture.values, dict(learner.world_model.named_parameters())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # one unroll step, one imagination step
    assert {"Loss/world_model_loss", "Loss/jepa_loss", "Loss/policy_loss", "Grads/encoder_jepa_over_recon"} <= set(
        metrics[True]
    )
    for key, value in metrics[False].items():
        assert metrics[True][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for name, p in weights[False].items():
        torch.testing.assert_close(weights[True][name], p, rtol=1e-4, atol=1e-6)
