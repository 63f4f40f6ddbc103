"""The driver's side of a weight sync: which transport each rollout engine gets, the process group
they share, one push through the worker groups, and the verdict on what every TP rank reports.

`rollout.sync_method=auto` picks per engine: shared memory for an engine on trainer rank 0's node,
the process-group broadcast for the others.  A fixed method applies to every engine.
"""
from __future__ import annotations

import logging
import time

import ray

from rlengine.weight_sync.verify import WeightSyncError, compare

log = logging.getLogger("rlengine")


class EngineLost(RuntimeError):
    """A rollout engine died during the sync: restart it, then push again."""

    def __init__(self, engine: int, cause: BaseException):
        super().__init__(f"rollout engine {engine} died during the weight sync ({type(cause).__name__})")
        self.engine, self.cause = engine, cause


class WeightSync:
    def __init__(self, trainer, rollout, method: str = "auto", timeout_s: float = 300.0, tp: int = 1,
                 lora_sync: str | None = None):
        self.trainer, self.rollout = trainer, rollout
        self.method, self.timeout_s, self.tp = method, timeout_s, tp
        self.methods: list[str] | None = None  # per engine, resolved at the first push
        self.group_formed = False
        self._layout = None
        # LoRA: "adapter" sends the base once (dequantized, if quantized) with the adapter, then
        # the adapter alone; "merged" sends W0 + BA every time; None: the full weights.
        self.lora_sync = lora_sync
        self.engines_have_base = False
        self._adapter_config = None

    def _kinds(self) -> list[str]:
        return {None: ["full"], "merged": ["merged"], "adapter": ["base+adapter", "adapter"]}[self.lora_sync]

    def _kind(self) -> str:
        if self.lora_sync == "adapter":
            return "adapter" if self.engines_have_base else "base+adapter"
        return self._kinds()[0]

    def _resolve_lora(self) -> None:
        """Engines that cannot serve adapters (vLLM's LoRA path unavailable there) make it merged."""
        if self.lora_sync != "adapter":
            return
        modes = ray.get([a.lora_mode.remote() for a in self.rollout.actors])
        if "merged" in modes:
            log.info("rollout engines %s cannot serve adapters: every engine gets merged weights "
                     "(rollout.lora_sync=merged)", [e for e, m in enumerate(modes) if m == "merged"])
            self.lora_sync = "merged"
            return
        self._adapter_config = ray.get(self.trainer.actors[0].adapter_config.remote())

    def _resolve(self) -> list[str]:
        if self.method != "auto":
            return [self.method] * len(self.rollout)
        home = self.trainer.placement()[0]["node_id"]
        return ["shm" if p["node_id"] == home else "broadcast" for p in self.rollout.placement()]

    def reset_group(self) -> None:
        """After a failed transfer or an engine restart: the next broadcast forms a new group, and
        (LoRA) the next push carries the base again."""
        self.group_formed = False
        self.engines_have_base = False

    def _form_group(self, step: int) -> None:
        """Trainer rank 0 (rank 0) and every TP worker of the broadcast engines (ranks 1..)."""
        members = [e for e, m in enumerate(self.methods) if m == "broadcast"]
        world = 1 + self.tp * len(members)
        rank0 = self.trainer.actors[0]
        if self._layout is None:
            self._layout = {k: ray.get(rank0.sync_layout.remote(k)) for k in self._kinds()}
        host, port = ray.get(rank0.open_sync_group.remote(self.timeout_s))
        names = {1 + i * self.tp + t: f"rollout engine {e} tp rank {t}" for i, e in enumerate(members)
                 for t in range(self.tp)}
        refs = [self.rollout.actors[e].join_sync.remote(host, port, 1 + i * self.tp, world, self.timeout_s,
                                                         self._layout, step) for i, e in enumerate(members)]
        self._wait([*refs, rank0.join_sync_group.remote(world, names, self.timeout_s)], members,
                   "joining the weight-sync group")
        self.group_formed = True
        log.info("weight-sync group formed at %s:%d: trainer rank 0 + %d vLLM workers of engines %s",
                 host, port, world - 1, members)

    def push(self, step: int) -> dict:
        """Trainer -> every engine, verified; raises WeightSyncError on any mismatch or timeout,
        EngineLost when an engine died (the caller restarts it and pushes again)."""
        t0 = time.perf_counter()
        if self.methods is None:
            self._resolve_lora()
            self.methods = self._resolve()
        if "broadcast" in self.methods and not self.group_formed:
            self._form_group(step)
        kind = self._kind()
        exports = self.trainer.submit_all("export_weights", sorted(set(self.methods)), kind=kind)
        spec = {"step": step, "kind": kind, "adapter_config": self._adapter_config}
        # Rank 0's result is a top-level argument, so Ray hands the engine its value once it exists
        # (the broadcast needs none: it starts at once and meets rank 0 in the group).
        loads = [a.load_weights.remote({**spec, "method": m}, None if m == "broadcast" else exports[0])
                 for a, m in zip(self.rollout.actors, self.methods)]
        try:
            reports = self._wait(loads + exports[:1], list(range(len(loads))), "the weight transfer")[:len(loads)]
            ray.get(exports[1:])  # the other trainer ranks only gathered
        except (EngineLost, WeightSyncError):
            self.reset_group()
            raise
        fallback = [e for e, r in enumerate(reports) if r.get("fallback")]
        if fallback:
            log.info("rollout engines %s cannot map the trainer's shared memory (another host or namespace): "
                     "they get Ray objects from now on", fallback)
            self.methods = [("object_store" if e in fallback else m) for e, m in enumerate(self.methods)]
            return self.push(step)
        sent = ray.get(exports[0])
        verified, n_ranks = self._verify(sent, reports)
        self.engines_have_base = True
        dt = time.perf_counter() - t0
        n_bytes = reports[0]["ranks"][0]["bytes"]
        return {"sync/checksum_ok": 1.0, "sync/bytes": float(n_bytes), "sync/gbps": n_bytes / dt / 1e9,
                "sync/adapter_only": float(kind == "adapter"),
                "sync/load_s": max(r["ranks"][0]["load_s"] for r in reports),
                "sync/engine_tensors_verified": float(verified), "sync/ranks_verified": float(n_ranks),
                "sync/shared_memory": self.methods.count("shm") / len(self.methods),
                "sync/broadcast": self.methods.count("broadcast") / len(self.methods)}

    def _wait(self, refs: list, engines: list[int], what: str) -> list:
        """All results (refs: one per engine in `engines`, then the trainer's), failing fast and
        never waiting past the sync timeout (plus slack for the group's own timeouts to fire
        first).  After a failure the others' calls are let end, then the failure is named: a dead
        engine first (EngineLost: its partners' errors are consequences), else the first error."""
        limit = 2 * self.timeout_s + 30
        deadline = time.monotonic() + limit
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                late = sorted({self._who(refs.index(r), engines) for r in pending})
                raise WeightSyncError(f"{what} did not finish within {limit:.0f} s: waiting on {late} "
                                      f"(rollout.sync_timeout_s={self.timeout_s:g})")
            try:
                ray.get(done)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as first:
                # The others' calls fail within the group's own timeout once one member is gone.
                ray.wait(pending, num_returns=len(pending), timeout=self.timeout_s + 10)
                self._raise_failure(refs, engines, what, first)
        return ray.get(refs)

    @staticmethod
    def _who(i: int, engines: list[int]) -> str:
        return f"rollout engine {engines[i]}" if i < len(engines) else "trainer rank 0"

    def _raise_failure(self, refs: list, engines: list[int], what: str, first: BaseException):
        """Name the failure among the finished calls: a dead engine first (its partners' errors are
        consequences), then an error that already names ranks (WeightSyncError), then the first."""
        errors = []
        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:
                continue  # still running (e.g. a member that never joined): not the cause
            except ray.exceptions.RayActorError as e:
                if i < len(engines):
                    raise EngineLost(engines[i], e) from None
                errors.append((i, e))
            except Exception as e:  # noqa: BLE001 - classified below
                errors.append((i, e))
        named = [(i, e) for i, e in errors if isinstance(getattr(e, "cause", None), WeightSyncError)]
        i, e = (named or errors or [(0, first)])[0]
        if isinstance(e, ray.exceptions.RayActorError):
            raise e
        cause = getattr(e, "cause", None) or e
        if isinstance(cause, WeightSyncError):
            raise WeightSyncError(str(cause)) from None
        detail = str(cause).strip().splitlines()[-1][:400] if str(cause).strip() else ""
        raise WeightSyncError(f"{what} failed on {self._who(i, engines)}: {type(cause).__name__}: {detail}") from None

    def _verify(self, sent: dict, reports: list[dict]) -> tuple[int, int]:
        """Every TP rank of every engine: what arrived equals what was sent, and what the engine
        holds equals what it was given.  Returns (fewest engine tensors verified, ranks checked)."""
        fewest, n_ranks = None, 0
        for e, rep in enumerate(reports):
            method = self.methods[e]
            held = 0
            for r in rep["ranks"]:
                kind = next(iter(r["checksums"].values()))[0] if r["checksums"] else "crc32"
                res = compare(sent["checksums"][kind], r["checksums"], r["bytes"])
                if not res.ok:
                    raise WeightSyncError(
                        f"weight sync ({method}) to rollout engine {e}, tensor-parallel rank {r['rank']} failed "
                        f"verification: tensors whose {kind} checksum differs from what trainer rank 0 sent: "
                        f"{list(res.mismatched)[:5]}; missing or unexpected: {list(res.missing)[:5]}")
                if r["bad"]:
                    raise WeightSyncError(
                        f"weight sync ({method}) to rollout engine {e}, tensor-parallel rank {r['rank']}: engine "
                        f"tensors differ from the tensors they were loaded from: {r['bad'][:5]}")
                held += r["verified"]
                n_ranks += 1
            if rep["shard_bad"]:
                raise WeightSyncError(
                    f"weight sync ({method}) to rollout engine {e}: the TP shards of {rep['shard_bad'][:5]} do not add "
                    "up to the tensors they were loaded from")
            held += rep["shard_verified"]
            fewest = held if fewest is None else min(fewest, held)
        return fewest or 0, n_ranks
