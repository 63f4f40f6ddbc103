"""Ray placement: every actor's resources are reserved up front in placement groups, so a run that
cannot fit fails at once naming the role and what is missing, instead of hanging on a pending actor.

One placement group per role: STRICT_PACK when the role lives on one node (the default), PACK over
`resources.role_nodes[role]` nodes otherwise. With `resources.colocate` the rollout workers share
the trainer's bundles (rollout worker i in trainer rank i's bundle, half of it each).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group

from rlengine.config import RootConfig
from rlengine.plan import Plan


@dataclass(frozen=True)
class RoleSpec:
    name: str
    count: int
    cpus: float
    gpus: float
    nodes: int = 1
    custom: dict = field(default_factory=dict)

    def bundle(self) -> dict[str, float]:
        b = {"CPU": self.cpus, **self.custom}
        if self.gpus:
            b["GPU"] = self.gpus
        return b


class PlacementError(RuntimeError):
    pass


def role_specs(cfg: RootConfig, plan: Plan) -> list[RoleSpec]:
    r = cfg.resources

    def spec(name, count, gpus):
        return RoleSpec(name, count, r.cpus_per_actor, gpus, r.role_nodes.get(name, 1),
                        dict(r.role_resources.get(name, {})))

    # A stage that does not train (plan.use_trainer false: sampling) reserves nothing for a trainer.
    roles = [spec("trainer", cfg.trainer.world_size, r.gpus_per_trainer)] if plan.use_trainer else []
    # The stage samples from the rollout role or evaluates with it (Stage.uses).
    if plan.use_rollout and not r.colocate:
        roles.append(spec("rollout", cfg.rollout.num_workers, r.gpus_per_rollout * cfg.rollout.tensor_parallel_size))
    if plan.use_reference and not plan.reference_in_trainer:
        roles.append(spec("reference", cfg.reference.num_workers, r.gpus_per_reference))
    if plan.use_critic:
        roles.append(spec("critic", cfg.trainer.world_size, r.gpus_per_trainer))
    if plan.use_reward_model:
        roles.append(spec("reward_model", cfg.reward_model.num_workers, r.gpus_per_reference))
    if plan.use_teacher:
        roles.append(spec("teacher", cfg.teacher.num_workers, r.gpus_per_teacher))
    return roles


def required(roles: list[RoleSpec]) -> dict[str, float]:
    need: dict[str, float] = {}
    for role in roles:
        for res, amount in role.bundle().items():
            if amount:
                need[res] = need.get(res, 0.0) + amount * role.count
    return need


def _fmt(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def _n(count: float, what: str) -> str:
    return f"{count:g} {what}{'' if count == 1 else 's'}"


def describe_plan(cfg: RootConfig, plan: Plan) -> str:
    """The placement plan as `# ` lines (the --cfg output stays valid YAML): every role's actors,
    the bundle each reserves, the nodes they pack on, colocation, and the totals to reserve."""
    r = cfg.resources
    specs = role_specs(cfg, plan)
    lines = [f"# placement (resources.device={r.device}; one placement group per role):"]
    for s in specs:
        strategy = "STRICT_PACK on 1 node" if s.nodes == 1 else f"PACK over {s.nodes} nodes (resources.role_nodes)"
        extra = f", tensor_parallel_size {cfg.rollout.tensor_parallel_size}" if s.name == "rollout" else ""
        lines.append(f"#   {s.name}: {_n(s.count, 'actor')} x {_fmt(s.bundle())}{extra}, "
                     f"{_n(s.count * s.gpus, 'GPU')}; {strategy}")
        if r.colocate and s.name == "trainer" and plan.use_rollout:
            n = cfg.rollout.num_workers
            half = {k: v / 2 for k, v in s.bundle().items()}
            lines.append(f"#   rollout: {_n(n, 'actor')} colocated (resources.colocate): worker i shares trainer "
                         f"rank i's bundle, {_fmt(half)} each; no devices of its own")
    if plan.use_reference and plan.lora:
        lines.append("#   reference: the policy with its adapter disabled (model.lora): no weights, actors or "
                     "devices of its own")
    elif plan.use_reference and plan.reference_in_trainer:
        lines.append("#   reference: inside the trainer ranks (reference.placement=trainer): "
                     "no actors or devices of its own")
    need = required(specs)
    lines.append("# required: " + ", ".join(_n(need.get(k, 0.0), k) for k in ("GPU", "CPU"))
                 + "".join(f", {v:g} {k}" for k, v in sorted(need.items()) if k not in ("GPU", "CPU")))
    return "\n".join(lines)


def check_resources(roles: list[RoleSpec], available: dict[str, float],
                    nodes: list[dict[str, float]] | None = None) -> None:
    """Fail before any actor starts: the totals must fit the cluster, and a role packed on one node
    must fit on one of its nodes. Messages name the role and the shortfall."""
    problems = []
    need = required(roles)
    for res, amount in sorted(need.items()):
        have = available.get(res, 0.0)
        if amount > have + 1e-9:
            users = ", ".join(f"{r.name} {r.count}x{r.bundle()[res]:g}" for r in roles if r.bundle().get(res))
            problems.append(f"{res}: need {amount:g} ({users}), cluster has {have:g} (short {amount - have:g})")
    for role in roles:
        if role.nodes > 1 or not nodes:
            continue
        role_need = {k: v * role.count for k, v in role.bundle().items() if v}
        if not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in role_need.items()) for n in nodes):
            best = max(nodes, key=lambda n: sum(min(n.get(k, 0.0) / v, 1) for k, v in role_need.items()))
            short = {k: round(v - best.get(k, 0.0), 3) for k, v in role_need.items() if best.get(k, 0.0) < v}
            problems.append(f"role {role.name} needs {role_need} on one node (STRICT_PACK); the best node is "
                            f"short {short} (set resources.role_nodes.{role.name} to spread it)")
    if problems:
        raise PlacementError("not enough resources for this recipe: " + "; ".join(problems))


def alive_nodes() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def reserve(roles: list[RoleSpec], colocate_with: str | None = None, timeout_s: float = 60.0) -> dict:
    """A placement group per role; returns {role: (pg, bundle_offset)} (rollout -> trainer's when
    colocated)."""
    groups = {}
    for role in roles:
        bundles = [role.bundle() for _ in range(role.count)]
        pg = placement_group(bundles, strategy="STRICT_PACK" if role.nodes == 1 else "PACK",
                             name=f"rlengine-{role.name}")
        if not pg.wait(timeout_s):
            for other, _ in groups.values():
                ray.util.remove_placement_group(other)
            ray.util.remove_placement_group(pg)
            raise PlacementError(f"role {role.name}: placement group {bundles} ({'STRICT_PACK' if role.nodes == 1 else 'PACK'}) "
                                 f"was not ready within {timeout_s:.0f}s")
        groups[role.name] = (pg, 0)
    if colocate_with:
        groups["rollout"] = groups[colocate_with]
    return groups


def release(groups: dict) -> None:
    seen = set()
    for pg, _ in groups.values():
        if pg.id not in seen:
            seen.add(pg.id)
            ray.util.remove_placement_group(pg)


def describe(node_ids: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Role -> where each actor landed: node id, address and custom resources of its node."""
    nodes = {n["NodeID"]: n for n in ray.nodes()}
    out = {}
    for role, ids in node_ids.items():
        out[role] = []
        for nid in ids:
            n = nodes.get(nid, {})
            custom = sorted(k for k in n.get("Resources", {}) if k not in ("CPU", "GPU", "memory", "object_store_memory")
                            and not k.startswith("node:") and not k.startswith("accelerator_type"))
            out[role].append({"node_id": nid, "address": n.get("NodeManagerAddress"), "resources": custom})
    return out
