"""Ray placement: one bundle per actor, reserved up front, so a run that cannot fit fails at once
with what is missing instead of hanging on a pending actor."""
from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group

from rlengine.config import Plan, RootConfig


@dataclass(frozen=True)
class RoleSpec:
    name: str
    count: int
    cpus: float
    gpus: float


class PlacementError(RuntimeError):
    pass


def role_specs(cfg: RootConfig, plan: Plan) -> list[RoleSpec]:
    r = cfg.resources
    roles = [RoleSpec("trainer", cfg.trainer.world_size, r.cpus_per_actor, r.gpus_per_trainer)]
    # RL samples from the rollout role and SFT evaluates with it; reward-model training needs none.
    if cfg.algorithm.name != "rm":
        roles.append(RoleSpec("rollout", cfg.rollout.num_workers, r.cpus_per_actor,
                              r.gpus_per_rollout * cfg.rollout.tensor_parallel_size))
    if plan.use_reference:
        roles.append(RoleSpec("reference", cfg.reference.num_workers, r.cpus_per_actor, r.gpus_per_reference))
    if plan.use_critic:
        roles.append(RoleSpec("critic", cfg.trainer.world_size, r.cpus_per_actor, r.gpus_per_trainer))
    if plan.use_reward_model:
        roles.append(RoleSpec("reward_model", cfg.reward_model.num_workers, r.cpus_per_actor, r.gpus_per_reference))
    return roles


def required(roles: list[RoleSpec]) -> dict[str, float]:
    need: dict[str, float] = {}
    for role in roles:
        for res, amount in (("CPU", role.cpus), ("GPU", role.gpus)):
            if amount:
                need[res] = need.get(res, 0.0) + amount * role.count
    return need


def check_resources(roles: list[RoleSpec], available: dict[str, float]) -> None:
    need = required(roles)
    short = {k: (v, available.get(k, 0.0)) for k, v in need.items() if v > available.get(k, 0.0) + 1e-9}
    if short:
        detail = "; ".join(f"{k}: need {v:g}, cluster has {a:g}" for k, (v, a) in short.items())
        per_role = ", ".join(f"{r.name} {r.count}x(CPU {r.cpus:g}, GPU {r.gpus:g})" for r in roles)
        raise PlacementError(f"not enough resources for this recipe ({detail}). Roles: {per_role}")


def reserve(roles: list[RoleSpec], timeout_s: float = 60.0):
    """One placement group, one bundle per actor, in role order; returns (pg, offsets by role)."""
    bundles, offsets = [], {}
    for role in roles:
        offsets[role.name] = len(bundles)
        for _ in range(role.count):
            b = {"CPU": role.cpus}
            if role.gpus:
                b["GPU"] = role.gpus
            bundles.append(b)
    pg = placement_group(bundles, strategy="PACK")
    if not pg.wait(timeout_s):
        ray.util.remove_placement_group(pg)
        raise PlacementError(f"placement group {bundles} was not ready within {timeout_s:.0f}s")
    return pg, offsets
